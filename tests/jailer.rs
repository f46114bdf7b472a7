//! nimbus-jailer end to end: the real jailer runs the real nimbus with the test guest as uid
//! and gid 65534 (nobody) in a jail under a private chroot base in /tmp (short enough for the
//! QMP socket the jailed nimbus makes in its jail root), removed whatever the outcome.
//! Checked: the guest boots and exits 0 through the launcher; inside, nimbus cannot open host
//! files (QMP blockdev-add of /etc/shadow and of a world-writable file outside the jail fail,
//! one inside works); the cgroup limits are in the cgroup files; nimbus sits in new mount,
//! PID and IPC namespaces, as uid 65534 with no capabilities and no_new_privs; and failures
//! are one line, exit 1, with the jail directory and cgroups gone; nimbus dies with its jailer;
//! `--netns` and `--daemonize` take effect; files on another file system are copied (the exec
//! file) or bound read-only (sources).

mod common;

use common::{guest, kvm_usable, Format, Output, QmpClient, Vm, VmConfig, NIMBUS, VM_TIMEOUT};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// nobody/nogroup.
const NOBODY: u32 = 65534;

/// nimbus-jailer, built next to nimbus (it is another package of the workspace, so cargo does
/// not build it for this test binary by itself).
fn jailer() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "jailer", "--bin", "nimbus-jailer"]);
        if Path::new(NIMBUS)
            .parent()
            .is_some_and(|d| d.ends_with("release"))
        {
            build.arg("--release");
        }
        let out = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo to build nimbus-jailer");
        assert!(
            out.status.success(),
            "cargo build -p jailer failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = Path::new(NIMBUS).with_file_name("nimbus-jailer");
        assert!(path.exists(), "no {}", path.display());
        path.display().to_string()
    })
}

/// A chroot base `/tmp/nj-<name>-<pid>`, removed (with any jail in it) when dropped.
struct ChrootBase(PathBuf);

impl ChrootBase {
    fn new(name: &str) -> ChrootBase {
        ChrootBase::at(format!("/tmp/nj-{name}-{}", std::process::id()))
    }

    /// The directory `path` (any directory the test owns, removed when dropped).
    fn at(path: String) -> ChrootBase {
        let dir = PathBuf::from(path);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the chroot base");
        ChrootBase(dir)
    }
}

impl Drop for ChrootBase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One jailed VM's settings.
struct Jailed {
    base: ChrootBase,
    id: String,
    flags: Vec<String>,
}

impl Jailed {
    fn new(name: &str) -> Jailed {
        Jailed {
            base: ChrootBase::new(name),
            id: format!("{name}-{}", std::process::id()),
            flags: Vec::new(),
        }
    }

    /// `<base>/<id>`: the directory the jailer makes and removes.
    fn jail_dir(&self) -> PathBuf {
        self.base.0.join(&self.id)
    }

    /// `name` in the jail root, as the host sees it.
    fn in_root(&self, name: &str) -> PathBuf {
        self.jail_dir().join("root").join(name)
    }

    /// The jailer's arguments: the ids, the exec file, the guest as a source, the extra flags
    /// and, after `--`, nimbus's own arguments for the test guest with `append`.
    fn args(&self, append: &str, nimbus_extra: &[&str]) -> Vec<String> {
        let uid = NOBODY.to_string();
        let mut args: Vec<String> = vec![
            "--id".into(),
            self.id.clone(),
            "--exec-file".into(),
            NIMBUS.into(),
            "--uid".into(),
            uid.clone(),
            "--gid".into(),
            uid,
            "--chroot-base".into(),
            self.base.0.display().to_string(),
            "--source".into(),
            guest(Format::Elf.file()).display().to_string(),
        ];
        args.extend(self.flags.iter().cloned());
        args.push("--".into());
        let mut config = VmConfig::new(Format::Elf, 128, append);
        config.kernel = PathBuf::from(format!("/{}", Format::Elf.file()));
        args.extend(config.args());
        args.extend(nimbus_extra.iter().map(|s| s.to_string()));
        args
    }

    fn run(&self, append: &str) -> Output {
        Vm::spawn_program(jailer(), &self.args(append, &[]), |_| {}).wait(VM_TIMEOUT)
    }

    /// A VM whose guest idles, with a QMP socket at /qmp.sock in the jail; the jailer's Vm,
    /// nimbus's pid (the jailer's only child) and a QMP client.
    fn spawn_idle(&self) -> (Vm, i32, QmpClient) {
        let qmp = ["-qmp", "unix:/qmp.sock,server,nowait"];
        let mut vm = Vm::spawn_program(jailer(), &self.args("nimbus.test=hang", &qmp), |_| {});
        vm.wait_for_line("hang: now", VM_TIMEOUT);
        let children = format!("/proc/{0}/task/{0}/children", vm.pid());
        let text = std::fs::read_to_string(&children).expect("read the jailer's children");
        let nimbus: i32 = match text.split_whitespace().collect::<Vec<_>>().as_slice() {
            [one] => one.parse().expect("a pid"),
            other => vm.fail(&format!("the jailer has children {other:?}, not one")),
        };
        let client = QmpClient::connect(&self.in_root("qmp.sock"));
        (vm, nimbus, client)
    }
}

/// Sends `quit` and checks that nimbus's exit status 0 comes back through the jailer, which
/// then removes the jail.
fn quit(vm: Vm, mut client: QmpClient, jailed: &Jailed) {
    client.ok("quit", json!({}));
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    assert!(!jailed.jail_dir().exists(), "the jail is left behind");
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_test_guest_boots_and_exits_0_through_the_jailer_as_nobody() {
    if !kvm_usable() {
        return;
    }
    let jailed = Jailed::new("boot");
    let out = jailed.run("");

    out.assert_exit_code(0);
    assert!(
        out.guest_lines().ends_with(&["NIMBUS-GUEST done"]),
        "{}",
        out.describe()
    );
    assert!(!jailed.jail_dir().exists(), "the jail is left behind");
}

#[test]
fn nimbus_in_the_jail_cannot_open_host_files() {
    if !kvm_usable() {
        return;
    }
    let jailed = Jailed::new("files");
    // Outside the jail, writable by anyone: only the jail keeps nobody from it.
    let outside = jailed.base.0.join("outside.img");
    std::fs::write(&outside, vec![0u8; 4096]).expect("write the outside image");
    set_mode(&outside, 0o666);
    let (vm, _, mut c) = jailed.spawn_idle();
    // Inside the jail, writable by anyone: the control that blockdev-add works here.
    let inside = jailed.in_root("inside.img");
    std::fs::write(&inside, vec![0u8; 4096]).expect("write the inside image");
    set_mode(&inside, 0o666);

    for path in [Path::new("/etc/shadow"), outside.as_path()] {
        let desc = c.error("blockdev-add", raw_node("host", path), "GenericError");
        assert!(desc.contains("No such file"), "{path:?}: {desc}");
    }
    c.ok("blockdev-add", raw_node("jailed", Path::new("/inside.img")));
    quit(vm, c, &jailed);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn raw_node(name: &str, image: &Path) -> serde_json::Value {
    json!({"node-name": name, "driver": "raw", "read-only": false,
           "file": {"driver": "file", "filename": image}})
}

/// Where `controller`'s limit files for `pid` are: its v1 hierarchy when it has one (hybrid
/// hosts), else the v2 one. `/proc/PID/cgroup` gives the group's path.
fn cgroup_dir(pid: i32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let v1 = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        list.split(',')
            .any(|c| c == controller)
            .then(|| format!("/sys/fs/cgroup/{controller}{path}"))
    });
    let v2 = || {
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(|m| format!("{m}{path}"))
            .find(|d| Path::new(d).join(format!("{controller}.max")).exists())
    };
    PathBuf::from(v1.or_else(v2).expect("a cgroup with the controller"))
}

#[test]
fn the_cgroup_limits_are_set_as_asked_and_removed_afterwards() {
    if !kvm_usable() {
        return;
    }
    let mut jailed = Jailed::new("cgroup");
    for limit in [
        "memory.max=268435456",
        "cpu.max=50000 100000",
        "pids.max=64",
    ] {
        jailed
            .flags
            .extend(["--cgroup".to_string(), limit.to_string()]);
    }
    let (vm, nimbus, client) = jailed.spawn_idle();

    let read = |controller: &str, file: &str| {
        let dir = cgroup_dir(nimbus, controller);
        assert!(dir.ends_with(format!("nimbus/{}", jailed.id)), "{dir:?}");
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        (dir, text.trim().to_string())
    };
    let mut dirs = Vec::new();
    let (dir, memory) = read("memory", "memory.limit_in_bytes");
    let v1 = dir.join("memory.limit_in_bytes").exists();
    if v1 {
        assert_eq!(memory, "268435456");
        assert_eq!(read("cpu", "cpu.cfs_quota_us").1, "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us").1, "100000");
    } else {
        assert_eq!(read("memory", "memory.max").1, "268435456");
        assert_eq!(read("cpu", "cpu.max").1, "50000 100000");
    }
    assert_eq!(read("pids", "pids.max").1, "64");
    for controller in ["memory", "cpu", "pids"] {
        dirs.push(cgroup_dir(nimbus, controller));
    }

    quit(vm, client, &jailed);
    for dir in dirs {
        assert!(!dir.exists(), "{dir:?} is left behind");
    }
}

#[test]
fn nimbus_sits_in_new_namespaces_as_nobody_without_capabilities() {
    if !kvm_usable() {
        return;
    }
    let jailed = Jailed::new("ns");
    let (vm, nimbus, client) = jailed.spawn_idle();

    for ns in ["mnt", "pid", "ipc"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("our ns");
        let its = std::fs::read_link(format!("/proc/{nimbus}/ns/{ns}")).expect("its ns");
        assert_ne!(ours, its, "nimbus shares our {ns} namespace");
    }
    let net = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("net ns");
    assert_eq!(net("self"), net(&nimbus.to_string()), "no --netns: ours");
    assert_eq!(status_field(nimbus, "NSpid"), format!("{nimbus} 1"));
    assert_eq!(status_field(nimbus, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(nimbus, "Gid"), "65534 65534 65534 65534");
    assert_eq!(status_field(nimbus, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(nimbus, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(nimbus, "NoNewPrivs"), "1");
    let root = std::fs::read_link(format!("/proc/{nimbus}/root")).expect("root");
    assert_eq!(root, PathBuf::from("/"), "pivot_root: its / is its own");
    let limits = std::fs::read_to_string(format!("/proc/{nimbus}/limits")).expect("limits");
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().filter(|w| *w == "2048").count() == 2),
        "{limits}"
    );
    quit(vm, client, &jailed);
}

#[test]
fn nimbus_dies_with_a_killed_jailer() {
    if !kvm_usable() {
        return;
    }
    let jailed = Jailed::new("kill");
    let (vm, nimbus, _client) = jailed.spawn_idle();

    vm.signal(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone = || {
        std::fs::read_to_string(format!("/proc/{nimbus}/stat"))
            .map_or(true, |stat| stat.contains(") Z "))
    };
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = !gone();
    if alive {
        // SAFETY: kill(2) only sends a signal, to the nimbus this test started.
        unsafe { libc::kill(nimbus, libc::SIGKILL) };
    }
    assert!(!alive, "nimbus {nimbus} outlived its jailer");
    drop(vm);
}

/// A network namespace `ip netns add` made, deleted when dropped.
struct NetNs(String);

impl NetNs {
    fn new(name: &str) -> NetNs {
        let name = format!("nj-{name}-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        NetNs(name)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn netns_and_daemonize_put_nimbus_in_that_namespace_and_a_new_session() {
    if !kvm_usable() {
        return;
    }
    let netns = NetNs::new("daemon");
    let mut jailed = Jailed::new("daemon");
    jailed.flags = vec!["--netns".into(), netns.path(), "--daemonize".into()];
    let qmp = ["-qmp", "unix:/qmp.sock,server,nowait"];
    let mut vm = Vm::spawn_program(jailer(), &jailed.args("nimbus.test=hang", &qmp), |_| {});
    // Its console is /dev/null now: wait for the QMP socket instead.
    let socket = jailed.in_root("qmp.sock");
    let deadline = Instant::now() + VM_TIMEOUT;
    while !socket.exists() {
        if Instant::now() > deadline {
            vm.fail("no QMP socket in the jail");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = QmpClient::connect(&socket);
    let children = format!("/proc/{0}/task/{0}/children", vm.pid());
    let nimbus: i32 = std::fs::read_to_string(children)
        .expect("children")
        .trim()
        .parse()
        .expect("one child");

    let inode = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("stat").ino()
    };
    assert_eq!(
        inode(&format!("/proc/{nimbus}/ns/net")),
        inode(&netns.path())
    );
    let stat = common::proc_stat_fields(&nimbus.to_string());
    assert_eq!(stat[3], nimbus.to_string(), "session id: {stat:?}");
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{nimbus}/fd/{fd}")).expect("fd");
        assert!(target.ends_with("null"), "fd {fd} is {target:?}");
    }
    quit(vm, client, &jailed);
}

#[test]
fn files_on_another_file_system_are_copied_or_bound_read_only() {
    if !kvm_usable() {
        return;
    }
    // /dev/shm is a tmpfs: hard links from there into the jail fail with EXDEV.
    let shm = ChrootBase::at(format!("/dev/shm/nj-{}", std::process::id()));
    let kernel = shm.0.join(Format::Elf.file());
    std::fs::copy(guest(Format::Elf.file()), &kernel).expect("copy the kernel");
    let exec = shm.0.join("nimbus");
    std::fs::copy(NIMBUS, &exec).expect("copy nimbus");
    let jailed = Jailed::new("xdev");
    let mut args = jailed.args(
        "nimbus.test=hang",
        &["-qmp", "unix:/qmp.sock,server,nowait"],
    );
    args[3] = exec.display().to_string();
    args[11] = kernel.display().to_string();
    let mut vm = Vm::spawn_program(jailer(), &args, |_| {});
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let children = format!("/proc/{0}/task/{0}/children", vm.pid());
    let nimbus = std::fs::read_to_string(children).expect("children");
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", nimbus.trim())).expect("mountinfo");
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/hello.elf"))
        .unwrap_or_else(|| panic!("no bind mount of /hello.elf\n{mountinfo}"));
    let options = line.split(' ').nth(5).expect("mount options");
    assert!(options.split(',').any(|o| o == "ro"), "{line}");
    let client = QmpClient::connect(&jailed.in_root("qmp.sock"));
    quit(vm, client, &jailed);
    assert!(kernel.exists() && exec.exists(), "the sources must stay");
}

/// Runs the jailer with `flags` instead of the usual extra flags, to a failure.
fn run_failing(jailed: &mut Jailed, flags: &[&str], exec_file: Option<&str>) -> Output {
    jailed.flags = flags.iter().map(|s| s.to_string()).collect();
    let mut args = jailed.args("", &[]);
    if let Some(file) = exec_file {
        args[3] = file.to_string();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = Vm::spawn_program(jailer(), &args, |_| {}).wait(deadline - Instant::now());
    assert!(
        !jailed.jail_dir().exists(),
        "the jail is left behind\n{}",
        out.describe()
    );
    out
}

#[test]
fn failures_are_one_line_exit_1_and_leave_no_jail_or_cgroup() {
    let mut jailed = Jailed::new("fail");
    let out = run_failing(&mut jailed, &[], Some("/nonexistent/nimbus"));
    out.assert_one_error_line(&["nimbus-jailer: cannot find exec file /nonexistent/nimbus"]);

    let out = run_failing(&mut jailed, &["--cgroup", "memory.high=1"], None);
    out.assert_one_error_line(&["nimbus-jailer: bad --cgroup \"memory.high=1\""]);

    let out = run_failing(&mut jailed, &["--source", "/nonexistent/kernel"], None);
    out.assert_one_error_line(&["nimbus-jailer: cannot link source /nonexistent/kernel"]);

    // Made after the jail and the cgroup: both must go.
    let flags = ["--cgroup", "pids.max=8", "--netns", "/nonexistent/netns"];
    let out = run_failing(&mut jailed, &flags, None);
    out.assert_one_error_line(&["cannot open network namespace /nonexistent/netns"]);
    let leftovers: Vec<_> = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|m| Path::new(m).join("nimbus").join(&jailed.id))
    .filter(|d| d.exists())
    .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let out = run_failing(&mut jailed, &["--keep-fd", "1000"], None);
    out.assert_one_error_line(&["nimbus-jailer: cannot keep descriptor 1000"]);

    // In the jailed child, after pivot_root (more than fs.nr_open descriptors): the child's
    // report comes through the pipe, one line, and the jail still goes.
    let flags = ["--resource-limit", "no-file=99999999999"];
    let out = run_failing(&mut jailed, &flags, None);
    out.assert_one_error_line(&["nimbus-jailer: cannot set RLIMIT_NOFILE to 99999999999"]);
}
