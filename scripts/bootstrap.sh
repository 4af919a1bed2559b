#!/usr/bin/env bash
# Installs the system packages CompGrid needs on Debian/Ubuntu, only when something is missing,
# then makes sure the local libvirt daemons run (real QEMU guests for the provisioner's tests).
# Safe to run repeatedly; does nothing on other systems (it says what to install instead).
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# pkg-config and libvirt-dev build libvirt-python; then a local hypervisor; DejaVu is the
# Unicode font of invoice PDFs; wrk generates the HTTP load of the gateway benchmark;
# Chromium runs the browser tests.
packages=(pkg-config libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    qemu-system-x86 qemu-utils fonts-dejavu-core wrk chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: please install: ${missing[*]}" >&2
        exit 0
    fi
    echo "bootstrap: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
fi

libvirt_answers() { timeout 10 virsh -c qemu:///system uri >/dev/null 2>&1; }

# On a machine managed by systemd the packages start libvirtd themselves; elsewhere (containers,
# CI sandboxes) start it here. Only root can: others get told what is missing.
if command -v libvirtd >/dev/null 2>&1 && ! libvirt_answers; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: libvirtd is not running; start it (as root: scripts/bootstrap.sh)" >&2
        exit 0
    fi
    echo "bootstrap: starting virtlogd and libvirtd"
    getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 \
        || useradd -r -g libvirt-qemu -G kvm -s /usr/sbin/nologin -d /var/lib/libvirt libvirt-qemu
    # libvirt probes QEMU as root but checks /dev/kvm as the qemu user; when that user cannot
    # open it, every guest start re-probes QEMU (about 35 s here). Guests still use type
    # 'qemu' (software emulation); the group only keeps the probe cache valid.
    if [ -c /dev/kvm ]; then
        chgrp kvm /dev/kvm && chmod 660 /dev/kvm
    fi
    mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/images
    virtlogd -d
    libvirtd -d
    for _ in $(seq 1 100); do
        libvirt_answers && break
        sleep 0.2
    done
    libvirt_answers || { echo "bootstrap: libvirtd did not come up" >&2; exit 1; }
fi
