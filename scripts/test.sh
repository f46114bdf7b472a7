#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate, the integration tests that boot the
# project's guests under /dev/kvm, then every fuzz target for a bounded time (scripts/fuzz.sh
# --ci). Installs what the tests need when it is missing (the few Debian packages that build the
# guests, QEMU's Python QMP client, cargo-fuzz): the tests install nothing.
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

# Every cargo-fuzz target for FUZZ_SECONDS (30) from its committed seeds; a crash fails the
# suite. Needs the nightly toolchain; installs cargo-fuzz when missing. NIMBUS_SKIP_FUZZ=1 skips.
if [ -z "${NIMBUS_SKIP_FUZZ:-}" ]; then
    scripts/fuzz.sh --ci
fi
