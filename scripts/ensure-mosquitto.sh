#!/usr/bin/env bash
# The tests start real mosquitto brokers, on the files `broker-config` writes: install the broker
# and its dynamic-security plugin (part of Debian's mosquitto package) when they are missing.
set -euo pipefail

plugin_found() {
    local candidate
    for candidate in /usr/lib/*-linux-gnu*/mosquitto_dynamic_security.so \
        /usr/lib64/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so \
        /usr/local/lib/mosquitto_dynamic_security.so /usr/local/lib64/mosquitto_dynamic_security.so; do
        [ -f "$candidate" ] && return 0
    done
    return 1
}

if { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } && plugin_found; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto or its dynamic-security plugin is missing: installing mosquitto with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto
    # The package may start a system broker; the tests start their own on free ports.
    plugin_found && exit 0
    echo "mosquitto_dynamic_security.so is still missing after installing mosquitto." >&2
    exit 1
fi
echo "The tests need the mosquitto broker with its dynamic-security plugin" \
    "(mosquitto_dynamic_security.so). Install it, e.g. 'sudo apt-get install -y mosquitto'." >&2
exit 1
