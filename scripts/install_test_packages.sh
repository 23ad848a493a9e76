#!/usr/bin/env bash
# Install the Debian packages the tests start as real services: Chromium (tests/test_demo_browser.py),
# PostgreSQL and Redis (tests/test_deployment.py: a throwaway cluster and a broker the test starts).
# Idempotent and quiet: installs only what is missing; prints apt's log only when the install fails.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

# Root installs directly; anyone else needs password-less sudo (CI runners have it).
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_test_packages.sh: need root or password-less sudo to apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq \
       && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_test_packages.sh: apt-get could not install ${missing[*]}" >&2
    exit 1
fi
# The Debian package starts its own cluster and server; the tests start theirs on free ports.
for service in postgresql redis-server; do
    "${SUDO[@]}" service "$service" stop >/dev/null 2>&1 || true
done
echo "install_test_packages.sh: installed ${missing[*]}"
