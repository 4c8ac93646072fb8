#!/usr/bin/env bash
# Fuzzes one of the parsers that take untrusted bytes (issue 38) with cargo-fuzz and libFuzzer,
# and records the run in results/fuzz/<target>.json (the README reads those records):
#
#   scripts/fuzz.sh csv 1800      # Kaggle's fer2013.csv reader, 30 minutes
#   scripts/fuzz.sh image 1800    # image decoding with its size checks
#   scripts/fuzz.sh body 1800     # POST /api/predict's body: raw bytes or a multipart form
#
# Not part of CI. The one stable toolchain here builds libFuzzer's instrumentation only with
# RUSTC_BOOTSTRAP=1. Seeds are fuzz/seeds/<target> (committed, small); what libFuzzer finds
# grows fuzz/corpus/<target> (ignored), crashes land in fuzz/artifacts/<target>: keep each as a
# regression input in fuzz/regressions/<target>/ (tests/fuzz_regressions.rs replays them).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/fuzz.sh csv|image|body SECONDS}"
seconds="${2:-1800}"
case "$target" in csv|image|body) ;; *) echo "unknown target $target: csv, image or body" >&2; exit 2 ;; esac
source scripts/env.sh
# The csv target links fer's data layer, and with it libtorch.
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
root="$PWD"
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target" results/fuzz logs
log="logs/fuzz-$target.log"
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --release "$target")
started="$(date -u +%FT%TZ)"
t0=$(date +%s)
status=0
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --release "$target" "$root/fuzz/corpus/$target" "$root/fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 -max_len=1048576 \
    -artifact_prefix="$root/fuzz/artifacts/$target/") > "$log" 2>&1 || status=$?
wall=$(( $(date +%s) - t0 ))
python3 - "$target" "$seconds" "$started" "$status" "$log" "$wall" <<'PY'
import json, pathlib, re, subprocess, sys
target, seconds, started, status, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), pathlib.Path(sys.argv[5])
wall = int(sys.argv[6])
text = log.read_text(errors="replace")
stat = lambda k: int(m.group(1)) if (m := re.search(rf"stat::{k}:\s+(\d+)", text)) else None
crashes = sorted(p.name for p in pathlib.Path(f"fuzz/artifacts/{target}").iterdir())
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
record = {
    "target": target, "started": started, "seconds_asked": seconds,
    "wall_seconds": wall, "new_units": stat("new_units_added"),
    "executions": stat("number_of_executed_units"), "executions_per_second": stat("average_exec_per_sec"),
    "peak_rss_mb": stat("peak_rss_mb"), "corpus_files": len(list(pathlib.Path(f"fuzz/corpus/{target}").iterdir())),
    "seed_files": len(list(pathlib.Path(f"fuzz/seeds/{target}").iterdir())),
    "exit_status": status, "crashes": crashes, "sanitizer": "address", "toolchain": rustc, "machine": "2 cores",
}
pathlib.Path(f"results/fuzz/{target}.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
PY
exit "$status"
