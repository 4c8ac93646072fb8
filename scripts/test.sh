#!/usr/bin/env bash
# The whole test suite: installs libtorch into .deps/ when missing, then runs cargo test, then
# the Python package's tests (scripts/python.sh).
# Tests that need the real data skip (with a message) where ../shared/data/fer2013 is absent.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# The browser test drives Debian's Chromium through chromedriver, and the report's PDF is printed
# by the same Chromium and its pages read back by pdftoppm (poppler-utils): install them where
# missing and we may (CI runs as root); without them those tests skip with a message.
if { ! command -v chromedriver >/dev/null 2>&1 || ! command -v pdftoppm >/dev/null 2>&1; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fer: installing chromium, chromium-driver and poppler-utils (Debian packages, for the browser and report tests) ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver poppler-utils; } >/dev/null 2>&1 \
        || echo "fer: could not install chromium: the browser and PDF tests will skip" >&2
fi
cd "$FER_ROOT"
# Tests that skip their real work say so here, at the end, where a passing run would hide it.
skipped="$FER_ROOT/target/tmp/skipped-tests.txt"
rm -f "$skipped"
status=0
cargo test --release "$@" || status=$?
# The Python package, from its built wheel in a fresh virtual environment (not when cargo test
# was given a filter: that asks for some Rust tests only).
if [ $# -eq 0 ]; then
    "$FER_ROOT/scripts/python.sh" test || status=$?
fi
if [ -s "$skipped" ]; then
    echo "fer: $(wc -l < "$skipped") test(s) skipped their real work:" >&2
    sed 's/^/  /' "$skipped" >&2
fi
exit $status
