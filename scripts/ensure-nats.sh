#!/usr/bin/env bash
# The clustered-broker tests start a three-node NATS cluster with JetStream and MQTT on loopback,
# on configs they write (tests/support/nats.py): install nats-server when it is missing.
set -euo pipefail

if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nats-server is missing: installing it with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
    exit 0
fi
echo "The NATS cluster tests need nats-server. Install it, e.g. 'sudo apt-get install -y nats-server'." >&2
exit 1
