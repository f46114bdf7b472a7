#!/usr/bin/env bash
# Builds the Nimbus test guests into OUTDIR (see README.md):
#   hello.elf  hello-pvh.elf  hello.bzimage  hello.bin  text.txt  empty
# Needs only gcc, as, ld and objcopy. Safe to run again and concurrently with another build
# into the same OUTDIR: every file is built in a private directory, then renamed into place.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# kvm-pvm emulates every guest instruction and stops on SSE/AVX, x87 arithmetic, popcnt, ...:
# integer-only code, no libc, no runtime.
CFLAGS=(-O2 -m64 -ffreestanding -fno-pic -fno-pie -nostdlib -mgeneral-regs-only -mno-sse
	-mno-sse2 -mno-mmx -mno-80387 -mno-popcnt -mno-red-zone -fno-stack-protector
	-fno-asynchronous-unwind-tables -fcf-protection=none -fno-zero-initialized-in-bss
	-fno-tree-loop-distribute-patterns -fno-builtin -Wall -Wextra -Werror)
LDFLAGS=(-m elf_x86_64 -nostdlib -static --no-dynamic-linker --build-id=none -z noexecstack
	-z max-page-size=4096 --no-warn-rwx-segments -T "$src/hello.ld")

cc() { gcc "${CFLAGS[@]}" -c "$@"; }

cc -o "$tmp/hello.o" "$src/hello.c"
cc -o "$tmp/vsock.o" "$src/vsock.c"
cc -o "$tmp/vsock_actions.o" "$src/vsock_actions.c"
cc -o "$tmp/balloon.o" "$src/balloon.c"
cc -o "$tmp/console.o" "$src/console.c"
cc -o "$tmp/common.o" "$src/common.S"
cc -DFORMAT=FORMAT_ELF -o "$tmp/entry64-elf.o" "$src/entry64.S"
cc -DFORMAT=FORMAT_RAW -o "$tmp/entry64-raw.o" "$src/entry64.S"
cc -DFORMAT=FORMAT_PVH -o "$tmp/entry32-pvh.o" "$src/entry32.S"
cc -DFORMAT=FORMAT_BZIMAGE -o "$tmp/entry32-bz.o" "$src/entry32.S"
common=("$tmp/common.o" "$tmp/hello.o" "$tmp/vsock.o" "$tmp/vsock_actions.o" "$tmp/balloon.o"
	"$tmp/console.o")

# ELF, entered at e_entry in 64-bit mode.
ld "${LDFLAGS[@]}" --defsym BASE=0x100000 -e _start64 -o "$tmp/hello.elf" \
	"$tmp/entry64-elf.o" "${common[@]}"

# ELF with a PVH note, entered at the note's address in 32-bit mode. e_entry is the 64-bit ELF
# entry, so a loader that ignores the note makes the guest report format=elf.
ld "${LDFLAGS[@]}" --defsym BASE=0x100000 -e _start64 -o "$tmp/hello-pvh.elf" \
	"$tmp/entry32-pvh.o" "$tmp/entry64-elf.o" "${common[@]}"

# Raw binary: loaded and entered at 0x1000000 in 64-bit mode; the entry stub is its first byte.
ld "${LDFLAGS[@]}" --defsym BASE=0x1000000 -e _start64 -o "$tmp/hello-raw.elf" \
	"$tmp/entry64-raw.o" "${common[@]}"
objcopy -O binary "$tmp/hello-raw.elf" "$tmp/hello.bin"

# bzImage: setup sectors with the setup header, then the protected-mode code linked at
# code32_start (0x100000), entered at its first byte in 32-bit mode.
ld "${LDFLAGS[@]}" --defsym BASE=0x100000 -e _start32 -o "$tmp/hello-bz.elf" \
	"$tmp/entry32-bz.o" "${common[@]}"
objcopy -O binary "$tmp/hello-bz.elf" "$tmp/hello-bz.bin"
pm_size=$(stat -c %s "$tmp/hello-bz.bin")
setup_sects=3
cc -DSETUP_SECTS=$setup_sects -DSYSSIZE=$(((pm_size + 15) / 16)) \
	-DINIT_SIZE=$(((pm_size + 4095) / 4096 * 4096)) -o "$tmp/bzsetup.o" "$src/bzsetup.S"
objcopy -O binary -j .text "$tmp/bzsetup.o" "$tmp/bzsetup.bin"
if [ "$(stat -c %s "$tmp/bzsetup.bin")" -ne $(((setup_sects + 1) * 512)) ]; then
	echo "build.sh: the bzImage setup area is not $((setup_sects + 1)) sectors" >&2
	exit 1
fi
cat "$tmp/bzsetup.bin" "$tmp/hello-bz.bin" >"$tmp/hello.bzimage"

# Not kernels: the loader must refuse them by content.
printf 'This is a text file, not a kernel.\nNimbus must refuse to boot it.\n' >"$tmp/text.txt"
: >"$tmp/empty"

for f in hello.elf hello-pvh.elf hello.bzimage hello.bin text.txt empty; do
	mv -f "$tmp/$f" "$out/$f"
done
