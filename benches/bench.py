#!/usr/bin/env python3
"""Nimbus beside QEMU's microvm, measured in the same run: one table (issue #8).

Usage (as root: /dev/kvm, a tap): benches/run.sh [--quick] [--only LIST] [--runs N] [--linux]
                                                   [--no-build] [--out DIR]

Sub-benchmarks (--only takes a comma-separated subset; default all but linux and virtiofs):
  size      binary sizes on disk (nimbus is stripped by the release profile)
  startup   exec -> first guest console byte; exec -> process exit after the guest's reset
  memory    idle VMM RSS minus the guest-RAM mapping (/proc/PID/smaps), thread count
  exits     PIO and MMIO exit round trips per second (guest action `exits`)
  blk       virtio-blk through the test guest (4 KiB random read/write, 128 KiB sequential read),
            plus the device model alone in process and fio on the same file (no VM)
  blkdepth  virtio-blk 4 KiB random reads through indirect descriptor tables with 1 and with 8
            requests in flight (the test guest's blkbench, nimbus.blkdepth=), as Linux drives it
  vhostuser vhost-user-blk served by one qemu-storage-daemon on the blk image: 4 KiB random
            reads with the test guest's blkbench, Nimbus and QEMU on the same daemon, beside
            Nimbus's own virtio-blk on the same image
  net       virtio-net through a tap, both directions (benches/net.py)
  vsock     hybrid vsock stream throughput both ways and CONNECT->OK latency with the test guest
            (with --linux also with the kit Linux's agent), and the device model alone beside a
            Unix socket pair (benches/vsock.py; Nimbus only: QEMU has no in-process vsock and
            vhost-vsock needs /dev/vhost-vsock)
  snapshot  QMP migrate of the counting test guest, its size, exec -> the restored guest's next
            output beside its cold boot, private memory of 10 clones of one template (Nimbus
            only)
  parallel  VMs started and stopped per second, 8 at a time: the boot-report guest, and the
            guest with `nimbus.quiet` (one line, then reset: mostly the VMMs' own cost)
  devmodel  the virtio-blk device model alone in process against fio on the same file, in
            alternating rounds (one request at a time: aio=off against psync; depth 32:
            aio=io_uring against io_uring), median req/s and the median ratio of each round
  console   console output bytes per second from the test guest (guests/console.c, action
            `conbench`): over a virtio-console port (virtconsole on a file chardev, 4 KiB
            chunks, one in flight as Linux's hvc sends them) and over the 16550 (THR byte by
            byte to -serial stdio), timed between two UART lines
  linux     the guest kit's Linux boot milestones (benches/linux_boot.py; slow, only with --linux)
  virtiofs  virtio-fs with Debian's virtiofsd (cache=none), a fresh one per VM: the kit Linux
            (kit.mode=fsbench) reads a 64 MiB file in 1 MiB reads and lstats 1,000 files,
            timed by console timestamps; Nimbus's vhost-user-fs-device beside QEMU's
            (slow, ~2 minutes per VM under kvm-pvm: only with --only virtiofs; 1 run per VMM
            unless --runs is given; --quick: 16 MiB and 250 files)

Every VM sub-benchmark alternates the two VMMs run by run and reports median (min-max). Both
VMMs boot the same test guest (guests/hello.c, hello-pvh.elf, 1 vCPU, 128 MiB) with the same
command line, which includes `reboot=t`: the guest resets by triple fault, which Nimbus and QEMU
with -no-reboot both turn into a clean exit (QEMU's microvm has no i8042, the guest's default
reset path). Results: target/bench/results.md and results.json. Stdlib only.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU = "qemu-system-x86_64"
RAM_MIB = 128
BASE_APPEND = "console=ttyS0 reboot=t"
ALL = ["size", "startup", "memory", "exits", "blk", "blkdepth", "vhostuser", "net", "vsock",
       "snapshot", "parallel", "console", "devmodel"]
EXTRA = ["linux", "virtiofs"]  # slow: only when asked for (--linux, --only virtiofs)
IMG = "/var/tmp/nimbus-bench.img"  # 256 MiB of random data, written by the blk benchmark


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- VM command lines -------------------------------------------------------------------------

class Ctx:
    nimbus = "target/x86_64-unknown-linux-gnu/release/nimbus"
    kernel = "target/bench/guests/hello-pvh.elf"


def nimbus_cmd(append, extra=(), blk=None):
    cmd = [Ctx.nimbus, "-machine", "microvm", "-m", str(RAM_MIB), "-kernel", Ctx.kernel,
           "-serial", "stdio", "-append", append]
    if blk:
        path, readonly = blk
        cmd += ["-drive", f"id=d0,file={path},readonly={'on' if readonly else 'off'}",
                "-device", "virtio-blk-device,drive=d0"]
    return cmd + list(extra)


def qemu_cmd(append, extra=(), blk=None):
    cmd = [QEMU, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off",
           "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", str(RAM_MIB),
           "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
           "-no-reboot", "-kernel", Ctx.kernel, "-append", append]
    if blk:
        path, readonly = blk
        cmd += ["-drive", f"id=d0,file={path},format=raw,if=none,readonly={'on' if readonly else 'off'}",
                "-device", "virtio-blk-device,drive=d0", "-global", "virtio-mmio.force-legacy=false"]
    return cmd + list(extra)


VMMS = [("nimbus", nimbus_cmd), ("qemu", qemu_cmd)]


def alternate(runs):
    """(run, name, make) in alternating VMM order: N Q, Q N, N Q, ..."""
    for r in range(runs):
        for name, make in (VMMS if r % 2 == 0 else VMMS[::-1]):
            yield r, name, make


class VmRun:
    """One VM: console lines with the time since exec at which they arrived."""

    def __init__(self, cmd, timeout=120.0, until=None):
        self.cmd = cmd
        self.lines = []
        self.first = None
        err = tempfile.TemporaryFile()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=err)
        self.pid = p.pid
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        fd, buf = p.stdout.fileno(), b""
        try:
            while True:
                chunk = os.read(fd, 65536)
                now = time.perf_counter() - t0
                if not chunk:
                    break
                if self.first is None:
                    self.first = now
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.lines.append((now, line.decode(errors="replace").rstrip("\r")))
                    if until is not None and until(self):
                        p.kill()
        finally:
            self.rc = p.wait()
            self.exit = time.perf_counter() - t0
            timer.cancel()
            err.seek(0)
            self.stderr = err.read().decode(errors="replace")
            err.close()

    def at(self, prefix):
        for t, line in self.lines:
            if line.startswith(prefix):
                return t
        return None

    def line(self, prefix):
        for _, line in self.lines:
            if line.startswith(prefix):
                return line
        return None

    def describe(self):
        tail = "\n".join(l for _, l in self.lines[-8:])
        return f"$ {' '.join(self.cmd)}\nrc={self.rc}\n{tail}\n{self.stderr[-600:]}"


# ---- results ------------------------------------------------------------------------------------

def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "samples": values}


class Results:
    def __init__(self):
        self.rows = []   # VM rows: both VMMs
        self.host = []   # rows without a VM
        self.notes = []
        self.extra = []  # verbatim sections (linux)

    def vm(self, section, metric, unit, better, nimbus, qemu, digits=1):
        self.rows.append({"section": section, "metric": metric, "unit": unit, "better": better,
                          "digits": digits, "nimbus": stats(nimbus), "qemu": stats(qemu)})

    def vm_stats(self, section, metric, unit, better, nimbus, qemu, digits=1):
        self.rows.append({"section": section, "metric": metric, "unit": unit, "better": better,
                          "digits": digits, "nimbus": nimbus, "qemu": qemu})

    def nimbus_only(self, section, metric, unit, better, nimbus, digits=1):
        """A row QEMU cannot have on this host (its cell reads n/a)."""
        self.rows.append({"section": section, "metric": metric, "unit": unit, "better": better,
                          "digits": digits, "nimbus": stats(nimbus), "qemu": "n/a"})

    def host_row(self, section, metric, unit, value, digits=0):
        self.host.append({"section": section, "metric": metric, "unit": unit, "value": value,
                          "digits": digits})


def fmt(v, digits):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def cell(s, digits):
    if s is None:
        return "failed"
    if s == "n/a":
        return s
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def markdown(res, header):
    out = [header, "",
           "| Metric | Unit | Nimbus | QEMU microvm | Nimbus/QEMU |",
           "|---|---|---:|---:|---:|"]
    for r in res.rows:
        n, q = r["nimbus"], r["qemu"]
        ratio = "-"
        if n and isinstance(q, dict) and q["median"]:
            ratio = f"{n['median'] / q['median']:.2f}"
        arrow = {"lower": " (lower is better)", "higher": " (higher is better)"}.get(r["better"], "")
        out.append(f"| {r['metric']} | {r['unit']}{arrow} | {cell(n, r['digits'])} | "
                   f"{cell(q, r['digits'])} | {ratio} |")
    if res.host:
        out += ["", "Without a VM, same run (the device model alone in process, fio on the same "
                "file):", "", "| Measurement | Unit | Value |", "|---|---|---:|"]
        for h in res.host:
            out.append(f"| {h['metric']} | {h['unit']} | {fmt(h['value'], h['digits'])} |")
    if res.notes:
        out += [""] + [f"- {n}" for n in res.notes]
    for title, text in res.extra:
        out += ["", title, "", "```", text.rstrip(), "```"]
    return "\n".join(out) + "\n"


# ---- sub-benchmarks -----------------------------------------------------------------------------

def bench_size(res, args):
    nimbus = os.path.realpath(Ctx.nimbus)
    qemu = os.path.realpath(shutil.which(QEMU) or QEMU)
    sizes = {}
    for name, path in (("nimbus", nimbus), ("qemu", qemu)):
        sizes[name] = os.path.getsize(path) / 2**20 if os.path.exists(path) else None
        libs = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        sizes[name + "_libs"] = len([l for l in libs.splitlines() if "=>" in l])
    res.vm("size", "binary size on disk (stripped)", "MiB", "lower",
           [sizes["nimbus"]], [sizes["qemu"]], 2)
    res.vm("size", "shared libraries loaded at exec (ldd)", "count", "lower",
           [sizes["nimbus_libs"]], [sizes["qemu_libs"]], 0)


def bench_startup(res, args):
    first = {"nimbus": [], "qemu": []}
    done = {"nimbus": [], "qemu": []}
    for _, name, make in alternate(args.runs_startup):
        vm = VmRun(make(BASE_APPEND), timeout=30)
        if vm.rc != 0 or vm.line("NIMBUS-GUEST done") is None:
            log(f"startup: {name} run failed\n{vm.describe()}")
            continue
        first[name].append(vm.first * 1e3)
        done[name].append(vm.exit * 1e3)
    res.vm("startup", "exec -> first guest console byte", "ms", "lower",
           first["nimbus"], first["qemu"], 2)
    res.vm("startup", "exec -> exit after the guest printed its boot info and reset", "ms", "lower",
           done["nimbus"], done["qemu"], 1)


def smaps_summary(pid, ram_kib):
    """(total RSS KiB, RSS KiB of the guest-RAM mapping(s), threads)."""
    total = ram = 0
    size_kib = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(x, 16) for x in first.split("-"))
                size_kib = (hi - lo) // 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                total += rss
                # The guest-RAM mapping: exactly the RAM size (Nimbus), or the RAM plus QEMU's
                # alignment/guard pages.
                if ram_kib <= size_kib <= ram_kib + 8192:
                    ram += rss
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return total, ram, threads


def idle_vm(make, settle=0.5):
    """Boots `hang`, waits until the guest idles, returns smaps_summary()."""
    out = {}

    def until(vm):
        if vm.line("hang: now") is not None and not out:
            time.sleep(settle)
            out["v"] = smaps_summary(vm.pid, RAM_MIB * 1024)
            return True
        return False

    vm = VmRun(make(BASE_APPEND + " nimbus.test=hang"), timeout=30, until=until)
    if "v" not in out:
        log(f"memory: run failed\n{vm.describe()}")
        return None
    return out["v"]


def bench_memory(res, args):
    vmm = {n: {"rss": [], "ram": [], "threads": [], "total": []} for n, _ in VMMS}
    for _, name, make in alternate(args.runs_memory):
        v = idle_vm(make)
        if v:
            total, ram, threads = v
            vmm[name]["rss"].append((total - ram) / 1024)
            vmm[name]["ram"].append(ram / 1024)
            vmm[name]["total"].append(total / 1024)
            vmm[name]["threads"].append(threads)
    n, q = vmm["nimbus"], vmm["qemu"]
    res.vm("memory", "idle RSS without the guest-RAM mapping", "MiB", "lower", n["rss"], q["rss"], 2)
    res.vm("memory", "idle RSS of the guest-RAM mapping (touched by the guest)", "MiB", None,
           n["ram"], q["ram"], 2)
    res.vm("memory", "threads while idle", "count", "lower", n["threads"], q["threads"], 0)


def bench_exits(res, args):
    ensure_image()
    n = args.exits
    append = f"{BASE_APPEND} nimbus.test=exits nimbus.exits={n}"
    keys = ["pio_rate", "mmio_rate", "pio_us", "mmio_us", "loop_us"]
    vals = {name: {k: [] for k in keys} for name, _ in VMMS}
    for _, name, make in alternate(args.runs):
        vm = VmRun(make(append, blk=(IMG, True)), timeout=120)
        t = {k: vm.at(f"exits: {k}") for k in ("loop start", "pio start", "pio done",
                                                 "mmio start", "mmio done")}
        if None in t.values():
            log(f"exits: {name} run failed\n{vm.describe()}")
            continue
        loop = t["pio start"] - t["loop start"]
        pio = t["pio done"] - t["pio start"]
        mmio = t["mmio done"] - t["mmio start"]
        v = vals[name]
        v["pio_rate"].append(n / pio / 1e3)
        v["mmio_rate"].append(n / mmio / 1e3)
        v["pio_us"].append((pio - loop) / n * 1e6)
        v["mmio_us"].append((mmio - loop) / n * 1e6)
        v["loop_us"].append(loop / n * 1e6)
    N, Q = vals["nimbus"], vals["qemu"]
    res.vm("exits", f"PIO exit round trips (outb 0x80, {n} in a loop)", "k/s", "higher",
           N["pio_rate"], Q["pio_rate"], 1)
    res.vm("exits", "PIO exit round trip, net of the empty loop", "us", "lower",
           N["pio_us"], Q["pio_us"], 2)
    res.vm("exits", f"MMIO exit round trips (virtio-mmio MagicValue read, {n})", "k/s", "higher",
           N["mmio_rate"], Q["mmio_rate"], 1)
    res.vm("exits", "MMIO exit round trip, net of the empty loop", "us", "lower",
           N["mmio_us"], Q["mmio_us"], 2)
    res.vm("exits", "empty guest loop iteration (emulation cost, no exit)", "us", None,
           N["loop_us"], Q["loop_us"], 3)


def ensure_image():
    if not os.path.exists(IMG) or os.path.getsize(IMG) != 256 << 20:
        log(f"creating {IMG} (256 MiB of random data)")
        with open("/dev/urandom", "rb") as src, open(IMG + ".tmp", "wb") as dst:
            for _ in range(256):
                dst.write(src.read(1 << 20))
        os.replace(IMG + ".tmp", IMG)


def fio(spec, secs):
    rw, bs, engine, depth = spec
    cmd = ["fio", "--name=b", f"--filename={IMG}", f"--rw={rw}", f"--bs={bs}",
           f"--ioengine={engine}", f"--iodepth={depth}", "--direct=0", f"--runtime={secs}",
           "--time_based", "--invalidate=0", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        log(f"fio failed: {out.stderr[-400:]}")
        return None
    job = json.loads(out.stdout)["jobs"][0]
    side = job["write" if "write" in rw else "read"]
    return side["iops"], side["bw_bytes"] / 2**20


def bench_blk(res, args):
    ensure_image()
    cases = [  # metric, unit, guest options, value from (requests, seconds)
        ("virtio-blk 4 KiB random read, one request at a time", "req/s",
         f"nimbus.blkreads={args.blk_reqs}", lambda n, s: n / s, 0),
        ("virtio-blk 4 KiB random write, one request at a time", "req/s",
         f"nimbus.blkreads={args.blk_reqs} nimbus.blkwrite=1", lambda n, s: n / s, 0),
        ("virtio-blk 128 KiB sequential read, one request at a time", "MiB/s",
         f"nimbus.blkreads={args.blk_seq} nimbus.blkbytes=131072 nimbus.blkseq=1",
         lambda n, s: n * 128 / 1024 / s, 1),
    ]
    for metric, unit, opts, value, digits in cases:
        n = int(re.search(r"blkreads=(\d+)", opts).group(1))
        vals = {"nimbus": [], "qemu": []}
        for _, name, make in alternate(args.runs):
            write = "blkwrite=1" in opts
            vm = VmRun(make(f"{BASE_APPEND} nimbus.test=blkbench {opts}",
                            blk=(IMG, not write)), timeout=300)
            start = vm.at("blkbench: start")
            end_line = vm.line("blkbench: reads=") or vm.line("blkbench: writes=")
            end = vm.at(end_line) if end_line else None
            if start is None or end is None or "errors=0" not in end_line:
                log(f"blk: {name} run failed\n{vm.describe()}")
                continue
            vals[name].append(value(n, end - start))
        res.vm("blk", metric, unit, "higher", vals["nimbus"], vals["qemu"], digits)
    res.notes.append("virtio-blk: each VMM's default drive options (Nimbus: synchronous "
                     "reads/writes, aio=off; QEMU: aio=threads, cache=writeback), same 256 MiB "
                     "file in the host page cache; the guest driver is polled, one request in "
                     "flight; `benches/blk.sh` compares Nimbus's aio/direct variants.")

    # The device model alone in process (virtio/src/block/bench.rs, virtio/src/net/bench.rs).
    if not args.quick:
        env = dict(os.environ, NIMBUS_BENCH_IMAGE=IMG, NIMBUS_BENCH_SECS=str(args.secs))
        log("blk: device model benches (cargo test -p virtio --release ... device_model)")
        out = subprocess.run(["cargo", "test", "-q", "-p", "virtio", "--release", "--",
                              "--ignored", "--nocapture", "--test-threads=1", "device_model"],
                             capture_output=True, text=True, env=env, cwd=ROOT)
        found = False
        for line in out.stdout.splitlines():
            m = re.search(r"BENCH device-model (\S+) iodepth=(\d+): (\d+) req/s", line)
            if m:
                found = True
                res.host_row("blk", f"device model 4 KiB random read, {m.group(1)}, "
                             f"iodepth={m.group(2)}", "req/s", float(m.group(3)))
            # Each net case prints the device, the plain-loop floor on the same backend (a
            # real tap as root) and their per-frame cost ratio (virtio/src/net/bench.rs).
            m = re.search(r"BENCH net (device-model|floor) (tx|rx) \(([^)]*)\) (\d+)-byte frames: "
                         r"(\d+) frames/s \((\d+) ns/frame, [\d.]+ MB/s\).*backend (\w+)", line)
            if m:
                found = True
                side, d, label, size, fps, ns, backend = m.groups()
                what = "device model" if side == "device-model" else "plain loop (floor)"
                res.host_row("net", f"{what} net {d} ({label}), {size}-byte frames, {backend}",
                             "frames/s", float(fps))
            m = re.search(r"BENCH net ratio (tx|rx) \(([^)]*)\) (\d+)-byte frames: ([\d.]+)x "
                          r"device/floor.*backend (\w+)", line)
            if m:
                found = True
                d, label, size, ratio, backend = m.groups()
                res.host_row("net", f"device model / floor net {d} ({label}), {size}-byte frames, "
                             f"{backend}: per-frame cost", "x", float(ratio), 2)
        if not found:
            res.notes.append("device-model benches did not run (cargo test -p virtio failed: "
                             f"{(out.stderr.strip().splitlines() or ['?'])[-1][:120]})")
    if shutil.which("fio"):
        for spec, metric in ((("randread", "4k", "psync", 1), "fio 4 KiB random read, psync, iodepth=1"),
                             (("randread", "4k", "io_uring", 32), "fio 4 KiB random read, io_uring, iodepth=32"),
                             (("randwrite", "4k", "psync", 1), "fio 4 KiB random write, psync, iodepth=1"),
                             (("read", "128k", "psync", 1), "fio 128 KiB sequential read, psync, iodepth=1")):
            r = fio(spec, args.secs)
            if r:
                if spec[1] == "128k":
                    res.host_row("blk", metric, "MiB/s", r[1], 1)
                else:
                    res.host_row("blk", metric, "req/s", r[0])


def device_model_blk(case, secs):
    """req/s of one device-model case (`aio=off`, `aio=io_uring`, ...) on IMG, or None."""
    env = dict(os.environ, NIMBUS_BENCH_IMAGE=IMG, NIMBUS_BENCH_SECS=str(secs),
               NIMBUS_BENCH_CASES=case)
    out = subprocess.run(["cargo", "test", "-q", "-p", "virtio", "--release", "--", "--ignored",
                          "--nocapture", "--test-threads=1", "block::bench::device_model"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    m = re.search(r"BENCH device-model \S+ iodepth=\d+: (\d+) req/s", out.stdout)
    if not m:
        log(f"device model {case} failed: {out.stderr.strip()[-300:]}")
    return float(m.group(1)) if m else None


BLK_PAIRS = {  # name: (device-model case, fio spec)
    "one request at a time (aio=off / psync)": ("aio=off", ("randread", "4k", "psync", 1)),
    "depth 32 (aio=io_uring / io_uring)": ("aio=io_uring", ("randread", "4k", "io_uring", 32)),
}


def blk_model_ratios(rounds, secs):
    """{pair: (device req/s list, fio req/s list, ratio list)}, the pairs run back to back in
    each round so that both sides of a ratio see the same host load."""
    ensure_image()
    out = {k: ([], [], []) for k in BLK_PAIRS}
    for _ in range(rounds):
        for name, (case, spec) in BLK_PAIRS.items():
            dev = device_model_blk(case, secs)
            f = fio(spec, secs)
            if dev and f:
                out[name][0].append(dev)
                out[name][1].append(f[0])
                out[name][2].append(dev / f[0])
    return out


def bench_devmodel(res, args):
    rounds = 3 if args.quick else 5
    for name, (dev, fio_v, ratio) in blk_model_ratios(rounds, 2).items():
        if not ratio:
            res.notes.append(f"devmodel: {name} did not run")
            continue
        res.host_row("devmodel", f"virtio-blk device model 4 KiB random read, {name}", "req/s",
                     statistics.median(dev))
        res.host_row("devmodel", f"fio on the same file, {name}", "req/s",
                     statistics.median(fio_v))
        res.host_row("devmodel", f"device model / fio, {name} (median of {len(ratio)} rounds; "
                     "target >= 0.9)", "ratio", statistics.median(ratio), 3)


def bench_net(res, args):
    cmd = [sys.executable, os.path.join(ROOT, "benches", "net.py"), str(args.frames), str(args.runs)]
    env = dict(os.environ, NIMBUS=Ctx.nimbus)
    log(f"net: {' '.join(cmd)}")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    got = {}
    for line in out.stdout.splitlines():
        m = re.match(r"(guest->host|host->guest) (Nimbus|QEMU microvm)\s+([\d.]+)\s+([\d.]+)\s+"
                     r"([\d.]+)\s+([\d.]+)\s+(\d+)/(\d+)", line)
        if m:
            vmm = "nimbus" if m.group(2) == "Nimbus" else "qemu"
            med, lo, hi = (float(m.group(i)) for i in (3, 4, 5))
            got[(m.group(1), vmm)] = {"median": med, "min": lo, "max": hi, "n": int(m.group(7))}
    if not got:
        log(f"net: failed\n{out.stdout[-1000:]}\n{out.stderr[-1500:]}")
    for d in ("guest->host", "host->guest"):
        n, q = got.get((d, "nimbus")), got.get((d, "qemu"))
        res.vm_stats("net", f"virtio-net {d}, 60-byte frames through a tap", "frames/s", "higher",
                     n, q, 0)

        def mb(s):
            return None if s is None else {k: (v * 60 / 1e6 if k != "n" else v)
                                           for k, v in s.items()}
        res.vm_stats("net", f"virtio-net {d}, same runs", "MB/s", "higher", mb(n), mb(q), 3)
    res.notes.append(f"virtio-net: {args.frames} frames per run; the test guest's driver is "
                     "polled, 8-entry rings, one frame per buffer: per-frame cost of the whole "
                     "path, not line rate (MB/s = frames/s x 60 B).")


def conbench_rate(cmd, n, path=None):
    """Bytes per second of one `conbench` run of `cmd` (and, with `path`, the bytes must all be
    in that file), or None."""
    vm = VmRun(cmd, timeout=300)
    start, done = vm.at("conbench: start"), vm.at("conbench: done")
    if start is None or done is None:
        log(f"console: run failed\n{vm.describe()}")
        return None
    if path is not None and os.path.getsize(path) != n:
        log(f"console: {path} holds {os.path.getsize(path)} bytes, not {n}\n{vm.describe()}")
        return None
    return n / (done - start)


def bench_console(res, args):
    n_virtio, n_uart = args.con_virtio, args.con_uart
    virtio = {name: [] for name, _ in VMMS}
    uart = {name: [] for name, _ in VMMS}
    with tempfile.TemporaryDirectory() as tmp:
        for r, name, make in alternate(args.runs):
            out = os.path.join(tmp, f"{name}-{r}.out")
            extra = ["-chardev", f"file,id=c0,path={out}", "-device", "virtio-serial-device",
                     "-device", "virtconsole,chardev=c0"]
            if name == "qemu":
                extra += ["-global", "virtio-mmio.force-legacy=false"]
            append = f"{BASE_APPEND} nimbus.test=conbench nimbus.conbytes={n_virtio}"
            virtio[name].append(conbench_rate(make(append, extra), n_virtio, out))
            append = f"{BASE_APPEND} nimbus.test=conbench nimbus.conuart=1 nimbus.conbytes={n_uart}"
            uart[name].append(conbench_rate(make(append), n_uart))
    mb = lambda v: [x / 1e6 if x is not None else None for x in v]
    kb = lambda v: [x / 1e3 if x is not None else None for x in v]
    res.vm("console", f"virtio-console output ({n_virtio >> 20} MiB, 4 KiB chunks, file chardev)",
           "MB/s", "higher", mb(virtio["nimbus"]), mb(virtio["qemu"]), 1)
    res.vm("console", f"16550 output ({n_uart >> 10} KiB, THR byte by byte, -serial stdio)",
           "KB/s", "higher", kb(uart["nimbus"]), kb(uart["qemu"]), 1)


def blkbench_rate(cmd, n, what="vhostuser"):
    """Requests per second of one blkbench run of `cmd`, or None (logged as `what`)."""
    vm = VmRun(cmd, timeout=300)
    start = vm.at("blkbench: start")
    end_line = vm.line("blkbench: reads=")
    end = vm.at(end_line) if end_line else None
    if start is None or end is None or "errors=0" not in end_line:
        log(f"{what}: run failed\n{vm.describe()}")
        return None
    return n / (end - start)


def bench_blkdepth(res, args):
    ensure_image()
    n = args.blk_reqs
    for depth in (1, 8):
        opts = f"nimbus.blkreads={n} nimbus.blkindirect=1 nimbus.blkdepth={depth}"
        vals = {"nimbus": [], "qemu": []}
        for _, name, make in alternate(args.runs):
            cmd = make(f"{BASE_APPEND} nimbus.test=blkbench {opts}", blk=(IMG, True))
            rate = blkbench_rate(cmd, n, "blkdepth")
            if rate is not None:
                vals[name].append(rate)
        res.vm("blkdepth", f"virtio-blk 4 KiB random read, indirect descriptors, queue depth "
               f"{depth}", "req/s", "higher", vals["nimbus"], vals["qemu"], 0)
    res.notes.append("virtio-blk queue depth: the test guest's polled driver keeps 1 or 8 "
                     "requests in flight, each one descriptor pointing at a 3-entry indirect "
                     "table, and notifies once per batch it posts; each VMM's default drive "
                     "options (Nimbus aio=off, QEMU aio=threads), same image as `blk`.")


def bench_vhostuser(res, args):
    ensure_image()
    if shutil.which("qemu-storage-daemon") is None:
        res.notes.append("vhost-user-blk: qemu-storage-daemon missing (qemu-system-common)")
        return
    tmp = tempfile.mkdtemp(prefix="nimbus-vu-bench-")
    sock = os.path.join(tmp, "blk.sock")
    daemon = subprocess.Popen(
        ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=d,filename={IMG}",
         "--export", f"type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={sock}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        n = args.blk_reqs
        append = f"{BASE_APPEND} nimbus.test=blkbench nimbus.blkreads={n}"
        vu = {
            "nimbus": [Ctx.nimbus, "-machine", "microvm,mem-share=on", "-m", str(RAM_MIB),
                       "-kernel", Ctx.kernel, "-serial", "stdio", "-append", append,
                       "-chardev", f"socket,id=c,path={sock}",
                       "-device", "vhost-user-blk-device,id=vub0,chardev=c"],
            "qemu": [QEMU, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,"
                     "memory-backend=mem", "-object",
                     f"memory-backend-memfd,id=mem,size={RAM_MIB}M,share=on",
                     "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", str(RAM_MIB),
                     "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                     "-no-reboot", "-kernel", Ctx.kernel, "-append", append,
                     "-chardev", f"socket,id=c,path={sock}", "-device", "vhost-user-blk,chardev=c",
                     "-global", "virtio-mmio.force-legacy=false"],
        }
        vals = {"nimbus": [], "qemu": []}
        own = []
        for _, name, _make in alternate(args.runs):
            rate = blkbench_rate(vu[name], n)
            if rate:
                vals[name].append(rate)
            if name == "nimbus":
                rate = blkbench_rate(nimbus_cmd(append, blk=(IMG, True)), n)
                if rate:
                    own.append(rate)
        res.vm("vhostuser", "vhost-user-blk (qemu-storage-daemon) 4 KiB random read, one "
               "request at a time", "req/s", "higher", vals["nimbus"], vals["qemu"], 0)
        res.nimbus_only("vhostuser", "Nimbus's own virtio-blk on the same image, same runs",
                        "req/s", "higher", own, 0)
        res.notes.append("vhost-user-blk: one qemu-storage-daemon serves every run (Nimbus and "
                         "QEMU alternate on it); QEMU's guest RAM is a shared memfd "
                         "(memory-backend-memfd,share=on), Nimbus's is -machine mem-share=on.")
    finally:
        daemon.kill()
        daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_vsock(res, args):
    out = subprocess.run(["cargo", "test", "-q", "-p", "virtio", "--release", "--", "--ignored",
                          "--nocapture", "vsock_device_model"], capture_output=True, text=True,
                         cwd=ROOT)
    for line in out.stdout.splitlines():
        m = re.search(r"BENCH vsock device-model (\S+) 64 KiB packets: (\d+) MB/s device; "
                      r"(\d+) MB/s loop incl. peer; (\d+) MB/s socketpair floor", line)
        if m:
            what = m.group(1)
            res.host_row("vsock", f"device model vsock {what}, 64 KiB packets, device only",
                         "MB/s", float(m.group(2)))
            res.host_row("vsock", f"device model vsock {what}, with the Unix-socket peer",
                         "MB/s", float(m.group(3)))
            res.host_row("vsock", f"Unix socket pair, 64 KiB write + read (floor for {what})",
                         "MB/s", float(m.group(4)))
    cmd = [sys.executable, os.path.join(ROOT, "benches", "vsock.py"), Ctx.nimbus,
           os.path.join(args.out, "guests"), "--runs", str(max(1, min(args.runs, 3))),
           "--mib", "4" if args.quick else "16"]
    if "linux" in args.only:
        cmd += ["--linux", os.path.join(ROOT, "target", "guest-kit")]
    log("vsock: " + " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    got = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[0] == "vsock":
            got[parts[1]] = [float(v) for v in parts[3:]]
    if not got:
        log(f"vsock: failed\n{out.stdout[-1000:]}\n{out.stderr[-1500:]}")
    mib = 4 if args.quick else 16
    for key, metric, unit, better, digits in (
            ("guest->host", f"vsock guest->host, {mib} MiB in 64 KiB packets", "MB/s", "higher", 1),
            ("host->guest", f"vsock host->guest, {mib} MiB", "MB/s", "higher", 1),
            ("connect-test-guest", "vsock CONNECT -> OK, test guest", "ms", "lower", 2),
            ("connect-linux", "vsock CONNECT 1024 -> OK, kit Linux agent", "ms", "lower", 2)):
        if key in got or key != "connect-linux":
            res.nimbus_only("vsock", metric, unit, better, got.get(key), digits)
    res.notes.append("vsock: QEMU has no in-process (hybrid) vsock and its vhost-vsock-device "
                     "needs /dev/vhost-vsock, absent here: Nimbus only. The test guest's driver "
                     "polls and does not touch the payload; under kvm-pvm its ring handling is "
                     "emulated, so these are per-packet costs of the whole path, not line rate.")


def qmp_call(path, commands, timeout=30):
    """Runs `commands` ((name, arguments) pairs) on the QMP socket `path`; returns the replies."""
    import socket as sk
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = sk.socket(sk.AF_UNIX)
            s.connect(path)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    f = s.makefile("rw")
    f.readline()
    replies = []
    for name, arguments in [("qmp_capabilities", None)] + list(commands):
        msg = {"execute": name}
        if arguments is not None:
            msg["arguments"] = arguments
        f.write(json.dumps(msg) + "\n")
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "event" not in reply:
                replies.append(reply)
                break
    s.close()
    return replies[1:]


def private_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith(("Private_Clean:", "Private_Dirty:")))


def bench_snapshot(res, args):
    """Nimbus only (QEMU has no file snapshot of this kind): the test guest counting, stopped,
    written with QMP migrate, then restored; beside the same guest's cold boot in this run."""
    work = tempfile.mkdtemp(prefix="nimbus-snap-")
    snap = os.path.join(work, "snap")
    qmp = os.path.join(work, "template.qmp")
    # Counting without pause: the restored guest's next output is due at once, so the time to
    # it is the restore's.
    append = BASE_APPEND + " nimbus.test=count nimbus.countpause=1"
    template = nimbus_cmd(append, ["-qmp", f"unix:{qmp},server,nowait"])
    p = subprocess.Popen(template, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        replies = qmp_call(qmp, [("stop", None), ("migrate", {"uri": f"file:{snap}"}),
                                 ("query-migrate", None)])
    finally:
        p.kill()
        p.wait()
    info = replies[-1].get("return", {})
    if info.get("status") != "completed":
        log(f"snapshot: migrate failed: {replies}")
        return
    res.nimbus_only("snapshot", "snapshot of the stopped 128 MiB test guest (QMP migrate)", "ms",
                    "lower", [info["total-time"]], 0)
    st = os.stat(os.path.join(snap, "memory"))
    disk = st.st_blocks * 512 + os.path.getsize(os.path.join(snap, "state"))
    res.nimbus_only("snapshot", "snapshot size on disk (memory file is 128 MiB sparse + state)",
                    "KiB", "lower", [disk / 1024], 0)

    def restore_cmd(tag):
        return [Ctx.nimbus, "-machine", "microvm", "-m", str(RAM_MIB), "-serial", "stdio",
                "-qmp", f"unix:{os.path.join(work, tag)}.qmp,server,nowait",
                "-incoming", f"file:{snap}"]

    def first_count(vm):
        return vm.at("count:") is not None

    restored, cold = [], []
    for i in range(args.runs):
        vm = VmRun(restore_cmd(f"r{i}"), timeout=30, until=first_count)
        if vm.at("count:") is not None:
            restored.append(vm.first * 1e3)
        else:
            log(f"snapshot: restore failed\n{vm.stderr[-800:]}")
        vm = VmRun(nimbus_cmd(append, ["-qmp", f"unix:{work}/c{i}.qmp,server,nowait"]),
                   timeout=30, until=first_count)
        t = vm.at("count: 1")
        if t is not None:
            cold.append(t * 1e3)
    res.nimbus_only("snapshot", "exec -> restored guest's next console output", "ms", "lower",
                    restored, 2)
    res.nimbus_only("snapshot", "exec -> the same guest's first count, cold boot", "ms", "lower",
                    cold, 2)

    clones = [subprocess.Popen(restore_cmd(f"t{i}"), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
              for i in range(10)]
    private = []
    try:
        for c in clones:
            c.stdout.readline()
            private.append(private_kib(c.pid) / 1024)
    finally:
        for c in clones:
            c.kill()
            c.wait()
    res.nimbus_only("snapshot", "private memory of each of 10 clones of one template", "MiB",
                    "lower", private, 2)
    boots = []
    for i in range(2):
        c = subprocess.Popen(nimbus_cmd(append, ["-qmp", f"unix:{work}/b{i}.qmp,server,nowait"]),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
        c.stdout.readline()
        boots.append(c)
    try:
        cold_private = [private_kib(c.pid) / 1024 for c in boots]
    finally:
        for c in boots:
            c.kill()
            c.wait()
    res.nimbus_only("snapshot", "private memory of a cold-booted VM of the same guest", "MiB",
                    "lower", cold_private, 2)
    res.notes.append(f"snapshot: 10 clones together keep {sum(private):.1f} MiB private, two "
                     f"cold-booted VMs {sum(cold_private):.1f} MiB. QEMU's microvm has no "
                     "file snapshot of this kind on this host: Nimbus only.")
    shutil.rmtree(work, ignore_errors=True)
    if "linux" in args.only:
        bench_kit_snapshot(res, args)


def bench_kit_snapshot(res, args):
    """The kit Linux at its shell: benches/kit_snapshot.py (slow: two cold boots)."""
    cmd = [sys.executable, os.path.join(ROOT, "benches", "kit_snapshot.py"), Ctx.nimbus,
           os.path.join(ROOT, "target", "guest-kit"), ROOT, "--runs", str(max(3, args.runs))]
    log("snapshot (kit Linux): " + " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    got = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0] == "kitsnap":
            got[parts[1]] = [float(v) for v in parts[2:]]
    if not got:
        log(f"kit snapshot: failed\n{out.stdout[-1000:]}\n{out.stderr[-1500:]}")
        return
    rows = (("cold-answer-ms", "kit Linux: exec -> the shell's first answer, cold boot", "ms", 0),
            ("restore-answer-ms", "kit Linux: exec -> the restored shell's first answer", "ms", 0),
            ("migrate-ms", "kit Linux: QMP migrate of the shell (256 MiB)", "ms", 0),
            ("size-mib", "kit Linux: snapshot size on disk", "MiB", 1),
            ("cold-private-mib", "kit Linux: private memory, cold-booted VM at its shell", "MiB", 1),
            ("restore-private-mib", "kit Linux: private memory, one restored VM", "MiB", 1),
            ("clone-private-mib", "kit Linux: private memory of each of 10 clones", "MiB", 1))
    for key, metric, unit, digits in rows:
        if key in got:
            res.nimbus_only("snapshot", metric, unit, "lower", got[key], digits)
    clones = got.get("clone-private-mib", [])
    cold = got.get("cold-private-mib", [])
    if clones and cold:
        res.notes.append(f"snapshot (kit Linux): {len(clones)} clones of one template keep "
                         f"{sum(clones):.1f} MiB private together; two cold-booted VMs "
                         f"{2 * statistics.median(cold):.1f} MiB.")


def parallel_rate(cmd, total, conc):
    """VMs per second for `total` runs of `cmd`, `conc` at a time; None if one failed."""
    def one(_):
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, timeout=120).returncode

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(conc) as pool:
        rcs = list(pool.map(one, range(total)))
    wall = time.perf_counter() - t0
    bad = sum(1 for rc in rcs if rc != 0)
    return None if bad else total / wall


def bench_parallel(res, args):
    """Lifecycle: the boot-report guest (303 console bytes, two port exits each), and the
    `nimbus.quiet` guest (one line, then reset), which leaves mostly the VMMs' own cost."""
    total, conc = args.vms, 8
    for what, append in (("", BASE_APPEND), (", guest resets at once (nimbus.quiet)",
                                              BASE_APPEND + " nimbus.quiet")):
        vals = {"nimbus": [], "qemu": []}
        for _, name, make in alternate(args.runs):
            rate = parallel_rate(make(append), total, conc)
            if rate is None:
                log(f"parallel: {name}: a VM failed{what}")
                continue
            vals[name].append(rate)
        res.vm("parallel", f"VMs started and stopped per second ({total} VMs, {conc} at a "
               f"time{what})", "VMs/s", "higher", vals["nimbus"], vals["qemu"], 1)


VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
FS_TAG = "benchfs"


def kit_dir():
    return os.path.join(ROOT, "target", "guest-kit")


def kit_fsbench_append(reboot):
    """The kit's command line for this host, root read-only on vda, /init in kit.mode=fsbench."""
    name = "cmdline.txt" if os.path.exists("/sys/module/kvm_pvm") else "cmdline-kvm.txt"
    with open(os.path.join(ROOT, "guest-kit", name)) as f:
        words = f.read().split()
    swap = {"rw": "ro", "kit.mode=boot": "kit.mode=fsbench", "reboot=k": f"reboot={reboot}"}
    return " ".join([swap.get(w, w) for w in words] + [f"kit.fstag={FS_TAG}"])


def virtiofs_share(path, mib, files):
    """The share: `big` (mib MiB of random data) and `many/` with `files` small files."""
    os.makedirs(os.path.join(path, "many"))
    with open("/dev/urandom", "rb") as src, open(os.path.join(path, "big"), "wb") as dst:
        for _ in range(mib):
            dst.write(src.read(1 << 20))
    for i in range(files):
        with open(os.path.join(path, "many", f"file-{i:04d}"), "w") as f:
            f.write(f"{i}\n")


class Virtiofsd:
    """A fresh virtiofsd serving `source` on `sock` (same options for every VM); stopped, with
    the sandbox child it forks (its own process group), when the block ends."""

    def __init__(self, source, sock):
        self.sock, self.source = sock, source
        self.log = tempfile.TemporaryFile()

    def __enter__(self):
        if os.path.exists(self.sock):
            os.remove(self.sock)
        self.proc = subprocess.Popen([VIRTIOFSD, f"--socket-path={self.sock}", "-o",
                                      f"source={self.source}", "-o", "cache=none"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while b"Waiting for vhost-user socket connection" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"virtiofsd did not listen: {self.output()[-400:]!r}")
            time.sleep(0.02)
        return self

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def __exit__(self, *exc):
        try:
            self.proc.wait(timeout=5)  # it exits when the VM's connection closes
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()
        if os.path.exists(self.sock):
            os.remove(self.sock)


def virtiofs_cmds(sock):
    """Nimbus's and QEMU's command lines: the kit vmlinux, 1 vCPU, 256 MiB of shared RAM, the
    kit's root file system read-only on virtio-blk, virtio-fs on `sock`."""
    kit = kit_dir()
    vmlinux, rootfs = os.path.join(kit, "vmlinux"), os.path.join(kit, "rootfs.ext4")
    nimbus = [Ctx.nimbus, "-machine", "microvm,mem-share=on", "-smp", "1", "-m", "256",
              "-kernel", vmlinux, "-append", kit_fsbench_append("k"), "-serial", "stdio",
              "-drive", f"id=rootfs,file={rootfs},readonly=on",
              "-device", "virtio-blk-device,drive=rootfs,id=rootfs",
              "-chardev", f"socket,id=c,path={sock}",
              "-device", f"vhost-user-fs-device,id=fs0,chardev=c,tag={FS_TAG}"]
    # QEMU's microvm has no i8042: the kit resets by triple fault, which -no-reboot ends.
    qemu = [QEMU, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off",
            "-enable-kvm", "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "256M",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
            "-machine", "memory-backend=mem",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", vmlinux, "-append", kit_fsbench_append("t"),
            "-drive", f"id=rootfs,file={rootfs},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=rootfs",
            "-chardev", f"socket,id=c,path={sock}",
            "-device", f"vhost-user-fs-device,chardev=c,tag={FS_TAG}",
            "-global", "virtio-mmio.force-legacy=false"]
    return {"nimbus": nimbus, "qemu": qemu}


def fsbench_run(cmd, mib, files):
    """(read seconds, stat seconds) from the console timestamps of one kit.mode=fsbench boot,
    or None."""
    vm = VmRun(cmd, timeout=900)
    t = {k: vm.at(f"KIT fsbench {k}") for k in ("read start", "read done", "stat start",
                                                 "stat done")}
    read_ok = vm.line(f"KIT fsbench read done bytes={mib << 20} ")
    stat_ok = vm.line(f"KIT fsbench stat done files={files} ")
    if None in t.values() or not read_ok or not stat_ok or vm.line("KIT fsbench done") is None:
        log(f"virtiofs: run failed\n{vm.describe()}")
        return None
    return t["read done"] - t["read start"], t["stat done"] - t["stat start"]


def bench_virtiofs(res, args):
    if not os.path.exists(VIRTIOFSD):
        res.notes.append(f"virtio-fs: {VIRTIOFSD} missing (qemu-system-common)")
        return
    subprocess.run([os.path.join(ROOT, "guest-kit", "build.sh")], check=True,
                   stdout=sys.stderr)
    mib, files = (16, 250) if args.quick else (64, 1000)
    runs = args.runs_given or 1
    tmp = tempfile.mkdtemp(prefix="nimbus-fs-bench-", dir="/var/tmp")
    try:
        share, sock = os.path.join(tmp, "share"), os.path.join(tmp, "virtiofsd.sock")
        virtiofs_share(share, mib, files)
        cmds = virtiofs_cmds(sock)
        read = {"nimbus": [], "qemu": []}
        stat = {"nimbus": [], "qemu": []}
        for _, name, _make in alternate(runs):
            with Virtiofsd(share, sock):
                got = fsbench_run(cmds[name], mib, files)
            if got:
                log(f"virtiofs: {name}: read {got[0]:.1f} s, stat {got[1]:.1f} s")
                read[name].append(got[0])
                stat[name].append(got[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res.vm("virtiofs", f"virtio-fs sequential read, {mib} MiB file, 1 MiB reads (kit Linux)",
           "MiB/s", "higher", [mib / t for t in read["nimbus"]], [mib / t for t in read["qemu"]], 2)
    res.vm("virtiofs", f"virtio-fs lstat of {files:,} files (kit Linux)", "s", "lower",
           stat["nimbus"], stat["qemu"], 1)
    res.notes.append(f"virtio-fs: {runs} run(s) per VMM, alternating; a fresh virtiofsd (Debian's C one, -o cache=none) per VM on the "
                     "same share; the kit Linux (1 vCPU, 256 MiB shared RAM: -machine "
                     "mem-share=on / memory-backend-memfd,share=on) times each phase by the "
                     "host's timestamps of its console lines; under kvm-pvm the guest kernel's "
                     "FUSE and virtqueue work is emulated, so this is per-request cost, not "
                     "disk speed.")


def bench_linux(res, args):
    cmd = [sys.executable, os.path.join(ROOT, "benches", "linux_boot.py"), "--runs", "1",
           "--nimbus", Ctx.nimbus]
    log("linux: " + " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    res.extra.append(("Linux kit boot (benches/linux_boot.py --runs 1, seconds from exec):",
                      out.stdout or out.stderr[-1500:]))


# ---- setup --------------------------------------------------------------------------------------

def ensure_tools():
    missing = [pkg for tool, pkg in ((QEMU, "qemu-system-x86"), ("fio", "fio"))
               if shutil.which(tool) is None]
    if missing:
        log(f"installing {' '.join(missing)}")
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                       check=False)


def build(args, res):
    os.makedirs(args.out, exist_ok=True)
    subprocess.run([os.path.join(ROOT, "guests", "build.sh"), os.path.join(args.out, "guests")],
                   check=True)
    Ctx.kernel = os.path.join(args.out, "guests", "hello-pvh.elf")
    if args.no_build:
        res.notes.append(f"--no-build: measured the existing {Ctx.nimbus}")
        return
    log("cargo build --release --bin nimbus")
    r = subprocess.run(["cargo", "build", "--release", "--bin", "nimbus"], cwd=ROOT)
    if r.returncode != 0:
        if not os.path.exists(Ctx.nimbus):
            sys.exit("build failed and there is no target/x86_64-unknown-linux-gnu/release/nimbus")
        when = datetime.datetime.fromtimestamp(os.path.getmtime(Ctx.nimbus)).isoformat(" ", "seconds")
        log(f"WARNING: cargo build failed; measuring the existing {Ctx.nimbus} ({when})")
        res.notes.append(f"cargo build failed in the shared checkout: measured the existing "
                         f"{Ctx.nimbus} built {when}")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine_header(args):
    def first(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"
    qv = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    kvm = "kvm-pvm (software hypervisor)" if os.path.exists("/sys/module/kvm_pvm") else "KVM"
    return (f"Nimbus {commit} vs {qv}; {first('/proc/cpuinfo', 'model name')}, "
            f"{os.cpu_count()} CPUs, Linux {os.uname().release}, /dev/kvm: {kvm}; "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; runs per VMM: "
            f"{args.runs} ({args.runs_startup} for start-up); median (min-max).")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and smaller workloads")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(ALL + EXTRA))
    ap.add_argument("--linux", action="store_true", help="add the Linux kit boot (slow)")
    ap.add_argument("--runs", type=int, help="runs per VMM (default 5, quick 1)")
    ap.add_argument("--no-build", action="store_true", help="use the existing binaries")
    ap.add_argument("--nimbus", help="measure this nimbus binary (implies --no-build)")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: /dev/kvm and a tap for the net benchmark")
    os.chdir(ROOT)
    if args.nimbus:
        Ctx.nimbus = os.path.abspath(args.nimbus)
        args.no_build = True
    q = args.quick
    args.runs_given = args.runs
    args.runs = args.runs or (1 if q else 5)
    args.runs_startup = max(args.runs, 3 if q else 10)
    args.runs_memory = max(1, min(args.runs, 3))
    args.exits = 20000 if q else 100000
    args.blk_reqs = 2000 if q else 10000
    args.blk_seq = 500 if q else 2000
    args.frames = 5000 if q else 20000
    args.vms = 16 if q else 40
    args.secs = 2 if q else 3
    args.con_virtio = (1 if q else 8) << 20
    args.con_uart = (16 if q else 64) << 10
    only = args.only.split(",") if args.only else list(ALL)
    if args.linux and "linux" not in only:
        only.append("linux")
    args.only = only
    unknown = [o for o in only if o not in ALL + EXTRA]
    if unknown:
        sys.exit(f"unknown sub-benchmark(s): {','.join(unknown)}")

    res = Results()
    ensure_tools()
    build(args, res)
    header = machine_header(args)
    funcs = {"size": bench_size, "startup": bench_startup, "memory": bench_memory,
             "exits": bench_exits, "blk": bench_blk, "blkdepth": bench_blkdepth,
             "vhostuser": bench_vhostuser,
             "net": bench_net, "vsock": bench_vsock, "snapshot": bench_snapshot,
             "parallel": bench_parallel, "linux": bench_linux, "virtiofs": bench_virtiofs,
             "console": bench_console, "devmodel": bench_devmodel}
    load0 = loadavg()
    t0 = time.monotonic()
    for name in ALL + EXTRA:
        if name in only:
            t = time.monotonic()
            log(f"== {name}")
            funcs[name](res, args)
            log(f"== {name}: {time.monotonic() - t:.0f} s")
    res.notes.append(f"load average before / after: {load0} / {loadavg()} (other work on this "
                     "host skews every row; compare Nimbus with QEMU of the same run)")
    res.notes.append(f"total benchmark time {time.monotonic() - t0:.0f} s "
                     f"(`{' '.join(['benches/run.sh'] + sys.argv[1:])}`)")
    md = markdown(res, header)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"header": header, "rows": res.rows, "host": res.host, "notes": res.notes,
                   "extra": res.extra}, f, indent=1)
    print(md)
    log(f"written: {args.out}/results.md, results.json")


if __name__ == "__main__":
    main()
