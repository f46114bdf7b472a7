#!/usr/bin/env bash
# Soak and load (issue #17), full sizes; tests/soak.rs runs a short version of each part.
#   sudo ./scripts/soak.sh                  1,000 start-to-exit cycles 8 at a time, one VM under
#                                           10,000 QMP sessions and 1,000 blk + net hot-plug
#                                           cycles, 50 VMs at once with a disk and a tap
#   sudo ./scripts/soak.sh --quick          the sizes of tests/soak.rs (a few seconds)
#   sudo ./scripts/soak.sh --only cycles,churn,many --cycles N --parallel P --qmp-cycles N
#        --hotplug-cycles N --vms N --rss-slack KIB --json FILE
#   NIMBUS=path/to/nimbus ./scripts/soak.sh  measure that binary (default: build the release one)
# Needs root (taps) and /dev/kvm. Exit status 1 when a VM failed or anything leaked; the figures
# go to stdout and, as JSON, to target/soak/results.json. docs/performance.md has the latest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sizes=()
if [ "${1:-}" = "--quick" ]; then
    shift
    sizes=(--cycles 40 --qmp-cycles 300 --hotplug-cycles 30 --vms 8)
fi

mkdir -p target/soak
if [ -z "${NIMBUS:-}" ]; then
    cargo build --release --bin nimbus >&2
    NIMBUS=target/x86_64-unknown-linux-gnu/release/nimbus
fi
bash guests/build.sh target/soak/guests >&2

exec python3 scripts/soak.py --nimbus "$NIMBUS" --guests target/soak/guests \
    --json target/soak/results.json "${sizes[@]}" "$@"
