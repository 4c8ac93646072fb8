#!/usr/bin/env bash
# REPORT.md and results/report/ from the committed records: the baseline, the ablations and
# their seed runs, the front's runs and the shipped models. Records not there yet are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-./fer}
args=(--baseline results/baseline --data-stats results/data/stats.json --copy-to REPORT.md)
for dir in results/ablation results/ablation-one-off; do
    [[ -f $dir/ablation.csv ]] && args+=(--ablation "$dir")
done
for run in results/ablation-seeds/*/; do
    [[ -f $run/summary.json ]] && args+=(--seed-run "${run%/}")
done
for run in results/ablation-bf16/*/; do
    [[ -f $run/summary.json ]] && args+=(--run "${run%/}")
done
for name in accurate tiny tiny-seed1 tiny-seed2 tiny-distilled tiny-long \
    tiny-longer tiny-longer-seed1 tiny-longer-seed2 accurate-long accurate-long-seed1 accurate-long-seed2 \
    accurate-distilled tiny-ensemble tiny-ensemble-seed1 tiny-ensemble-seed2 accurate-distilled-mixup \
    accurate-fullres accurate-fullres-born-again \
    nano nano-wide nano-sharp; do
    [[ -f results/frontier/$name/summary.json ]] && args+=(--run "results/frontier/$name")
done
for model in models/*/; do
    [[ -f $model/card.json ]] && args+=(--model "${model%/}")
done
"$FER" report "${args[@]}"
