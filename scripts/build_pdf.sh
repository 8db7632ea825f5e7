#!/usr/bin/env bash
# The book as one PDF (make pdf): _build/pdf/dgm-flows.pdf. Offline and CPU-only.
#   1. the single-page build of the book (jupyter-book --builder singlehtml, strict like the HTML build),
#      in _build/singlehtml, with MathJax served from the build (no CDN);
#   2. scripts/book_pdf.py prints it with headless Chromium (A4, _static/print.css): a title page, the table of
#      contents with page numbers, bookmarks per chapter and section, equations typeset by MathJax, a strip of
#      frames for each animation.
# When the HTML book is built (_build/html), the PDF is also copied there, where the landing page links it;
# scripts/build_book.sh copies it too, so the order of `make pdf` and `make book` does not matter.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
rm -rf _build/pdf _build/assets && mkdir -p _build/assets
cp -r node_modules/mathjax/es5 _build/assets/mathjax
.venv/bin/jupyter-book build . --all -W -n --keep-going --builder singlehtml "$@"
echo "[pdf] single-page build in $(( $(date +%s) - start )) s"
.venv/bin/python scripts/book_pdf.py
if [ -d _build/html ]; then
    cp _build/pdf/dgm-flows.pdf _build/html/dgm-flows.pdf
fi
echo "[pdf] _build/pdf/dgm-flows.pdf ($(du -h _build/pdf/dgm-flows.pdf | cut -f1), $(( $(date +%s) - start )) s in all)"
