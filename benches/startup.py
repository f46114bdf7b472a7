#!/usr/bin/env python3
"""Startup benchmark: exec -> first guest console byte (ms) and idle RSS without guest RAM.

Usage: benches/startup.py [--runs N] [--nimbus PATH] [--kernel PATH]
Boots the project's test guest (guests/build.sh) with `-serial stdio`; for the memory figure
the guest idles (`nimbus.test=hang`) while /proc/PID/smaps is read, then the VM is killed.
"""
import argparse, os, statistics, subprocess, sys, time

def first_byte_ms(cmd):
    start = time.perf_counter_ns()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.read(proc.stdout.fileno(), 1)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    proc.stdout.read()
    proc.wait()
    return elapsed

def idle_memory(cmd, ram_mib):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    buf = b""
    while b"hang: now" not in buf:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise SystemExit("guest ended before idling")
        buf += chunk
    time.sleep(0.3)
    total = ram = 0
    size_kb = None
    with open(f"/proc/{proc.pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                size_kb = (hi - lo) // 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                total += rss
                if size_kb == ram_mib * 1024:
                    ram += rss
    threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    proc.kill(); proc.wait()
    return total, ram, threads

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--nimbus", default="target/x86_64-unknown-linux-gnu/release/nimbus")
    ap.add_argument("--kernel", default="target/guests/hello.elf")
    args = ap.parse_args()
    base = [args.nimbus, "-machine", "microvm", "-m", "128", "-kernel", args.kernel, "-serial", "stdio"]
    times = [first_byte_ms(base + ["-append", "console=ttyS0"]) for _ in range(args.runs)]
    print(f"exec -> first console byte: median {statistics.median(times):.2f} ms, "
          f"min {min(times):.2f}, max {max(times):.2f} ({args.runs} runs)")
    total, ram, threads = idle_memory(base + ["-append", "nimbus.test=hang"], 128)
    print(f"idle RSS {total} KiB, of which guest RAM {ram} KiB -> VMM {total - ram} KiB; threads {threads}")

if __name__ == "__main__":
    sys.exit(main())
