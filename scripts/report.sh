#!/usr/bin/env bash
# REPORT.md, results/report/ (report.html, report.pdf, the figures), README.md and the speedrun's
# notes (results/speedrun/README.md), rendered from the committed records by their templates in
# docs/report/: edit those, never the outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-./fer}
"$FER" report --template docs/report/report.md.j2 --out results/report --copy-to REPORT.md --pdf \
    --render docs/report/README.md.j2=README.md \
    --render docs/report/speedrun.md.j2=results/speedrun/README.md "$@"
