#!/usr/bin/env python3
"""Snapshots of the guest kit's Linux at its shell (issue 15), Nimbus only, in one run:

- cold boot: exec -> the shell's first answer to a typed command;
- QMP migrate of the shell: time and size on disk;
- restore: exec -> the restored shell's first answer (median, min-max);
- private memory (smaps_rollup Private_*) of one restored VM, of each of 10 restored at once
  from the one snapshot, and of a cold-booted VM at its shell; the totals of 10 clones and of
  2 cold boots.

usage: benches/kit_snapshot.py NIMBUS KIT_DIR REPO_ROOT [--runs N]
Prints `kitsnap <key> <values...>` lines for bench.py. The kit boots from its initramfs (no
disk: clones need nothing of their own but a QMP socket). Boots take ~25 s under kvm-pvm.
"""
import argparse, os, shutil, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (qmp_call, private_kib)


def cmdline(root):
    name = "cmdline.txt" if os.path.exists("/sys/module/kvm_pvm") else "cmdline-kvm.txt"
    with open(os.path.join(root, "guest-kit", name)) as f:
        words = [w for w in f.read().split() if w not in ("root=/dev/vda", "rw")]
    return " ".join(w if not w.startswith("kit.mode=") else "kit.mode=shell" for w in words)


class Shell:
    """A kit VM on a pipe: lines as they come, with the time since exec."""

    def __init__(self, cmd):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append((time.monotonic() - self.t0, raw.decode(errors="replace")))
                self.cond.notify_all()

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in self.lines:
                    if text in line:
                        return t
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.cond.wait(min(left, 0.2))

    def type(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def answer(self, tag, timeout):
        """Types `echo` of a marker built so that the typed line never matches; returns the
        time since exec of the answer."""
        self.type(f"echo ans{tag}wer-$((1+1))")
        return self.wait_for(f"ans{tag}wer-2", timeout)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def private_mib(pid):
    return bench.private_kib(pid) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("nimbus")
    ap.add_argument("kit")
    ap.add_argument("root")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clones", type=int, default=10)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-kitsnap-")
    snap = os.path.join(work, "snap")
    base = [args.nimbus, "-machine", "microvm", "-smp", "1", "-m", "256", "-serial", "stdio"]
    boot = ["-kernel", os.path.join(args.kit, "vmlinux"),
            "-initrd", os.path.join(args.kit, "initramfs.cpio.gz"), "-append", cmdline(args.root)]

    def monitor(tag):
        return ["-qmp", f"unix:{os.path.join(work, tag)}.qmp,server,nowait"]

    try:
        # Cold boots: exec -> the shell's first answer; one becomes the template.
        cold, cold_private = [], []
        template = None
        for i in range(2):
            vm = Shell(base + boot + monitor(f"cold{i}"))
            if vm.wait_for("guest-kit shell", 300) is None:
                sys.exit("kitsnap: the kit did not reach its shell")
            t = vm.answer(f"cold{i}", 120)
            if t is not None:
                cold.append(t * 1e3)
            time.sleep(1)
            cold_private.append(private_mib(vm.proc.pid))
            if i == 0:
                template = vm
            else:
                vm.kill()
        replies = bench.qmp_call(os.path.join(work, "cold0.qmp"),
                                 [("stop", None), ("migrate", {"uri": f"file:{snap}"}),
                                  ("query-migrate", None)])
        template.kill()
        info = replies[-1].get("return", {})
        if info.get("status") != "completed":
            sys.exit(f"kitsnap: migrate failed: {replies}")
        st = os.stat(os.path.join(snap, "memory"))
        size = (st.st_blocks * 512 + os.path.getsize(os.path.join(snap, "state"))) / 2**20
        print(f"kitsnap migrate-ms {info['total-time']}")
        print(f"kitsnap size-mib {size:.1f}")
        print("kitsnap cold-answer-ms " + " ".join(f"{v:.0f}" for v in cold))
        print("kitsnap cold-private-mib " + " ".join(f"{v:.2f}" for v in cold_private))

        restore = base + ["-incoming", f"file:{snap}"]
        restored, one_private = [], []
        for i in range(args.runs):
            vm = Shell(restore + monitor(f"r{i}"))
            t = vm.answer(f"r{i}", 60)
            if t is not None:
                restored.append(t * 1e3)
                time.sleep(0.5)
                one_private.append(private_mib(vm.proc.pid))
            vm.kill()
        print("kitsnap restore-answer-ms " + " ".join(f"{v:.0f}" for v in restored))
        print("kitsnap restore-private-mib " + " ".join(f"{v:.2f}" for v in one_private))

        clones = [Shell(restore + monitor(f"c{i}")) for i in range(args.clones)]
        try:
            answered = [c.answer(f"c{i}", 120) for i, c in enumerate(clones)]
            time.sleep(0.5)
            private = [private_mib(c.proc.pid) for c, a in zip(clones, answered) if a is not None]
        finally:
            for c in clones:
                c.kill()
        print(f"kitsnap clones-answered {sum(a is not None for a in answered)} {args.clones}")
        print("kitsnap clone-private-mib " + " ".join(f"{v:.2f}" for v in private))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
