#!/usr/bin/env bash
# The whole test suite: installs libtorch into .deps/ when missing, then runs cargo test.
# Tests that need the real data skip (with a message) where ../shared/data/fer2013 is absent.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# The browser test drives Debian's Chromium through chromedriver: install them where missing
# and we may (CI runs as root); without them that test skips with a message.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fer: installing chromium and chromium-driver (Debian packages, for the browser test) ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
        || echo "fer: could not install chromium: the browser test will skip" >&2
fi
cd "$FER_ROOT"
cargo test --release "$@"
