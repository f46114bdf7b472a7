#!/usr/bin/env bash
# Runs the cargo-fuzz targets of every fuzz crate (machine/fuzz, qmp/fuzz, virtio/fuzz, fuzz/).
#
#   scripts/fuzz.sh --ci                 every target for FUZZ_SECONDS (default 30) from its
#                                        committed seeds; what scripts/test.sh runs
#   scripts/fuzz.sh --hours H [TARGET..] a campaign: each named target (default: all) for H hours
#   scripts/fuzz.sh --list               the targets, one per line
#
# Seeds live in <crate>/fuzz/seeds/<target>/ and are copied to target/fuzz/corpus/<target>/, so
# a run never dirties the checkout (a campaign keeps growing that copy between runs). Crashes go
# to target/fuzz/artifacts/<target>/. Per target it prints the time, libFuzzer's executions and
# the crashes; any crash makes the script exit 1 with the target and the crash file's path.
# Needs the nightly toolchain and cargo-fuzz (installed here, pinned, when missing). Builds
# without a sanitizer, with optimizations and debug assertions (overflow checks): the code
# under test is safe Rust except for a few audited blocks, and an ASan build costs minutes.
# FUZZ_SANITIZER=address scripts/fuzz.sh ... builds with ASan instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

CARGO_FUZZ_VERSION=0.13.1
CRATES=(machine/fuzz qmp/fuzz virtio/fuzz fuzz)
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

mode=""
hours=""
case "${1:-}" in
    --ci) mode=ci; shift ;;
    --hours) mode=campaign; hours="${2:?--hours needs a number}"; shift 2 ;;
    --list) mode=list; shift ;;
    *) usage ;;
esac

# The [[bin]] names of one fuzz crate.
targets_of() {
    sed -n '/^\[\[bin\]\]/,/^name/s/^name = "\(.*\)"/\1/p' "$1/Cargo.toml"
}

# The fuzz crate that holds target $1.
crate_of() {
    local c
    for c in "${CRATES[@]}"; do
        if targets_of "$c" | grep -qx "$1"; then
            echo "$c"
            return
        fi
    done
    echo "error: no fuzz target named $1 (scripts/fuzz.sh --list)" >&2
    exit 2
}

if [ "$mode" = list ]; then
    for c in "${CRATES[@]}"; do targets_of "$c"; done
    exit 0
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

if [ "$mode" = ci ]; then
    seconds="${FUZZ_SECONDS:-30}"
    selected=()
    for c in "${CRATES[@]}"; do
        while read -r t; do selected+=("$t"); done < <(targets_of "$c")
    done
else
    seconds=$(awk -v h="$hours" 'BEGIN { s = int(h * 3600); if (s < 1) exit 1; print s }') ||
        { echo "error: --hours wants a positive number, got $hours" >&2; exit 2; }
    if [ $# -gt 0 ]; then
        selected=("$@")
    else
        selected=()
        for c in "${CRATES[@]}"; do
            while read -r t; do selected+=("$t"); done < <(targets_of "$c")
        done
    fi
fi

for t in "${selected[@]}"; do
    crate_of "$t" >/dev/null || exit 2
done

sanitizer="${FUZZ_SANITIZER:-none}"
build_dir="$root/target/fuzz/build"
fuzz_flags=(--sanitizer "$sanitizer" -O --debug-assertions --target-dir "$build_dir")

# Build each crate holding a selected target once (all its targets in one cargo call).
build_start=$(date +%s)
for c in "${CRATES[@]}"; do
    wanted=0
    for t in "${selected[@]}"; do
        [ "$(crate_of "$t")" = "$c" ] && wanted=1
    done
    [ "$wanted" = 1 ] || continue
    echo "building the fuzz targets of $c"
    (cd "$c/.." && cargo +nightly fuzz build "${fuzz_flags[@]}")
done
echo "fuzz build: $(( $(date +%s) - build_start )) s"

results=()
failed=0
for t in "${selected[@]}"; do
    c=$(crate_of "$t")
    corpus="$root/target/fuzz/corpus/$t"
    artifacts="$root/target/fuzz/artifacts/$t/"
    log="$root/target/fuzz/logs/$t.log"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    if [ -d "$c/seeds/$t" ]; then
        cp -n "$c/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    else
        echo "warning: $t has no seeds in $c/seeds/$t" >&2
    fi
    echo "fuzzing $t for $seconds s (log: $log)"
    start=$(date +%s)
    set +e
    (cd "$c/.." && cargo +nightly fuzz run "${fuzz_flags[@]}" "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts") >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    [ -n "$execs" ] || execs="?"
    crash_files=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log")
    crashes=$(printf '%s' "$crash_files" | grep -c . || true)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?"
    fi
    results+=("$(printf '%-16s %8s s %12s execs  %s crashes' "$t" "$elapsed" "$execs" "$crashes")")
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "FUZZ FAILURE: target $t ($c), exit $rc" >&2
        if [ -n "$crash_files" ]; then
            printf '  crash file: %s\n' $crash_files >&2
            echo "  reproduce: (cd $c/.. && cargo +nightly fuzz run ${fuzz_flags[*]} $t <crash file>)" >&2
        fi
        grep -m 20 -E "panicked|ERROR|SUMMARY|deadly signal|timeout" "$log" | sed 's/^/  /' >&2 || true
    fi
done

echo "target               time      executions  crashes"
printf '%s\n' "${results[@]}"
exit "$failed"
