#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the integration tests that boot the
# project's guests under /dev/kvm. Installs what the tests need when it is missing (the few Debian
# packages that build the guests, and QEMU's Python QMP client): the tests install nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v as >/dev/null || need+=(binutils)
command -v gcc >/dev/null || need+=(gcc)
# Real vhost-user back ends for the vhost-user tests: qemu-storage-daemon and virtiofsd.
command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-common)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi

# The QMP tests drive Nimbus with QEMU's own client library (tests/qmp/*.py).
if ! python3 -c 'import qemu.qmp' 2>/dev/null; then
    echo "installing the Python package qemu.qmp"
    python3 -m pip install --quiet qemu.qmp
fi

if [ ! -c /dev/kvm ]; then
    if [ -n "${CI:-}" ]; then
        echo "error: /dev/kvm is missing; CI must run the VM tests" >&2
        exit 1
    fi
    echo "WARNING: /dev/kvm is missing: the tests that boot guests will be SKIPPED" >&2
fi

cargo test --workspace --all-targets "$@"
