//! virtio-fs through Nimbus's vhost-user-fs device, with Debian's C virtiofsd
//! (`/usr/lib/qemu/virtiofsd`, package qemu-system-common) as the backend:
//!
//! - the kit's Linux (`kit.mode=fs`, guest-kit/kit-init.c) mounts the share, reads a file the
//!   test wrote, writes one the test then reads on the host, and lists a directory of 1,000
//!   files; the guest restarts and nimbus exits 0 (one kit boot, ~30-60 s under kvm-pvm);
//! - with the project's test guest (no boot needed): a vhost-user-fs device without
//!   `mem-share=on`, with no socket at its path, and with a socket file nobody listens on, are
//!   each one line and exit 1.
//!
//! Each test starts virtiofsd itself and a guard kills it (and its sandbox child) and removes
//! its directory whatever happens.

mod common;
mod kit;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::virtiofsd::{require_virtiofsd, Virtiofsd};
use common::{kvm_usable, replace_arg, run, Format, Output, TempDir, VmConfig};
use kit::{disk_args, kit, kit_cmdline, KitVm};

/// The tag the device announces and the guest mounts (kit-init's default `kit.fstag`).
const TAG: &str = "myfs";
/// What kit-init writes to `/mnt/from-guest.txt` (FS_GUEST_LINE in kit-init.c).
const GUEST_LINE: &str = "written by the guest through virtio-fs\n";
/// Files the test puts in `many/` for the guest to count.
const MANY: usize = 1000;
/// From spawning nimbus to its exit: ~30-60 s under kvm-pvm, twice that under load.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// `-chardev socket,... -device vhost-user-fs-device,...` for the socket `socket`.
fn fs_args(socket: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=c0,path={}", socket.display()),
        "-device".into(),
        format!("vhost-user-fs-device,id=fs0,chardev=c0,tag={TAG}"),
    ]
}

/// The kit's command line for this host with root read-only on `/dev/vda` and /init in
/// `kit.mode=fs`.
fn fs_cmdline() -> String {
    kit_cmdline(true)
        .split(' ')
        .map(|w| match w {
            "rw" => "ro",
            "kit.mode=boot" => "kit.mode=fs",
            w => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The share: `hello.txt` (its content returned) and `many/` with [`MANY`] files.
fn populate_share(share: &Path) -> String {
    let hello = format!("hello from the host, test pid {}", std::process::id());
    std::fs::create_dir_all(share.join("many")).expect("create the share");
    std::fs::write(share.join("hello.txt"), format!("{hello}\n")).expect("write hello.txt");
    for i in 0..MANY {
        std::fs::write(
            share.join("many").join(format!("file-{i:04}")),
            i.to_string(),
        )
        .expect("write a file in many/");
    }
    hello
}

/// The kit mounts the share over virtio-fs, reads hello.txt (content checked), writes
/// from-guest.txt (checked on the host), counts the 1,000 entries of many/, and restarts:
/// nimbus exits 0.
#[test]
fn kit_linux_reads_writes_and_lists_a_virtiofsd_share() {
    if !kvm_usable() {
        return;
    }
    require_virtiofsd();
    let kit = kit();
    let dir = TempDir::new("virtio-fs-kit");
    let share = dir.path("share");
    let hello = populate_share(&share);
    let socket = dir.path("virtiofsd.sock");
    let mut daemon = Virtiofsd::start(&share, &socket, &dir.path("virtiofsd.log"));

    let mut config = VmConfig {
        kernel: kit.vmlinux(),
        mem_mib: 256,
        cpus: 2,
        append: fs_cmdline(),
        initrd: None,
        extra_args: disk_args("rootfs", &kit.rootfs(), true),
    };
    config.extra_args.extend(fs_args(&socket));
    let args = replace_arg(config.args(), "-machine", "microvm,mem-share=on");
    let mut vm = KitVm::spawn_with(&args, |_| {});
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while vm.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Kills nimbus if it still runs; either way the report shows virtiofsd's side too.
    let transcript = vm.kill();
    let daemon_status = daemon.wait_exit(Duration::from_secs(5));
    let daemon_exit = match daemon_status {
        Some(status) => status.to_string(),
        None => "still running (killed by the test)".to_string(),
    };
    let describe = format!(
        "{}\n{}\nvirtiofsd exit: {daemon_exit}",
        transcript.describe(),
        daemon.describe(),
    );
    assert!(
        transcript.status.is_some(),
        "nimbus still ran after {BOOT_TIMEOUT:?}\n{describe}"
    );

    let texts = transcript.texts();
    let has = |line: &str| texts.contains(&line);
    if let Some(error) = texts.iter().find(|l| l.starts_with("KIT fs error ")) {
        panic!("the guest reported `{error}`\n{describe}");
    }
    assert!(
        has(&format!("KIT fs read: {hello}")),
        "the guest did not print `KIT fs read: {hello}`\n{describe}"
    );
    assert!(
        has(&format!("KIT fs many: {MANY}")),
        "the guest did not count {MANY} entries in many/\n{describe}"
    );
    assert!(has("KIT fs done"), "no `KIT fs done`\n{describe}");
    assert!(
        !texts.iter().any(|l| l.starts_with("Kernel panic")),
        "the kernel panicked\n{describe}"
    );
    let written = std::fs::read_to_string(share.join("from-guest.txt"))
        .unwrap_or_else(|e| panic!("read from-guest.txt on the host: {e}\n{describe}"));
    assert_eq!(
        written, GUEST_LINE,
        "from-guest.txt on the host\n{describe}"
    );
    assert_eq!(
        transcript.status.and_then(|s| s.code()),
        Some(0),
        "nimbus must exit 0 when the guest restarts\n{describe}"
    );
    let kit_lines: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|l| l.starts_with("KIT fs "))
        .collect();
    eprintln!(
        "virtio-fs with virtiofsd: `KIT fs done` {:.1} s after spawn, exit {:.1} s; {}",
        transcript.seconds_to("KIT fs done").unwrap_or(f64::NAN),
        transcript.elapsed.as_secs_f64(),
        kit_lines.join(" | ")
    );
}

/// Exit status 1, one stderr line, and no guest ran.
fn assert_one_line_refusal(out: &Output, what: &str, names: impl Fn(&str) -> bool) {
    out.assert_one_error_line(&[]);
    assert!(
        names(out.first_stderr_line()),
        "stderr's line does not name {what}\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("NIMBUS-GUEST"),
        "a guest ran\n{}",
        out.describe()
    );
}

/// Without `mem-share=on` (virtiofsd listening, so nothing else is wrong) a vhost-user-fs
/// device is one line naming the flag, and exit status 1.
#[test]
fn vhost_user_fs_without_mem_share_is_one_line_naming_it() {
    if !kvm_usable() {
        return;
    }
    require_virtiofsd();
    let dir = TempDir::new("virtio-fs-private");
    let share = dir.path("share");
    std::fs::create_dir_all(&share).expect("create the share");
    let socket = dir.path("virtiofsd.sock");
    let daemon = Virtiofsd::start(&share, &socket, &dir.path("virtiofsd.log"));
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = fs_args(&socket);
    let out = run(&config.args());
    let context = daemon.describe();
    drop(daemon);
    let out = with_context(out, &context);
    assert_one_line_refusal(&out, "mem-share=on", |line| line.contains("mem-share=on"));
}

/// With shared memory but nothing at the socket path: one line naming the path, exit
/// status 1, and the path is not created.
#[test]
fn vhost_user_fs_with_no_socket_at_the_path_is_one_line_naming_it() {
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("virtio-fs-missing");
    let missing = dir.path("no-such.sock");
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = fs_args(&missing);
    let args = replace_arg(config.args(), "-machine", "microvm,mem-share=on");
    let out = run(&args);
    let path = missing.display().to_string();
    assert_one_line_refusal(&out, &path, |line| line.contains(&path));
    assert!(
        !missing.exists(),
        "nimbus left {path} behind\n{}",
        out.describe()
    );
}

/// With shared memory and a socket file whose listener is gone (connect(2) is refused): one
/// line naming the path, exit status 1.
#[test]
fn vhost_user_fs_with_no_listener_on_the_socket_is_one_line_naming_it() {
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("virtio-fs-stale");
    let stale = dir.path("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind the stale socket"));
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = fs_args(&stale);
    let args = replace_arg(config.args(), "-machine", "microvm,mem-share=on");
    let out = run(&args);
    let path = stale.display().to_string();
    assert_one_line_refusal(&out, &path, |line| line.contains(&path));
}

/// `out` with `context` (virtiofsd's log) shown after the command in its description.
fn with_context(mut out: Output, context: &str) -> Output {
    out.command = format!("{}\n{context}", out.command);
    out
}
