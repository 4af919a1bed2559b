#!/usr/bin/env bash
# Installs the system packages CompGrid needs on Debian/Ubuntu, only when something is missing.
# Safe to run repeatedly; does nothing on other systems (it says what to install instead).
set -euo pipefail

packages=(pkg-config)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: please install: ${missing[*]}" >&2
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "bootstrap: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
