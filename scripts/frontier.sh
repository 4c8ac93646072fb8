#!/usr/bin/env bash
# The accuracy-per-FLOP frontier, end to end: trains the accurate model (also the teacher),
# two tiny designs (tiny: 24x24 maps after a stride-2 stem; tiny16: a 16x16 average of the
# face, wider), then distils the one that is better on PublicTest from the accurate model, and
# ships the accurate model and the best tiny run on PublicTest to models/ (BN folded).
# Interrupted runs resume; finished ones are skipped. Records go to results/frontier/.
# About 2 hours on 2 CPU cores; run it in the background:
#   nohup scripts/frontier.sh > runs/frontier.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."

train() {
    if [[ -f runs/$1/summary.json ]]; then
        echo "== $1: finished earlier"
    else
        echo "== $1"
        ./fer train --config "configs/frontier/$1.toml" --resume --record "results/frontier/$1"
    fi
}

# The run among the arguments with the highest PublicTest accuracy (model selection).
best_on_publictest() {
    for name in "$@"; do
        printf '%s %s\n' "$(sed -n 's/.*"val_acc": *\([0-9.]*\).*/\1/p' "runs/$name/summary.json" | head -1)" "$name"
    done | sort -rn | head -1 | cut -d' ' -f2
}

train accurate
train tiny
train tiny16
design=$(best_on_publictest tiny tiny16)
echo "== distilling $design (better on PublicTest)"
train "$design-distilled"

tiny=$(best_on_publictest tiny tiny16 "$design-distilled")
echo "== shipping accurate and $tiny (best tiny run on PublicTest)"
./fer export runs/accurate --out models/accurate
./fer export "runs/$tiny" --out models/tiny

echo "== the report: results/report/ and REPORT.md"
runs=()
for name in accurate tiny tiny16 "$design-distilled"; do
    runs+=(--run "results/frontier/$name")
done
./fer report --ablation results/ablation --data-stats results/data/stats.json "${runs[@]}" \
    --model models/tiny --model models/accurate --copy-to REPORT.md
