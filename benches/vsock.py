#!/usr/bin/env python3
"""vsock through Nimbus's hybrid vsock device (issue #13), with real guests.

usage: benches/vsock.py NIMBUS GUESTS_DIR [--runs N] [--mib N] [--connects N] [--linux KIT_DIR]

- guest->host: the test guest (`nimbus.test=vsock-send`) connects to CID 2 and sends MIB MiB in
  64 KiB packets within the credit Nimbus gives; a host listener at `<uds>_<port>` reads them
  as fast as it can. Timed from the host's go-ahead to the end of the stream.
- host->guest: the test guest (`vsock-recv vsock.nosum=1`: it does not read the bytes) accepts;
  the host writes MIB MiB after `OK` and half-closes. Timed from the first byte written to the
  guest's close.
- connect: CONNECT -> OK latency with the test guest (`vsock-echo`), one connection after the
  other; with --linux also with the kit Linux's agent (`kit.mode=agent`, port 1024), which is
  what Kata's runtime waits for.
Every line printed is `vsock <metric> <unit> <value> <value>...` (one value per run).
QEMU has no in-process vsock and vhost-vsock needs /dev/vhost-vsock, so there is no QEMU column.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Vm:
    """Nimbus with `-serial stdio`, its console lines collected by a thread."""

    def __init__(self, cmd):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, text, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no {text!r} in {self.lines[-5:]}")
                self.cond.wait(min(left, 0.5))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_guest(args, uds, action):
    device = f"virtio-vsock-device,id=vsock0,guest-cid=3,uds-path={uds}"
    return Vm([args.nimbus, "-m", "128", "-kernel", os.path.join(args.guests, "hello-pvh.elf"),
               "-serial", "stdio", "-append", f"console=ttyS0 reboot=t {action}",
               "-device", device])


def connect(uds, port, timeout=10.0):
    """Kata's dial: CONNECT, then the `OK <port>` line; returns (socket, seconds) or None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(uds)
    t0 = time.monotonic()
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            s.close()
            return None
        line += b
    took = time.monotonic() - t0
    if not line.startswith(b"OK "):
        raise RuntimeError(f"CONNECT answered {line!r}")
    return s, took


def guest_to_host(args, tmp):
    uds = os.path.join(tmp, "g2h.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(f"{uds}_7002"):
        os.unlink(f"{uds}_7002")
    listener.bind(f"{uds}_7002")
    listener.listen(1)
    listener.settimeout(30)
    nbytes = args.mib << 20
    vm = test_guest(args, uds, f"nimbus.test=vsock-send vsock.port=7002 vsock.bytes={nbytes}")
    try:
        peer, _ = listener.accept()
        vm.wait_line("vsock: connected", 30)
        peer.settimeout(120)
        t0 = time.monotonic()
        peer.sendall(b"go")
        got = 0
        while True:
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        took = time.monotonic() - t0
        if got != nbytes:
            raise RuntimeError(f"got {got} of {nbytes} bytes")
        return nbytes / took / 1e6
    finally:
        vm.stop()
        listener.close()


def host_to_guest(args, tmp):
    uds = os.path.join(tmp, "h2g.sock")
    vm = test_guest(args, uds, "nimbus.test=vsock-recv vsock.port=5000 vsock.nosum=1")
    try:
        vm.wait_line("vsock: listening port=5000", 30)
        s, _ = connect(uds, 5000)
        s.settimeout(120)
        data = os.urandom(1 << 20)
        t0 = time.monotonic()
        for _ in range(args.mib):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
        took = time.monotonic() - t0
        vm.wait_line("vsock: received", 30)
        return (args.mib << 20) / took / 1e6
    finally:
        vm.stop()


def connect_latency(args, tmp):
    uds = os.path.join(tmp, "echo.sock")
    vm = test_guest(args, uds, f"nimbus.test=vsock-echo vsock.port=5000 vsock.conns={args.connects}")
    times = []
    try:
        vm.wait_line("vsock: listening port=5000", 30)
        for _ in range(args.connects):
            s, took = connect(uds, 5000)
            times.append(took * 1e3)
            s.close()
    finally:
        vm.stop()
    return times


def linux_connect_latency(args, tmp):
    """Boots the kit Linux with its vsock agent and times CONNECT 1024 -> OK."""
    name = "cmdline.txt" if os.path.exists("/sys/module/kvm_pvm") else "cmdline-kvm.txt"
    with open(os.path.join(ROOT, "guest-kit", name)) as f:
        words = [w for w in f.read().split() if w not in ("root=/dev/vda", "rw")]
    append = " ".join("kit.mode=agent" if w == "kit.mode=boot" else w for w in words)
    uds = os.path.join(tmp, "kata.hvsock")
    logs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    logs.bind(f"{uds}_1025")
    logs.listen(1)
    vm = Vm([args.nimbus, "-m", "256", "-kernel", os.path.join(args.linux, "vmlinux"),
             "-initrd", os.path.join(args.linux, "initramfs.cpio.gz"), "-serial", "stdio",
             "-append", append, "-device",
             f"virtio-vsock-device,id=vsock0,guest-cid=3,uds-path={uds}"])
    times = []
    try:
        vm.wait_line("KIT agent listening", 300)
        while len(times) < args.connects:
            got = connect(uds, 1024)
            if got is None:
                time.sleep(0.2)
                continue
            s, took = got
            times.append(took * 1e3)
            s.sendall(b"quit\n")
            while s.recv(4096):
                pass
            s.close()
    finally:
        vm.stop()
        logs.close()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("nimbus")
    ap.add_argument("guests")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--connects", type=int, default=10)
    ap.add_argument("--linux", metavar="KIT_DIR")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="nimbus-vsock-bench-")
    try:
        g2h = [guest_to_host(args, tmp) for _ in range(args.runs)]
        print("vsock guest->host MB/s " + " ".join(f"{v:.2f}" for v in g2h), flush=True)
        h2g = [host_to_guest(args, tmp) for _ in range(args.runs)]
        print("vsock host->guest MB/s " + " ".join(f"{v:.2f}" for v in h2g), flush=True)
        lat = connect_latency(args, tmp)
        print("vsock connect-test-guest ms " + " ".join(f"{v:.3f}" for v in lat), flush=True)
        if args.linux:
            lat = linux_connect_latency(args, tmp)
            print("vsock connect-linux ms " + " ".join(f"{v:.3f}" for v in lat), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
