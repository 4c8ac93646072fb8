#!/usr/bin/env bash
# The accuracy-per-FLOP frontier, end to end: trains the tiny model (separable convnet, under
# 5 MFLOPs folded), the accurate model (also the teacher), the tiny model distilled from it, the
# nano model (under 1 MFLOP), two more seeds of the tiny recipe, two nano variants, the tiny
# model distilled for 60 and for 120 epochs and two more seeds of the latter, the accurate recipe
# for 120 epochs with stronger augmentation (three seeds), that recipe born again (taught by the
# two accurate runs before it) and born again a second time (taught by all three, with mixup),
# the same network at full resolution (a stride-1 stem, taught by all four, with mixup) and born
# again (taught by itself and two of the others), and the tiny recipe taught by the first three
# accurate runs (three seeds), and nano taught by the small model (on a 40-minute budget, and for
# 160 epochs), and tiny and nano taught by the shipped accurate model with flips inside it (240
# epochs, from the teacher cache); ships the accurate, tiny and nano runs best on PublicTest to
# models/, and when the accurate one is the full-resolution network, the best of the others as
# models/small (BN folded, with model.onnx checked in tract; each card also scores flip test-time
# augmentation apart).
# Interrupted runs resume; finished ones are skipped. Records go to results/frontier/.
# About 36 hours on 2 CPU cores (estimated from the records, with teachers now in bf16: the
# 120-epoch tiny runs about 65 minutes each, or 106 taught by three, accurate-long 103,
# accurate-distilled 150, accurate-distilled-mixup 170, accurate-fullres 365, born again 410);
# run it in the background:
#   nohup scripts/frontier.sh > runs/frontier.log 2>&1 &
# FER=path/to/a/copy/of/the/binary makes it use that binary throughout, so that rebuilding fer
# while it runs cannot break it.
set -euo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-./fer}

# A recipe of configs/frontier/, run as <recipe>, or with a seed as <recipe>-seed<N>.
trained=()
train() {
    local name=$1${2:+-seed$2}
    trained+=("$name")
    if [[ -f runs/$name/summary.json ]]; then
        echo "== $name: finished earlier"
    else
        echo "== $name"
        "$FER" train --config "configs/frontier/$1.toml" ${2:+--seed "$2"} --resume --record "results/frontier/$name"
    fi
}

# The run of a family (tiny, nano, accurate: the runs trained above whose names start with it)
# with the highest PublicTest accuracy (model selection); a second argument leaves out the runs
# whose names match it.
best_on_publictest() {
    for name in "${trained[@]}"; do
        [[ $name == "$1" || $name == "$1"-* ]] || continue
        [[ -n ${2:-} && $name == $2 ]] && continue
        printf '%s %s\n' "$(sed -n 's/.*"val_acc": *\([0-9.]*\).*/\1/p' "runs/$name/summary.json" | head -1)" "$name"
    done | sort -rn | head -1 | cut -d' ' -f2
}

train tiny
train accurate
train tiny-distilled
train nano
train tiny 1
train tiny 2
train nano-wide
train nano-sharp
train tiny-long
train tiny-longer
train tiny-longer 1
train tiny-longer 2
train accurate-long
train accurate-long 1
train accurate-long 2
train accurate-distilled
train accurate-distilled-mixup
train accurate-fullres
train accurate-fullres-born-again
train tiny-ensemble
train tiny-ensemble 1
train tiny-ensemble 2
# nano taught by the shipped small model (models/small, committed: runs/accurate-distilled-mixup
# with batch norm folded), on a 40-minute budget.
train nano-distilled
# The same for 160 epochs, about twice the epochs of the 40-minute budget.
train nano-distilled-long
# tiny taught for 240 epochs by the shipped accurate model (committed), which also scores each
# crop's mirror image and teaches the mean of the two; its scores for every view of every face
# are computed once first (the teacher cache, about two hours), then each epoch is tiny's own.
train tiny-flip-teacher
# nano taught the same way, from the same cache.
train nano-flip-teacher

tiny=$(best_on_publictest tiny)
nano=$(best_on_publictest nano)
accurate=$(best_on_publictest accurate)
small=$(best_on_publictest accurate '*-fullres*')
echo "== shipping $accurate, $tiny and $nano (the runs best on PublicTest)"
"$FER" export "runs/$accurate" --out models/accurate --onnx
if [[ $small != "$accurate" ]]; then
    echo "== shipping $small as models/small (the best on PublicTest at a quarter of the FLOPs)"
    "$FER" export "runs/$small" --out models/small --onnx
fi
"$FER" export "runs/$tiny" --out models/tiny --onnx
"$FER" export "runs/$nano" --out models/nano --onnx
# What the report says of the shipped models beyond their cards is scored again on the weights
# shipped now (tests/report.rs fails on records of weights no longer shipped). The README's
# video figures (results/video/flicker.json) come from the default model too: when tiny changes,
# run scripts/flicker.py on its clip (not committed; the script names it) as well.
FER=$FER scripts/ferplus.sh
FER=$FER scripts/ensembles.sh
FER=$FER scripts/report.sh
