#!/usr/bin/env bash
# Print the directory holding PostgreSQL's server binaries (initdb, pg_ctl, postgres); install Debian's
# `postgresql` package with apt-get when none is found.  Used by tests/test_grading.py:
#   PG_BIN=$(scripts/ensure_postgres.sh)
set -euo pipefail

find_bin() {
  for d in "${PG_BIN:-}" /usr/local/bin /usr/local/pgsql/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      echo "$d"; return 0
    fi
  done
  return 1
}

if find_bin; then exit 0; fi

if [ "$(id -u)" != 0 ]; then
  echo "PostgreSQL server binaries not found and not root: install the 'postgresql' package" >&2
  exit 1
fi
echo "PostgreSQL not found: installing Debian's postgresql package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql >&2
# Debian starts a cluster on install in some images; the tests use their own private one.
find_bin
