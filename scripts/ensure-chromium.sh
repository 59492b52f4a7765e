#!/usr/bin/env bash
# The dashboard's browser tests (tests/e2e/test_dashboard.py) drive Debian's chromium through
# Playwright's executable_path, never a browser Playwright downloads, and check the alert rules
# with promtool (Debian's prometheus package): install both when they are missing.
set -euo pipefail

missing=()
if ! [ -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi
if ! command -v promtool >/dev/null 2>&1; then
    missing+=(prometheus)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "${missing[*]} missing: installing with apt-get"
    apt-get update -q
    # --no-install-recommends: no desktop around the browser. The prometheus package may start
    # a server on its default config; the tests only run promtool.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    exit 0
fi
echo "The dashboard tests need ${missing[*]}. Install it, e.g. 'sudo apt-get install -y ${missing[*]}'." >&2
exit 1
