#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it (the environment must exist: `make system`).
#   1. lint (ruff)                       2. strict book build (warnings and broken references fail)
#   3. the book as one PDF (scripts/build_pdf.sh; a failure is reported and tests/test_pdf.py fails on it)
#      (in stream b of 4. when the whole suite runs)
#   4. pytest in two streams side by side, one per core:
#      a. the grading pipeline (tests/test_grading*.py: one batch of generated submissions graded by
#         `autograde --jobs 2`, feedback, export, the exchange), then the two-moons fits
#         (tests/test_fit_two_moons.py, moved here to balance the streams once the grading got cheaper), logged
#         to _test_grading_log.txt and printed when it ends;
#      b. the PDF (as 3.), then everything else: flowlib tests, lecture notebooks re-executed by nbval (outputs
#         compared after tests/nbval_sanitize.cfg), the hub, the built book in headless Chromium, the PDF checked;
#         then nbval once more over the lecture notebooks on PyTorch's generic CPU path
#         (ATEN_CPU_CAPABILITY=default), so outputs committed on one CPU pass on another.
# Extra arguments go to one pytest run of everything instead (e.g. `scripts/run_tests.sh -k coupling`).
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

pdf() {
    stage "pdf: the book as one PDF"
    if scripts/build_pdf.sh > _build_pdf_log.txt 2>&1; then
        tail -1 _build_pdf_log.txt; rm -f _build_pdf_log.txt
    else
        tail -30 _build_pdf_log.txt; echo "the PDF build failed (full log: _build_pdf_log.txt); tests/test_pdf.py will fail"
    fi
}

notebooks=$(git ls-files 'chapters/*.ipynb' 'chapters/**/*.ipynb' 2>/dev/null | sort -u)
NBVAL=(--nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=120 -p no:cacheprovider)

# The committed outputs must not depend on the CPU's vector path: the machine that executed them may have AVX-512,
# the one running the tests only AVX2 or less. Run the notebooks a second time on PyTorch's generic path.
# NBVAL_SECOND_PASS=0 skips it (e.g. while iterating on one test).
second_pass() {
    if [ "${NBVAL_SECOND_PASS:-1}" != 0 ] && [ -n "$notebooks" ]; then
        stage "pytest: lecture notebooks again on the generic CPU path (ATEN_CPU_CAPABILITY=default)"
        # two workers (pytest-xdist; --dist loadfile keeps each notebook's cells, which share one kernel, in one
        # worker): when the grading stream has finished first, this pass would otherwise leave a core idle
        ATEN_CPU_CAPABILITY=default .venv/bin/python -m pytest $notebooks "${NBVAL[@]}" -q \
            -n "${NBVAL_SECOND_PASS_WORKERS:-2}" --dist loadfile
        return $?
    fi
}

if [ $# -gt 0 ]; then  # a selection: one pytest run, as before
    pdf
    stage "pytest: $*"
    .venv/bin/python -m pytest tests $notebooks "${NBVAL[@]}" --durations=15 "$@"
    rc=$?
    second_pass; rc2=$?
    [ $rc -eq 0 ] && rc=$rc2
    stage "done"
    exit $rc
fi

grading="$(ls tests/test_grading*.py) tests/test_fit_two_moons.py"
stage "pytest stream a (in the background, log: _test_grading_log.txt): $(echo $grading)"
( .venv/bin/python -m pytest $grading -p no:cacheprovider --durations=10 > _test_grading_log.txt 2>&1 ) &
pid_a=$!
trap 'kill $pid_a 2>/dev/null' INT TERM

pdf
stage "pytest stream b: library, notebooks (nbval), hub, book in a browser, the PDF"
ignore=$(for f in $grading; do printf -- '--ignore=%s ' "$f"; done)
.venv/bin/python -m pytest tests $ignore $notebooks "${NBVAL[@]}" --durations=15
rc=$?
second_pass; rc2=$?
[ $rc -eq 0 ] && rc=$rc2

stage "pytest stream a: waiting for the grading tests"
wait $pid_a; rc_a=$?
cat _test_grading_log.txt
[ $rc_a -eq 0 ] && rm -f _test_grading_log.txt
[ $rc -eq 0 ] && rc=$rc_a
stage "done"
exit $rc
