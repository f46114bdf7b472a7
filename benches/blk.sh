#!/usr/bin/env bash
# virtio-blk benchmark: 4 KiB random reads.
#  (a) as seen by the test guest (`nimbus.test=blkbench`, one request at a time, polled), under
#      Nimbus (aio=off, io_uring, native, direct=on) and under QEMU's microvm, timed from the host
#      between the guest's "blkbench: start" and "blkbench: reads=" console lines;
#  (b) the device model alone in process (virtio-mmio transport + virtqueue + block device,
#      requests in flight), beside fio on the same file (fio with --invalidate=0, so that both
#      read through the same warm page cache; direct=1 rows bypass it).
# QEMU gets acpi=off so that microvm announces its virtio-mmio device on the kernel command line
# (virtio_mmio.device=...), which is how the test guest finds a device.
# Usage: benches/blk.sh [READS]   env: IMG (default /var/tmp/nimbus-blk-bench.img, 256 MiB),
#        SECS (device model and fio run time, default 5), NIMBUS (binary; default a release build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
READS=${1:-20000}
SECS=${SECS:-5}
IMG=${IMG:-/var/tmp/nimbus-blk-bench.img}
OUT=target/blk-bench
mkdir -p "$OUT"

if [ ! -s "$IMG" ]; then
	echo "creating $IMG (256 MiB of random data)" >&2
	dd if=/dev/urandom of="$IMG" bs=1M count=256 status=none
fi
if [ -z "${NIMBUS:-}" ]; then
	cargo build --release --bin nimbus >&2
	NIMBUS=target/x86_64-unknown-linux-gnu/release/nimbus
fi
guests/build.sh "$OUT/guests" >&2
KERNEL=$OUT/guests/hello-pvh.elf
APPEND="console=ttyS0 nimbus.test=blkbench nimbus.blkreads=$READS"

# Runs a command line, prints "<req/s> <seconds>" from the guest's console timestamps.
time_guest() {
	python3 - "$READS" "$@" <<'PY'
import subprocess, sys, threading, time
reads, cmd = int(sys.argv[1]), sys.argv[2:]
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
threading.Timer(600, p.kill).start()  # a guest that never reports must not hang the script
start = end = None
ok = False
for line in p.stdout:
    if b"blkbench: start" in line:
        start = time.monotonic()
    elif b"blkbench: reads=" in line:
        end = time.monotonic()
        ok = b"errors=0" in line
        break
p.kill(); p.wait()
for t in threading.enumerate():
    if isinstance(t, threading.Timer):
        t.cancel()
if start is None or end is None or not ok:
    print("failed -")
else:
    print(f"{reads / (end - start):.0f} {end - start:.3f}")
PY
}

declare -a ROWS
row() { ROWS+=("$(printf '%-44s %12s %10s' "$1" "$2" "$3")"); }

for opts in aio=off aio=io_uring aio=native direct=on,aio=io_uring direct=on; do
	read -r rate secs < <(time_guest "$NIMBUS" -m 128 -nographic -serial stdio -kernel "$KERNEL" \
		-append "$APPEND" -drive "id=d0,file=$IMG,readonly=on,$opts" \
		-device virtio-blk-device,drive=d0)
	row "guest, Nimbus $opts" "$rate" "$secs"
done
if command -v qemu-system-x86_64 >/dev/null; then
	for aio in threads io_uring; do
		read -r rate secs < <(time_guest qemu-system-x86_64 \
			-M microvm,x-option-roms=off,rtc=off,pic=off,pit=on,isa-serial=on,acpi=off -enable-kvm \
			-cpu host,-arch-capabilities -m 128 -nodefaults -no-user-config -nographic \
			-serial stdio -kernel "$KERNEL" -append "$APPEND" \
			-drive "id=d0,file=$IMG,format=raw,if=none,readonly=on,aio=$aio" \
			-device virtio-blk-device,drive=d0 -global virtio-mmio.force-legacy=false)
		row "guest, QEMU microvm aio=$aio" "$rate" "$secs"
	done
else
	row "guest, QEMU microvm (qemu-system-x86_64 missing)" - -
fi

while read -r line; do
	name=${line#BENCH device-model }
	row "device model ${name%%:*}" "$(echo "${line##*: }" | cut -d' ' -f1)" "$SECS"
done < <(NIMBUS_BENCH_IMAGE=$IMG NIMBUS_BENCH_SECS=$SECS cargo test -q -p virtio --release -- \
	--ignored --nocapture device_model 2>/dev/null | grep '^BENCH')

if command -v fio >/dev/null; then
	for spec in "io_uring 32 0" "io_uring 32 1" "psync 1 0"; do
		read -r engine depth direct <<<"$spec"
		iops=$(fio --name=r --filename="$IMG" --rw=randread --bs=4k --iodepth="$depth" \
			--ioengine="$engine" --direct="$direct" --runtime="$SECS" --time_based \
			--readonly --invalidate=0 --output-format=json 2>/dev/null |
			python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
		row "fio $engine iodepth=$depth direct=$direct" "$iops" "$SECS"
	done
else
	row "fio (missing)" - -
fi

printf '%-44s %12s %10s\n' "4 KiB random reads ($IMG)" "req/s" "seconds"
printf '%s\n' "${ROWS[@]}"
