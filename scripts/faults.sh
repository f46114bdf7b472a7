#!/usr/bin/env bash
# The fault tests of tests/faults.rs, with the crash-after-flush test repeated at random flush
# points: `scripts/faults.sh [--runs N]` (default 100). Each run boots the test guest, which
# writes 16 pages with a flush after each; the VMM is SIGKILLed as soon as a randomly chosen
# flush is acknowledged, and every page flushed before it must be on the image (the synchronous
# back end and aio=io_uring alternate). Then the disk-full, read-error and deleted-tap tests run
# once. Needs root (tmpfs mounts, FUSE, taps) and /dev/kvm; prints the result of each part.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=100
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
        --runs=*) runs="${1#--runs=}"; shift ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (usage: scripts/faults.sh [--runs N])" >&2; exit 2 ;;
    esac
done
case "$runs" in
    ''|*[!0-9]*) echo "error: --runs takes a positive number, not '$runs'" >&2; exit 2 ;;
esac

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
start=$(date +%s)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
FAULTS_CRASH_RUNS="$runs" cargo test --test faults sigkill_right_after_a_flush -- --nocapture \
    >"$log" 2>&1 || status=$?
grep -E '^crash after flush|not on the image|exited before|^test |test result' "$log" || cat "$log"
echo "crash after flush: $runs runs in $(( $(date +%s) - start )) s, exit status $status"
cargo test --test faults -- --skip sigkill_right_after_a_flush
exit "$status"
