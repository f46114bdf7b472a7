#!/usr/bin/env python3
"""Regression guard (a benchmark, not part of the test suite): Nimbus/QEMU ratios of start-up
time and idle memory, measured in the same run, against the ratios recorded in
docs/performance.md (`<!-- guard: startup_ratio=R memory_ratio=R -->`).

Usage (root): benches/guard.py [--runs N] [--no-build] [--tolerance 0.25] [--no-device-model]

Start-up: exec -> first guest console byte, median of N runs per VMM, alternating.
Memory: idle RSS without the guest-RAM mapping (guest in `nimbus.test=hang`), median of 3.
Device model (issue 18): the virtio-blk device model alone against fio on the same file, one
request at a time (`blk_sync_ratio`) and at depth 32 over io_uring (`blk_uring_ratio`), median
of 3 alternating rounds; higher is better. The virtio-net device model against a plain
write/read loop on the same tap (`net_<tx|rx>_<60|1500>_ratio`, per-frame cost device/floor,
median of the bench's interleaved rounds); lower is better.
Comparing ratios rather than absolute figures cancels most of the host's speed and load.
Exit status 1 and a `REGRESSION:` line when a ratio is more than 25% worse than recorded
(higher for the QEMU ratios, lower for the device-model ratios); 0 and `OK` otherwise.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

DOC = os.path.join(bench.ROOT, "docs", "performance.md")
# Ratios where higher is better (the rest are Nimbus/QEMU, lower is better).
HIGHER_IS_BETTER = {"blk_sync_ratio", "blk_uring_ratio"}


def recorded(doc):
    with open(doc) as f:
        m = re.search(r"<!--\s*guard:\s*([^>]*?)\s*-->", f.read())
    if not m:
        sys.exit(f"no `<!-- guard: ... -->` line in {doc}")
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(1))}


def net_ratios():
    """{net_<tx|rx>_<bytes>_ratio: device/floor per-frame cost} from virtio's net bench."""
    out = subprocess.run(["cargo", "test", "-q", "-p", "virtio", "--release", "--", "--ignored",
                          "--nocapture", "--test-threads=1", "net::bench"],
                         capture_output=True, text=True, cwd=bench.ROOT)
    found = re.findall(r"BENCH net ratio (tx|rx) \([^)]*\) (\d+)-byte frames: ([\d.]+)x",
                       out.stdout)
    if not found:
        print(f"net device-model bench did not run: {out.stderr.strip()[-300:]}")
    return {f"net_{d}_{n}_ratio": float(r) for d, n, r in found}


def main():
    ap = argparse.ArgumentParser(description="Nimbus/QEMU start-up and memory ratio guard")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--tolerance", type=float, default=0.25)
    ap.add_argument("--doc", default=DOC, help="file with the recorded guard line")
    ap.add_argument("--no-device-model", action="store_true",
                    help="skip the device-model ratios (they build the virtio crate's tests)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: /dev/kvm")
    os.chdir(bench.ROOT)
    want = recorded(args.doc)
    out = os.path.join(bench.ROOT, "target", "bench")
    subprocess.run([os.path.join(bench.ROOT, "guests", "build.sh"), os.path.join(out, "guests")],
                   check=True)
    bench.Ctx.kernel = os.path.join(out, "guests", "hello-pvh.elf")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "nimbus"], check=True)

    first = {"nimbus": [], "qemu": []}
    for _, name, make in bench.alternate(args.runs):
        vm = bench.VmRun(make(bench.BASE_APPEND), timeout=30)
        if vm.rc == 0 and vm.first is not None:
            first[name].append(vm.first * 1e3)
    mem = {"nimbus": [], "qemu": []}
    for _, name, make in bench.alternate(3):
        v = bench.idle_vm(make)
        if v:
            mem[name].append((v[0] - v[1]) / 1024)
    for name in ("nimbus", "qemu"):
        if not first[name] or not mem[name]:
            sys.exit(f"guard: {name} did not boot; see the messages above")
    med = {k: {n: statistics.median(v[n]) for n in v} for k, v in
           (("startup", first), ("memory", mem))}
    now = {"startup_ratio": med["startup"]["nimbus"] / med["startup"]["qemu"],
           "memory_ratio": med["memory"]["nimbus"] / med["memory"]["qemu"]}
    print(f"exec -> first byte: Nimbus {med['startup']['nimbus']:.2f} ms, "
          f"QEMU {med['startup']['qemu']:.2f} ms (median of {args.runs})")
    print(f"idle RSS w/o guest RAM: Nimbus {med['memory']['nimbus']:.2f} MiB, "
          f"QEMU {med['memory']['qemu']:.2f} MiB (median of 3)")
    if not args.no_device_model:
        pairs = bench.blk_model_ratios(3, 2)
        for key, (_, _, ratios) in zip(("blk_sync_ratio", "blk_uring_ratio"), pairs.values()):
            if ratios:
                now[key] = statistics.median(ratios)
        now.update(net_ratios())
        for name, (dev, fio_v, _) in pairs.items():
            if dev:
                print(f"device model {name}: {statistics.median(dev):.0f} req/s, fio "
                      f"{statistics.median(fio_v):.0f} req/s (median of {len(dev)})")
    bad = []
    for key, value in now.items():
        ref = want.get(key)
        if ref is None:
            print(f"{key}={value:.3f} (nothing recorded)")
            continue
        worse = ref / value - 1 if key in HIGHER_IS_BETTER else value / ref - 1
        print(f"{key}={value:.3f} recorded {ref:.3f} ({worse:+.0%})")
        if worse > args.tolerance:
            bad.append(f"REGRESSION: {key} {value:.3f} is {worse:.0%} worse than the recorded "
                       f"{ref:.3f} (more than {args.tolerance:.0%} worse)")
    line = " ".join(f"{k}={v:.3f}" for k, v in now.items())
    print(f"<!-- guard: {line} -->  (this run)")
    if bad:
        print("\n".join(bad))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
