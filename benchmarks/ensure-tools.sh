#!/usr/bin/env bash
# The benchmarks need wrk (load generator) and mosquitto (broker); install them when missing,
# as scripts/ensure-mosquitto.sh does for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-mosquitto.sh
if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "wrk is missing: installing it with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk
    exit 0
fi
echo "The benchmarks need wrk. Install it, e.g. 'sudo apt-get install -y wrk'." >&2
exit 1
