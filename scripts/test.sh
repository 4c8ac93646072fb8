#!/usr/bin/env bash
# The whole test suite: installs libtorch into .deps/ when missing, then runs cargo test.
# Tests that need the real data skip (with a message) where ../shared/data/fer2013 is absent.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$FER_ROOT"
cargo test --release "$@"
