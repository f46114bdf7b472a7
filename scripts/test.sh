#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the integration tests that boot the
# project's guests under /dev/kvm. Installs the few Debian packages it needs when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v as >/dev/null || need+=(binutils)
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi

if [ ! -c /dev/kvm ]; then
    if [ -n "${CI:-}" ]; then
        echo "error: /dev/kvm is missing; CI must run the VM tests" >&2
        exit 1
    fi
    echo "WARNING: /dev/kvm is missing: the tests that boot guests will be SKIPPED" >&2
fi

cargo test --workspace --all-targets "$@"
