#!/usr/bin/env bash
# The benchmarks need wrk (HTTP load), h2load from nghttp2-client (gRPC load) and mosquitto
# (broker); install them when missing, as scripts/ensure-mosquitto.sh does for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-mosquitto.sh
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "${missing[*]} missing: installing with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    exit 0
fi
echo "The benchmarks need ${missing[*]}. Install, e.g. 'sudo apt-get install -y ${missing[*]}'." >&2
exit 1
