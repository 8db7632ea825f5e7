#!/usr/bin/env bash
# Build the HTML book strictly and offline: -W turns warnings (a broken cross-reference, a missing
# toc file, a notebook error output) into a failure, -n checks every reference, --keep-going reports
# them all. Output: _build/html/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf _build/assets && mkdir -p _build/assets
cp -r node_modules/mathjax/es5 _build/assets/mathjax
start=$(date +%s)
.venv/bin/jupyter-book build . --all -W -n --keep-going --builder html "$@"
echo "[book] built _build/html in $(( $(date +%s) - start )) s; open _build/html/index.html"
