#!/usr/bin/env bash
# Builds the guest kit (see README.md) into OUTDIR (default: target/guest-kit of the workspace):
#   vmlinux  vmlinux.bin  bzImage  rootfs.ext4  initramfs.cpio  initramfs.cpio.gz  kernel.config
# from Debian's linux-source-6.1 and busybox-static, installing the Debian packages it needs.
# Everything is cached by a hash of its inputs: a second run with the same inputs takes seconds.
# Runs for the same OUTDIR are serialised with a lock, so concurrent callers simply wait.
set -euo pipefail

kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -gt 1 ]; then
	echo "usage: $0 [OUTDIR]" >&2
	exit 2
fi
mkdir -p "${1:-$kit/../target/guest-kit}"
out=$(cd "${1:-$kit/../target/guest-kit}" && pwd)
build="$out/build"
linux="$build/linux"
mkdir -p "$build"

exec 9>"$out/.lock"
flock 9

log() { echo "guest-kit: $*" >&2; }
die() {
	echo "guest-kit: error: $*" >&2
	exit 1
}

# Runs a command with its output in a log file; on failure shows the end of the log.
logged() {
	local name=$1
	shift
	if ! "$@" >"$build/$name.log" 2>&1; then
		tail -n 60 "$build/$name.log" >&2
		die "$name failed (command: $*); full log: $build/$name.log"
	fi
}

# ---- Debian packages ----------------------------------------------------------------------
packages=(linux-source-6.1 busybox-static bc bison flex libelf-dev libssl-dev cpio xz-utils
	e2fsprogs gcc make libc6-dev linux-libc-dev binutils perl patch gzip util-linux)
missing=()
for p in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing Debian packages (${missing[*]}); install them as root"
	log "installing ${missing[*]}"
	logged apt-get-update apt-get update
	logged apt-get-install env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends "${missing[@]}"
fi
tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$tarball" ] || die "$tarball is missing although linux-source-6.1 is installed"

# ---- input hashes -------------------------------------------------------------------------
hash_of() { sha256sum | cut -c1-64; }
version() { dpkg-query -W -f='${Package} ${Version}\n' "$1"; }
src_hash=$({
	version linux-source-6.1
	cat "$kit/pvm-guest.patch"
} | hash_of)
kernel_hash=$({
	echo "$src_hash"
	cat "$kit/microvm.config" "$kit/pvm.config" "$kit/build.sh"
	gcc --version | head -n 1
} | hash_of)
kit_hash=$({
	echo "$kernel_hash"
	version busybox-static
	cat "$kit/kit-init.c"
} | hash_of)

artefacts=(vmlinux vmlinux.bin bzImage rootfs.ext4 initramfs.cpio initramfs.cpio.gz kernel.config)
all_present() {
	local f
	for f in "${artefacts[@]}"; do
		[ -s "$out/$f" ] || return 1
	done
}
show() {
	local f
	echo "guest-kit artefacts ($1):"
	for f in "${artefacts[@]}"; do
		printf '  %-18s %s (%s bytes)\n' "$f" "$out/$f" "$(stat -c %s "$out/$f")"
	done
}

if [ "$(cat "$out/stamp" 2>/dev/null)" = "$kit_hash" ] && all_present; then
	show cached
	exit 0
fi
rm -f "$out/stamp"
started=$SECONDS

# ---- kernel -------------------------------------------------------------------------------
# Later fragments win: the settings each CONFIG_ symbol must have after `make olddefconfig`,
# one "CONFIG_X=value" or "CONFIG_X is not set" line per symbol.
wanted_config() {
	awk '
		/^CONFIG_[A-Za-z0-9_]+=/ { s = $0; sub(/=.*/, "", s); want[s] = $0; order[++n] = s }
		/^# CONFIG_[A-Za-z0-9_]+ is not set/ { want[$2] = $2 " is not set"; order[++n] = $2 }
		END { for (i = 1; i <= n; i++) if (!(order[i] in seen)) { seen[order[i]]; print want[order[i]] } }
	' "$@"
}

# Fails loudly unless every setting of the merged fragments survived in .config.
verify_config() {
	local config=$1 line sym bad=0
	shift
	while IFS= read -r line; do
		case "$line" in
		*" is not set")
			sym=${line% is not set}
			if grep -q "^$sym=" "$config"; then
				echo "  wanted '# $line', got '$(grep "^$sym=" "$config")'" >&2
				bad=1
			fi
			;;
		*)
			if ! grep -qxF "$line" "$config"; then
				sym=${line%%=*}
				echo "  wanted '$line', got '$(grep -E "^($sym=|# $sym is not set)" "$config" || echo "no $sym at all")'" >&2
				bad=1
			fi
			;;
		esac
	done < <(wanted_config "$@")
	[ $bad = 0 ] || die "make olddefconfig dropped settings of the fragments (above)"
}

build_kernel() {
	if [ "$(cat "$build/src.stamp" 2>/dev/null)" != "$src_hash" ]; then
		log "unpacking $tarball and applying pvm-guest.patch"
		rm -rf "$linux" "$build/src.stamp"
		mkdir -p "$linux"
		tar -xJf "$tarball" -C "$linux" --strip-components=1
		logged patch patch -d "$linux" -p1 --forward --no-backup-if-mismatch -i "$kit/pvm-guest.patch"
		echo "$src_hash" >"$build/src.stamp"
	fi
	log "configuring: tinyconfig + microvm.config + pvm.config"
	logged tinyconfig make -C "$linux" ARCH=x86_64 tinyconfig
	logged merge_config env -C "$linux" ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config \
		"$kit/microvm.config" "$kit/pvm.config"
	logged olddefconfig make -C "$linux" ARCH=x86_64 olddefconfig
	verify_config "$linux/.config" "$kit/microvm.config" "$kit/pvm.config"

	log "building the kernel with -j$(nproc) (a clean build takes minutes; log: $build/kernel.log)"
	local t0=$SECONDS
	logged kernel make -C "$linux" ARCH=x86_64 -j"$(nproc)" vmlinux bzImage
	log "kernel built in $((SECONDS - t0)) s"

	local tmp
	tmp=$(mktemp -d "$out/.kernel.XXXXXX")
	cp "$linux/vmlinux" "$tmp/vmlinux"
	objcopy -O binary "$linux/vmlinux" "$tmp/vmlinux.bin"
	cp "$linux/arch/x86/boot/bzImage" "$tmp/bzImage"
	cp "$linux/.config" "$tmp/kernel.config"
	for f in vmlinux vmlinux.bin bzImage kernel.config; do
		mv -f "$tmp/$f" "$out/$f"
	done
	rmdir "$tmp"
	echo "$kernel_hash" >"$out/kernel.stamp"
}

if [ "$(cat "$out/kernel.stamp" 2>/dev/null)" != "$kernel_hash" ] || ! [ -s "$out/vmlinux" ]; then
	rm -f "$out/kernel.stamp"
	build_kernel
else
	log "kernel is up to date"
fi

# ---- root file system ---------------------------------------------------------------------
# One tree, three images: rootfs.ext4 (mkfs.ext4 -d, no loop mount) and the same tree as a newc
# cpio written by the kernel's gen_init_cpio (so that /dev/console needs no mknod), both plain
# and gzipped. Under kvm-pvm the kernel's emulated gunzip of the 1 MiB initramfs.cpio.gz takes
# ~70 s and copying the 2 MiB initramfs.cpio ~15 s: boot tests there use the plain one.
build_rootfs() {
	local tmp tree bb applet
	tmp=$(mktemp -d "$out/.rootfs.XXXXXX")
	tree="$tmp/tree"
	mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt}
	chmod 1777 "$tree/tmp"

	gcc -Os -static -nostdlib -fno-pie -no-pie -mgeneral-regs-only -fno-stack-protector \
		-fno-asynchronous-unwind-tables -fno-ident -Wall -Wextra -Wno-unused-parameter -Werror \
		-include "$linux/tools/include/nolibc/nolibc.h" -o "$tree/init" "$kit/kit-init.c" -lgcc
	strip "$tree/init"

	bb=$(command -v busybox)
	cp "$bb" "$tree/bin/busybox"
	"$bb" --list-full | while read -r applet; do
		[ -e "$tree/$applet" ] || ln -s /bin/busybox "$tree/$applet"
	done
	[ -e "$tree/bin/cttyhack" ] && [ -e "$tree/bin/sh" ] || die "busybox lacks cttyhack or sh"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$tree/etc/passwd"
	printf 'root:x:0:\n' >"$tree/etc/group"
	printf 'guestkit\n' >"$tree/etc/hostname"

	gcc -O2 -o "$tmp/gen_init_cpio" "$linux/usr/gen_init_cpio.c"
	{
		echo "nod /dev/console 0600 0 0 c 5 1"
		echo "nod /dev/null 0666 0 0 c 1 3"
		(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort) | while read -r p; do
			p=${p#.}
			local mode
			mode=$(stat -c %a "$tree$p")
			if [ -L "$tree$p" ]; then
				echo "slink $p $(readlink "$tree$p") 0777 0 0"
			elif [ -d "$tree$p" ]; then
				echo "dir $p $mode 0 0"
			else
				echo "file $p $tree$p $mode 0 0"
			fi
		done
	} >"$tmp/cpio.list"
	"$tmp/gen_init_cpio" "$tmp/cpio.list" >"$tmp/initramfs.cpio"
	gzip -9 -n <"$tmp/initramfs.cpio" >"$tmp/initramfs.cpio.gz"

	logged mkfs mkfs.ext4 -q -F -L guestkit -E root_owner=0:0 -d "$tree" "$tmp/rootfs.ext4" 32M

	mv -f "$tmp/initramfs.cpio" "$out/initramfs.cpio"
	mv -f "$tmp/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
	mv -f "$tmp/rootfs.ext4" "$out/rootfs.ext4"
	rm -rf "$tmp"
}

log "building rootfs.ext4 and initramfs.cpio(.gz) (busybox-static + kit-init)"
build_rootfs
echo "$kit_hash" >"$out/stamp"
log "done in $((SECONDS - started)) s"
show built
