#!/usr/bin/env bash
# Builds nimbus and boots a VM on the serial console.
#
#   sudo ./scripts/demo.sh                 the guest kit's Linux 6.1 to a busybox shell, root on
#                                          virtio-blk (first run builds the kernel: ~6 min;
#                                          later runs reuse the cache). `reboot -f` ends the VM.
#   sudo ./scripts/demo.sh --test-guest    the project's small test guest: prints what Nimbus
#                                          gave it (command line, E820, MP table), starts its
#                                          second vCPU and resets (exit status 0).
#
# Extra arguments go to nimbus (e.g. -smp 2 -m 512).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet

if [ "${1:-}" = "--test-guest" ]; then
    shift
    out=target/guests
    ./guests/build.sh "$out" >/dev/null
    exec ./target/x86_64-unknown-linux-gnu/release/nimbus -machine microvm -smp 2 -m 128 \
        -kernel "$out/hello.elf" -append "console=ttyS0 nimbus.test=smp" -serial stdio "$@"
fi

kit=target/guest-kit
./guest-kit/build.sh "$kit"
if [ -e /sys/module/kvm_pvm ]; then
    cmdline=$(cat guest-kit/cmdline.txt)
    echo "kvm-pvm host: the guest kernel is emulated instruction by instruction, so Linux" >&2
    echo "needs ~50 s to reach its shell here (well under a second on hardware KVM)." >&2
else
    cmdline=$(cat guest-kit/cmdline-kvm.txt)
fi
disk=$(mktemp /var/tmp/nimbus-demo-rootfs.XXXXXX.ext4)
trap 'rm -f "$disk"' EXIT
cp "$kit/rootfs.ext4" "$disk"
./target/x86_64-unknown-linux-gnu/release/nimbus -machine microvm -smp 1 -m 256 -kernel "$kit/vmlinux" \
    -append "${cmdline/kit.mode=boot/kit.mode=shell}" \
    -drive "id=rootfs,file=$disk" -device virtio-blk-device,drive=rootfs,id=rootfs \
    -serial stdio "$@"
