#!/usr/bin/env bash
# THE benchmark command: Nimbus beside QEMU's microvm, same run, one table.
#   sudo ./benches/run.sh                 default set (a few minutes)
#   sudo ./benches/run.sh --quick         fewer runs, smaller workloads
#   sudo ./benches/run.sh --only startup,memory [--runs N] [--linux] [--no-build]
#   sudo ./benches/run.sh --only virtiofs    virtio-fs with virtiofsd and the kit Linux (~4 min)
# Builds nimbus (release) and the test guests, installs qemu-system-x86 and fio if missing,
# prints a markdown table and writes target/bench/results.md and results.json.
# See benches/bench.py for what each sub-benchmark does and docs/performance.md for the numbers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 benches/bench.py "$@"
