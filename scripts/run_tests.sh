#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it (the environment must exist: `make system`).
#   1. lint (ruff)                       2. strict book build (warnings and broken references fail)
#   3. the book as one PDF (scripts/build_pdf.sh; a failure is reported and tests/test_pdf.py fails on it)
#   4. one pytest run: flowlib and grading tests, lecture notebooks re-executed by nbval (outputs compared
#      after tests/nbval_sanitize.cfg), the built book checked in headless Chromium, and the PDF checked.
#   5. nbval once more over the lecture notebooks on PyTorch's generic CPU path (ATEN_CPU_CAPABILITY=default),
#      so outputs committed on one CPU pass on another.
# Extra arguments go to pytest (e.g. `scripts/run_tests.sh -k coupling`).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYDEVD_DISABLE_FILE_VALIDATION=1
start=$(date +%s)
stage() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

stage "lint: ruff"
.venv/bin/ruff check $(ls -d flowlib tests course_tools benchmarks scripts 2>/dev/null) || exit 1

stage "book: strict build"
scripts/build_book.sh > _build_log.txt 2>&1 || { tail -40 _build_log.txt; echo "the book build failed (full log: _build_log.txt)"; exit 1; }
tail -1 _build_log.txt; rm -f _build_log.txt

stage "pdf: the book as one PDF"
if scripts/build_pdf.sh > _build_pdf_log.txt 2>&1; then
    tail -1 _build_pdf_log.txt; rm -f _build_pdf_log.txt
else
    tail -30 _build_pdf_log.txt; echo "the PDF build failed (full log: _build_pdf_log.txt); tests/test_pdf.py will fail"
fi

stage "pytest: library, grading, notebooks (nbval), book in a browser, the PDF"
notebooks=$(git ls-files 'chapters/*.ipynb' 'chapters/**/*.ipynb' 2>/dev/null | sort -u)
.venv/bin/python -m pytest tests $notebooks \
    --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=120 \
    -p no:cacheprovider --durations=15 "$@"
rc=$?

# The committed outputs must not depend on the CPU's vector path: the machine that executed them may have AVX-512,
# the one running the tests only AVX2 or less. Run the notebooks a second time on PyTorch's generic path.
# NBVAL_SECOND_PASS=0 skips it (e.g. while iterating on one test).
if [ "${NBVAL_SECOND_PASS:-1}" != 0 ] && [ -n "$notebooks" ]; then
    stage "pytest: lecture notebooks again on the generic CPU path (ATEN_CPU_CAPABILITY=default)"
    ATEN_CPU_CAPABILITY=default .venv/bin/python -m pytest $notebooks \
        --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=120 \
        -p no:cacheprovider -q
    rc2=$?
    [ $rc -eq 0 ] && rc=$rc2
fi
stage "done"
exit $rc
