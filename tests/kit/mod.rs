//! Harness for booting the guest kit's Linux (guest-kit/) under nimbus: builds the kit once per
//! test binary (cached in `<workspace>/target/guest-kit`), picks the command line this host
//! needs, runs nimbus while timestamping each console line as it arrives, and computes the
//! lines Linux must print about what Nimbus handed it (command line, E820 map, initrd).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{
    expected_e820, expected_initrd_addr, host_is_kvm_pvm, low_ram_end, run_build_script,
    shell_words, VmConfig, E820_RAM, E820_RESERVED, NIMBUS,
};

// ---- the kit ------------------------------------------------------------------------------

/// The files guest-kit/build.sh produces.
pub struct Kit {
    pub dir: PathBuf,
}

impl Kit {
    /// The ELF vmlinux.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// `objcopy -O binary vmlinux`: loaded and entered at 16 MiB.
    pub fn vmlinux_bin(&self) -> PathBuf {
        self.dir.join("vmlinux.bin")
    }

    /// busybox-static + /init as an uncompressed newc cpio: the kernel copies it in ~15 s
    /// under kvm-pvm, where gunzipping initramfs.cpio.gz takes ~70 s.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio")
    }
}

/// Builds the kit the first time a test binary asks (minutes when nothing is cached, a
/// second when `<workspace>/target/guest-kit` is up to date). Call [`crate::common::kvm_usable`]
/// first, so that a host without /dev/kvm does not build a kernel it cannot boot.
pub fn kit() -> &'static Kit {
    static KIT: OnceLock<Kit> = OnceLock::new();
    KIT.get_or_init(build_kit)
}

fn build_kit() -> Kit {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest-kit");
    eprintln!(
        "building the guest kit into {} (minutes the first time, then cached)",
        dir.display()
    );
    run_build_script("guest-kit/build.sh", &dir);
    Kit { dir }
}

/// The kit's command line for this host: guest-kit/cmdline.txt on kvm-pvm, which emulates the
/// guest kernel and needs its workarounds, guest-kit/cmdline-kvm.txt on hardware KVM. With
/// `root_on_vda` the root file system is the first virtio-blk disk, otherwise the initramfs
/// (`root=/dev/vda rw` left out).
pub fn kit_cmdline(root_on_vda: bool) -> String {
    let file = if host_is_kvm_pvm() {
        "cmdline.txt"
    } else {
        "cmdline-kvm.txt"
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guest-kit")
        .join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.split_whitespace()
        .filter(|w| root_on_vda || (*w != "root=/dev/vda" && *w != "rw"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cmdline` with its `reboot=` option replaced by `reboot=<how>`.
pub fn with_reboot(cmdline: &str, how: &str) -> String {
    assert!(cmdline.contains("reboot="), "no reboot= in {cmdline:?}");
    cmdline
        .split(' ')
        .map(|w| {
            if w.starts_with("reboot=") {
                format!("reboot={how}")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- running nimbus with a timestamped console --------------------------------------------

/// One console line (without its line ending) and when it arrived, counted from the spawn.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

#[derive(Default)]
struct Console {
    state: Mutex<(Vec<Line>, bool)>,
    grew: Condvar,
}

/// A running nimbus whose stdout is read line by line as it arrives.
pub struct KitVm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    command: String,
}

/// Everything a nimbus run left behind.
pub struct Transcript {
    /// None when the harness killed nimbus.
    pub status: Option<ExitStatus>,
    pub lines: Vec<Line>,
    pub stderr: String,
    pub elapsed: Duration,
    pub command: String,
    /// What nimbus's threads were doing when the harness killed it, for hang reports.
    pub threads_at_kill: Option<String>,
}

impl KitVm {
    pub fn spawn(config: &VmConfig) -> KitVm {
        KitVm::spawn_with(&config.args(), |_| {})
    }

    /// Starts nimbus with exactly `args` (e.g. a container runtime's whole argument list),
    /// with `configure` applied to the command first (e.g. to hand over a descriptor).
    pub fn spawn_with(args: &[String], configure: impl FnOnce(&mut Command)) -> KitVm {
        let started = Instant::now();
        let mut command = Command::new(NIMBUS);
        configure(&mut command);
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the nimbus binary");
        let console = Arc::new(Console::default());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let readers = vec![
            read_lines(out, Arc::clone(&console), started),
            read_all(err, Arc::clone(&stderr)),
        ];
        KitVm {
            stdin: child.stdin.take(),
            child,
            console,
            stderr,
            readers,
            started,
            command: format!("nimbus {}", shell_words(args)),
        }
    }

    /// Types `text` on the console (nimbus's stdin, `-serial stdio`).
    pub fn type_text(&mut self, text: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("nimbus's stdin is closed"))?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()
    }

    /// Nimbus's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether nimbus still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The console lines so far.
    pub fn lines(&self) -> Vec<Line> {
        self.console.state.lock().expect("console lock").0.clone()
    }

    /// Waits until `done` holds for the lines so far, nimbus closes its stdout, or `timeout`
    /// passes; returns whether `done` held.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&[Line]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.console.state.lock().expect("console lock");
        loop {
            if done(&state.0) {
                return true;
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return false;
            }
            state = self
                .console
                .grew
                .wait_timeout(state, deadline - now)
                .expect("console lock")
                .0;
        }
    }

    /// Kills nimbus (if it still runs) and returns what it printed.
    pub fn kill(mut self) -> Transcript {
        let status = self.child.try_wait().expect("poll nimbus");
        let mut threads = None;
        if status.is_none() {
            threads = Some(thread_states(self.child.id()));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mut transcript = self.finish(status);
        transcript.threads_at_kill = threads;
        transcript
    }

    /// Waits for nimbus to exit; kills it after `timeout` and fails the test with its output.
    pub fn wait_exit(mut self, timeout: Duration) -> Transcript {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for nimbus") {
                return self.finish(Some(status));
            }
            if Instant::now() >= deadline {
                let transcript = self.kill();
                panic!(
                    "nimbus still ran after {timeout:?}\n{}",
                    transcript.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(&mut self, status: Option<ExitStatus>) -> Transcript {
        let elapsed = self.started.elapsed();
        drop(self.stdin.take());
        for reader in self.readers.drain(..) {
            reader.join().expect("console reader thread");
        }
        let lines = self.console.state.lock().expect("console lock").0.clone();
        let stderr = String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into();
        Transcript {
            status,
            lines,
            stderr,
            elapsed,
            command: self.command.clone(),
            threads_at_kill: None,
        }
    }
}

/// One line per thread of process `pid`: name, state, user and system CPU seconds, and the
/// kernel function it waits in.
fn thread_states(pid: u32) -> String {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(&tasks) else {
        return format!("cannot read {}", tasks.display());
    };
    let mut lines: Vec<String> = entries
        .flatten()
        .map(|task| {
            let read =
                |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
            let stat = read("stat");
            // Fields after the parenthesised name: state is the 3rd field, utime/stime 14/15.
            let fields: Vec<&str> = stat
                .rsplit_once(") ")
                .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
            let field = |i: usize| fields.get(i - 3).copied().unwrap_or("?");
            let ticks = |i: usize| field(i).parse::<f64>().map_or(f64::NAN, |t| t / 100.0);
            format!(
                "  {:<16} state {} user {:.1} s sys {:.1} s wchan {}",
                read("comm").trim(),
                field(3),
                ticks(14),
                ticks(15),
                read("wchan")
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

impl Drop for KitVm {
    fn drop(&mut self) {
        // A test that panicked half way must not leave a VM behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lines(
    from: impl Read + Send + 'static,
    console: Arc<Console>,
    t0: Instant,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut from = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = from.read_until(b'\n', &mut buf).unwrap_or(0);
            let mut state = console.state.lock().expect("console lock");
            if n == 0 {
                state.1 = true;
                console.grew.notify_all();
                return;
            }
            let text = String::from_utf8_lossy(&buf);
            state.0.push(Line {
                at: t0.elapsed(),
                text: text.trim_end_matches(['\n', '\r']).to_string(),
            });
            console.grew.notify_all();
        }
    })
}

fn read_all(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return;
            }
            into.lock()
                .expect("stderr lock")
                .extend_from_slice(&buf[..n]);
        }
    })
}

impl Transcript {
    /// The run with timestamped console lines, for assertion messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed by the test".to_string(),
        };
        let console: Vec<String> = self
            .lines
            .iter()
            .map(|l| format!("{:7.2} {}", l.at.as_secs_f64(), l.text))
            .collect();
        let threads = match &self.threads_at_kill {
            Some(t) => format!("\n--- nimbus threads when killed ---\n{t}"),
            None => String::new(),
        };
        format!(
            "{}\nexit: {status} after {:.2} s\n--- console (seconds since spawn) ---\n{}\n--- stderr ---\n{}{threads}",
            self.command,
            self.elapsed.as_secs_f64(),
            console.join("\n"),
            self.stderr
        )
    }

    /// The text of every console line, without a printk timestamp if the kernel adds one.
    pub fn texts(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(|l| strip_printk_time(&l.text))
            .collect()
    }

    /// The first line that starts with `prefix`.
    pub fn first(&self, prefix: &str) -> Option<&Line> {
        self.lines
            .iter()
            .find(|l| strip_printk_time(&l.text).starts_with(prefix))
    }

    /// When the first line starting with `prefix` arrived, in seconds since the spawn.
    pub fn seconds_to(&self, prefix: &str) -> Option<f64> {
        self.first(prefix).map(|l| l.at.as_secs_f64())
    }
}

/// `[    1.234567] text` -> `text` (CONFIG_PRINTK_TIME); other lines unchanged.
pub fn strip_printk_time(line: &str) -> &str {
    match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((time, text)) if time.trim().parse::<f64>().is_ok() => text,
        _ => line,
    }
}

// ---- what Linux must print about what Nimbus handed it ------------------------------------

/// The MP floating pointer must lie in the reserved area between conventional memory and
/// 1 MiB (the EBDA and BIOS area), where Linux's scan finds it.
pub const MPTABLE_AREA: (u64, u64) = (0x9fc00, 0x10_0000);
/// Stands in for a `found SMP MP-table at` line whose range lies in [`MPTABLE_AREA`].
pub const MPTABLE_FOUND: &str = "found SMP MP-table at [mem <in 0x9fc00..0x100000>]";

/// Command-line entries Nimbus appends to `-append`: one `virtio_mmio.device=` per virtio-mmio
/// device, in command-line order, from 0xd0000000 one page apart on IOAPIC pins 16, 17, ...
pub fn nimbus_cmdline_additions(config: &VmConfig) -> Vec<String> {
    let devices = config.extra_args.iter().filter(|a| *a == "-device").count() as u64;
    (0..devices)
        .map(|i| {
            format!(
                "virtio_mmio.device=4K@{:#x}:{}",
                0xd000_0000 + i * 0x1000,
                16 + i
            )
        })
        .collect()
}

/// `-drive`/`-device` flags for a virtio-blk disk backed by `image`.
pub fn disk_args(id: &str, image: &Path, readonly: bool) -> Vec<String> {
    let ro = if readonly { "on" } else { "off" };
    vec![
        "-drive".into(),
        format!("id={id},file={},readonly={ro}", image.display()),
        "-device".into(),
        format!("virtio-blk-device,drive={id},id={id}"),
    ]
}

impl Kit {
    /// The 32 MiB ext4 root file system (busybox + /init).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }
}

/// The lines Linux 6.1 prints early in `setup_arch` about the boot information, in the
/// order [`early_boot_report`] collects them.
pub fn expected_early_boot_report(config: &VmConfig, initrd_size: u64) -> Vec<String> {
    let mut cmdline = vec![config.append.clone()];
    cmdline.extend(nimbus_cmdline_additions(config));
    let mut report = vec![
        "Linux version 6.1.<n>-guestkit".to_string(),
        format!("Command line: {}", cmdline.join(" ")),
    ];
    for (addr, size, kind) in expected_e820(config.mem_mib) {
        let name = match kind {
            E820_RAM => "usable",
            E820_RESERVED => "reserved",
            other => panic!("unexpected E820 type {other}"),
        };
        report.push(format!(
            "BIOS-e820: [mem {addr:#018x}-{:#018x}] {name}",
            addr + size - 1
        ));
    }
    report.push(MPTABLE_FOUND.to_string());
    // Linux prints the initrd's first byte and the last byte of its last page.
    let start = expected_initrd_addr(low_ram_end(config.mem_mib), initrd_size);
    let end = (start + initrd_size).next_multiple_of(0x1000) - 1;
    report.push(format!("RAMDISK: [mem {start:#010x}-{end:#010x}]"));
    report.push(format!(
        "smpboot: Allowing {} CPUs, 0 hotplug CPUs",
        config.cpus
    ));
    report
}

/// Whether the console has reached the last line [`early_boot_report`] collects.
pub fn early_boot_report_complete(lines: &[Line]) -> bool {
    lines
        .iter()
        .any(|l| strip_printk_time(&l.text).starts_with("smpboot: Allowing "))
}

/// The console's lines about the boot information, each kind in console order, every
/// occurrence kept (so that a duplicate or extra line shows up in the comparison): the
/// banner (as `Linux version 6.1.<n>-guestkit` when the release is the kit's), the command
/// line, the `BIOS-e820:` map, the MP table (as [`MPTABLE_FOUND`] when it lies in
/// [`MPTABLE_AREA`]), every line naming the RAMDISK, and the CPU count.
pub fn early_boot_report(transcript: &Transcript) -> Vec<String> {
    type Normalise = fn(&str) -> String;
    let texts = transcript.texts();
    let kinds: [(&str, Normalise); 6] = [
        ("Linux version ", normalise_banner),
        ("Command line: ", str::to_string),
        ("BIOS-e820: ", str::to_string),
        ("found SMP MP-table at ", normalise_mptable),
        ("RAMDISK", str::to_string),
        ("smpboot: Allowing ", str::to_string),
    ];
    let mut report = Vec::new();
    for (prefix, normalise) in kinds {
        for text in &texts {
            let text = text.trim_end();
            let matches = if prefix == "RAMDISK" {
                text.contains(prefix)
            } else {
                text.starts_with(prefix)
            };
            if matches {
                report.push(normalise(text));
            }
        }
    }
    report
}

fn normalise_banner(line: &str) -> String {
    let release = line.split(' ').nth(2).unwrap_or("");
    let n = release
        .strip_prefix("6.1.")
        .and_then(|r| r.strip_suffix("-guestkit"));
    match n {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            "Linux version 6.1.<n>-guestkit".to_string()
        }
        _ => line.to_string(),
    }
}

fn normalise_mptable(line: &str) -> String {
    let range = line
        .strip_prefix("found SMP MP-table at [mem ")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.split_once('-'));
    let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    match range.map(|(a, b)| (parse(a), parse(b))) {
        Some((Some(start), Some(end)))
            if start >= MPTABLE_AREA.0 && start <= end && end < MPTABLE_AREA.1 =>
        {
            MPTABLE_FOUND.to_string()
        }
        _ => line.to_string(),
    }
}

// ---- the full boot ------------------------------------------------------------------------

/// What the kit's /init reports in `kit.mode=boot`.
#[derive(Debug, PartialEq, Eq)]
pub struct KitReport {
    pub cpus: u32,
    pub mem_kb: u64,
    pub disks: String,
}

/// Parses `KIT cpus=<n> mem_kb=<n> disks=<names|none>`.
pub fn parse_kit_line(line: &str) -> Option<KitReport> {
    let rest = line.strip_prefix("KIT cpus=")?;
    let (cpus, rest) = rest.split_once(" mem_kb=")?;
    let (mem_kb, disks) = rest.split_once(" disks=")?;
    Some(KitReport {
        cpus: cpus.parse().ok()?,
        mem_kb: mem_kb.parse().ok()?,
        disks: disks.to_string(),
    })
}

/// Boot milestones: (name, console line prefix).
pub const MILESTONES: [(&str, &str); 4] = [
    ("Linux version", "Linux version "),
    ("Memory:", "Memory: "),
    ("Run /init", "Run /init as init process"),
    ("GUEST_INIT_READY", "GUEST_INIT_READY"),
];

/// `name=seconds` for each milestone reached, then the exit: for the closing note.
pub fn milestone_summary(transcript: &Transcript) -> String {
    let mut parts: Vec<String> = MILESTONES
        .iter()
        .map(|(name, prefix)| match transcript.seconds_to(prefix) {
            Some(s) => format!("{name} {s:.1} s"),
            None => format!("{name} never"),
        })
        .collect();
    parts.push(format!("exit {:.1} s", transcript.elapsed.as_secs_f64()));
    parts.join(", ")
}

/// Two kit Linux boots at once would each take twice as long on a 2-core machine: the tests
/// of one binary take turns.
pub fn one_boot_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod kit_harness_tests {
    use super::*;

    #[test]
    fn kit_line_is_parsed_field_by_field() {
        assert_eq!(
            parse_kit_line("KIT cpus=2 mem_kb=246128 disks=vda vdb"),
            Some(KitReport {
                cpus: 2,
                mem_kb: 246_128,
                disks: "vda vdb".into()
            })
        );
        assert_eq!(parse_kit_line("KIT cpus=x mem_kb=1 disks=none"), None);
    }

    #[test]
    fn printk_timestamps_are_stripped_but_other_brackets_are_kept() {
        assert_eq!(
            strip_printk_time("[    0.123456] Linux version"),
            "Linux version"
        );
        assert_eq!(strip_printk_time("[mem 0x0] x"), "[mem 0x0] x");
    }

    #[test]
    fn mptable_outside_the_reserved_area_is_reported_as_is() {
        let inside = "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]";
        assert_eq!(normalise_mptable(inside), MPTABLE_FOUND);
        let outside = "found SMP MP-table at [mem 0x0009f000-0x0009f00f]";
        assert_eq!(normalise_mptable(outside), outside);
    }

    #[test]
    fn each_virtio_device_adds_its_mmio_window_and_irq_to_the_command_line() {
        let mut config = VmConfig::new(crate::common::Format::Elf, 128, "x");
        config.extra_args = [
            disk_args("a", Path::new("/a"), true),
            disk_args("b", Path::new("/b"), false),
        ]
        .concat();
        assert_eq!(
            nimbus_cmdline_additions(&config),
            [
                "virtio_mmio.device=4K@0xd0000000:16",
                "virtio_mmio.device=4K@0xd0001000:17"
            ]
        );
    }

    #[test]
    fn expected_report_for_3328_mib_is_what_linux_6_1_prints_for_nimbus() {
        let config = VmConfig {
            kernel: PathBuf::new(),
            mem_mib: 3328,
            cpus: 2,
            append: "console=ttyS0".into(),
            initrd: None,
            extra_args: Vec::new(),
        };
        // Lines of a real boot with a 2032128-byte initrd.
        assert_eq!(
            expected_early_boot_report(&config, 2_032_128),
            [
                "Linux version 6.1.<n>-guestkit",
                "Command line: console=ttyS0",
                "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
                "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
                "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable",
                "BIOS-e820: [mem 0x0000000100000000-0x000000010fffffff] usable",
                MPTABLE_FOUND,
                "RAMDISK: [mem 0xbfe0f000-0xbfffffff]",
                "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
            ]
        );
    }

    #[test]
    fn report_keeps_every_occurrence_so_extra_lines_fail_the_comparison() {
        let console = [
            "[    0.000000] Linux version 6.1.192-guestkit (root@vm) (gcc) #1 SMP",
            "Command line: console=ttyS0",
            "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
            "Kernel command line: console=ttyS0",
            "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
            "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]",
            "Move RAMDISK from [mem 0x1-0x2] to [mem 0x3-0x4]",
        ];
        let transcript = Transcript {
            status: None,
            lines: console
                .iter()
                .map(|t| Line {
                    at: Duration::ZERO,
                    text: t.to_string(),
                })
                .collect(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            command: String::new(),
            threads_at_kill: None,
        };
        assert_eq!(
            early_boot_report(&transcript),
            [
                "Linux version 6.1.<n>-guestkit",
                "Command line: console=ttyS0",
                "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
                "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
                MPTABLE_FOUND,
                "Move RAMDISK from [mem 0x1-0x2] to [mem 0x3-0x4]",
            ]
        );
    }

    #[test]
    fn reboot_option_is_replaced_in_place() {
        assert_eq!(
            with_reboot("console=ttyS0 reboot=k panic=1", "t"),
            "console=ttyS0 reboot=t panic=1"
        );
    }
}
