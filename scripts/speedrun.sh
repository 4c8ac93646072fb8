#!/usr/bin/env bash
# Speedrun trials (issue 34), paired: each seed of every recipe given, one recipe after the
# other (seed 0 of each, then seed 1 of each, ...), so that recipes compared share the machine's
# pace of the hour; a time budget makes a run's epochs depend on it (this CPU's speed has drifted
# by 45% from one day to another). Each run alone, resumable, skipped when finished; records
# (no weights) go to OUT/<name> or OUT/<name>-seed<N>. Before each seed's round the training step
# of the first config is timed (`fer bench step`, bf16) into OUT/pace.jsonl: the machine's pace
# that hour, beside the runs it paced.
#   scripts/speedrun.sh OUT "SEEDS" CONFIG...
#   nohup scripts/speedrun.sh results/speedrun/t6-paired "0 1 2" configs/speedrun.toml configs/speedrun-trials/t6.toml > runs/speedrun.log 2>&1 &
# FER=path/to/a/copy/of/the/binary keeps a rebuild from touching the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-./fer}
[[ $# -ge 3 ]] || { echo "usage: scripts/speedrun.sh OUT \"SEEDS\" CONFIG..." >&2; exit 2; }
out=$1 seeds=$2
shift 2
pace() {
    local step
    step=$("$FER" bench step --model "$1" --precision bf16 --batch 64 | tail -1)
    printf '{"seed": %s, "at": "%s", "step": %s}\n' "$2" "$(date -u +%FT%TZ)" "$step" >> "$out/pace.jsonl"
}
mkdir -p "$out"
for seed in $seeds; do
    pace "$1" "$seed"
    for config in "$@"; do
        base=$(sed -n 's/^name = "\(.*\)"/\1/p' "$config" | head -1)
        name=$base
        [[ $seed == 0 ]] || name=$base-seed$seed
        if [[ -f runs/$name/summary.json ]]; then
            echo "== $name: finished earlier"
            continue
        fi
        echo "== $name ($config, seed $seed)"
        if [[ $seed == 0 ]]; then
            "$FER" train --config "$config" --resume --record "$out/$name"
        else
            "$FER" train --config "$config" --seed "$seed" --resume --record "$out/$name"
        fi
    done
done
