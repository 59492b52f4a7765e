#!/usr/bin/env bash
# The tests start real mosquitto brokers; install the broker when it is missing.
set -euo pipefail

if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto is missing: installing it with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto
    # The package may start a system broker; the tests start their own on free ports.
    exit 0
fi
echo "The tests need the mosquitto broker. Install it, e.g. 'sudo apt-get install -y mosquitto'." >&2
exit 1
