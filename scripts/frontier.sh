#!/usr/bin/env bash
# Trains the frontier's runs in order (the accurate model first: it is the tiny model's
# teacher), resuming any that were interrupted, records each in results/frontier/, and ships
# the accurate model and the better of the two tiny runs on PublicTest to models/.
# Long: about 1.5 hours on 2 CPU cores. Run it in the background:
#   nohup scripts/frontier.sh > runs/frontier.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."

for name in accurate tiny tiny-distilled; do
    if [[ -f runs/$name/summary.json ]]; then
        echo "== $name: finished earlier"
    else
        echo "== $name"
        ./fer train --config configs/frontier/$name.toml --resume --record results/frontier/$name
    fi
done

# Model selection on PublicTest only: the tiny run with the higher PublicTest accuracy ships.
best_tiny=$(for name in tiny tiny-distilled; do
    printf '%s %s\n' "$(sed -n 's/.*"val_acc": *\([0-9.]*\).*/\1/p' runs/$name/summary.json | head -1)" "$name"
done | sort -rn | head -1 | cut -d' ' -f2)
echo "== shipping accurate and $best_tiny (best tiny run on PublicTest)"
./fer export runs/accurate --out models/accurate
./fer export "runs/$best_tiny" --out models/tiny
