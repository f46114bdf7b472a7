#!/usr/bin/env python3
"""virtio-net frame rate through the test guest, Nimbus beside QEMU's microvm, same guest, same run.

Run as root (it creates a tap): `sudo python3 benches/net.py [FRAMES] [RUNS]` (default 20000
frames, 5 runs: about a minute here).

Each run boots the test guest (guests/hello.c, hello-pvh.elf) once per direction, alternating
Nimbus and QEMU, over a tap made for this script (`nbb<pid>`, deleted at the end):

* guest->host: `nimbus.test=nettx nimbus.frames=N` -- the guest sends N 60-byte frames of
  ethertype 0x88b5 as fast as its 8-entry tx ring allows; an AF_PACKET socket bound to the tap
  timestamps every such frame; rate = (frames seen - 1) / (last - first).
* host->guest: `nimbus.test=netrx nimbus.frames=N` -- once the guest prints `netrx: ready` the
  host sends N 60-byte 0x88b5 frames to the guest's MAC (the tap's queue is raised so none is
  dropped while the guest drains its 8 rx buffers); rate = N / (time from the first send until
  the guest's `netrx: got N` line).

MB/s is frames/s x 60 bytes (the Ethernet frame, no virtio header, no FCS).
The numbers are those of the guest's polled one-frame-per-buffer driver: they measure the
per-frame cost of the whole path (guest driver, exits, device model, tap), not line rate.
"""
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
TIMEOUT = 60.0  # seconds per VM run
GUEST_MAC = bytes.fromhex("525400123456")
HOST_MAC = bytes.fromhex("024e42000001")
ETHERTYPE = b"\x88\xb5"
FRAME_LEN = 60
PACKET_OUTGOING = 4


def sh(*args, check=True):
    return subprocess.run(args, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def nimbus_cmd(nimbus, kernel, append, tap):
    return [nimbus, "-m", "128", "-nographic", "-serial", "stdio", "-kernel", kernel,
            "-append", append, "-netdev", f"tap,id=n0,ifname={tap}",
            "-device", "virtio-net-device,netdev=n0,id=n0,mac=52:54:00:12:34:56"]


def qemu_cmd(kernel, append, tap):
    return ["qemu-system-x86_64",
            "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off", "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-m", "128", "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-no-reboot", "-kernel", kernel,
            "-append", append + " reboot=t",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
            "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
            "-global", "virtio-mmio.force-legacy=false"]


def packet_socket(tap):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))  # ETH_P_ALL
    try:  # root may exceed rmem_max: no frame lost while Python lags behind
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 32 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.bind((tap, 0))
    s.settimeout(0.2)
    return s


class Vm:
    """A VM whose console lines are read by a thread, with a kill timer."""

    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        self.lines = []
        self.cond = threading.Condition()
        self.timer = threading.Timer(TIMEOUT, self.p.kill)
        self.timer.start()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self.cond:
                self.lines.append((time.monotonic(), line))
                self.cond.notify_all()
        with self.cond:
            self.lines.append((time.monotonic(), None))
            self.cond.notify_all()

    def wait_for(self, prefix, deadline):
        """(time, line) of the first console line starting with `prefix`, or None."""
        with self.cond:
            seen = 0
            while True:
                for t, line in self.lines[seen:]:
                    if line is None:
                        return None
                    if line.startswith(prefix):
                        return t, line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def finish(self):
        try:
            self.p.wait(timeout=2)  # microvm has no i8042: the guest cannot reset it
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.timer.cancel()

    def describe(self):
        err = self.p.stderr.read().decode(errors="replace") if self.p.stderr else ""
        return "\n".join(l for _, l in self.lines if l is not None)[-1500:] + "\n" + err[-500:]


def run_tx(cmd, tap):
    """guest->host frames/s, or None."""
    s = packet_socket(tap)
    vm = Vm(cmd)
    deadline = time.monotonic() + TIMEOUT
    stamps = []
    done = None  # the guest's nettx result line, once printed
    drain_until = None
    try:
        while time.monotonic() < deadline:
            try:
                frame, addr = s.recvfrom(2048)
                if addr[2] != PACKET_OUTGOING and frame[12:14] == ETHERTYPE \
                        and frame[14:27] == b"NIMBUS-BENCH-":
                    stamps.append(time.monotonic())
                    if len(stamps) >= FRAMES:
                        break
                continue
            except socket.timeout:
                pass
            if drain_until is not None:
                if time.monotonic() > drain_until:
                    break
                continue
            with vm.cond:
                ends = [l for _, l in vm.lines if l is None or l.startswith("nettx: ")]
            if ends:
                done = ends[0]
                drain_until = time.monotonic() + 1.0  # frames still in the socket
        with vm.cond:
            ends = [l for _, l in vm.lines if l is None or l.startswith("nettx: ")]
    finally:
        vm.finish()
        s.close()
    with vm.cond:
        ends = [l for _, l in vm.lines if l is None or l.startswith("nettx: ")]
    done = ends[0] if ends else None
    if done is None or not done.startswith(f"nettx: sent {FRAMES}") or len(stamps) < 2:
        print(f"  tx run failed: {len(stamps)} frames seen, guest said {done!r}\n"
              f"{vm.describe()}", file=sys.stderr)
        return None
    if len(stamps) != FRAMES:
        print(f"  tx: {len(stamps)} of {FRAMES} frames seen on the tap", file=sys.stderr)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def rx_frame(n):
    payload = f"NIMBUS-HOST-BENCH-{n}".encode()
    return (GUEST_MAC + HOST_MAC + ETHERTYPE + payload).ljust(FRAME_LEN, b"\0")


def run_rx(cmd, tap):
    """host->guest frames/s, or None."""
    s = packet_socket(tap)
    frames = [rx_frame(n) for n in range(FRAMES)]
    vm = Vm(cmd)
    deadline = time.monotonic() + TIMEOUT
    try:
        ready = vm.wait_for("netrx: ", deadline)
        if ready is None or ready[1] != "netrx: ready":
            print(f"  rx run failed before ready: {ready}\n{vm.describe()}", file=sys.stderr)
            return None
        start = time.monotonic()
        for f in frames:
            s.send(f)
        got = None
        while time.monotonic() < deadline:
            with vm.cond:
                later = [(t, l) for t, l in vm.lines if l is None or
                         (l.startswith("netrx: ") and l != "netrx: ready")]
                if later:
                    got = later[0]
                    break
                vm.cond.wait(0.5)
    finally:
        vm.finish()
        s.close()
    if got is None or got[1] != f"netrx: got {FRAMES}":
        print(f"  rx run failed: guest said {got}\n{vm.describe()}", file=sys.stderr)
        return None
    return FRAMES / (got[0] - start)


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates a tap")
    os.chdir(ROOT)
    nimbus = os.environ.get("NIMBUS", "target/x86_64-unknown-linux-gnu/release/nimbus")
    if not os.path.exists(nimbus):
        subprocess.run(["cargo", "build", "--release", "--bin", "nimbus"], check=True)
    gdir = "target/guests"
    subprocess.run(["guests/build.sh", gdir], check=True)
    kernel = os.path.join(gdir, "hello-pvh.elf")
    have_qemu = subprocess.run(["sh", "-c", "command -v qemu-system-x86_64"],
                               stdout=subprocess.DEVNULL).returncode == 0
    tap = f"nbb{os.getpid()}"[:15]
    sh("ip", "tuntap", "add", "dev", tap, "mode", "tap")
    try:
        try:
            with open(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass
        # Room for all N frames while the guest drains its 8 rx buffers: nothing dropped.
        sh("ip", "link", "set", "dev", tap, "txqueuelen", str(max(1000, 2 * FRAMES)))
        sh("ip", "link", "set", "dev", tap, "up")
        vmms = [("Nimbus", lambda a: nimbus_cmd(nimbus, kernel, a, tap))]
        if have_qemu:
            vmms.append(("QEMU microvm", lambda a: qemu_cmd(kernel, a, tap)))
        results = {(name, d): [] for name, _ in vmms for d in ("tx", "rx")}
        base = "console=ttyS0 nimbus.frames=%d nimbus.test=" % FRAMES
        for r in range(RUNS):
            order = vmms if r % 2 == 0 else vmms[::-1]
            for name, make in order:
                for d, fn in (("tx", run_tx), ("rx", run_rx)):
                    t0 = time.monotonic()
                    rate = fn(make(base + "net" + d), tap)
                    print(f"run {r + 1} {name:12} {d}: "
                          f"{'failed' if rate is None else f'{rate:.0f} frames/s'} "
                          f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)
                    if rate is not None:
                        results[(name, d)].append(rate)
    finally:
        sh("ip", "tuntap", "del", "dev", tap, "mode", "tap", check=False)

    print(f"\n{FRAMES} frames of {FRAME_LEN} bytes per run, {RUNS} runs "
          "(median / min / max; MB/s = frames/s x 60 B)")
    print(f"{'':28}{'frames/s median':>16}{'min':>9}{'max':>9}{'MB/s median':>13}{'ok':>5}")
    for d, what in (("tx", "guest->host"), ("rx", "host->guest")):
        for name, _ in vmms:
            v = results[(name, d)]
            if v:
                med = statistics.median(v)
                print(f"{what + ' ' + name:28}{med:16.0f}{min(v):9.0f}{max(v):9.0f}"
                      f"{med * FRAME_LEN / 1e6:13.3f}{len(v):>3}/{RUNS}")
            else:
                print(f"{what + ' ' + name:28}{'-':>16}{'-':>9}{'-':>9}{'-':>13}{0:>3}/{RUNS}")


if __name__ == "__main__":
    main()
