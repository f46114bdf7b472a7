#!/usr/bin/env bash
# Builds nimbus and the project's test guest, then boots the guest: it prints what Nimbus gave
# it (command line, E820 map, MP table) and resets, which ends the VM with exit status 0.
# Extra arguments are passed to nimbus (e.g. -smp 2 -m 512).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=target/guests
./guests/build.sh "$out" >/dev/null
exec ./target/release/nimbus -machine microvm -smp 2 -m 128 \
    -kernel "$out/hello.elf" -append "console=ttyS0 nimbus.test=smp" -serial stdio "$@"
