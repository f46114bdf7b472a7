//! The guest kit's Linux talks to the host over Nimbus's hybrid virtio-vsock device
//! (`-device virtio-vsock-device,guest-cid=3,uds-path=P`, Firecracker's protocol), driven the
//! way Kata Containers' runtime drives its agent:
//!
//! - the kit's /init runs as a small agent (`kit.mode=agent`, guest-kit/kit-init.c): it listens
//!   on vsock port 1024, connects to the host's port 1025 to send a log line, and answers
//!   requests line by line, one connection after another;
//! - the host listens on `P_1025` before nimbus starts (where Nimbus forwards the guest's
//!   connection to port 1025) and dials the agent as Kata's hybrid-vsock dialer does: connect
//!   to `P`, write `CONNECT 1024\n`, read `OK <port>\n`; while the guest is not listening yet
//!   Nimbus closes the socket, and the dialer tries again every 500 ms.
//!
//! One test boots with the kit's usual command line (console on stdio, three connections in a
//! row, the last one restarts the guest: nimbus exits 0); two with Kata's own argument list,
//! its vhost-vsock device replaced by the hybrid one and its tap handed over as fd 3: one
//! without virtio-fs, one with Kata's virtio-fs flags and a real virtiofsd behind them, whose
//! share the agent mounts (`kit.fstag=kataShared`) and reads from (`cat`).
//! Each boot takes ~40-50 s under kvm-pvm; they never run at once.

mod common;
mod kit;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::kata::{KataSandbox, KATA_FS_TAG};
use common::tap::{inherit_as_fd3, open_tap, root, TapGuard};
use common::virtiofsd::{require_virtiofsd, Virtiofsd};
use common::{kvm_usable, TempDir, VmConfig};
use kit::{disk_args, kit, kit_cmdline, one_boot_at_a_time, KitVm};

/// From spawning nimbus to the agent's `OK`: ~25-50 s under kvm-pvm, twice that under load.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);
/// Kata's hybrid-vsock dialer waits this long for the answer to `CONNECT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two dial attempts while the guest is not listening yet.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// For one reply, a console line or the log line once the agent listens.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const GUEST_CID: u32 = 3;
const AGENT_PORT: u32 = 1024;
const LOG_PORT: u32 = 1025;
const LOG_LINE: &str = "agent log: started";
const LISTENING: &str = "KIT agent listening on vsock port 1024";
/// The vsock device's `uds-path`, in the test's directory.
const UDS: &str = "kata.hvsock";

/// A private directory under /tmp (short path, for Unix sockets), removed when dropped.
fn tempfile_dir_short() -> ShortDir {
    let dir = std::env::temp_dir().join(format!("nimbus-kfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a short socket directory");
    ShortDir(dir)
}

struct ShortDir(std::path::PathBuf);

impl ShortDir {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for ShortDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `-device virtio-vsock-device,...` with the hybrid (Unix socket) backend.
fn vsock_device(uds: &Path) -> String {
    format!(
        "virtio-vsock-device,id=vsock0,guest-cid={GUEST_CID},uds-path={}",
        uds.display()
    )
}

/// The kit's command line for this host with root read-only on `/dev/vda` and /init as the
/// agent.
fn agent_cmdline() -> String {
    kit_cmdline(true)
        .split(' ')
        .map(|w| match w {
            "rw" => "ro",
            "kit.mode=boot" => "kit.mode=agent",
            w => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- the host's end of the log channel ----------------------------------------------------

/// A Unix listener at `<uds-path>_1025`, where Nimbus connects when the guest connects to the
/// host's port 1025; a thread collects the lines of every connection.
struct LogListener {
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl LogListener {
    fn bind(path: &Path) -> LogListener {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind the log listener {}: {e}", path.display()));
        listener.set_nonblocking(true).expect("non-blocking accept");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (Arc::clone(&lines), Arc::clone(&stop));
        let acceptor = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(_) => return,
                };
                let _ = stream.set_nonblocking(false);
                let shared = Arc::clone(&shared);
                // Ends at EOF, at the latest when nimbus is gone.
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { return };
                        let (lines, grew) = &*shared;
                        lines.lock().expect("log lock").push(line);
                        grew.notify_all();
                    }
                });
            }
        });
        LogListener {
            lines,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Waits up to `timeout` for the line `wanted`; returns every line received so far.
    fn wait_for(&self, wanted: &str, timeout: Duration) -> Result<Vec<String>, Vec<String>> {
        self.wait_for_line(|l| l == wanted, timeout)
            .map(|(_, all)| all)
    }

    /// Waits up to `timeout` for a line for which `matches` holds; returns that line and every
    /// line received so far, or (on timeout) every line.
    fn wait_for_line(
        &self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<(String, Vec<String>), Vec<String>> {
        let deadline = Instant::now() + timeout;
        let (lines, grew) = &*self.lines;
        let mut got = lines.lock().expect("log lock");
        loop {
            if let Some(line) = got.iter().find(|l| matches(l)) {
                return Ok((line.clone(), got.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(got.clone());
            }
            got = grew.wait_timeout(got, deadline - now).expect("log lock").0;
        }
    }
}

impl Drop for LogListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

// ---- Kata's side of the agent connection --------------------------------------------------

/// A connection to the agent after `OK <port>`.
struct AgentConn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The port in `OK <port>`: Nimbus's local port, the source of the guest's connection.
    port: u32,
}

/// How one dial went.
struct Dial {
    conn: AgentConn,
    /// From writing `CONNECT 1024` to reading `OK`, for the successful attempt.
    latency: Duration,
    /// When the `OK` arrived, since nimbus was spawned.
    at: Duration,
    /// The failed attempts, for the report: what happened and after how long.
    failed: Vec<String>,
}

/// Dials the agent as Kata's hybrid-vsock dialer does, until `OK` or the deadline: connect to
/// `uds`, write `CONNECT 1024\n`, read one line. A socket Nimbus closes without an answer
/// means the guest is not listening yet: try again after [`RETRY_INTERVAL`].
fn dial(uds: &Path, vm: &mut KitVm, spawned: Instant, deadline: Instant) -> Result<Dial, String> {
    let mut failed = Vec::new();
    let summary = |failed: &[String]| summarise_attempts(failed);
    loop {
        if !vm.running() {
            return Err(format!(
                "nimbus exited while the test dialled the agent; attempts: {}",
                summary(&failed)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no OK from the agent within {BOOT_TIMEOUT:?} of the spawn; attempts: {}",
                summary(&failed)
            ));
        }
        match try_dial(uds) {
            Ok((conn, latency)) => {
                return Ok(Dial {
                    conn,
                    latency,
                    at: spawned.elapsed(),
                    failed,
                })
            }
            Err(Attempt::Fatal(why)) => {
                return Err(format!("{why}; earlier attempts: {}", summary(&failed)))
            }
            Err(Attempt::Retry(why)) => failed.push(why),
        }
        std::thread::sleep(RETRY_INTERVAL);
    }
}

enum Attempt {
    Retry(String),
    Fatal(String),
}

fn try_dial(uds: &Path) -> Result<(AgentConn, Duration), Attempt> {
    let stream =
        UnixStream::connect(uds).map_err(|e| Attempt::Retry(format!("connect: {}", e.kind())))?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .expect("read timeout");
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    let t0 = Instant::now();
    writer
        .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
        .map_err(|e| Attempt::Retry(format!("write CONNECT: {}", e.kind())))?;
    let mut line = String::new();
    let took = |t0: Instant| t0.elapsed().as_millis();
    match reader.read_line(&mut line) {
        Ok(0) => Err(Attempt::Retry(format!("closed after {} ms", took(t0)))),
        Ok(_) => {
            let latency = t0.elapsed();
            let port = line
                .strip_prefix("OK ")
                .and_then(|p| p.strip_suffix('\n'))
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| {
                    Attempt::Fatal(format!("the answer to CONNECT is {line:?}, not OK <port>"))
                })?;
            let conn = AgentConn {
                reader,
                writer,
                port,
            };
            conn.writer
                .set_read_timeout(Some(REPLY_TIMEOUT))
                .expect("read timeout");
            Ok((conn, latency))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(Attempt::Retry(format!(
                "no answer and no close within {HANDSHAKE_TIMEOUT:?} (line so far {line:?})"
            )))
        }
        Err(e) => Err(Attempt::Retry(format!(
            "read after {} ms: {}",
            took(t0),
            e.kind()
        ))),
    }
}

/// "12 x connect: NotFound, 20 x closed after 2 s ..." with the outcomes in first-seen order
/// (times rounded to 100 ms).
fn summarise_attempts(failed: &[String]) -> String {
    if failed.is_empty() {
        return "none failed".into();
    }
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for what in failed {
        let key = match what
            .strip_prefix("closed after ")
            .and_then(|r| r.strip_suffix(" ms"))
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            Some(ms) => format!("closed after ~{:.1} s", (ms / 100) as f64 / 10.0),
            None => what.clone(),
        };
        match kinds.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => kinds.push((key, 1)),
        }
    }
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} x {k}")).collect();
    format!("{} failed: {}", failed.len(), parts.join(", "))
}

impl AgentConn {
    /// Sends one request line and returns the reply line (without its newline).
    fn request(&mut self, line: &str) -> Result<String, String> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("send {line:?}: {e}"))?;
        self.reply(line)
    }

    fn reply(&mut self, request: &str) -> Result<String, String> {
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) => Err(format!("EOF instead of the reply to {request:?}")),
            Ok(_) if reply.ends_with('\n') => {
                reply.pop();
                Ok(reply)
            }
            Ok(_) => Err(format!("EOF in the reply to {request:?}: {reply:?}")),
            Err(e) => Err(format!("reply to {request:?}: {e} (got {reply:?})")),
        }
    }

    /// Sends `line` and checks that the reply is `expected`.
    fn expect(&mut self, line: &str, expected: &str) -> Result<(), String> {
        let reply = self.request(line)?;
        if reply == expected {
            Ok(())
        } else {
            Err(format!("{line:?} was answered {reply:?}, not {expected:?}"))
        }
    }

    /// Waits for the agent to close the connection.
    fn expect_eof(&mut self, after: &str) -> Result<(), String> {
        let mut rest = String::new();
        match self.reader.read_line(&mut rest) {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!("after {after:?} the agent sent {rest:?}, not EOF")),
            Err(e) => Err(format!("after {after:?}: no EOF: {e}")),
        }
    }

    /// The protocol's requests, including a burst larger than Nimbus's 64 KiB of credit in
    /// each direction (written by a second thread while this one reads the replies).
    fn exercise(&mut self) -> Result<(), String> {
        self.expect("ping", "pong")?;
        self.expect("echo hello from the host", "hello from the host")?;
        let release = self.request("uname")?;
        if !(release.starts_with("6.1.") && release.ends_with("-guestkit")) {
            return Err(format!("uname answered {release:?}, not 6.1.<n>-guestkit"));
        }
        self.expect("what", "error unknown command: what")?;

        let lines: Vec<String> = (0..256)
            .map(|i| format!("{i:03} {}", "0123456789abcdef".repeat(25)))
            .collect();
        let burst: String = lines.iter().map(|l| format!("echo {l}\n")).collect();
        let mut writer = self.writer.try_clone().expect("clone the stream");
        let sender = std::thread::spawn(move || writer.write_all(burst.as_bytes()));
        for (i, want) in lines.iter().enumerate() {
            let got = self.reply("the burst")?;
            if got != *want {
                return Err(format!("burst reply {i} is {got:?}, not {want:?}"));
            }
        }
        sender
            .join()
            .expect("burst sender")
            .map_err(|e| format!("send the burst: {e}"))?;
        Ok(())
    }
}

// ---- the tests ----------------------------------------------------------------------------

/// Boot-time and latency figures for the closing note.
fn dial_note(what: &str, dial: &Dial) -> String {
    format!(
        "{what}: OK {:.1} s after spawn, CONNECT->OK {} ms (port {}), earlier attempts: {}",
        dial.at.as_secs_f64(),
        dial.latency.as_millis(),
        dial.conn.port,
        summarise_attempts(&dial.failed)
    )
}

/// The first test's exchange; the VM ends by restarting itself (`reboot`).
fn drive_agent(
    vm: &mut KitVm,
    dir: &TempDir,
    log: &LogListener,
    spawned: Instant,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let uds = dir.path(UDS);
    let first = dial(&uds, vm, spawned, spawned + BOOT_TIMEOUT)?;
    notes.push(dial_note("connection 1", &first));
    let port1 = first.conn.port;
    let mut conn = first.conn;
    conn.exercise()?;
    log.wait_for(LOG_LINE, REPLY_TIMEOUT)
        .map_err(|got| format!("no {LOG_LINE:?} on the {LOG_PORT} listener; it got {got:?}"))?;
    conn.expect("quit", "bye")?;
    conn.expect_eof("quit")?;
    wait_console(vm, "KIT agent connection 1 closed")?;

    // A second connection after the first closed; this time the host closes it.
    let second = dial(&uds, vm, spawned, Instant::now() + REPLY_TIMEOUT)?;
    notes.push(dial_note("connection 2", &second));
    let port2 = second.conn.port;
    if port2 <= port1 {
        return Err(format!(
            "the second connection's local port {port2} is not after the first's {port1}"
        ));
    }
    let mut conn2 = second.conn;
    conn2.expect("ping", "pong")?;
    conn2.expect("echo second", "second")?;
    drop(conn2);
    wait_console(vm, "KIT agent connection 2 closed")?;

    // A third restarts the guest.
    let third = dial(&uds, vm, spawned, Instant::now() + REPLY_TIMEOUT)?;
    notes.push(dial_note("connection 3", &third));
    let port3 = third.conn.port;
    let mut conn3 = third.conn;
    conn3.expect("reboot", "bye")?;
    for (n, port) in [(1, port1), (2, port2), (3, port3)] {
        wait_console(
            vm,
            &format!("KIT agent connection {n} from cid 2 port {port}"),
        )?;
    }
    Ok(notes)
}

fn wait_console(vm: &KitVm, wanted: &str) -> Result<(), String> {
    if vm.wait_until(REPLY_TIMEOUT, |lines| {
        lines.iter().any(|l| l.text.contains(wanted))
    }) {
        Ok(())
    } else {
        Err(format!("no console line {wanted:?}"))
    }
}

/// The kit with the agent as /init, root read-only on virtio-blk and the hybrid vsock device:
/// three connections one after another (requests, a burst beyond the credit window, the log
/// line on port 1025, agent-side close, host-side close), then the guest restarts through the
/// agent and nimbus exits 0.
#[test]
fn kit_agent_answers_kata_style_hybrid_vsock_connections_one_after_another() {
    if !kvm_usable() {
        return;
    }
    let _one = one_boot_at_a_time();
    let kit = kit();
    let dir = TempDir::new("kit-vsock-agent");
    let uds = dir.path(UDS);
    let log = LogListener::bind(&PathBuf::from(format!("{}_{LOG_PORT}", uds.display())));
    let mut extra_args = disk_args("rootfs", &kit.rootfs(), true);
    extra_args.extend(["-device".to_string(), vsock_device(&uds)]);
    let config = VmConfig {
        kernel: kit.vmlinux(),
        mem_mib: 256,
        cpus: 2,
        append: agent_cmdline(),
        initrd: None,
        extra_args,
    };

    let spawned = Instant::now();
    let mut vm = KitVm::spawn(&config);
    let result = drive_agent(&mut vm, &dir, &log, spawned);
    let transcript = match result {
        Ok(_) => vm.wait_exit(REPLY_TIMEOUT),
        Err(_) => vm.kill(),
    };
    let describe = transcript.describe();
    let notes = result.unwrap_or_else(|e| panic!("{e}\n{describe}"));
    eprintln!(
        "kit agent over hybrid vsock: `{LISTENING}` {:.1} s after spawn; {}",
        transcript.seconds_to(LISTENING).unwrap_or(f64::NAN),
        notes.join("; ")
    );

    let texts = transcript.texts();
    let count = |line: &str| texts.iter().filter(|l| l.contains(line)).count();
    assert_eq!(count(LISTENING), 1, "listening lines\n{describe}");
    assert_eq!(
        count("KIT agent log connected to cid 2 port 1025"),
        1,
        "log connection line\n{describe}"
    );
    assert_eq!(
        count("KIT agent connection "),
        6,
        "three connections, each accepted and closed once\n{describe}"
    );
    assert!(
        !texts.iter().any(|l| l.starts_with("Kernel panic")),
        "the kernel panicked\n{describe}"
    );
    assert_eq!(
        transcript.status.and_then(|s| s.code()),
        Some(0),
        "nimbus must exit 0 when the agent restarts the guest\n{describe}"
    );
}

/// Starts nimbus with `args` (a Kata argument list whose tap is `fds=3`) and a fresh tap
/// handed over as fd 3, as Kata does; the tap is deleted when its guard drops.
fn spawn_kata(args: &[String]) -> (KitVm, TapGuard) {
    let tap = TapGuard::create();
    let tap_fd = open_tap(&tap.name);
    let fd = tap_fd.as_raw_fd();
    let vm = KitVm::spawn_with(args, |command| inherit_as_fd3(command, fd));
    drop(tap_fd);
    (vm, tap)
}

/// Kata's `-device` value for the hybrid vsock that stands in for its vhost-vsock.
fn kata_hybrid_vsock(uds: &Path) -> String {
    format!(
        "virtio-vsock-device,id=vsock-id,guest-cid={GUEST_CID},uds-path={}",
        uds.display()
    )
}

/// Kata connection 1 (the requests, the log line) and connection 2 (a ping), as the runtime
/// connects to its agent; `more` then runs on connection 2.
fn drive_kata_agent(
    vm: &mut KitVm,
    uds: &Path,
    log: &LogListener,
    spawned: Instant,
    more: impl FnOnce(&mut AgentConn) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    let first = dial(uds, vm, spawned, spawned + BOOT_TIMEOUT)?;
    let mut notes = vec![dial_note("Kata connection 1", &first)];
    let mut conn = first.conn;
    conn.exercise()?;
    log.wait_for(LOG_LINE, REPLY_TIMEOUT)
        .map_err(|got| format!("no {LOG_LINE:?} on the {LOG_PORT} listener; it got {got:?}"))?;
    conn.expect("quit", "bye")?;
    conn.expect_eof("quit")?;
    let second = dial(uds, vm, spawned, Instant::now() + REPLY_TIMEOUT)?;
    notes.push(dial_note("Kata connection 2", &second));
    let mut conn2 = second.conn;
    conn2.expect("ping", "pong")?;
    notes.extend(more(&mut conn2)?);
    if !vm.running() {
        return Err("nimbus exited".into());
    }
    Ok(notes)
}

/// Kata Containers' argument list as its StratoVirt driver sends it (see
/// docs/container-runtimes.md), with two changes: its `vhost-vsock-device,...,vhostfd=` is
/// replaced by the hybrid `virtio-vsock-device,id=vsock-id,guest-cid=3,uds-path=...`, and
/// virtio-fs is left out. The kernel is the kit's ELF vmlinux rather than Kata's bzImage
/// (whose emulated gunzip alone takes ~2 minutes under kvm-pvm). No `-serial`: the agent's
/// vsock and log connections are all there is, as for Kata (a bare `-D` logs to stderr, which
/// a failure shows).
#[test]
fn kata_argument_list_with_hybrid_vsock_reaches_the_kit_agent() {
    if !kvm_usable() || !root() {
        return;
    }
    let _one = one_boot_at_a_time();
    let kit = kit();
    let dir = TempDir::new("kit-vsock-kata");
    let uds = dir.path(UDS);
    let log = LogListener::bind(&PathBuf::from(format!("{}_{LOG_PORT}", uds.display())));
    let qmp = dir.path("qmp.socket");
    let args = KataSandbox {
        kernel: &kit.vmlinux(),
        mem_mib: 256,
        append: &agent_cmdline(),
        qmp: &qmp,
        rootfs: &kit.rootfs(),
        mem_share: false,
        vsock: Some(kata_hybrid_vsock(&uds)),
        virtio_fs: None,
    }
    .args();

    let spawned = Instant::now();
    let (mut vm, tap) = spawn_kata(&args);
    let result = drive_kata_agent(&mut vm, &uds, &log, spawned, |_| Ok(Vec::new()));
    // Kata ends the VM with SIGKILL.
    let transcript = vm.kill();
    let describe = transcript.describe();
    let notes = result.unwrap_or_else(|e| panic!("{e}\n{describe}"));
    eprintln!("Kata argument list: {}", notes.join("; "));
    assert!(
        transcript.status.is_none(),
        "nimbus ran until the test killed it\n{describe}"
    );
    drop(tap);
}

/// What the Kata virtio-fs test writes on the host: `hello.txt` before the boot (two lines,
/// so that the agent's escaping is checked too), `late.txt` once the agent answers.
struct KataShare {
    dir: PathBuf,
    hello: String,
}

impl KataShare {
    fn create(dir: PathBuf) -> KataShare {
        std::fs::create_dir_all(&dir).expect("create the share");
        let hello = format!(
            "hello from the host through Kata's virtio-fs, test pid {}\nsecond line\n",
            std::process::id()
        );
        std::fs::write(dir.join("hello.txt"), &hello).expect("write hello.txt");
        KataShare { dir, hello }
    }

    /// The agent's `cat` reply for `content`: the last newline dropped, others as `\n`.
    fn escaped(content: &str) -> String {
        content
            .strip_suffix('\n')
            .unwrap_or(content)
            .replace('\n', "\\n")
    }

    /// Reads `hello.txt`, then `late.txt` written now (the share is live, not a copy made at
    /// boot), then a missing file (ENOENT, errno 2), all through the agent.
    fn check(&self, conn: &mut AgentConn) -> Result<Vec<String>, String> {
        conn.expect("cat /mnt/hello.txt", &Self::escaped(&self.hello))?;
        let late = format!("written on the host at {:?}", std::time::SystemTime::now());
        std::fs::write(self.dir.join("late.txt"), &late)
            .map_err(|e| format!("write late.txt: {e}"))?;
        conn.expect("cat /mnt/late.txt", &late)?;
        conn.expect(
            "cat /mnt/no-such-file",
            "error cat /mnt/no-such-file errno=2",
        )?;
        Ok(vec![format!(
            "the agent read hello.txt ({} bytes) and late.txt from the share",
            self.hello.len()
        )])
    }
}

/// Waits for the agent's line about the share on the log channel and checks that it says
/// `fs mounted kataShared on /mnt`.
fn wait_fs_mounted(log: &LogListener) -> Result<String, String> {
    let wanted = format!("agent log: fs mounted {KATA_FS_TAG} on /mnt");
    let (line, _) = log
        .wait_for_line(|l| l.starts_with("agent log: fs "), REPLY_TIMEOUT)
        .map_err(|got| format!("no `agent log: fs ...` line on the log channel; got {got:?}"))?;
    if line == wanted {
        Ok(line)
    } else {
        Err(format!("the agent logged {line:?}, not {wanted:?}"))
    }
}

/// Kata's whole argument list in one boot, virtio-fs included exactly as Kata sends it
/// (`-machine ...,mem-share=on`, `-chardev socket,id=virtio_fs,path=<dir>/virtiofs_kata.socket,
/// server,nowait -device vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0`)
/// with Debian's virtiofsd behind it, the tap as fd 3, the read-only root disk and virtio-rng;
/// only the vsock device is swapped for the hybrid one (this host has no /dev/vhost-vsock).
/// The kit's agent (`kit.fstag=kataShared`) mounts the share on /mnt before it listens and
/// says so on its log channel; over hybrid vsock the test dials it as Kata does and has it
/// read a file written before the boot and one written while it runs, content checked.
#[test]
fn kata_argument_list_with_virtiofsd_serves_the_share_to_the_agent() {
    if !kvm_usable() || !root() {
        return;
    }
    require_virtiofsd();
    let _one = one_boot_at_a_time();
    let kit = kit();
    let dir = TempDir::new("kit-vsock-kata-fs");
    let share = KataShare::create(dir.path("share"));
    // A Unix socket path has at most 107 bytes: the scratch directory of a checkout in a long
    // path does not leave room, so virtiofsd's socket lives in a short directory of its own.
    let short = tempfile_dir_short();
    let socket = short.path("virtiofs_kata.socket");
    let mut daemon = Virtiofsd::start(&share.dir, &socket, &dir.path("virtiofsd.log"));
    let uds = dir.path(UDS);
    let log = LogListener::bind(&PathBuf::from(format!("{}_{LOG_PORT}", uds.display())));
    let qmp = dir.path("qmp.socket");
    let append = format!("{} kit.fstag={KATA_FS_TAG}", agent_cmdline());
    let args = KataSandbox {
        kernel: &kit.vmlinux(),
        mem_mib: 256,
        append: &append,
        qmp: &qmp,
        rootfs: &kit.rootfs(),
        mem_share: true,
        vsock: Some(kata_hybrid_vsock(&uds)),
        virtio_fs: Some(&socket),
    }
    .args();

    let spawned = Instant::now();
    let (mut vm, tap) = spawn_kata(&args);
    let result = drive_kata_agent(&mut vm, &uds, &log, spawned, |conn| {
        let mounted = wait_fs_mounted(&log)?;
        let mut notes = vec![format!("log channel: {mounted:?}")];
        notes.extend(share.check(conn)?);
        Ok(notes)
    });
    // Kata ends the VM with SIGKILL; virtiofsd then sees its connection close.
    let transcript = vm.kill();
    let daemon_exit = match daemon.wait_exit(Duration::from_secs(5)) {
        Some(status) => status.to_string(),
        None => "still running (killed by the test)".to_string(),
    };
    let describe = format!(
        "{}\n{}\nvirtiofsd exit: {daemon_exit}",
        transcript.describe(),
        daemon.describe()
    );
    let notes = result.unwrap_or_else(|e| panic!("{e}\n{describe}"));
    eprintln!(
        "Kata argument list with virtiofsd: {} (test {:.1} s)",
        notes.join("; "),
        spawned.elapsed().as_secs_f64()
    );
    assert!(
        transcript.status.is_none(),
        "nimbus ran until the test killed it\n{describe}"
    );
    drop(tap);
}
