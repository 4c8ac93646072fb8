#!/usr/bin/env bash
# The Python package `ferkit` (crates/python), built and checked as a user would get it:
#   scripts/python.sh build   its wheel (maturin, abi3: one wheel for CPython >= 3.9) in target/wheels/
#   scripts/python.sh test    the wheel installed into a fresh virtual environment (numpy, and
#                             pytest and Pillow for the tests; no torch), then its tests
#   scripts/python.sh record  the same, and the wheel's size and install time written to
#                             results/python/wheel.json (the README reads them)
# maturin lives in its own virtual environment, .deps/maturin, made on first use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MATURIN_VENV="$ROOT/.deps/maturin"
WHEELS="$ROOT/target/wheels"
what="${1:-test}"

# Virtual environments need Python's venv module (Debian: python3-venv).
if ! python3 -c "import venv, ensurepip" 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fer: installing python3-venv (Debian package, for the Python package's tests) ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } >/dev/null 2>&1 || true
fi
if [ ! -x "$MATURIN_VENV/bin/maturin" ]; then
    echo "fer: installing maturin into .deps/maturin ..." >&2
    rm -rf "$MATURIN_VENV"
    python3 -m venv "$MATURIN_VENV"
    "$MATURIN_VENV/bin/pip" install --quiet --disable-pip-version-check maturin==1.9.6
fi
rm -f "$WHEELS"/ferkit-*.whl
echo "fer: building the ferkit wheel (cargo, profile wheel: link-time optimised, a few minutes) ..." >&2
# The wheel links no libtorch: fer-core only.
"$MATURIN_VENV/bin/maturin" build --profile wheel --quiet --manifest-path "$ROOT/crates/python/Cargo.toml" --out "$WHEELS" >&2
wheel="$(ls "$WHEELS"/ferkit-*.whl)"
[ "$what" = build ] && { echo "$wheel"; exit 0; }

venv="$ROOT/target/tmp/ferkit-venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check pytest pillow >&2
# Timed alone: the wheel and what it needs (numpy).
start=$(date +%s%N)
"$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel" >&2
install_ms=$(( ($(date +%s%N) - start) / 1000000 ))
cd "$ROOT/crates/python/tests"
status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider . || status=$?
out=/dev/null
if [ "$what" = record ]; then mkdir -p "$ROOT/results/python" && out="$ROOT/results/python/wheel.json"; fi
"$venv/bin/python" - "$wheel" "$install_ms" "$out" <<'PY'
import json, os, sys, zipfile
wheel, seconds, out = sys.argv[1], int(sys.argv[2]) / 1000, sys.argv[3]
z = zipfile.ZipFile(wheel)
record = {
    "wheel": os.path.basename(wheel),
    "wheel_mb": round(os.path.getsize(wheel) / 1e6, 2),
    "installed_mb": round(sum(i.file_size for i in z.infolist()) / 1e6, 2),
    "install_seconds_with_numpy": round(seconds, 2),
}
if out != "/dev/null":
    with open(out + ".partial", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(out + ".partial", out)
print("ferkit:", record, file=sys.stderr)
PY
exit $status
