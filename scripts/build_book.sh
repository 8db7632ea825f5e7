#!/usr/bin/env bash
# Build the HTML book strictly and offline: -W turns warnings (a broken cross-reference, a missing
# toc file, a notebook error output) into a failure, -n checks every reference, --keep-going reports
# them all. Output: _build/html/index.html. The landing page links the PDF of the book (dgm-flows.pdf): when
# `make pdf` has written it (_build/pdf), it is copied into the site here; otherwise the link stays dead until
# `make pdf` runs (which also copies it into a built site).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf _build/assets && mkdir -p _build/assets
cp -r node_modules/mathjax/es5 _build/assets/mathjax
if [ -f _build/pdf/dgm-flows.pdf ]; then
    cp _build/pdf/dgm-flows.pdf _build/assets/dgm-flows.pdf
else
    echo "[book] no _build/pdf/dgm-flows.pdf: the landing page's PDF link is dead until \`make pdf\` (course repository)"
fi
start=$(date +%s)
.venv/bin/jupyter-book build . --all -W -n --keep-going --builder html "$@"
echo "[book] built _build/html in $(( $(date +%s) - start )) s; open _build/html/index.html"
