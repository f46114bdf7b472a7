#!/usr/bin/env python3
"""Boot milestones of the guest kit's Linux under Nimbus and QEMU's microvm, same run.

usage: benches/linux_boot.py [--runs N] [--nimbus target/x86_64-unknown-linux-gnu/release/nimbus] [--kit target/guest-kit]

Each VM boots the kit vmlinux with root on virtio-blk (a scratch copy of rootfs.ext4), 1 vCPU,
256 MiB, the kit command line for this host (kvm-pvm or hardware KVM) with earlyprintk, and
kit.mode=boot (the guest prints its report and reboots). Console lines are timestamped as they
arrive; the table gives the median seconds from exec to each milestone. Runs alternate between
the VMMs. QEMU needs `-cpu host,-arch-capabilities` on kvm-pvm hosts.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, threading, time

MILESTONES = [
    ("banner", "Linux version"),
    ("Memory:", "Memory:"),
    ("virtio_blk", "virtio_blk virtio0"),
    ("Run /init", "Run /init"),
    ("ready", "GUEST_INIT_READY"),
]


def cmdline(root):
    name = "cmdline.txt" if os.path.exists("/sys/module/kvm_pvm") else "cmdline-kvm.txt"
    with open(os.path.join(root, "guest-kit", name)) as f:
        return "earlyprintk=serial,ttyS0 " + f.read().strip()


def nimbus_cmd(args, disk, append):
    return [args.nimbus, "-machine", "microvm", "-smp", "1", "-m", "256", "-kernel",
            os.path.join(args.kit, "vmlinux"), "-append", append, "-serial", "stdio",
            "-drive", f"id=rootfs,file={disk}", "-device", "virtio-blk-device,drive=rootfs,id=rootfs"]


def qemu_cmd(args, disk, append):
    # QEMU's microvm has no i8042 by default: reset by triple fault, which -no-reboot turns
    # into an exit.
    append = append.replace("reboot=k", "reboot=t")
    return ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off",
            "-enable-kvm", "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "256",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", os.path.join(args.kit, "vmlinux"), "-append", append,
            "-drive", f"id=rootfs,file={disk},format=raw,if=none",
            "-device", "virtio-blk-device,drive=rootfs",
            "-global", "virtio-mmio.force-legacy=false"]


def boot(cmd, timeout):
    start = time.monotonic()
    seen = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A guest that hangs silently must not hang the benchmark.
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for raw in proc.stdout:
            t = time.monotonic() - start
            line = raw.decode(errors="replace")
            for name, prefix in MILESTONES:
                if name not in seen and prefix in line:
                    seen[name] = t
            if time.monotonic() - start > timeout:
                break
        proc.wait(timeout=max(1, timeout - (time.monotonic() - start)))
        seen["exit"] = time.monotonic() - start
    except subprocess.TimeoutExpired:
        proc.kill()
    finally:
        watchdog.cancel()
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--nimbus", default="target/x86_64-unknown-linux-gnu/release/nimbus")
    ap.add_argument("--kit", default="target/guest-kit")
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    append = cmdline(root)
    results = {"nimbus": [], "qemu": []}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        for run in range(args.runs):
            for name, make in (("nimbus", nimbus_cmd), ("qemu", qemu_cmd)):
                disk = os.path.join(tmp, f"{name}-{run}.ext4")
                shutil.copy(os.path.join(args.kit, "rootfs.ext4"), disk)
                results[name].append(boot(make(args, disk, append), args.timeout))
                os.remove(disk)
    names = [m[0] for m in MILESTONES] + ["exit"]
    print(f"{'milestone (s from exec)':<24}{'nimbus':>10}{'qemu microvm':>14}")
    for m in names:
        cells = []
        for vmm in ("nimbus", "qemu"):
            vals = [r[m] for r in results[vmm] if m in r]
            cells.append(f"{statistics.median(vals):.2f}" if vals else "-")
        print(f"{m:<24}{cells[0]:>10}{cells[1]:>14}")


if __name__ == "__main__":
    sys.exit(main())
