#!/usr/bin/env bash
# Create or refresh the course environment from pinned versions. Idempotent: a second run with an
# unchanged lock file takes about a second.
#
#   scripts/setup_env.sh            Python venv (.venv) + MathJax assets   (enough to build the book)
#   scripts/setup_env.sh --system   also the Debian tools the tests need: chromium, bubblewrap, postgresql,
#                                   poppler-utils (pdftotext, pdfimages, pdftoppm: the checks of the PDF book)
#
# Everything comes from the package registries at setup time; nothing is downloaded at build or run time.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
want_system=0
[ "${1:-}" = "--system" ] && want_system=1

log() { printf '[setup] %s\n' "$*"; }

# ---- Python environment -------------------------------------------------------------------------
stamp="$VENV/.setup-stamp"
lock_fp=$(sha256sum requirements/lock.txt | cut -c1-16)
pkg_fp=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x "$VENV/bin/python" ] || [ "$(sed -n 1p "$stamp" 2>/dev/null)" != "$lock_fp" ]; then
    log "creating $VENV from requirements/lock.txt (about 1 minute with a warm pip cache, a few without)"
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # torch==2.13.0 resolves to the CPU wheel; every other package is pinned by the lock file.
    "$VENV/bin/pip" install --quiet -r requirements/lock.txt
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
    printf '%s\n' "$lock_fp" > "$stamp"
fi
if [ "$(sed -n 2p "$stamp")" != "$pkg_fp" ]; then
    log "installing flowlib and course_tools (editable)"
    "$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e .
    printf '%s\n%s\n' "$lock_fp" "$pkg_fp" > "$stamp"
fi
# rfc3987-syntax comes in through jupyter-events (jsonschema[format-nongpl]) and builds an Earley parser for
# RFC 3987 when jsonschema imports it, i.e. in every process that imports nbformat: about 1.5 s of CPU each
# (every nbgrader, course_tools, jupyter-book and nbval run; over a hundred in `make test`). Nothing here
# validates the "iri" formats it serves; without it jsonschema skips them. tests/test_startup_cost.py checks.
if [ -d "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rfc3987_syntax" ]; then
    log "removing rfc3987-syntax (1.5 s of CPU in every process that imports nbformat)"
    "$VENV/bin/pip" uninstall --quiet --yes rfc3987-syntax
fi
log "$VENV is ready"

# ---- MathJax, served from the built site (no CDN) -----------------------------------------------
if [ ! -f node_modules/mathjax/es5/tex-mml-chtml.js ]; then
    command -v npm >/dev/null || { echo "npm is required (Debian: apt-get install npm)" >&2; exit 1; }
    log "installing MathJax from package-lock.json"
    npm ci --no-audit --no-fund --silent
fi

# ---- Debian tools for the test suite -------------------------------------------------------------
if [ "$want_system" = 1 ]; then
    missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v bwrap >/dev/null || missing+=(bubblewrap)
    { command -v pdftotext >/dev/null && command -v pdfimages >/dev/null; } || missing+=(poppler-utils)
    { command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; } || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            log "installing Debian packages: ${missing[*]}"
            # A freshly booted machine often has apt busy (unattended upgrades, cloud-init): wait for its locks
            # (up to 10 minutes) instead of failing on the first try.
            apt_wait=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
            apt_retry() {
                local i
                for i in $(seq 1 40); do
                    "$@" && return 0
                    log "apt is busy or failed (try $i of 40); retrying in 15 s"
                    sleep 15
                done
                return 1
            }
            apt_retry apt-get "${apt_wait[@]}" update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt_retry apt-get "${apt_wait[@]}" install -y -qq "${missing[@]}" >/dev/null
        else
            echo "The tests need these Debian packages: ${missing[*]}. Install them with:" >&2
            echo "  sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
    fi
fi
