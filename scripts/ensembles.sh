#!/usr/bin/env bash
# Ensembles of the shipped models (issue 36), reported apart from the single networks: each
# candidate scored on PublicTest (its members' probabilities averaged, each member with flip
# test-time augmentation), the one best there scored once on PrivateTest. FLOPs are every
# member's passes together. Records: results/ensembles/<candidate>-<split>.json.
#   scripts/ensembles.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-./fer}
mkdir -p results/ensembles
candidates=("accurate+small" "accurate+small+tiny" "accurate+small+tiny+nano")
accuracy() { sed -n 's/^  "accuracy": \(.*\),$/\1/p' "$1"; }
best="" best_acc=0
for c in "${candidates[@]}"; do
    models=()
    for m in ${c//+/ }; do models+=(--model "models/$m"); done
    out=results/ensembles/$c-PublicTest.json
    "$FER" eval "${models[@]}" --tta flip --split PublicTest --json > "$out"
    acc=$(accuracy "$out")
    echo "$c with flips, PublicTest: $acc"
    if python3 -c "import sys; sys.exit(not $acc > $best_acc)"; then best=$c best_acc=$acc; fi
done
echo "$best" > results/ensembles/chosen.txt
models=()
for m in ${best//+/ }; do models+=(--model "models/$m"); done
"$FER" eval "${models[@]}" --tta flip --split PrivateTest --json > "results/ensembles/$best-PrivateTest.json"
echo "chosen on PublicTest: $best; PrivateTest $(accuracy "results/ensembles/$best-PrivateTest.json")"
