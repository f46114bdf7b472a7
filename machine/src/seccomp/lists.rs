//! The allow-lists: one table per thread kind, one line per syscall, each with why Nimbus
//! needs it once the guest runs. Setup (opening /dev/kvm, images, sockets, mapping RAM,
//! creating threads) happens before the filters are installed and needs no entry here.
//!
//! Extend these tables with every new syscall that code running after setup makes (and say
//! why); the integration tests find the ones you miss (the VM dies with "forbidden syscall
//! <name>"); then update the counts in docs/security.md
//! (`cargo test -p machine allow_list_counts -- --nocapture` prints them).

/// One allowed syscall.
pub(crate) struct Allowed {
    /// The syscall number (`libc::SYS_*`).
    pub nr: i64,
    /// Its name, as in `libc::SYS_<name>`.
    pub name: &'static str,
    /// `Some((arg, values))`: allowed only when argument `arg` (32-bit compare) is one of
    /// `values`; `None`: any arguments.
    pub only: Option<(u8, Vec<u64>)>,
    /// Why it is needed.
    pub why: &'static str,
}

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    const KVMIO: u64 = 0xae;
    (dir << 30) | (size << 16) | (KVMIO << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVM_REGS_SIZE: u64 = std::mem::size_of::<kvm_bindings::kvm_regs>() as u64;
const KVM_CLOCK_DATA_SIZE: u64 = std::mem::size_of::<kvm_bindings::kvm_clock_data>() as u64;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub(crate) const KVM_RUN: u64 = ioc(0, 0x80, 0);
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub(crate) const KVM_GET_REGS: u64 = ioc(IOC_READ, 0x81, KVM_REGS_SIZE);
/// `KVM_GET_CLOCK`: `_IOR(KVMIO, 0x7c, struct kvm_clock_data)`.
pub(crate) const KVM_GET_CLOCK: u64 = ioc(IOC_READ, 0x7c, KVM_CLOCK_DATA_SIZE);
/// `KVM_SET_CLOCK`: `_IOW(KVMIO, 0x7b, struct kvm_clock_data)`.
pub(crate) const KVM_SET_CLOCK: u64 = ioc(IOC_WRITE, 0x7b, KVM_CLOCK_DATA_SIZE);

fn any(nr: i64, name: &'static str, why: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        only: None,
        why,
    }
}

fn only(nr: i64, name: &'static str, arg: u8, values: &[u64], why: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        only: Some((arg, values.to_vec())),
        why,
    }
}

/// The signal numbers `tgkill` may send: the vCPU kick and `abort`'s SIGABRT.
fn tgkill_signals() -> Vec<u64> {
    let kick = crate::vcpu::kick_signal();
    [kick, libc::SIGABRT]
        .iter()
        .map(|&s| u64::try_from(s).expect("signal numbers are positive"))
        .collect()
}

/// The `openat` flags of QMP `blockdev-add` (`RawFile::open_with` through std's `File::open`)
/// and `netdev_add` (`/dev/net/tun`, non-blocking):
/// read-only or read-write, with or without O_DIRECT, always O_CLOEXEC; no O_CREAT, O_TRUNC,
/// O_PATH, so the VMM thread can open an existing image but never create or truncate a file.
pub(crate) fn image_open_flags() -> Vec<u64> {
    use libc::{O_CLOEXEC, O_DIRECT, O_NONBLOCK, O_RDONLY, O_RDWR};
    [O_RDONLY, O_RDWR]
        .into_iter()
        .flat_map(|mode| [mode | O_CLOEXEC, mode | O_CLOEXEC | O_DIRECT])
        // /dev/net/tun for QMP netdev_add (tap.rs: read-write, non-blocking).
        .chain([O_RDWR | O_NONBLOCK | O_CLOEXEC])
        .map(|flags| u64::try_from(flags).expect("open flags are positive"))
        .collect()
}

/// The VMM (main) thread from its event loop to the end of the process.
#[rustfmt::skip]
pub(crate) fn vmm() -> Vec<Allowed> {
    use libc::*;
    let ioctls = [
        KVM_GET_CLOCK, KVM_SET_CLOCK, TCGETS, TCSETS, FIONBIO,
        // QMP netdev_add opens or checks a tap, device_add sets its offloads (tap.rs).
        TUNSETIFF, TUNGETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD,
    ];
    vec![
        any(SYS_epoll_wait, "epoll_wait", "the event loop"),
        any(SYS_epoll_ctl, "epoll_ctl", "watch/unwatch QMP clients, stdin, device fds"),
        any(SYS_read, "read", "stdin, eventfds, the signalfd, taps, the rng source"),
        any(SYS_timerfd_settime, "timerfd_settime", "virtio-rng rate limit, virtio-blk throttling"),
        any(SYS_write, "write", "console output, eventfds, taps, logs, error messages"),
        any(SYS_accept4, "accept4", "QMP clients"),
        any(SYS_recvmsg, "recvmsg", "QMP input, with SCM_RIGHTS for getfd"),
        only(SYS_recvfrom, "recvfrom", 3, &[0], "QMP input over TCP (recv)"),
        only(SYS_sendto, "sendto", 3, &[MSG_NOSIGNAL as u64], "QMP output (send without SIGPIPE)"),
        any(SYS_close, "close", "QMP clients, closefd, every fd dropped on exit"),
        only(SYS_fcntl, "fcntl", 1, &[F_GETFD as u64, F_GETFL as u64, F_SETFL as u64], "std's debug check that a dropped fd is open; QMP netdev_add makes the tap non-blocking"),
        any(SYS_futex, "futex", "mutexes shared with vCPU threads, channels"),
        only(SYS_ioctl, "ioctl", 1, &ioctls, "stop/cont clock, terminal restore, QMP nonblocking, QMP netdev_add taps"),
        only(SYS_tgkill, "tgkill", 2, &tgkill_signals(), "kick vCPUs out of KVM_RUN; abort"),
        any(SYS_getpid, "getpid", "pthread_kill (vCPU kicks) and abort"),
        any(SYS_rt_sigprocmask, "rt_sigprocmask", "pthread_kill (vCPU kicks) and abort"),
        any(SYS_clock_nanosleep, "clock_nanosleep", "waiting for vCPU threads to exit"),
        any(SYS_clock_gettime, "clock_gettime", "log and QMP timestamps where the vDSO falls back"),
        any(SYS_unlink, "unlink", "remove the QMP socket and the pid file on exit"),
        any(SYS_fdatasync, "fdatasync", "virtio-blk flush requests and the flush on exit"),
        any(SYS_pread64, "pread64", "virtio-blk reads served on the event loop"),
        any(SYS_pwrite64, "pwrite64", "virtio-blk writes served on the event loop"),
        any(SYS_preadv, "preadv", "virtio-blk reads of several guest buffers"),
        any(SYS_pwritev, "pwritev", "virtio-blk writes of several guest buffers"),
        any(SYS_fallocate, "fallocate", "virtio-blk discard and write-zeroes"),
        any(SYS_io_uring_enter, "io_uring_enter", "virtio-blk aio=io_uring|native submissions, drain on exit"),
        // QMP blockdev-add opens the image on the VMM thread (hotplug.rs, RawFile::open_with).
        only(SYS_openat, "openat", 2, &image_open_flags(), "QMP blockdev-add opens the image (and again with O_DIRECT), netdev_add /dev/net/tun; never creates a file"),
        any(SYS_statx, "statx", "QMP blockdev-add checks the image is a file or block device"),
        any(SYS_fstat, "fstat", "QMP blockdev-add: std's fallback where statx is missing"),
        any(SYS_newfstatat, "newfstatat", "QMP blockdev-add: std's fallback where statx is missing"),
        any(SYS_lseek, "lseek", "QMP blockdev-add sizes the image (seek to the end)"),
        any(SYS_mmap, "mmap", "memory allocation"),
        any(SYS_munmap, "munmap", "memory allocation; guest RAM unmapped on exit"),
        any(SYS_mprotect, "mprotect", "malloc growing a heap arena"),
        any(SYS_mremap, "mremap", "realloc of large buffers (QMP output)"),
        any(SYS_madvise, "madvise", "malloc returning memory"),
        any(SYS_brk, "brk", "memory allocation"),
        any(SYS_rt_sigreturn, "rt_sigreturn", "return from signal handlers"),
        any(SYS_sigaltstack, "sigaltstack", "Rust std removes the main signal stack at exit (where its runtime start set one up: not in the #![no_main] nimbus binary)"),
        any(SYS_exit_group, "exit_group", "process exit"),
    ]
}

/// What the VMM thread adds when a hybrid vsock device serves connections (`vsock/`): a guest
/// connecting to the host opens a Unix socket and connects it to `<uds-path>_<port>`, and a
/// guest that will send no more half-closes it. Host programs are accepted with `accept4`,
/// already in the VMM list for QMP.
#[rustfmt::skip]
pub(crate) fn vsock() -> Vec<Allowed> {
    use libc::*;
    vec![
        only(SYS_socket, "socket", 0, &[AF_UNIX as u64], "vsock: a Unix socket per guest-initiated connection"),
        any(SYS_connect, "connect", "vsock: connect it to <uds-path>_<port>"),
        any(SYS_shutdown, "shutdown", "vsock: half-close when the guest sends no more"),
    ]
}

/// The requests of the kernel vhost devices (`vhost_kernel/`) once the guest runs, on the
/// thread that starts them at DRIVER_OK (a vCPU writing the status register) or stops them at
/// reset and exit: the generic vhost requests (features, memory table, rings, kick and call
/// eventfds), then vhost-vsock's (CID, running) with `vsock`, and vhost-net's with `net` (the
/// tap handed to or taken back from each queue; the tap's header size and offloads).
/// `VHOST_SET_OWNER` and `VHOST_GET_FEATURES` run at set-up, before the filters.
pub(crate) fn vhost(vsock: bool, net: bool) -> Allowed {
    const fn vhost(dir: u64, nr: u64, size: u64) -> u64 {
        const VHOST_VIRTIO: u64 = 0xaf;
        (dir << 30) | (size << 16) | (VHOST_VIRTIO << 8) | nr
    }
    const VRING_ADDR_SIZE: u64 = 40; // struct vhost_vring_addr
    let mut requests = vec![
        vhost(IOC_WRITE, 0x00, 8),               // VHOST_SET_FEATURES
        vhost(IOC_WRITE, 0x03, 8),               // VHOST_SET_MEM_TABLE
        vhost(IOC_WRITE, 0x10, 8),               // VHOST_SET_VRING_NUM
        vhost(IOC_WRITE, 0x11, VRING_ADDR_SIZE), // VHOST_SET_VRING_ADDR
        vhost(IOC_WRITE, 0x12, 8),               // VHOST_SET_VRING_BASE
        vhost(IOC_WRITE, 0x20, 8),               // VHOST_SET_VRING_KICK
        vhost(IOC_WRITE, 0x21, 8),               // VHOST_SET_VRING_CALL
    ];
    if vsock {
        requests.extend([
            vhost(IOC_WRITE, 0x60, 8), // VHOST_VSOCK_SET_GUEST_CID
            vhost(IOC_WRITE, 0x61, 4), // VHOST_VSOCK_SET_RUNNING
        ]);
    }
    if net {
        requests.extend([
            vhost(IOC_WRITE, 0x30, 8), // VHOST_NET_SET_BACKEND (struct vhost_vring_file)
            libc::TUNSETVNETHDRSZ,
            libc::TUNSETOFFLOAD,
        ]);
    }
    let why = match (vsock, net) {
        (true, true) => "vhost-vsock and vhost-net: start at DRIVER_OK, stop at reset and exit",
        (false, true) => "vhost-net: start at DRIVER_OK, stop at reset and exit",
        _ => "vhost-vsock: start at DRIVER_OK, stop at reset and exit",
    };
    only(libc::SYS_ioctl, "ioctl", 1, &requests, why)
}

/// What vhost-user devices add (`vhost_user/`): their requests to the back end are socket
/// messages (`sendmsg`, with descriptors for the memory table and the eventfds; `recvmsg` for
/// replies), made by the vCPU that starts or resets the device and by the VMM thread that
/// stops it at exit (which already has `recvmsg` for QMP). With `reconnect=` the VMM thread
/// also opens a new connection to the back end (its reconnect timer is armed with
/// `timerfd_settime`, which the VMM list already has).
#[rustfmt::skip]
pub(crate) fn vhost_user(kind: super::ThreadKind) -> Vec<Allowed> {
    use libc::*;
    let mut list = vec![any(SYS_sendmsg, "sendmsg", "vhost-user requests to the back end")];
    match kind {
        super::ThreadKind::Vcpu => {
            list.push(any(SYS_recvmsg, "recvmsg", "vhost-user replies from the back end"));
        }
        super::ThreadKind::Vmm => list.extend([
            only(SYS_socket, "socket", 0, &[AF_UNIX as u64], "vhost-user: reconnect to the back end"),
            any(SYS_connect, "connect", "vhost-user: reconnect to the back end"),
            only(SYS_fcntl, "fcntl", 1, &[F_DUPFD_CLOEXEC as u64], "vhost-user: the reconnected socket's watched descriptor"),
        ]),
        super::ThreadKind::Watchdog
        | super::ThreadKind::IoThread
        | super::ThreadKind::PitSetup => {}
    }
    list
}

/// What a Unix socket chardev adds (`chardev/`): a vCPU thread writes UART output (and,
/// without ioeventfds, virtconsole output) to the socket's peer, which std does with `send`
/// (`sendto` with MSG_NOSIGNAL). The VMM thread already sends QMP output that way.
#[rustfmt::skip]
pub(crate) fn chardev_socket(kind: super::ThreadKind) -> Vec<Allowed> {
    use libc::*;
    match kind {
        super::ThreadKind::Vcpu => vec![
            only(SYS_sendto, "sendto", 3, &[MSG_NOSIGNAL as u64], "UART and virtconsole output to a socket chardev"),
        ],
        _ => Vec::new(),
    }
}

const fn kvm_ior<T>(nr: u64) -> u64 {
    ioc(IOC_READ, nr, std::mem::size_of::<T>() as u64)
}

/// What a machine with a QMP monitor adds for `migrate` to a file (`snapshot/`): each parked
/// vCPU reads its own state (the vCPU list), the VMM thread reads the irqchip and PIT and
/// writes the snapshot directory (the VMM list).
#[rustfmt::skip]
pub(crate) fn snapshot(kind: super::ThreadKind) -> Vec<Allowed> {
    use kvm_bindings::*;
    use libc::*;
    match kind {
        super::ThreadKind::Vcpu => {
            let requests = [
                kvm_ior::<kvm_mp_state>(0x98),
                kvm_ior::<kvm_sregs>(0x83),
                kvm_ior::<kvm_xsave>(0xa4),
                kvm_ior::<kvm_xcrs>(0xa6),
                kvm_ior::<kvm_debugregs>(0xa1),
                kvm_ior::<kvm_lapic_state>(0x8e),
                ioc(IOC_READ | IOC_WRITE, 0x88, std::mem::size_of::<kvm_msrs>() as u64),
                kvm_ior::<kvm_vcpu_events>(0x9f),
                ioc(0, 0xa3, 0), // KVM_GET_TSC_KHZ
            ];
            vec![only(SYS_ioctl, "ioctl", 1, &requests, "snapshot: the parked vCPU reads its state")]
        }
        super::ThreadKind::Vmm => {
            let requests = [
                ioc(IOC_READ | IOC_WRITE, 0x62, std::mem::size_of::<kvm_irqchip>() as u64),
                kvm_ior::<kvm_pit_state2>(0x9f),
            ];
            let create = (O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC) as u64;
            vec![
                only(SYS_ioctl, "ioctl", 1, &requests, "snapshot: irqchip and PIT state"),
                only(SYS_openat, "openat", 2, &[create], "snapshot: create the state and memory files"),
                any(SYS_mkdir, "mkdir", "snapshot: create the directory"),
                any(SYS_pwrite64, "pwrite64", "snapshot: the memory file's pages"),
                any(SYS_ftruncate, "ftruncate", "snapshot: the memory file's size"),
                any(SYS_fsync, "fsync", "snapshot: the memory file reaches the disk"),
                any(SYS_rename, "rename", "snapshot: the state file appears whole"),
                any(SYS_statx, "statx", "snapshot: the directory exists"),
                any(SYS_unlink, "unlink", "snapshot: the previous state file goes first"),
            ]
        }
        super::ThreadKind::Watchdog
        | super::ThreadKind::IoThread
        | super::ThreadKind::PitSetup => Vec::new(),
    }
}

/// The vhost-user watchdog thread (`virtio::vhost_user::watchdog`): it waits on its condition
/// variable for deadlines and shuts down the socket of a back end that missed one.
#[rustfmt::skip]
pub(crate) fn watchdog() -> Vec<Allowed> {
    use libc::*;
    vec![
        any(SYS_futex, "futex", "its mutex and condition variable"),
        only(SYS_shutdown, "shutdown", 1, &[SHUT_RDWR as u64], "end a silent back end's socket"),
        any(SYS_clock_gettime, "clock_gettime", "deadlines (the vDSO falls back to the syscall)"),
        any(SYS_rt_sigreturn, "rt_sigreturn", "return from a signal handler run on this thread"),
    ]
}

/// The PIT set-up thread (`pit.rs`): one `KVM_REINJECT_CONTROL` on the VM, perhaps one log
/// line, then the thread's exit.
#[rustfmt::skip]
pub(crate) fn pit_setup() -> Vec<Allowed> {
    use libc::*;
    vec![
        only(SYS_ioctl, "ioctl", 1, &[crate::pit::reinject_control_request()], "KVM_REINJECT_CONTROL: the PIT's lost-tick policy"),
        any(SYS_write, "write", "its done eventfd; a log line if the request fails"),
        any(SYS_close, "close", "its copy of the done eventfd"),
        only(SYS_fcntl, "fcntl", 1, &[F_GETFD as u64], "std's debug check that a dropped fd is open"),
        any(SYS_futex, "futex", "the logger's lock; its join handle"),
        any(SYS_rt_sigprocmask, "rt_sigprocmask", "glibc thread exit"),
        any(SYS_madvise, "madvise", "glibc thread exit: its stack's pages back to the host"),
        any(SYS_munmap, "munmap", "thread exit"),
        any(SYS_exit, "exit", "thread exit"),
        any(SYS_rt_sigreturn, "rt_sigreturn", "return from a signal handler run on this thread"),
    ]
}

/// An iothread (`iothread.rs`): its own event loop serving the queue notifications, io_uring
/// completions and taps of the virtio-blk and virtio-net devices given to it. It opens,
/// creates and maps nothing but heap memory, and makes no KVM or tap requests (activation,
/// reset and offloads happen on the vCPU that writes the device's registers).
#[rustfmt::skip]
pub(crate) fn iothread() -> Vec<Allowed> {
    use libc::*;
    vec![
        any(SYS_epoll_wait, "epoll_wait", "its event loop"),
        any(SYS_epoll_ctl, "epoll_ctl", "devices joining, leaving (stop/cont) and watching taps"),
        any(SYS_read, "read", "queue ioeventfds, io_uring completion eventfds, its wake eventfd, tap RX"),
        any(SYS_write, "write", "irqfds, eventfds, tap TX, logs"),
        any(SYS_pread64, "pread64", "virtio-blk reads"),
        any(SYS_pwrite64, "pwrite64", "virtio-blk writes"),
        any(SYS_preadv, "preadv", "virtio-blk reads of several guest buffers"),
        any(SYS_pwritev, "pwritev", "virtio-blk writes of several guest buffers"),
        any(SYS_fdatasync, "fdatasync", "virtio-blk flush requests"),
        any(SYS_fallocate, "fallocate", "virtio-blk discard and write-zeroes"),
        any(SYS_io_uring_enter, "io_uring_enter", "virtio-blk aio=io_uring|native submissions and completions"),
        any(SYS_timerfd_settime, "timerfd_settime", "virtio-blk throttling timer"),
        any(SYS_futex, "futex", "device mutexes shared with vCPU threads, its request channel"),
        any(SYS_close, "close", "descriptors dropped with its loop at thread exit"),
        only(SYS_fcntl, "fcntl", 1, &[F_GETFD as u64], "std's debug check that a dropped fd is open"),
        any(SYS_mmap, "mmap", "memory allocation"),
        any(SYS_munmap, "munmap", "memory allocation"),
        any(SYS_mprotect, "mprotect", "malloc growing this thread's arena"),
        any(SYS_mremap, "mremap", "realloc of large buffers (device requests)"),
        any(SYS_madvise, "madvise", "malloc and glibc freeing the thread stack"),
        any(SYS_brk, "brk", "memory allocation"),
        any(SYS_clock_gettime, "clock_gettime", "log timestamps where the vDSO falls back"),
        any(SYS_rt_sigreturn, "rt_sigreturn", "return from a signal handler run on this thread"),
        any(SYS_rt_sigprocmask, "rt_sigprocmask", "glibc thread exit; abort"),
        any(SYS_sigaltstack, "sigaltstack", "Rust std removes the signal stack at thread exit (where its runtime start set one up: not in the #![no_main] nimbus binary)"),
        only(SYS_tgkill, "tgkill", 2, &[SIGABRT as u64], "abort"),
        any(SYS_getpid, "getpid", "abort"),
        any(SYS_exit, "exit", "thread exit"),
        any(SYS_exit_group, "exit_group", "process exit (SIGSYS handler, panics)"),
    ]
}

/// The ioctls of a vCPU thread: `KVM_RUN`, `KVM_GET_REGS` for the internal-error report, and
/// `TUNSETOFFLOAD` when the guest activates or resets a virtio-net device (an MMIO write).
pub(crate) fn vcpu_ioctls() -> Vec<u64> {
    vec![KVM_RUN, KVM_GET_REGS, libc::TUNSETOFFLOAD]
}

/// A vCPU thread from its start to its end. With `queue_io`, the syscalls of virtqueue
/// processing too: without ioeventfds a QueueNotify write runs the device's queue on the vCPU
/// thread that made it; with them the VMM thread does all device I/O.
#[rustfmt::skip]
pub(crate) fn vcpu(queue_io: bool) -> Vec<Allowed> {
    use libc::*;
    let mut list = vec![
        only(SYS_ioctl, "ioctl", 1, &vcpu_ioctls(), "KVM_RUN; regs for internal errors; tap offloads"),
        any(SYS_futex, "futex", "device mutexes, vCPU control condvar, stop channel"),
        any(SYS_write, "write", "UART output, irqfd, stop and device eventfds, logs"),
        any(SYS_close, "close", "the vCPU fd and stop eventfd dropped at thread exit"),
        only(SYS_fcntl, "fcntl", 1, &[F_GETFD as u64], "std's debug check that a dropped fd is open"),
        any(SYS_mmap, "mmap", "memory allocation"),
        any(SYS_munmap, "munmap", "memory allocation; kvm_run and signal stack unmapped at exit"),
        any(SYS_mprotect, "mprotect", "malloc growing this thread's arena"),
        any(SYS_mremap, "mremap", "realloc of large buffers (device requests)"),
        any(SYS_madvise, "madvise", "malloc and glibc freeing the thread stack"),
        any(SYS_brk, "brk", "memory allocation"),
        any(SYS_sigaltstack, "sigaltstack", "Rust std removes the signal stack at thread exit (where its runtime start set one up: not in the #![no_main] nimbus binary)"),
        any(SYS_clock_gettime, "clock_gettime", "log timestamps where the vDSO falls back"),
        any(SYS_rt_sigreturn, "rt_sigreturn", "return from the kick signal handler"),
        any(SYS_rt_sigprocmask, "rt_sigprocmask", "glibc thread exit; abort"),
        only(SYS_tgkill, "tgkill", 2, &[SIGABRT as u64], "abort"),
        any(SYS_getpid, "getpid", "abort"),
        any(SYS_exit, "exit", "thread exit"),
        any(SYS_exit_group, "exit_group", "process exit (SIGSYS handler, panics)"),
    ];
    if queue_io {
        list.extend([
            any(SYS_read, "read", "virtio-net tap RX and the virtio-rng source"),
            any(SYS_timerfd_settime, "timerfd_settime", "virtio-rng rate limit, virtio-blk throttling"),
            any(SYS_pread64, "pread64", "virtio-blk reads"),
            any(SYS_pwrite64, "pwrite64", "virtio-blk writes"),
            any(SYS_preadv, "preadv", "virtio-blk reads of several guest buffers"),
            any(SYS_pwritev, "pwritev", "virtio-blk writes of several guest buffers"),
            any(SYS_fdatasync, "fdatasync", "virtio-blk flush requests"),
            any(SYS_fallocate, "fallocate", "virtio-blk discard and write-zeroes"),
            any(SYS_io_uring_enter, "io_uring_enter", "virtio-blk aio=io_uring|native submissions"),
        ]);
    }
    list
}
