#!/usr/bin/env bash
# Install Debian's Chromium for the demo's browser test (tests/test_demo_browser.py).
# Idempotent and quiet: does nothing when /usr/bin/chromium is already there; prints apt's log
# only when the install fails.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

# Root installs directly; anyone else needs password-less sudo (CI runners have it).
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_chromium.sh: need root or password-less sudo to apt-get install chromium" >&2
        exit 1
    fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq \
       && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } \
       >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_chromium.sh: apt-get could not install chromium" >&2
    exit 1
fi
test -x /usr/bin/chromium || { echo "install_chromium.sh: no /usr/bin/chromium after install" >&2; exit 1; }
echo "install_chromium.sh: installed $(/usr/bin/chromium --version 2>/dev/null)"
