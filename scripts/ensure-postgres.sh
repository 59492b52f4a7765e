#!/usr/bin/env bash
# The storage tests run on SQLite and on PostgreSQL: the server must answer at TEST_POSTGRES_URL
# (default postgresql://postgres@127.0.0.1:5432/test, trust authentication). Start the local
# cluster when it is installed but stopped; otherwise say what is missing. Each test run makes
# and drops schemas of its own in that database, nothing else.
set -euo pipefail

URL="${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
PYTHON="${PYTHON:-.venv/bin/python}"

answers() {
    "$PYTHON" - "$URL" <<'PY'
import sys

import psycopg

try:
    psycopg.connect(sys.argv[1], connect_timeout=5).close()
except psycopg.Error as e:
    print(" ".join(str(e).split()), file=sys.stderr)
    sys.exit(1)
PY
}

if answers 2>/dev/null; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v pg_lsclusters >/dev/null 2>&1; then
    echo "PostgreSQL does not answer at $URL: starting the local clusters"
    pg_lsclusters --no-header | while read -r version name _; do
        pg_ctlcluster "$version" "$name" start || true
    done
    for _ in $(seq 1 10); do
        answers 2>/dev/null && exit 0
        sleep 1
    done
fi
echo "The storage tests need PostgreSQL at $URL:" >&2
answers || true
echo "Install and start it (Debian: 'sudo apt-get install -y postgresql'), allow trust" \
    "authentication from 127.0.0.1 for user postgres, create the database ('createdb test')," \
    "or point TEST_POSTGRES_URL at another server." >&2
exit 1
