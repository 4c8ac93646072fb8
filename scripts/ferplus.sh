#!/usr/bin/env bash
# The shipped models scored against FER+'s majority labels (issue 36's generalisation check:
# the same faces, labelled again by ten annotators each) on PublicTest and PrivateTest, beside
# how often FER-2013's own labels agree with FER+'s; no choice is made on these scores.
# Records: results/ferplus/labels.json and results/ferplus/<model>-<split>.json.
#   scripts/ferplus.sh [path/to/fer2013new.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-./fer}
mkdir -p results/ferplus
"$FER" data ferplus ${1:+--ferplus "$1"} --out results/ferplus/labels.json
for model in accurate small tiny nano; do
    for split in PublicTest PrivateTest; do
        "$FER" eval --model "models/$model" --split "$split" --ferplus ${1:+"$1"} --json > "results/ferplus/$model-$split.json"
        echo "$model $split: $(sed -n 's/^  "accuracy": \(.*\),$/\1/p' "results/ferplus/$model-$split.json")"
    done
done
