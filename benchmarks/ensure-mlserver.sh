#!/usr/bin/env bash
# MLServer pins its own dependencies: it gets its own virtualenv, never the project's.
# Usage: benchmarks/ensure-mlserver.sh PYTHON ONNXRUNTIME_VERSION
# Leaves benchmarks/.venv-mlserver/bin/mlserver, or benchmarks/.venv-mlserver.failed with the reason.
set -uo pipefail
cd "$(dirname "$0")"
PYTHON="${1:-python3}"
ORT="${2:-}"
VENV=.venv-mlserver
FAILED=.venv-mlserver.failed
if [ -x "$VENV/bin/mlserver" ]; then
    exit 0
fi
rm -f "$FAILED"
log=$(mktemp)
{
    "$PYTHON" -m venv "$VENV" &&
    "$VENV/bin/python" -m pip install --quiet --upgrade pip &&
    "$VENV/bin/python" -m pip install --quiet mlserver ${ORT:+"onnxruntime==$ORT"}
} >"$log" 2>&1
status=$?
if [ $status -ne 0 ] || [ ! -x "$VENV/bin/mlserver" ]; then
    { echo "pip install mlserver failed (exit $status):"; tail -20 "$log"; } >"$FAILED"
    cat "$FAILED" >&2
fi
rm -f "$log"
exit 0
