#!/usr/bin/env python3
"""Soak and load for Nimbus (issue #17), driven by scripts/soak.sh; tests/soak.rs runs short
versions of the same three parts.

  cycles  N runs of the test guest to its reset, P at a time, each with a QMP socket: all must
          exit 0, and afterwards no nimbus process, socket, pid file or other file of theirs may
          remain (their directory, /proc, /dev/shm); prints VMs per second.
  churn   one idle VM: Q QMP sessions (connect, qmp_capabilities, query-status, disconnect),
          then H blk and H net hot-plug cycles (blockdev-add/device_add/device_del/blockdev-del,
          netdev_add/device_add/device_del/netdev_del with a tap). After a warm-up of each, the
          VMM's open descriptors (/proc/PID/fd) must come back exactly and its VmRSS within
          --rss-slack KiB.
  many    V VMs at once, each with a disk and a tap, idle in `nimbus.test=hang` (a cli;hlt
          loop): all answer query-status and exit 0 after `quit`; no socket, process or tap
          is left.

Prints one line per figure and a summary; exit status 1 on any failure. Needs root (taps) and
/dev/kvm.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

VM_TIMEOUT = 60.0


class Failure(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Qmp:
    """A bare QMP client: greeting, qmp_capabilities, then commands; events are kept."""

    def __init__(self, path, timeout=VM_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(20)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise Failure(f"cannot connect to {path}")
                time.sleep(0.02)
        self.file = self.sock.makefile("rb")
        self.events = []
        greeting = self._line()
        if "QMP" not in greeting:
            raise Failure(f"no greeting: {greeting}")
        self.ok("qmp_capabilities")

    def _line(self):
        line = self.file.readline()
        if not line:
            raise Failure("QMP connection closed")
        return json.loads(line)

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode())
        while True:
            reply = self._line()
            if "event" in reply:
                self.events.append(reply)
            else:
                return reply

    def ok(self, command, **arguments):
        reply = self.execute(command, **arguments)
        if reply != {"return": {}}:
            raise Failure(f"{command} {arguments}: {reply}")

    def close(self):
        self.file.close()
        self.sock.close()


def guest_args(guests, append, qmp_path, mem=32):
    return [
        "-machine", "microvm", "-m", str(mem),
        "-kernel", os.path.join(guests, "hello.elf"),
        "-append", append, "-serial", "stdio",
        "-qmp", f"unix:{qmp_path},server,nowait",
    ]


def wait_line(proc, text, timeout=VM_TIMEOUT):
    """Reads proc's stdout until a line holds `text`; the rest of stdout is left unread, so
    callers keep draining it (the guest prints little after)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.decode(errors="replace"))
        if text in seen[-1]:
            return
    raise Failure(f"no line {text!r} from pid {proc.pid}: {''.join(seen)[-2000:]}")


def processes_mentioning(needle):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(f"{pid} {cmdline}")
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return ") Z " not in f.read()
    except OSError:
        return False


def shm_entries():
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def check_nothing_left(scratch, kept=()):
    left = sorted(set(os.listdir(scratch)) - set(kept))
    if left:
        raise Failure(f"files left in {scratch}: {left[:10]}")
    procs = processes_mentioning(scratch)
    if procs:
        raise Failure(f"processes left: {procs[:5]}")


# ---- part 1: start-to-exit cycles ------------------------------------------------------------

# Every DAEMON_EVERY-th cycle runs as a daemon with a pid file, as iSulad/Kuasar start Nimbus.
DAEMON_EVERY = 8


def daemon_cycle(args, scratch, n, sock):
    """One cycle as `-daemonize -pidfile P -D L`, the console to a file: the launcher exits 0
    once the VM is up, the daemon exits after the guest's reset and removes its pid file and
    socket; the console and log files are the caller's, removed here. Returns an error or None.
    """
    pidfile, logfile, console = (os.path.join(scratch, f"c{n}.{ext}")
                                 for ext in ("pid", "log", "out"))
    cmd = [args.nimbus, "-daemonize", "-pidfile", pidfile, "-D", logfile] + \
        guest_args(args.guests, "console=ttyS0", sock)
    cmd[cmd.index("stdio")] = f"file,path={console}"
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                         timeout=VM_TIMEOUT)
    if out.returncode != 0:
        return f"daemon VM {n}: launcher exit {out.returncode}: {out.stderr[-1000:]!r}"
    deadline = time.monotonic() + VM_TIMEOUT
    pid = None
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pass  # the guest may have reset already
    while os.path.exists(pidfile) or (pid and alive(pid)):
        if time.monotonic() > deadline:
            return f"daemon VM {n} (pid {pid}): still there after {VM_TIMEOUT} s"
        time.sleep(0.01)
    with open(console, "rb") as f:
        text = f.read()
    os.unlink(console)
    with open(logfile, "rb") as f:
        logged = f.read()
    os.unlink(logfile)
    if b"NIMBUS-GUEST done" not in text or b"ERROR" in logged.upper():
        return f"daemon VM {n}: console {text[-500:]!r}, log {logged[-500:]!r}"
    return None


def cycles(args, scratch):
    errors = []
    lock = threading.Lock()
    next_vm = [0]
    shm_before = shm_entries()

    def worker():
        while True:
            with lock:
                n = next_vm[0]
                next_vm[0] += 1
            if n >= args.cycles or errors:
                return
            sock = os.path.join(scratch, f"c{n}.sock")
            if n % DAEMON_EVERY == DAEMON_EVERY - 1:
                error = daemon_cycle(args, scratch, n, sock)
            else:
                out = subprocess.run(
                    [args.nimbus] + guest_args(args.guests, "console=ttyS0", sock),
                    stdin=subprocess.DEVNULL, capture_output=True, timeout=VM_TIMEOUT)
                error = None
                if out.returncode != 0 or b"NIMBUS-GUEST done" not in out.stdout:
                    error = (f"VM {n}: exit {out.returncode}\n"
                             f"{out.stdout[-1000:]!r}\n{out.stderr[-1000:]!r}")
            if error:
                with lock:
                    errors.append(error)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if errors:
        raise Failure(f"{len(errors)} VM(s) failed; first: {errors[0]}")
    check_nothing_left(scratch)
    new_shm = sorted(e for e in shm_entries() - shm_before if "nimbus" in e)
    if new_shm:
        raise Failure(f"/dev/shm entries left: {new_shm}")
    rate = args.cycles / elapsed
    log(f"cycles: {args.cycles} VMs, {args.parallel} at a time, all exit 0: "
        f"{elapsed:.1f} s, {rate:.1f} VMs/s; nothing left behind (load {loadavg()})")
    return {"cycles": args.cycles, "parallel": args.parallel, "seconds": elapsed,
            "vms_per_s": rate}


# ---- part 2: one VM under churn --------------------------------------------------------------

def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Failure("no VmRSS")


def settled_fds(pid, want=None):
    deadline = time.monotonic() + 5
    last = fd_count(pid)
    while True:
        time.sleep(0.2)
        now = fd_count(pid)
        if now == want or (want is None and now == last) or time.monotonic() > deadline:
            return now
        last = now


def qmp_session(path):
    c = Qmp(path)
    reply = c.execute("query-status")
    if reply.get("return", {}).get("status") != "running":
        raise Failure(f"query-status: {reply}")
    c.close()


def blk_cycle(c, image):
    c.ok("blockdev-add", **{"node-name": "churn", "driver": "raw", "read-only": False,
                            "file": {"driver": "file", "filename": image}})
    c.ok("device_add", driver="virtio-blk-mmio", id="vdb", drive="churn", addr="0x1")
    c.ok("device_del", id="vdb")
    c.ok("blockdev-del", **{"node-name": "churn"})


def net_cycle(c, tap):
    c.ok("netdev_add", type="tap", id="churn", ifname=tap)
    c.ok("device_add", driver="virtio-net-device", id="eth0", netdev="churn", addr="0x0")
    c.ok("device_del", id="eth0")
    c.ok("netdev_del", id="churn")


def churn(args, scratch, taps):
    image = os.path.join(scratch, "churn.img")
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    tap = taps.make()
    sock = os.path.join(scratch, "churn.sock")
    proc = subprocess.Popen(
        [args.nimbus] + guest_args(args.guests, "console=ttyS0 nimbus.test=hang", sock),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_line(proc, "hang: now")
        pid = proc.pid
        qmp_session(sock)
        c = Qmp(sock)
        blk_cycle(c, image)
        net_cycle(c, tap)
        c.close()
        fds0, rss0 = settled_fds(pid), rss_kib(pid)
        started = time.monotonic()
        for _ in range(args.qmp_cycles):
            qmp_session(sock)
        qmp_s = time.monotonic() - started
        fds1, rss1 = settled_fds(pid, fds0), rss_kib(pid)
        log(f"churn: {args.qmp_cycles} QMP sessions in {qmp_s:.1f} s "
            f"({args.qmp_cycles / qmp_s:.0f}/s): fds {fds0} -> {fds1}, "
            f"RSS {rss0} -> {rss1} KiB")
        started = time.monotonic()
        c = Qmp(sock)
        for _ in range(args.hotplug_cycles):
            blk_cycle(c, image)
            net_cycle(c, tap)
            c.events.clear()
        c.close()
        hp_s = time.monotonic() - started
        fds2, rss2 = settled_fds(pid, fds0), rss_kib(pid)
        log(f"churn: {args.hotplug_cycles} blk + {args.hotplug_cycles} net hot-plug cycles in "
            f"{hp_s:.1f} s: fds {fds1} -> {fds2}, RSS {rss1} -> {rss2} KiB "
            f"(load {loadavg()})")
        Qmp(sock).ok("quit")
        rc = proc.wait(VM_TIMEOUT)
        if rc != 0:
            raise Failure(f"churned VM exit {rc}: {proc.stderr.read()[-1000:]!r}")
        if fds2 != fds0 or rss2 > rss0 + args.rss_slack:
            raise Failure(f"churn leaked: fds {fds0} -> {fds2}, RSS {rss0} -> {rss2} KiB "
                          f"(slack {args.rss_slack} KiB)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    os.unlink(image)
    check_nothing_left(scratch)
    return {"qmp_sessions": args.qmp_cycles, "hotplug_cycles": args.hotplug_cycles,
            "fds": [fds0, fds1, fds2], "rss_kib": [rss0, rss1, rss2],
            "qmp_seconds": qmp_s, "hotplug_seconds": hp_s}


# ---- part 3: many VMs at once ----------------------------------------------------------------

class Taps:
    """Taps made for this run (names nbs<pid>x<n>), deleted at the end whatever happens."""

    def __init__(self):
        self.names = []

    def make(self):
        name = f"nbs{os.getpid() % 100000}x{len(self.names)}"
        subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
        self.names.append(name)
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass
        subprocess.run(["ip", "link", "set", "dev", name, "up"], check=True)
        return name

    def delete_all(self):
        for name in self.names:
            subprocess.run(["ip", "tuntap", "del", "dev", name, "mode", "tap"],
                           stderr=subprocess.DEVNULL)
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        left = [n for n in self.names if f": {n}:" in links or f": {n}@" in links]
        self.names = []
        if left:
            raise Failure(f"taps left: {left}")


def many(args, scratch, taps):
    procs = []
    try:
        started = time.monotonic()
        for n in range(args.vms):
            image = os.path.join(scratch, f"m{n}.img")
            with open(image, "wb") as f:
                f.truncate(1 << 20)
            sock = os.path.join(scratch, f"m{n}.sock")
            cmd = [args.nimbus] + guest_args(args.guests, "console=ttyS0 nimbus.test=hang",
                                             sock) + [
                "-drive", f"file={image},id=d0,readonly=off",
                "-device", "virtio-blk-device,drive=d0,id=d0",
                "-netdev", f"tap,id=n0,ifname={taps.make()}",
                "-device", "virtio-net-device,netdev=n0,id=n0",
            ]
            procs.append((subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE), sock))
        for proc, _ in procs:
            wait_line(proc, "hang: now")
        up = time.monotonic() - started
        time.sleep(2)
        load_up = loadavg()
        cpu = sum(cpu_ticks(p.pid) for p, _ in procs)
        time.sleep(2)
        idle_cpu = (sum(cpu_ticks(p.pid) for p, _ in procs) - cpu) / 2
        rss = sum(rss_kib(p.pid) for p, _ in procs)
        for _, sock in procs:
            qmp_session(sock)
        for _, sock in procs:
            Qmp(sock).ok("quit")
        bad = []
        for proc, _ in procs:
            rc = proc.wait(VM_TIMEOUT)
            if rc != 0:
                bad.append(f"pid {proc.pid} exit {rc}: {proc.stderr.read()[-500:]!r}")
        if bad:
            raise Failure(f"{len(bad)} VM(s) did not exit 0: {bad[0]}")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for n in range(args.vms):
        os.unlink(os.path.join(scratch, f"m{n}.img"))
    check_nothing_left(scratch)
    taps.delete_all()
    log(f"many: {args.vms} VMs with a disk and a tap up in {up:.1f} s, all answered "
        f"query-status and exited 0 after quit; idle together {idle_cpu:.1f} CPU ticks/s, "
        f"RSS {rss / 1024:.0f} MiB in all (load while up {load_up}); nothing left behind")
    return {"vms": args.vms, "up_seconds": up, "idle_ticks_per_s": idle_cpu,
            "rss_kib_total": rss, "load_while_up": load_up}


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(") ", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nimbus", required=True)
    p.add_argument("--guests", required=True, help="directory built by guests/build.sh")
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--qmp-cycles", type=int, default=10000)
    p.add_argument("--hotplug-cycles", type=int, default=1000)
    p.add_argument("--vms", type=int, default=50)
    p.add_argument("--rss-slack", type=int, default=256, help="KiB (default 256)")
    p.add_argument("--only", default="cycles,churn,many")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    parts = args.only.split(",")
    scratch = tempfile.mkdtemp(prefix="nimbus-soak-", dir="/tmp")
    taps = Taps()
    results = {"load_at_start": loadavg(), "nproc": os.cpu_count()}
    log(f"soak: {args.nimbus}, scratch {scratch}, load at start {results['load_at_start']}")
    try:
        if "cycles" in parts:
            results["cycles"] = cycles(args, scratch)
        if "churn" in parts:
            results["churn"] = churn(args, scratch, taps)
        if "many" in parts:
            results["many"] = many(args, scratch, taps)
    except (Failure, subprocess.SubprocessError) as e:
        log(f"soak: FAILED: {e}")
        return 1
    finally:
        try:
            taps.delete_all()
        except Failure as e:
            log(f"soak: FAILED: {e}")
            return 1
        try:
            os.rmdir(scratch)
        except OSError as e:
            log(f"soak: FAILED: scratch not empty: {e}: {os.listdir(scratch)[:10]}")
            return 1
    results["load_at_end"] = loadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    log(f"soak: PASSED (load at end {results['load_at_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
