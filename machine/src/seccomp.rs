//! seccomp: per-thread allow-lists of the syscalls Nimbus makes once the guest runs.
//!
//! Two lists (see [`lists`]): one for the VMM thread (the main thread's event loop: console,
//! QMP, host signals, device emulation on the event loop, disk I/O, the exit path) and one for
//! vCPU threads (`KVM_RUN`, port and MMIO dispatch into devices, which may do device I/O
//! synchronously). Each thread installs its own filter before the guest runs: a vCPU thread
//! first thing when it starts, the VMM thread right before its event loop, after the vCPU
//! threads were spawned (so they never inherit the VMM list) and after everything that opens
//! files or sockets.
//!
//! A syscall outside the list traps (`SECCOMP_RET_TRAP`): the SIGSYS handler in [`sigsys`]
//! writes one line naming the syscall and the thread to stderr and exits with
//! [`SIGSYS_EXIT_STATUS`]. `-disable-seccomp` turns the filters off.
//!
//! **Adding code that makes a new syscall after setup** (a new device, io_uring or tap I/O, a
//! new QMP command, a new exit path): add one line to the right table in [`lists`] with a
//! comment saying why, run the integration tests (each forbidden syscall ends the VM with the
//! SIGSYS line naming it), and update the counts in `docs/security.md`.

mod bpf;
mod lists;
mod names;
mod sigsys;

pub use sigsys::{also_report_to, SIGSYS_EXIT_STATUS};

use bpf::Program as BpfProgram;
use lists::Allowed;
use std::sync::Arc;

/// The environment variable of the self-test hook: `<syscall>`, `vcpu:<syscall>` or
/// `iothread:<syscall>` makes the VMM thread (or vCPU 0's thread, or each iothread) call that
/// syscall once right after its filter is installed,
/// so tests can check that a forbidden syscall kills the VMM. Only harmless syscalls without
/// arguments are accepted (see [`SELFTEST_SYSCALLS`]).
pub const SELFTEST_ENV: &str = "NIMBUS_SECCOMP_SELFTEST";

/// The syscalls the self-test hook may make: none has arguments or side effects.
const SELFTEST_SYSCALLS: [(&str, i64); 4] = [
    ("getppid", libc::SYS_getppid),
    ("getpgrp", libc::SYS_getpgrp),
    ("getuid", libc::SYS_getuid),
    ("getgid", libc::SYS_getgid),
];

/// Which allow-list a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, QMP, console, exit path.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The vhost-user watchdog: shuts down the socket of a back end that does not answer.
    Watchdog,
    /// An iothread (`iothread.rs`): serves the queues and back ends of the devices given to it.
    IoThread,
    /// The short thread that sets the PIT's lost-tick policy while the guest boots (`pit.rs`).
    PitSetup,
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::Vmm => "VMM",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Watchdog => "vhost-user watchdog",
            ThreadKind::IoThread => "iothread",
            ThreadKind::PitSetup => "PIT set-up",
        })
    }
}

/// Why seccomp could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter could not be compiled to BPF.
    #[error("cannot compile the {0} thread's seccomp filter")]
    Compile(ThreadKind, #[source] bpf::BpfError),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    SignalHandler(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error("cannot install the {0} thread's seccomp filter")]
    Install(ThreadKind, #[source] std::io::Error),
    /// A thread of a kind whose filter was not compiled.
    #[error("no seccomp filter was compiled for the {0} thread")]
    NoFilter(ThreadKind),
    /// The self-test hook names a syscall it does not know.
    #[error("{SELFTEST_ENV}={0:?}: expected [vcpu:|iothread:]getppid|getpgrp|getuid|getgid")]
    SelfTest(String),
}

/// The compiled programs of each thread kind.
struct Filters {
    vmm: BpfProgram,
    vcpu: BpfProgram,
    /// Only with vhost-user devices.
    watchdog: Option<BpfProgram>,
    /// For `-object iothread` threads.
    iothread: BpfProgram,
    pit_setup: BpfProgram,
}

/// The compiled filters of both thread kinds (none with `-disable-seccomp`) and the self-test
/// hook. Cheap to clone: each vCPU thread holds one.
#[derive(Clone)]
pub struct Seccomp(Arc<Inner>);

struct Inner {
    /// `None` with `-disable-seccomp`.
    filters: Option<Filters>,
    /// The thread kind and syscall of the self-test hook, if asked for.
    selftest: Option<(ThreadKind, i64)>,
}

impl Seccomp {
    /// Compiles both filters (when `enabled`) and installs the SIGSYS handler; reads the
    /// self-test hook from the environment. Without `ioeventfd` vCPU threads run virtqueues
    /// themselves and their list grows by the syscalls of device I/O.
    /// Devices add what they need (`devices`): Unix socket calls on the VMM thread for hybrid
    /// vsock, the vhost requests on every thread for vhost-vsock and vhost-net.
    pub fn new(
        enabled: bool,
        ioeventfd: bool,
        devices: DeviceSyscalls,
    ) -> Result<Self, SeccompError> {
        let selftest = match std::env::var(SELFTEST_ENV) {
            Ok(value) => Some(parse_selftest(&value)?),
            Err(_) => None,
        };
        let filters = if enabled {
            sigsys::register_handler().map_err(SeccompError::SignalHandler)?;
            let queue_io = !ioeventfd;
            let watchdog = if devices.vhost_user {
                Some(compile(ThreadKind::Watchdog, queue_io, devices)?)
            } else {
                None
            };
            Some(Filters {
                vmm: compile(ThreadKind::Vmm, queue_io, devices)?,
                vcpu: compile(ThreadKind::Vcpu, queue_io, devices)?,
                watchdog,
                iothread: compile(ThreadKind::IoThread, queue_io, devices)?,
                pit_setup: compile(ThreadKind::PitSetup, queue_io, devices)?,
            })
        } else {
            log::warn!("seccomp is disabled (-disable-seccomp)");
            None
        };
        Ok(Self(Arc::new(Inner { filters, selftest })))
    }

    /// Installs the filter of `kind` on the calling thread (`vcpu` is the vCPU index, shown
    /// when a forbidden syscall is reported), then runs the self-test hook if it targets this
    /// thread (vCPU 0 for `vcpu:`).
    pub fn apply(&self, kind: ThreadKind, vcpu: u8) -> Result<(), SeccompError> {
        if let Some(filters) = &self.0.filters {
            let program = match kind {
                ThreadKind::Vmm => &filters.vmm,
                ThreadKind::Vcpu => &filters.vcpu,
                // Compiled with the vhost-user devices; refused rather than run unfiltered.
                ThreadKind::Watchdog => filters
                    .watchdog
                    .as_ref()
                    .ok_or(SeccompError::NoFilter(kind))?,
                ThreadKind::IoThread => &filters.iothread,
                ThreadKind::PitSetup => &filters.pit_setup,
            };
            sigsys::set_thread(kind, vcpu);
            bpf::install(program).map_err(|e| SeccompError::Install(kind, e))?;
            log::debug!("seccomp filter installed on the {kind} thread");
        }
        if let Some((target, nr)) = self.0.selftest {
            if target == kind && (kind != ThreadKind::Vcpu || vcpu == 0) {
                run_selftest(nr);
            }
        }
        Ok(())
    }
}

fn parse_selftest(value: &str) -> Result<(ThreadKind, i64), SeccompError> {
    let (kind, name) = if let Some(name) = value.strip_prefix("vcpu:") {
        (ThreadKind::Vcpu, name)
    } else if let Some(name) = value.strip_prefix("iothread:") {
        (ThreadKind::IoThread, name)
    } else {
        (ThreadKind::Vmm, value)
    };
    SELFTEST_SYSCALLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, nr)| (kind, nr))
        .ok_or_else(|| SeccompError::SelfTest(value.to_string()))
}

#[allow(unsafe_code)]
fn run_selftest(nr: i64) {
    log::warn!("{SELFTEST_ENV}: calling syscall {nr} once");
    // SAFETY: `nr` is one of SELFTEST_SYSCALLS, which take no arguments, touch no memory and
    // change nothing.
    let rc = unsafe { libc::syscall(nr) };
    log::warn!("{SELFTEST_ENV}: syscall {nr} returned {rc}");
}

/// The allow-list of `kind`; `queue_io`: vCPU threads run virtqueues (no ioeventfd).
pub(crate) fn allow_list(kind: ThreadKind, queue_io: bool) -> Vec<Allowed> {
    match kind {
        ThreadKind::Vmm => lists::vmm(),
        ThreadKind::Vcpu => lists::vcpu(queue_io),
        ThreadKind::Watchdog => lists::watchdog(),
        ThreadKind::IoThread => lists::iothread(),
        ThreadKind::PitSetup => lists::pit_setup(),
    }
}

/// What the vsock device, if any, adds to the allow-lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockSyscalls {
    /// No vsock device.
    None,
    /// Hybrid vsock: the VMM thread opens, connects and half-closes Unix sockets.
    UnixSockets,
    /// vhost-vsock: the thread that starts or stops the device (a vCPU writing the status
    /// register, the VMM thread at exit) makes the vhost requests.
    Vhost,
}

/// What the configured devices add to the allow-lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSyscalls {
    /// The vsock device, if any.
    pub vsock: VsockSyscalls,
    /// A net device runs on vhost-net (`vhost=on`): the thread that starts or stops it makes
    /// the vhost requests and sets the tap's header size and offloads.
    pub vhost_net: bool,
    /// vhost-user devices: the threads that start, reset and stop them send their back ends
    /// socket messages.
    pub vhost_user: bool,
    /// A QMP monitor: `migrate` writes a snapshot.
    pub snapshot: bool,
    /// A Unix socket chardev behind the UART or virtconsole: vCPU threads send it output.
    pub chardev_socket: bool,
}

/// The allow-list of `kind` with what the configured devices need.
pub(crate) fn allow_list_with_devices(
    kind: ThreadKind,
    queue_io: bool,
    devices: DeviceSyscalls,
) -> Vec<Allowed> {
    let mut list = allow_list(kind, queue_io);
    // Neither serves vsock, vhost or vhost-user devices (the command line refuses them an
    // iothread), nor takes snapshots.
    if matches!(
        kind,
        ThreadKind::Watchdog | ThreadKind::IoThread | ThreadKind::PitSetup
    ) {
        return list;
    }
    if devices.vsock == VsockSyscalls::UnixSockets && kind == ThreadKind::Vmm {
        list.extend(lists::vsock());
    }
    let vhost_vsock = devices.vsock == VsockSyscalls::Vhost;
    if vhost_vsock || devices.vhost_net {
        list.push(lists::vhost(vhost_vsock, devices.vhost_net));
    }
    if devices.vhost_user {
        list.extend(lists::vhost_user(kind));
    }
    if devices.snapshot {
        list.extend(lists::snapshot(kind));
    }
    if devices.chardev_socket {
        list.extend(lists::chardev_socket(kind));
    }
    list
}

/// Compiles the allow-list of `kind` into a BPF program for this architecture ([`bpf`]).
fn compile(
    kind: ThreadKind,
    queue_io: bool,
    devices: DeviceSyscalls,
) -> Result<BpfProgram, SeccompError> {
    let list = allow_list_with_devices(kind, queue_io, devices);
    for allowed in &list {
        log::trace!("{kind} thread may call {}: {}", allowed.name, allowed.why);
    }
    bpf::compile(&list).map_err(|e| SeccompError::Compile(kind, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every list: the VMM thread's, the vCPU threads' with and without ioeventfds, and the
    /// vhost-user watchdog's.
    const ALL: [(ThreadKind, bool); 6] = [
        (ThreadKind::Vmm, false),
        (ThreadKind::Vcpu, false),
        (ThreadKind::Vcpu, true),
        (ThreadKind::Watchdog, false),
        (ThreadKind::IoThread, false),
        (ThreadKind::PitSetup, false),
    ];

    #[test]
    fn both_filters_compile_for_this_architecture() {
        for (kind, queue_io) in ALL {
            for vsock in [VsockSyscalls::UnixSockets, VsockSyscalls::Vhost] {
                for vhost_net in [false, true] {
                    let devices = DeviceSyscalls {
                        vsock,
                        vhost_net,
                        vhost_user: vhost_net,
                        snapshot: vhost_net,
                        chardev_socket: vhost_net,
                    };
                    compile(kind, queue_io, devices).expect("compiles");
                }
            }
            let program = compile(kind, queue_io, DeviceSyscalls::NONE).expect("compiles");
            assert!(!program.is_empty());
            // The kernel refuses programs longer than BPF_MAXINSNS.
            assert!(
                program.len() < 4096,
                "{kind:?}: {} instructions",
                program.len()
            );
        }
    }

    /// Each thread's program, with every device's additions and without, allows exactly what
    /// its list says: every listed syscall with each listed argument value (and with any
    /// arguments when unrestricted), no other value of a restricted argument, no other
    /// syscall number.
    #[test]
    fn every_program_allows_exactly_its_list() {
        use bpf::tests::{run, ALLOW, ARCH, TRAP};
        let all_devices = DeviceSyscalls {
            vsock: VsockSyscalls::Vhost,
            vhost_net: true,
            vhost_user: true,
            snapshot: true,
            chardev_socket: true,
        };
        let unix_vsock = DeviceSyscalls {
            vsock: VsockSyscalls::UnixSockets,
            ..DeviceSyscalls::NONE
        };
        for (kind, queue_io) in ALL {
            for devices in [DeviceSyscalls::NONE, all_devices, unix_vsock] {
                let list = allow_list_with_devices(kind, queue_io, devices);
                let program = compile(kind, queue_io, devices).expect("compiles");
                let restricted = |nr: i64| {
                    let entries: Vec<&Allowed> = list.iter().filter(|a| a.nr == nr).collect();
                    let pairs: Vec<(u8, u64)> = entries
                        .iter()
                        .filter_map(|a| a.only.as_ref())
                        .flat_map(|(arg, values)| values.iter().map(move |v| (*arg, *v)))
                        .collect();
                    (!entries.is_empty(), pairs)
                };
                for nr in 0..500i64 {
                    let (listed, pairs) = restricted(nr);
                    let call = |arg: u8, value: u64| {
                        let mut args = [0u64; 6];
                        args[usize::from(arg)] = value;
                        run(&program, ARCH, nr as u32, args)
                    };
                    if !listed {
                        assert_eq!(call(0, 0), TRAP, "{kind:?}: {nr} is not listed");
                    } else if pairs.is_empty() {
                        assert_eq!(call(2, 0xdead), ALLOW, "{kind:?}: {nr} takes any args");
                    } else {
                        for &(arg, value) in &pairs {
                            assert_eq!(call(arg, value), ALLOW, "{kind:?}: {nr} {value:#x}");
                            assert_eq!(call(arg, value ^ 0x5a5a), TRAP, "{kind:?}: {nr}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn no_syscall_is_listed_twice() {
        for (kind, queue_io) in ALL {
            let mut seen = HashSet::new();
            for allowed in allow_list(kind, queue_io) {
                assert!(seen.insert(allowed.nr), "{kind:?}: {} twice", allowed.name);
            }
        }
    }

    #[test]
    fn every_listed_syscall_has_its_name_and_a_reason() {
        for (kind, queue_io) in ALL {
            for allowed in allow_list(kind, queue_io) {
                assert_eq!(names::syscall_name(allowed.nr), Some(allowed.name));
                assert!(!allowed.why.is_empty(), "{}", allowed.name);
            }
        }
    }

    #[test]
    fn vcpu_list_runs_kvm_and_nothing_that_opens_or_spawns() {
        let nrs: Vec<i64> = allow_list(ThreadKind::Vcpu, true)
            .iter()
            .map(|a| a.nr)
            .collect();
        for needed in [
            libc::SYS_ioctl,
            libc::SYS_futex,
            libc::SYS_write,
            libc::SYS_exit_group,
        ] {
            assert!(nrs.contains(&needed), "{needed}");
        }
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
        ] {
            assert!(!nrs.contains(&forbidden), "{forbidden}");
        }
    }

    #[test]
    fn vmm_list_has_the_event_loop_and_the_exit_path_but_cannot_create_files() {
        let nrs: Vec<i64> = allow_list(ThreadKind::Vmm, false)
            .iter()
            .map(|a| a.nr)
            .collect();
        for needed in [
            libc::SYS_epoll_wait,
            libc::SYS_accept4,
            libc::SYS_unlink,
            libc::SYS_exit_group,
        ] {
            assert!(nrs.contains(&needed), "{needed}");
        }
        for forbidden in [
            libc::SYS_open,
            libc::SYS_creat,
            libc::SYS_execve,
            libc::SYS_connect,
        ] {
            assert!(!nrs.contains(&forbidden), "{forbidden}");
        }
        // QMP blockdev-add opens existing images; nothing may be created or truncated.
        let openat = allow_list(ThreadKind::Vmm, false)
            .into_iter()
            .find(|a| a.nr == libc::SYS_openat)
            .expect("openat");
        let (arg, flags) = openat.only.expect("openat is restricted by its flags");
        assert_eq!(arg, 2);
        for f in flags {
            let forbidden = u64::try_from(libc::O_CREAT | libc::O_TRUNC | libc::O_PATH)
                .expect("open flags are positive");
            assert_eq!(f & forbidden, 0, "{f:#o}");
        }
    }

    #[test]
    fn vcpu_ioctls_are_restricted_to_kvm_run_get_regs_and_tap_offloads() {
        let ioctl = allow_list(ThreadKind::Vcpu, false)
            .into_iter()
            .find(|a| a.nr == libc::SYS_ioctl)
            .expect("ioctl");
        let (arg, values) = ioctl.only.expect("restricted");
        assert_eq!(arg, 1);
        assert_eq!(values, lists::vcpu_ioctls());
        assert_eq!(values[..2], [lists::KVM_RUN, lists::KVM_GET_REGS]);
    }

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(lists::KVM_RUN, 0xae80);
        assert_eq!(lists::KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(lists::KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(lists::KVM_SET_CLOCK, 0x4030_ae7b);
    }

    #[test]
    fn with_ioeventfd_vcpu_threads_do_no_disk_io() {
        let with: Vec<i64> = allow_list(ThreadKind::Vcpu, false)
            .iter()
            .map(|a| a.nr)
            .collect();
        let without: Vec<i64> = allow_list(ThreadKind::Vcpu, true)
            .iter()
            .map(|a| a.nr)
            .collect();
        for io in [
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_io_uring_enter,
        ] {
            assert!(!with.contains(&io) && without.contains(&io), "{io}");
        }
    }

    #[test]
    fn selftest_hook_accepts_only_harmless_syscalls() {
        assert_eq!(
            parse_selftest("getppid").expect("ok"),
            (ThreadKind::Vmm, libc::SYS_getppid)
        );
        assert_eq!(
            parse_selftest("vcpu:getuid").expect("ok"),
            (ThreadKind::Vcpu, libc::SYS_getuid)
        );
        assert_eq!(
            parse_selftest("iothread:getppid").expect("ok"),
            (ThreadKind::IoThread, libc::SYS_getppid)
        );
        assert!(parse_selftest("reboot").is_err());
    }

    #[test]
    fn iothread_list_serves_disks_and_taps_but_opens_nothing_and_runs_no_kvm() {
        let list = allow_list_with_devices(ThreadKind::IoThread, false, all_devices());
        let nrs: Vec<i64> = list.iter().map(|a| a.nr).collect();
        for needed in [
            libc::SYS_epoll_wait,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_io_uring_enter,
            libc::SYS_futex,
            libc::SYS_exit,
        ] {
            assert!(nrs.contains(&needed), "{needed}");
        }
        for forbidden in [
            libc::SYS_ioctl,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_accept4,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_unlink,
        ] {
            assert!(!nrs.contains(&forbidden), "{forbidden}");
        }
    }

    /// Every device that adds to the lists.
    fn all_devices() -> DeviceSyscalls {
        DeviceSyscalls {
            vsock: VsockSyscalls::UnixSockets,
            vhost_net: true,
            vhost_user: true,
            snapshot: true,
            chardev_socket: true,
        }
    }

    #[test]
    fn vhost_user_adds_socket_messages_to_the_threads_that_talk_to_back_ends() {
        let with = |kind| {
            let devices = DeviceSyscalls {
                vhost_user: true,
                ..DeviceSyscalls::NONE
            };
            allow_list_with_devices(kind, false, devices)
        };
        let names =
            |list: Vec<Allowed>| -> Vec<&'static str> { list.iter().map(|a| a.name).collect() };
        let vcpu = names(with(ThreadKind::Vcpu));
        assert!(
            vcpu.contains(&"sendmsg") && vcpu.contains(&"recvmsg"),
            "{vcpu:?}"
        );
        let vmm = names(with(ThreadKind::Vmm));
        assert!(
            vmm.contains(&"sendmsg") && vmm.contains(&"recvmsg"),
            "{vmm:?}"
        );
        let base = names(allow_list(ThreadKind::Vcpu, false));
        assert!(!base.contains(&"sendmsg") && !base.contains(&"recvmsg"));
    }

    #[test]
    fn vsock_adds_unix_socket_calls_to_the_vmm_thread_only() {
        let base = allow_list(ThreadKind::Vmm, false).len();
        let with =
            allow_list_with_devices(ThreadKind::Vmm, false, devices(VsockSyscalls::UnixSockets));
        let added: Vec<&str> = with[base..].iter().map(|a| a.name).collect();
        assert_eq!(added, ["socket", "connect", "shutdown"]);
        let socket = &with[base];
        assert_eq!(socket.only, Some((0, vec![libc::AF_UNIX as u64])));
        assert_eq!(
            allow_list_with_devices(ThreadKind::Vcpu, false, devices(VsockSyscalls::UnixSockets))
                .len(),
            allow_list(ThreadKind::Vcpu, false).len()
        );
    }

    #[test]
    fn vhost_vsock_adds_only_vhost_requests_to_ioctl_on_every_thread() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            let base = allow_list(kind, false).len();
            let with = allow_list_with_devices(kind, false, devices(VsockSyscalls::Vhost));
            assert_eq!(with.len(), base + 1);
            let (arg, requests) = with[base].only.clone().expect("restricted");
            assert_eq!((with[base].nr, arg), (libc::SYS_ioctl, 1));
            // _IOW/_IOR(VHOST_VIRTIO = 0xaf, ...): every request is in vhost's ioctl space.
            assert!(
                requests.iter().all(|r| (r >> 8) & 0xff == 0xaf),
                "{requests:x?}"
            );
        }
    }

    impl DeviceSyscalls {
        /// No device that needs more than the base lists.
        const NONE: DeviceSyscalls = DeviceSyscalls {
            vsock: VsockSyscalls::None,
            vhost_net: false,
            vhost_user: false,
            snapshot: false,
            chardev_socket: false,
        };
    }

    fn devices(vsock: VsockSyscalls) -> DeviceSyscalls {
        DeviceSyscalls {
            vsock,
            vhost_net: false,
            vhost_user: false,
            snapshot: false,
            chardev_socket: false,
        }
    }

    /// The vhost ioctl requests `devices` add to `kind`'s list.
    fn vhost_requests(kind: ThreadKind, devices: DeviceSyscalls) -> Vec<u64> {
        let base = allow_list(kind, false).len();
        let with = allow_list_with_devices(kind, false, devices);
        assert_eq!(with.len(), base + 1, "one more ioctl entry");
        let (arg, requests) = with[base].only.clone().expect("restricted");
        assert_eq!((with[base].nr, arg), (libc::SYS_ioctl, 1));
        requests
    }

    const VHOST_NET_SET_BACKEND: u64 = 0x4008_af30;
    const VHOST_VSOCK_SET_RUNNING: u64 = 0x4004_af61;

    #[test]
    fn vhost_net_adds_set_backend_and_the_tap_header_size_on_every_thread_only_when_configured() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            let net = DeviceSyscalls {
                vsock: VsockSyscalls::None,
                vhost_net: true,
                vhost_user: false,
                snapshot: false,
                chardev_socket: false,
            };
            let requests = vhost_requests(kind, net);
            for needed in [
                VHOST_NET_SET_BACKEND,
                libc::TUNSETVNETHDRSZ,
                libc::TUNSETOFFLOAD,
                0x4008_af00, // VHOST_SET_FEATURES
                0x4028_af11, // VHOST_SET_VRING_ADDR
            ] {
                assert!(requests.contains(&needed), "{kind:?}: {needed:#x}");
            }
            assert!(!requests.contains(&VHOST_VSOCK_SET_RUNNING));
            let vsock = vhost_requests(kind, devices(VsockSyscalls::Vhost));
            assert!(!vsock.contains(&VHOST_NET_SET_BACKEND));
            assert!(vsock.contains(&VHOST_VSOCK_SET_RUNNING));
            let base = allow_list_with_devices(kind, false, DeviceSyscalls::NONE);
            let set_backend = base
                .iter()
                .filter_map(|a| a.only.as_ref())
                .any(|(_, values)| values.contains(&VHOST_NET_SET_BACKEND));
            assert!(!set_backend, "{kind:?}: SET_BACKEND without vhost-net");
        }
    }

    /// `cargo test -p machine seccomp::tests::allow_list_counts -- --nocapture` prints the
    /// numbers kept in docs/security.md.
    #[test]
    fn allow_list_counts() {
        for (kind, queue_io) in ALL {
            let list = allow_list(kind, queue_io);
            let names: Vec<&str> = list.iter().map(|a| a.name).collect();
            let when = if queue_io { " without ioeventfd" } else { "" };
            println!(
                "{kind:?}{when}: {} syscalls: {}",
                list.len(),
                names.join(" ")
            );
            assert!(list.len() < 50, "{kind:?} allows {} syscalls", list.len());
        }
        let vsock =
            allow_list_with_devices(ThreadKind::Vmm, false, devices(VsockSyscalls::UnixSockets))
                .len();
        println!("Vmm with a virtio-vsock-device: {vsock} syscalls");
        let vhost_user = DeviceSyscalls {
            vhost_user: true,
            ..DeviceSyscalls::NONE
        };
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            let distinct: HashSet<i64> = allow_list_with_devices(kind, false, vhost_user)
                .iter()
                .map(|a| a.nr)
                .collect();
            println!(
                "{kind:?} with vhost-user devices: {} syscalls",
                distinct.len()
            );
        }
        let snapshot = DeviceSyscalls {
            snapshot: true,
            ..DeviceSyscalls::NONE
        };
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            let distinct: HashSet<i64> = allow_list_with_devices(kind, false, snapshot)
                .iter()
                .map(|a| a.nr)
                .collect();
            println!(
                "{kind:?} with a monitor (snapshots): {} syscalls",
                distinct.len()
            );
        }
        let socket = DeviceSyscalls {
            chardev_socket: true,
            ..DeviceSyscalls::NONE
        };
        let distinct: HashSet<i64> = allow_list_with_devices(ThreadKind::Vcpu, false, socket)
            .iter()
            .map(|a| a.nr)
            .collect();
        println!("Vcpu with a socket chardev: {} syscalls", distinct.len());
    }
}
