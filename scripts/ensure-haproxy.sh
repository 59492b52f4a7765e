#!/usr/bin/env bash
# The replica tests put HAProxy in front of several `model-registry serve` processes, on a
# config they write (tests/support/haproxy.py): install it when it is missing.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "haproxy is missing: installing it with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy
    # The package may start a system balancer on its default config; the tests start their own.
    exit 0
fi
echo "The replica tests need HAProxy. Install it, e.g. 'sudo apt-get install -y haproxy'." >&2
exit 1
