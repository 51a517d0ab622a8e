#!/usr/bin/env bash
# Install the tools the browser test needs (Debian's headless Chromium); safe to run repeatedly.
#
# Exit 0 when `chromium` is on PATH afterwards, 1 otherwise (e.g. not root and not installed).
set -uo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "install_test_tools: chromium already present: $(command -v chromium)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_test_tools: chromium is missing and this is not root; install Debian's" \
        "'chromium' package (apt-get install chromium) and rerun" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_tools: chromium is missing and apt-get is not available" >&2
    exit 1
fi

echo "install_test_tools: installing Debian's chromium with apt-get"
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium
status=$?
echo "install_test_tools: apt-get finished with status ${status} after $(( $(date +%s) - start )) s"

if command -v chromium >/dev/null 2>&1; then
    echo "install_test_tools: chromium installed: $(chromium --version 2>/dev/null)"
    exit 0
fi
echo "install_test_tools: chromium is still not available" >&2
exit 1
