//! virtio-net over a real tap: the test creates its own tap (`ip tuntap add`), starts nimbus
//! with it (by name, or as an inherited fd 3), receives the test guest's frame
//! (`nimbus.test=net`) on an AF_PACKET socket bound to that tap only, answers it, and checks
//! that the guest got the answer. Bad netdevs are refused naming the netdev.
//!
//! Taps need root: without it the tap tests are skipped loudly, or fail when CI is set. Traffic
//! only ever goes over the test's own tap.

mod common;

use std::io;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::Duration;

use common::kata::KataSandbox;
use common::packet::{pong_frame, receive_ping, PacketSocket, PONG};
use common::tap::{inherit_as_fd3, open_tap, root, TapGuard};
use common::{
    kvm_usable, lines, proc_stat_fields, qmp_args, run, scratch_dir, Format, Output, QmpClient, Vm,
    VmConfig, VM_TIMEOUT,
};
use serde_json::json;

const APPEND: &str = "console=ttyS0 nimbus.test=net";

fn net_args(netdev: &str) -> Vec<String> {
    let mut args = VmConfig::new(Format::Elf, 128, APPEND).args();
    args.extend([
        "-netdev".to_string(),
        netdev.to_string(),
        "-device".to_string(),
        "virtio-net-device,netdev=n0,id=n0,mac=52:54:00:12:34:56".to_string(),
    ]);
    args
}

/// A frame the guest must skip (and give its buffer back).
fn noise_frame(n: usize) -> Vec<u8> {
    let mut frame = pong_frame();
    let text = format!("NIMBUS-HOST-NOISE-{n}");
    frame[14..14 + text.len()].copy_from_slice(text.as_bytes());
    frame
}

/// The frame exchange with a running VM, then its end: `noise` other frames go before the
/// answer.
fn exchange(tap: &TapGuard, socket: &PacketSocket, mut vm: Vm, noise: usize) -> Output {
    vm.wait_for_line("net: mac=52:54:00:12:34:56", VM_TIMEOUT);
    let ping = receive_ping(socket, &mut vm);
    assert_eq!(ping[0..6], [0xff; 6], "the guest broadcasts its frame");
    assert_eq!(ping.len(), 60, "the guest pads its frame to 60 bytes");
    for n in 0..noise {
        socket.send(&noise_frame(n));
    }
    socket.send(&pong_frame());
    let out = vm.wait(VM_TIMEOUT);
    let got = format!("net: got {PONG}");
    assert!(
        out.guest_lines().contains(&got.as_str()),
        "the guest did not get the answer over {}\n{}",
        tap.name,
        out.describe()
    );
    assert_eq!(
        out.guest_lines().last(),
        Some(&"NIMBUS-GUEST done"),
        "{}",
        out.describe()
    );
    out.assert_exit_code(0);
    out
}

#[test]
fn guest_frame_reaches_a_tap_opened_by_name_and_the_answer_comes_back() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let vm = Vm::spawn(&net_args(&format!("tap,id=n0,ifname={}", tap.name)));
    exchange(&tap, &socket, vm, 0);
}

/// QMP `stop` stops the devices too, not only the vCPUs: the answer sent while the VM is
/// stopped stays queued in the tap, because the device no longer reads it, and reaches the guest
/// after `cont`. What the host sees tells: a tap counts a frame in its `tx_packets` when its
/// reader (nimbus) takes it from the queue, not when the host queues it. The stopped guest's
/// silence alone would prove nothing, as its vCPU could not print what the device delivered.
#[test]
fn frame_sent_while_stopped_reaches_the_guest_only_after_cont() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let qmp_path = scratch_dir().join(format!("net-stop-{}.qmp", std::process::id()));
    let mut args = net_args(&format!("tap,id=n0,ifname={}", tap.name));
    args.extend(qmp_args(&qmp_path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("net: mac=52:54:00:12:34:56", VM_TIMEOUT);
    receive_ping(&socket, &mut vm);
    let mut qmp = QmpClient::connect(&qmp_path);
    assert_eq!(qmp.execute("stop", json!({})), json!({"return": {}}));
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"]["status"],
        json!("paused")
    );
    let taken_before = tap.frames_taken();
    socket.send(&pong_frame());
    // A device that still watched the tap would take the frame at once; give it a second.
    std::thread::sleep(Duration::from_secs(1));
    let taken_while_stopped = tap.frames_taken();
    if taken_while_stopped != taken_before {
        vm.fail(&format!(
            "nimbus took {} frame(s) from tap {} while stopped",
            taken_while_stopped - taken_before,
            tap.name
        ));
    }
    let got = format!("net: got {PONG}");
    let so_far = vm.stdout_text();
    assert!(
        !lines(&so_far).contains(&got.as_str()),
        "the guest got the answer while stopped\n{so_far}"
    );
    assert_eq!(qmp.execute("cont", json!({})), json!({"return": {}}));
    let out = vm.wait(VM_TIMEOUT);
    assert!(
        out.guest_lines().contains(&got.as_str()),
        "the guest did not get the answer after cont\n{}",
        out.describe()
    );
    assert!(
        tap.frames_taken() > taken_before,
        "the answer reached the guest without nimbus taking a frame from the tap\n{}",
        out.describe()
    );
    out.assert_exit_code(0);
}

/// Five times as many frames as the guest has receive buffers arrive at once: the device
/// stops reading the tap while the guest has none and goes on when it gives them back, so the
/// answer behind them still arrives.
#[test]
fn answer_behind_more_frames_than_the_guest_has_buffers_still_arrives() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let vm = Vm::spawn(&net_args(&format!("tap,id=n0,ifname={}", tap.name)));
    exchange(&tap, &socket, vm, 40);
}

/// Starts nimbus with `fd` as its descriptor 3, inheritable.
fn spawn_with_fd3(args: &[String], fd: RawFd) -> Vm {
    Vm::spawn_with(args, |command| inherit_as_fd3(command, fd))
}

#[test]
fn guest_frame_reaches_a_tap_inherited_as_fd_3_and_the_answer_comes_back() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let tap_fd = open_tap(&tap.name);
    let vm = spawn_with_fd3(&net_args("tap,id=n0,fds=3"), tap_fd.as_raw_fd());
    exchange(&tap, &socket, vm, 0);
    drop(tap_fd);
}

fn assert_refused_naming_netdev(out: &Output, what: &str) {
    out.assert_exit_code(1);
    let first = out.first_stderr_line();
    assert!(
        first.contains("n0") && first.contains("netdev"),
        "the first stderr line must name netdev n0\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(what),
        "stderr must say {what:?}\n{}",
        out.describe()
    );
}

#[test]
fn netdev_without_a_tap_is_refused_naming_it() {
    let out = run(&net_args("tap,id=n0"));
    assert_refused_naming_netdev(&out, "the tap is missing");
}

#[test]
fn inherited_fd_that_is_no_tap_is_refused_naming_the_netdev() {
    if !kvm_usable() {
        return;
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, an array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and nothing else owns them.
    let (read, _write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let out = spawn_with_fd3(&net_args("tap,id=n0,fd=3"), read.as_raw_fd()).wait(VM_TIMEOUT);
    assert_refused_naming_netdev(&out, "fd 3 is not a tap device");
    assert!(!out.stdout.contains("NIMBUS-GUEST"), "{}", out.describe());
}

#[test]
fn interface_that_is_no_tap_is_refused_naming_the_netdev() {
    if !kvm_usable() || !root() {
        return;
    }
    // `lo` exists and is no tap: attaching fails, nothing is sent anywhere.
    let out = run(&net_args("tap,id=n0,ifname=lo"));
    assert_refused_naming_netdev(&out, "\"lo\"");
}

/// The non-empty lines Nimbus wrote to stderr.
fn error_lines(out: &Output) -> Vec<&str> {
    lines(&out.stderr)
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn vhost_on_without_dev_vhost_net_is_one_line_naming_it() {
    if !kvm_usable() {
        return;
    }
    if std::path::Path::new("/dev/vhost-net").exists() {
        eprintln!("SKIPPED: this host has /dev/vhost-net; vhost=on would start a vhost-net device");
        return;
    }
    let out = run(&net_args("tap,id=n0,ifname=nbtvhost,vhost=on"));
    assert_refused_naming_netdev(&out, "/dev/vhost-net");
    assert_eq!(error_lines(&out).len(), 1, "one line\n{}", out.describe());
    assert!(!out.stdout.contains("NIMBUS-GUEST"), "{}", out.describe());
}

#[test]
fn a_vhostfd_that_is_not_vhost_net_is_one_line_naming_vhostfd() {
    if !kvm_usable() {
        return;
    }
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let args = net_args("tap,id=n0,ifname=nbtvhost,vhost=on,vhostfd=3");
    let out = spawn_with_fd3(&args, null.as_raw_fd()).wait(VM_TIMEOUT);
    assert_refused_naming_netdev(&out, "vhostfd=3 is not a /dev/vhost-net descriptor");
    assert_eq!(error_lines(&out).len(), 1, "one line\n{}", out.describe());
}

#[test]
fn several_tap_fds_are_refused_as_multiqueue() {
    let out = run(&net_args("tap,id=n0,fds=3:4"));
    assert_refused_naming_netdev(&out, "multiqueue is not supported yet");
}

/// Kata Containers' StratoVirt-driver argument list, as it sends it (without the vhost-vsock
/// and virtio-fs devices, which Nimbus refuses by name): no `-serial`, bare `-D`, QMP, rng,
/// a read-only root drive and the tap handed over as fd 3. The guest proves it booted by
/// sending its frame on the tap; QMP answers; the guest's reset ends nimbus with status 0.
#[test]
fn kata_argument_list_with_its_tap_as_fd_3_boots_the_guest() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let tap_fd = open_tap(&tap.name);
    let scratch = common::scratch_dir();
    let image = scratch.join(format!("kata-rootfs-{}.img", std::process::id()));
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let qmp = scratch.join(format!("kata-qmp-{}.sock", std::process::id()));
    let kernel = common::guest("hello.elf");
    let args = KataSandbox {
        kernel: &kernel,
        mem_mib: 128,
        append: "nimbus.test=net",
        qmp: &qmp,
        rootfs: &image,
        mem_share: true,
        vsock: None,
        virtio_fs: None,
    }
    .args();
    let mut vm = spawn_with_fd3(&args, tap_fd.as_raw_fd());
    receive_ping(&socket, &mut vm);

    let stream = std::os::unix::net::UnixStream::connect(&qmp).expect("QMP socket");
    stream.set_read_timeout(Some(VM_TIMEOUT)).expect("timeout");
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    use std::io::{BufRead, Write};
    reader.read_line(&mut line).expect("greeting");
    assert!(line.starts_with(r#"{"QMP":"#), "{line}");
    let mut writer = stream;
    writer
        .write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-status\"}")
        .expect("send");
    for expected in [r#"{"return":{}}"#, r#""status":"running""#] {
        line.clear();
        reader.read_line(&mut line).expect("reply");
        assert!(line.contains(expected), "{line}");
    }

    socket.send(&pong_frame());
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    assert_eq!(
        out.stdout,
        "",
        "without -serial the console is dropped\n{}",
        out.describe()
    );
    assert!(!qmp.exists(), "the QMP socket is removed on exit");
    let _ = std::fs::remove_file(&image);
    drop(tap_fd);
}

const NET_HOTPLUG_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qmp/nethotplug.py");

/// Waits for `line` on the client's stdout; fails with what it printed otherwise.
fn client_says(client: &mut std::process::Child, out: &mut impl BufRead, line: &str) {
    let mut seen = String::new();
    loop {
        let mut next = String::new();
        if out.read_line(&mut next).unwrap_or(0) == 0 {
            let _ = client.kill();
            let mut err = String::new();
            if let Some(mut stderr) = client.stderr.take() {
                let _ = io::Read::read_to_string(&mut stderr, &mut err);
            }
            panic!("the qemu.qmp client ended before {line:?}:\n{seen}\n--- stderr ---\n{err}");
        }
        seen.push_str(&next);
        if next.trim_end() == line {
            return;
        }
    }
}

/// Network hot-plug as a container runtime does it, with QEMU's own client library: the tap's
/// descriptor goes over the QMP socket (SCM_RIGHTS + `getfd`), `netdev_add fds=` and
/// `device_add driver=virtio-net-mmio addr=0x0` put it behind the empty net slot the guest's
/// driver already runs on; the guest sees the link come up with the MAC given, its frame
/// reaches the tap and the answer comes back; `device_del` takes the link down again
/// (DEVICE_DELETED) and `netdev_del` closes the tap.
#[test]
fn tap_passed_by_getfd_is_hot_plugged_into_an_empty_net_slot_and_unplugged() {
    if !kvm_usable() || !root() {
        return;
    }
    common::require_qemu_qmp();
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let path = scratch_dir().join(format!("net-hotplug-{}.sock", std::process::id()));
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=netwatch").args();
    args.extend(qmp_args(&path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("netwatch: link=0", VM_TIMEOUT);

    let mut client = Command::new("timeout")
        .args(["120", "python3", NET_HOTPLUG_CLIENT])
        .arg(&path)
        .arg(&tap.name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the qemu.qmp client");
    let mut to_client = client.stdin.take().expect("piped");
    let mut from_client = BufReader::new(client.stdout.take().expect("piped"));
    client_says(&mut client, &mut from_client, "plugged");

    vm.wait_for_line(
        "netwatch: link up config-change mac=52:54:00:12:34:56",
        VM_TIMEOUT,
    );
    let ping = receive_ping(&socket, &mut vm);
    assert_eq!(ping[0..6], [0xff; 6], "the guest broadcasts its frame");
    socket.send(&pong_frame());
    vm.wait_for_line(&format!("net: got {PONG}"), VM_TIMEOUT);

    to_client.write_all(b"unplug\n").expect("tell the client");
    client_says(&mut client, &mut from_client, "unplugged");
    vm.wait_for_line(
        "netwatch: link down config-change mac=52:54:00:12:34:56",
        VM_TIMEOUT,
    );
    to_client.write_all(b"quit\n").expect("tell the client");
    client_says(&mut client, &mut from_client, "done");
    let status = client.wait().expect("client status");
    assert!(status.success(), "the qemu.qmp client failed: {status}");
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
}

/// `netdev_add ifname=` opens the tap on the VMM thread at run time, inside its seccomp filter;
/// `-machine net-slots=` sets how many net slots there are.
/// CPU time (user + system, in clock ticks) the VMM thread of process `pid` has used.
fn vmm_thread_ticks(pid: i32) -> u64 {
    let fields = proc_stat_fields(&format!("{pid}/task/{pid}"));
    let field = |n: usize| fields[n].parse::<u64>().expect("a number");
    field(11) + field(12)
}

/// Backpressure: frames wait in the tap while the guest has posted no receive buffers (here
/// its driver never started), and the VMM thread does not spin on the readable tap meanwhile.
#[test]
fn tap_with_frames_the_guest_cannot_take_does_not_keep_the_vmm_thread_busy() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=hang").args();
    let netdev = format!("tap,id=n0,ifname={}", tap.name);
    args.extend([
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-device,netdev=n0".into(),
    ]);
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    for _ in 0..8 {
        socket.send(&pong_frame());
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = vmm_thread_ticks(vm.pid());
    std::thread::sleep(Duration::from_secs(1));
    let busy = vmm_thread_ticks(vm.pid()) - before;
    vm.signal(libc::SIGTERM);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
    // A spinning loop takes about 100 ticks a second; an idle one none.
    assert!(
        busy < 20,
        "the VMM thread used {busy} ticks in 1 s with a tap it cannot drain"
    );
}

/// Taps join and leave the event loop at run time: a tap unplugged and closed in the same QMP
/// burst that opens another one (which gets the closed tap's descriptor number) and plugs it
/// into another slot must be watched there. Fails when an unplugged tap stays registered on
/// the loop until after it is closed.
#[test]
fn tap_closed_and_reopened_in_one_burst_carries_frames_in_its_new_slot() {
    if !kvm_usable() || !root() {
        return;
    }
    let (old, new) = (TapGuard::create(), TapGuard::create());
    let socket = PacketSocket::bind(&new.name);
    let path = scratch_dir().join(format!("net-burst-{}.sock", std::process::id()));
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=netwatch").args();
    args.extend(qmp_args(&path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("netwatch: link=0", VM_TIMEOUT);
    let mut qmp = QmpClient::connect(&path);
    let mac = "52:54:00:12:34:56";
    let replies = qmp.execute_burst(&[
        ("netdev_add", json!({"type": "tap", "id": "old", "ifname": old.name})),
        ("device_add", json!({"driver": "virtio-net-device", "id": "eth9", "netdev": "old", "addr": "0x1"})),
        ("device_del", json!({"id": "eth9"})),
        ("netdev_del", json!({"id": "old"})),
        ("netdev_add", json!({"type": "tap", "id": "new", "ifname": new.name})),
        ("device_add", json!({"driver": "virtio-net-device", "id": "eth0", "netdev": "new", "addr": "0x0", "mac": mac})),
    ]);
    for reply in &replies {
        assert_eq!(reply, &json!({"return": {}}), "{replies:?}");
    }
    vm.wait_for_line(
        &format!("netwatch: link up config-change mac={mac}"),
        VM_TIMEOUT,
    );
    receive_ping(&socket, &mut vm);
    socket.send(&pong_frame());
    vm.wait_for_line(&format!("net: got {PONG}"), VM_TIMEOUT);
    assert_eq!(qmp.execute("quit", json!({})), json!({"return": {}}));
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn tap_opened_by_name_at_run_time_fills_the_last_of_the_configured_net_slots() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let path = scratch_dir().join(format!("net-slots-{}.sock", std::process::id()));
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=hang").args();
    args.extend(["-machine".into(), "microvm,net-slots=2,blk-slots=1".into()]);
    args.extend(qmp_args(&path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let mut qmp = QmpClient::connect(&path);
    let ok = json!({"return": {}});
    let netdev = json!({"type": "tap", "id": "n1", "ifname": tap.name});
    assert_eq!(qmp.execute("netdev_add", netdev), ok);
    let device = |addr: &str| json!({"driver": "virtio-net-device", "id": "eth1", "netdev": "n1", "addr": addr});
    let reply = qmp.execute("device_add", device("0x2"));
    assert_eq!(
        reply["error"]["desc"], "Net slot 0x2 does not exist: the machine has 2 net slots",
        "{reply}"
    );
    assert_eq!(qmp.execute("device_add", device("0x1")), ok);
    assert_eq!(qmp.execute("device_del", json!({"id": "eth1"})), ok);
    assert_eq!(qmp.execute("netdev_del", json!({"id": "n1"})), ok);
    assert_eq!(qmp.execute("quit", json!({})), ok);
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    let cmdline = out
        .guest_lines()
        .into_iter()
        .find(|l| l.starts_with("cmdline:"))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        cmdline.matches("virtio_mmio.device=").count(),
        3,
        "one block and two net slots: {cmdline}"
    );
}
