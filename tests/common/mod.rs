//! Harness shared by the integration tests: builds the test guests (`guests/build.sh`) once per
//! test binary, starts the real `nimbus` binary with a deadline, collects its console (stdout)
//! and errors (stderr), and computes what the guest should report for a given command line.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod kata;
pub mod packet;
pub mod tap;
pub mod virtiofsd;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test.
pub const NIMBUS: &str = env!("CARGO_BIN_EXE_nimbus");

/// How long a VM may run before the harness kills it and fails the test.
pub const VM_TIMEOUT: Duration = Duration::from_secs(30);

/// E820 / PVH memory map types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Start of the 32-bit MMIO hole: RAM above it moves to 4 GiB.
const MMIO_HOLE_START: u64 = 3 * GIB;
const HIGH_RAM_START: u64 = 4 * GIB;
/// End of conventional memory: the MP table and the EBDA live above it.
const LOW_RAM_END: u64 = 0x9fc00;
const HIGH_MEMORY: u64 = 0x10_0000;

/// The address the in-kernel IOAPIC answers at, which the MP table must announce.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The MP table has one I/O interrupt entry per IOAPIC pin.
pub const IOAPIC_PINS: u32 = 24;

// ---- environment ------------------------------------------------------------------------------

/// Whether /dev/kvm can be used. Without it a test returns early after a loud SKIP message,
/// except under CI (env `CI` set), where a missing /dev/kvm fails the test.
pub fn kvm_usable() -> bool {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "/dev/kvm is not usable ({e}) and CI is set: the VM tests must run in CI"
            );
            eprintln!("\n*** SKIP: /dev/kvm is not usable ({e}); this VM test did not run ***\n");
            false
        }
    }
}

/// Whether /dev/kvm is kvm-pvm, which emulates every guest instruction and stops on some
/// (popcnt, SSE, int3, ...) with KVM_EXIT_INTERNAL_ERROR.
pub fn host_is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Fails the test, naming scripts/test.sh, when QEMU's Python client library `qemu.qmp` is
/// missing: the QMP tests drive Nimbus with the client that QEMU's own scripts use, and tests
/// install nothing themselves (scripts/test.sh installs it).
pub fn require_qemu_qmp() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import qemu.qmp"])
            .output()
            .expect("run python3 to look for qemu.qmp");
        assert!(
            out.status.success(),
            "the Python module qemu.qmp is missing (python3 -c 'import qemu.qmp': {}); \
             scripts/test.sh installs it, or run `python3 -m pip install qemu.qmp`",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    });
}

/// Runs `script`, one of the qemu.qmp clients in tests/qmp, with `args` to its end (killed
/// after 60 s), and fails the test with what it printed unless it succeeded.
pub fn run_qmp_client<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) {
    require_qemu_qmp();
    let out = Command::new("timeout")
        .args(["60", "python3", script])
        .args(args)
        .output()
        .expect("run the qemu.qmp client");
    assert!(
        out.status.success(),
        "qemu.qmp client {script} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory for files a test writes (initrds), shared by all test binaries.
pub fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scratch");
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// A sparse raw disk image of `sectors` 512-byte sectors, `name` in the scratch directory.
pub fn disk_image(name: &str, sectors: u64) -> PathBuf {
    let path = scratch_dir().join(name);
    let file = std::fs::File::create(&path).expect("create the disk image");
    file.set_len(sectors * 512).expect("size the disk image");
    path
}

// ---- guests -----------------------------------------------------------------------------------

/// The path of a guest built by `guests/build.sh` (hello.elf, hello-pvh.elf, hello.bzimage,
/// hello.bin, text.txt, empty). The first call in a test binary builds them all.
pub fn guest(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_guests).join(name)
}

/// Runs guests/build.sh. It renames each finished file into place, so test binaries running
/// it at the same time into the same directory never see a half-written guest.
fn build_guests() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    run_build_script("guests/build.sh", &out);
    out
}

/// Runs the workspace's bash script `script` (a path from the workspace root) with the output
/// directory `out`, its stdin closed, and fails the test with its output unless it succeeds.
pub fn run_build_script(script: &str, out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let result = Command::new("bash")
        .arg(&script)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("start bash to run {}: {e}", script.display()));
    assert!(
        result.status.success(),
        "{} failed ({}):\n{}{}",
        script.display(),
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// The four encodings of the same guest program and what it calls itself in its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Elf,
    Pvh,
    BzImage,
    Raw,
}

impl Format {
    pub fn file(self) -> &'static str {
        match self {
            Format::Elf => "hello.elf",
            Format::Pvh => "hello-pvh.elf",
            Format::BzImage => "hello.bzimage",
            Format::Raw => "hello.bin",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Elf => "elf",
            Format::Pvh => "pvh",
            Format::BzImage => "bzimage",
            Format::Raw => "raw",
        }
    }
}

/// Writes an initrd of `size` bytes (at least 14) that starts with "NIMBUS-INITRD\n", so the
/// guest reports `first=NIMBUS-INITRD`.
pub fn write_initrd(name: &str, size: usize) -> PathBuf {
    let mut data = b"NIMBUS-INITRD\n".to_vec();
    assert!(
        size >= data.len(),
        "an initrd of {size} bytes cannot hold its header"
    );
    data.extend((data.len()..size).map(|i| b'a' + (i % 26) as u8));
    let path = scratch_dir().join(name);
    std::fs::write(&path, &data).expect("write the initrd");
    path
}

// ---- running nimbus ---------------------------------------------------------------------------

/// The usual command line: `-machine microvm -smp N -m MiB -kernel K [-initrd I] -append A
/// -serial stdio`.
pub struct VmConfig {
    pub kernel: PathBuf,
    pub mem_mib: u64,
    pub cpus: u32,
    pub append: String,
    pub initrd: Option<PathBuf>,
    /// More flags after the standard ones (e.g. `-drive ... -device ...`).
    pub extra_args: Vec<String>,
}

impl VmConfig {
    pub fn new(format: Format, mem_mib: u64, append: &str) -> Self {
        VmConfig {
            kernel: guest(format.file()),
            mem_mib,
            cpus: 1,
            append: append.to_string(),
            initrd: None,
            extra_args: Vec::new(),
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-machine".into(),
            "microvm".into(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.mem_mib.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
        ];
        if let Some(initrd) = &self.initrd {
            args.push("-initrd".into());
            args.push(initrd.display().to_string());
        }
        args.extend([
            "-append".into(),
            self.append.clone(),
            "-serial".into(),
            "stdio".into(),
        ]);
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// `args` with the value that follows `flag` replaced by `value`.
pub fn replace_arg(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let i = args
        .iter()
        .position(|a| a == flag)
        .expect("the flag is in the arguments");
    args[i + 1] = value.to_string();
    args
}

/// Bytes a reader thread has collected from one of the child's pipes.
#[derive(Default)]
struct Pipe {
    data: Mutex<(Vec<u8>, bool)>,
    grew: Condvar,
}

impl Pipe {
    fn collect(self: Arc<Self>, mut from: impl Read + Send + 'static) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = from.read(&mut buf).unwrap_or(0);
                let mut data = self.data.lock().expect("pipe lock");
                if n == 0 {
                    data.1 = true;
                    self.grew.notify_all();
                    return;
                }
                data.0.extend_from_slice(&buf[..n]);
                self.grew.notify_all();
            }
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.data.lock().expect("pipe lock").0).into_owned()
    }
}

/// A running nimbus process. Its stdin stays an open pipe until it exits, as a terminal would.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Pipe>,
    stderr: Arc<Pipe>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    command: String,
}

/// What a finished nimbus run left behind.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub command: String,
}

impl Vm {
    pub fn spawn<S: AsRef<str>>(args: &[S]) -> Vm {
        Vm::spawn_with(args, |_| {})
    }

    /// Like [`Vm::spawn`], with `configure` applied to the command first (e.g. a `pre_exec`
    /// that hands nimbus an inherited descriptor).
    pub fn spawn_with<S: AsRef<str>>(args: &[S], configure: impl FnOnce(&mut Command)) -> Vm {
        Vm::spawn_program(NIMBUS, args, configure)
    }

    /// Like [`Vm::spawn_with`], running `program` (e.g. nimbus-jailer, which runs nimbus)
    /// instead of nimbus.
    pub fn spawn_program<S: AsRef<str>>(
        program: &str,
        args: &[S],
        configure: impl FnOnce(&mut Command),
    ) -> Vm {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut command = Command::new(program);
        configure(&mut command);
        let mut child = command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the nimbus binary");
        let stdout = Arc::new(Pipe::default());
        let stderr = Arc::new(Pipe::default());
        let readers = vec![
            Arc::clone(&stdout).collect(child.stdout.take().expect("stdout is piped")),
            Arc::clone(&stderr).collect(child.stderr.take().expect("stderr is piped")),
        ];
        Vm {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
            command: format!(
                "{} {}",
                Path::new(program)
                    .file_name()
                    .map_or(program.into(), |n| n.to_string_lossy()),
                shell_words(&args)
            ),
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        stdin.write_all(data).expect("write to nimbus's stdin");
        stdin.flush().expect("flush nimbus's stdin");
    }

    /// Waits until stdout holds the complete line `line`; kills the VM and fails the test if it
    /// does not come within `timeout` or the VM closes its stdout first.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let stdout = Arc::clone(&self.stdout);
        let mut data = stdout.data.lock().expect("pipe lock");
        loop {
            if lines(&String::from_utf8_lossy(&data.0)).contains(&line) {
                return;
            }
            let now = Instant::now();
            if data.1 || now >= deadline {
                let why = if data.1 {
                    "nimbus closed its stdout"
                } else {
                    "timed out"
                };
                drop(data);
                self.fail(&format!("waiting for the line {line:?}: {why}"));
            }
            data = stdout
                .grew
                .wait_timeout(data, deadline - now)
                .expect("pipe lock")
                .0;
        }
    }

    /// What nimbus wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }

    /// What nimbus wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Sends `signal` (libc::SIGTERM, ...) to nimbus.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) only sends a signal; the pid is our own child, which cannot have
        // been reaped (and its pid reused) before `wait` consumes `self`.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for nimbus to exit; kills it and fails the test if it still runs `timeout` from
    /// now.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for nimbus") {
                break status;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("still running after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        drop(self.stdin.take());
        for reader in self.readers.drain(..) {
            reader.join().expect("pipe reader thread");
        }
        Output {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            elapsed,
            command: self.command.clone(),
        }
    }

    /// Kills nimbus and fails the test with everything it printed.
    pub fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Give the reader threads a moment to drain the pipes, without relying on them ending
        // (a stuck grandchild could hold the pipes open).
        std::thread::sleep(Duration::from_millis(100));
        panic!(
            "{}: {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout.text(),
            self.stderr.text()
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A test that panicked half way must not leave a VM behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs nimbus to completion with the standard deadline.
pub fn run<S: AsRef<str>>(args: &[S]) -> Output {
    Vm::spawn(args).wait(VM_TIMEOUT)
}

/// `args` as one shell command line, each quoted when it needs it: for messages that show how
/// nimbus was started.
pub fn shell_words<S: AsRef<str>>(args: &[S]) -> String {
    let quote = |a: &str| {
        if !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=,:".contains(&b))
        {
            a.to_string()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    args.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Console lines without their line ending ("\n" or "\r\n").
pub fn lines(text: &str) -> Vec<&str> {
    text.lines().map(|l| l.trim_end_matches('\r')).collect()
}

impl Output {
    /// The whole run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{}\nexit: {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        lines(&self.stdout)
    }

    /// The first non-empty line of stderr: the one that must name the problem.
    pub fn first_stderr_line(&self) -> &str {
        lines(&self.stderr)
            .into_iter()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    /// Exit status 1 and exactly one stderr line, which names each of `needles`: how Nimbus
    /// refuses what it cannot start (a runtime reads the first line only).
    pub fn assert_one_error_line(&self, needles: &[&str]) {
        self.assert_exit_code(1);
        let first = self.first_stderr_line();
        for needle in needles {
            assert!(
                first.contains(needle),
                "stderr's line does not name {needle:?}\n{}",
                self.describe()
            );
        }
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "stderr is not one line\n{}",
            self.describe()
        );
    }

    pub fn assert_exit_code(&self, code: i32) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected exit status\n{}",
            self.describe()
        );
    }

    /// The guest's lines, from `NIMBUS-GUEST hello ...` to the end of stdout.
    pub fn guest_lines(&self) -> Vec<&str> {
        let all = self.stdout_lines();
        match all
            .iter()
            .position(|l| l.starts_with("NIMBUS-GUEST hello "))
        {
            Some(start) => all[start..].to_vec(),
            None => panic!(
                "the guest never printed its first line\n{}",
                self.describe()
            ),
        }
    }

    /// Asserts that the guest printed exactly `expected`: its boot report, its action lines
    /// and `NIMBUS-GUEST done`, with the mptable line checked by [`check_mptable_line`].
    pub fn assert_guest_output(&self, expected: &[String], cpus: u32) {
        let actual = self.guest_lines();
        let mut comparable: Vec<String> = actual.iter().map(|l| l.to_string()).collect();
        if let Some(i) = actual.iter().position(|l| l.starts_with("mptable: ")) {
            if let Err(problem) = check_mptable_line(actual[i], cpus) {
                panic!(
                    "bad mptable line {:?}: {problem}\n{}",
                    actual[i],
                    self.describe()
                );
            }
            // Checked above; compare the rest of the lines literally.
            comparable[i] = MPTABLE_CHECKED.to_string();
        }
        assert_eq!(
            comparable,
            expected,
            "the guest's output differs (left: actual, right: expected)\n{}",
            self.describe()
        );
    }
}

// ---- what the guest must report ---------------------------------------------------------------

/// Stands in for the mptable line in expected output; its content is checked field by field.
pub const MPTABLE_CHECKED: &str = "mptable: <checked separately>";

/// The E820 map the VMM must hand over for `-m mem_mib`: (addr, size, type).
pub fn expected_e820(mem_mib: u64) -> Vec<(u64, u64, u32)> {
    let ram = mem_mib * MIB;
    let mut map = vec![
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIGH_MEMORY - LOW_RAM_END, E820_RESERVED),
        (
            HIGH_MEMORY,
            ram.min(MMIO_HOLE_START) - HIGH_MEMORY,
            E820_RAM,
        ),
    ];
    if ram > MMIO_HOLE_START {
        map.push((HIGH_RAM_START, ram - MMIO_HOLE_START, E820_RAM));
    }
    map
}

/// The end of the RAM below the MMIO hole for `-m mem_mib`: where the initrd goes.
pub fn low_ram_end(mem_mib: u64) -> u64 {
    (mem_mib * MIB).min(MMIO_HOLE_START)
}

/// Where the VMM must put an initrd of `size` bytes that must end below `limit` (the end of
/// the RAM below 3 GiB, or lower for a bzImage's initrd_addr_max): as high as it fits, its
/// start aligned down to 4 KiB.
pub fn expected_initrd_addr(limit: u64, size: u64) -> u64 {
    (limit - size) & !0xfff
}

/// An initrd as the guest must report it.
pub struct ExpectedInitrd<'a> {
    pub addr: u64,
    pub size: u64,
    pub first: &'a str,
}

/// The guest's report up to and including the mptable line (as [`MPTABLE_CHECKED`]).
pub fn expected_report(
    format: Format,
    cmdline: &str,
    mem_mib: u64,
    initrd: Option<ExpectedInitrd>,
) -> Vec<String> {
    let map = expected_e820(mem_mib);
    let mut report = vec![
        format!("NIMBUS-GUEST hello format={}", format.name()),
        format!("cmdline: {cmdline}"),
        format!("e820: {}", map.len()),
    ];
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        report.push(format!(
            "e820[{i}]: addr={addr:#x} size={size:#x} type={kind}"
        ));
    }
    report.push(match initrd {
        None => "initrd: none".to_string(),
        Some(i) => format!(
            "initrd: addr={:#x} size={:#x} first={}",
            i.addr, i.size, i.first
        ),
    });
    report.push(MPTABLE_CHECKED.to_string());
    report
}

/// Checks `mptable: cpus=N apic_ids=0,1,.. ioapic_id=I ioapic_addr=0x.. irq_entries=24`:
/// one enabled processor per vCPU with APIC ids 0..N-1, the IOAPIC where KVM's in-kernel one
/// answers, with an id no processor uses, and one I/O interrupt entry per IOAPIC pin.
pub fn check_mptable_line(line: &str, cpus: u32) -> Result<(), String> {
    let fields = line
        .strip_prefix("mptable: ")
        .ok_or("no `mptable: ` prefix")?;
    let mut fields = fields
        .split(' ')
        .map(|f| f.split_once('=').unwrap_or((f, "")));
    let mut next = |key: &str| -> Result<String, String> {
        match fields.next() {
            Some((k, v)) if k == key => Ok(v.to_string()),
            other => Err(format!("expected field {key}, found {other:?}")),
        }
    };
    let apic_ids: Vec<String> = (0..cpus).map(|i| i.to_string()).collect();
    let expect = |key: &str, actual: String, wanted: String| {
        if actual == wanted {
            Ok(())
        } else {
            Err(format!("{key}={actual}, expected {wanted}"))
        }
    };
    expect("cpus", next("cpus")?, cpus.to_string())?;
    expect("apic_ids", next("apic_ids")?, apic_ids.join(","))?;
    let ioapic_id: u32 = next("ioapic_id")?
        .parse()
        .map_err(|e| format!("ioapic_id: {e}"))?;
    if ioapic_id < cpus || ioapic_id > 0xfe {
        return Err(format!(
            "ioapic_id={ioapic_id} collides with a processor or is invalid"
        ));
    }
    expect(
        "ioapic_addr",
        next("ioapic_addr")?,
        format!("{IOAPIC_ADDR:#x}"),
    )?;
    expect("irq_entries", next("irq_entries")?, IOAPIC_PINS.to_string())?;
    match fields.next() {
        None => Ok(()),
        Some(extra) => Err(format!("unexpected field {extra:?}")),
    }
}

/// Whether `line` names the command-line flag `flag` (e.g. "-m") as a word of its own, with
/// or without quotes, and not as the prefix of a longer flag such as "-machine".
pub fn names_flag(line: &str, flag: &str) -> bool {
    let bare = flag.trim_start_matches('-');
    line.match_indices(bare).any(|(i, _)| {
        let before = &line[..i];
        let after = line[i + bare.len()..].chars().next();
        before.ends_with('-')
            && !before
                .trim_end_matches('-')
                .ends_with(|c: char| c.is_alphanumeric())
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

/// `-qmp unix:<path>,server,nowait`: the flags for a QMP monitor on the Unix socket `path`.
pub fn qmp_args(path: &Path) -> [String; 2] {
    [
        "-qmp".to_owned(),
        format!("unix:{},server,nowait", path.display()),
    ]
}

/// The fields of `/proc/<path>/stat` after the command name (`path` is `PID` or
/// `PID/task/TID`): state first, then ppid, pgrp, session, ...; utime and stime are 11 and 12.
pub fn proc_stat_fields(path: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{path}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(") ").expect("stat format");
    rest.split_whitespace().map(str::to_owned).collect()
}

/// A bare QMP client over a Unix socket: sends commands, returns their replies and keeps the
/// events it met on the way.
pub struct QmpClient {
    writer: UnixStream,
    reader: std::io::BufReader<UnixStream>,
    /// Events read while waiting for replies.
    pub events: Vec<serde_json::Value>,
}

impl QmpClient {
    /// Connects (waiting up to [`VM_TIMEOUT`] for the socket to appear), reads the greeting and
    /// negotiates capabilities.
    pub fn connect(path: &Path) -> QmpClient {
        let deadline = Instant::now() + VM_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect to {}: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let mut client = QmpClient {
            writer: stream,
            reader,
            events: Vec::new(),
        };
        assert!(client.line().get("QMP").is_some(), "greeting");
        client.ok("qmp_capabilities", serde_json::json!({}));
        client
    }

    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.reader, &mut line).expect("read a QMP line");
        assert!(line.ends_with("\r\n"), "QMP lines end in CRLF: {line:?}");
        serde_json::from_str(&line).expect("a JSON object")
    }

    /// Sends a command and returns its reply; events met on the way are kept.
    pub fn execute(&mut self, command: &str, arguments: serde_json::Value) -> serde_json::Value {
        let request = serde_json::json!({"execute": command, "arguments": arguments});
        self.writer
            .write_all(request.to_string().as_bytes())
            .expect("send");
        loop {
            let message = self.line();
            if message.get("event").is_some() {
                self.events.push(message);
            } else {
                return message;
            }
        }
    }

    /// Sends `commands` in one write, so that Nimbus reads them together and runs them with no
    /// event handled in between, and returns their replies in order.
    pub fn execute_burst(
        &mut self,
        commands: &[(&str, serde_json::Value)],
    ) -> Vec<serde_json::Value> {
        let burst: String = commands
            .iter()
            .map(|(command, arguments)| {
                serde_json::json!({"execute": command, "arguments": arguments}).to_string()
            })
            .collect();
        self.writer.write_all(burst.as_bytes()).expect("send");
        let mut replies = Vec::new();
        while replies.len() < commands.len() {
            let message = self.line();
            if message.get("event").is_some() {
                self.events.push(message);
            } else {
                replies.push(message);
            }
        }
        replies
    }

    /// The error description of a command that must fail with `class`.
    pub fn error(&mut self, command: &str, arguments: serde_json::Value, class: &str) -> String {
        let reply = self.execute(command, arguments);
        assert_eq!(reply["error"]["class"], class, "{command}: {reply}");
        reply["error"]["desc"]
            .as_str()
            .expect("desc is a string")
            .to_owned()
    }

    /// Runs a command that must answer `{"return": {}}`.
    pub fn ok(&mut self, command: &str, arguments: serde_json::Value) {
        let reply = self.execute(command, arguments);
        assert_eq!(reply, serde_json::json!({"return": {}}), "{command}");
    }
}

/// A private directory in the scratch area (`<scratch>/<name>-<pid>`, emptied first), removed
/// when dropped, whatever the test's outcome.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = scratch_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        TempDir(dir)
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod harness_tests {
    use super::*;

    #[test]
    fn e820_for_memory_above_3_gib_moves_the_rest_above_4_gib() {
        assert_eq!(
            expected_e820(3200),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x60400, E820_RESERVED),
                (0x100000, 0xbff0_0000, E820_RAM),
                (0x1_0000_0000, 0x800_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn initrd_address_is_aligned_down_below_the_top_of_low_ram() {
        assert_eq!(expected_initrd_addr(low_ram_end(128), 5000), 0x7ffe000);
        assert_eq!(expected_initrd_addr(low_ram_end(4096), 4096), 0xbfff_f000);
    }

    #[test]
    fn mptable_line_with_colliding_ioapic_id_is_rejected() {
        let good = "mptable: cpus=2 apic_ids=0,1 ioapic_id=3 ioapic_addr=0xfec00000 irq_entries=24";
        assert_eq!(check_mptable_line(good, 2), Ok(()));
        let bad = good.replace("ioapic_id=3", "ioapic_id=1");
        assert!(check_mptable_line(&bad, 2).is_err());
        assert!(check_mptable_line(good, 1).is_err());
    }

    #[test]
    fn shell_words_quotes_only_the_words_that_need_it() {
        assert_eq!(
            shell_words(&["-m", "128", "console=ttyS0 quiet", "it's", ""]),
            r"-m 128 'console=ttyS0 quiet' 'it'\''s' ''"
        );
    }

    #[test]
    fn flag_names_are_matched_as_whole_words() {
        assert!(names_flag("invalid value '12xyz' for '-m'", "-m"));
        assert!(names_flag("-m: bad size", "-m"));
        assert!(!names_flag("unknown -machine type", "-m"));
        assert!(!names_flag("unknown flag", "-m"));
    }
}
