//! What the machine is asked to build, as plain data filled in by the command line.

use std::path::PathBuf;

/// Where the UART's output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialConfig {
    /// The UART exists but its output is dropped (StratoVirt's behaviour without `-serial`).
    #[default]
    None,
    /// Output to stdout, console input from stdin.
    Stdio,
    /// Output appended to a file.
    File(PathBuf),
    /// A chardev by id (`-serial chardev:<id>`, or `-serial pty`'s `serial0`).
    Chardev(String),
}

pub use crate::chardev::{ChardevBackend, ChardevConfig};

/// A virtconsole port (`-device virtio-serial-device` with `-device virtconsole,chardev=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The virtconsole's `id=`.
    pub id: String,
    /// The chardev id it uses.
    pub chardev: String,
}

/// A disk: a `-drive` and the `-device virtio-blk-device` that shows it to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The drive id (`-drive id=`).
    pub id: String,
    /// The raw image file.
    pub path: PathBuf,
    /// `readonly=on`: the guest sees a read-only disk.
    pub readonly: bool,
    /// GET_ID answer (`-device serial=`, default the drive id), at most 20 bytes.
    pub serial: String,
    /// `aio=`: synchronous I/O, io_uring, or native (served by the io_uring engine).
    pub aio: virtio::Aio,
    /// `direct=on`: open the image with O_DIRECT.
    pub direct: bool,
    /// `-device iothread=`: the iothread that serves the disk (the VMM thread without one).
    pub iothread: Option<String>,
    /// `-device num-queues=`: request queues (1 by default).
    pub num_queues: u16,
    /// `iops=`, `bps=` (or QEMU's `throttling.iops-total=`, `throttling.bps-total=`).
    pub throttle: virtio::ThrottleLimits,
}

/// Where a network device's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// `ifname=`: opened (or created) by name through `/dev/net/tun`.
    Name(String),
    /// `fd=` or `fds=` with one descriptor: inherited, used as it is, never closed.
    Fd(i32),
}

/// A network device: a `-netdev tap` and the `-device virtio-net-device` that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The device id (`-device id=`, default the netdev id); the default MAC derives from it.
    pub id: String,
    /// The netdev id (`-netdev id=`), for messages.
    pub netdev: String,
    /// The tap.
    pub tap: TapSource,
    /// `mac=`, if given.
    pub mac: Option<[u8; 6]>,
    /// `vhost=on` (or a `vhostfd=`): vhost-net should move the frames.
    pub vhost: bool,
    /// `vhostfd=`: an inherited `/dev/vhost-net` descriptor.
    pub vhostfd: Option<i32>,
    /// `-device iothread=`: the iothread that serves the device and its tap (the VMM thread
    /// without one).
    pub iothread: Option<String>,
}

/// Where a vsock device's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockBackend {
    /// `virtio-vsock-device,uds-path=`: served in process (hybrid vsock, Firecracker's
    /// protocol) over Unix sockets at this path.
    Hybrid {
        /// `uds-path=`.
        uds_path: PathBuf,
    },
    /// `vhost-vsock-device`: the kernel's vhost-vsock, from `/dev/vhost-vsock` or the
    /// inherited `vhostfd=`.
    Vhost {
        /// `vhostfd=`: an inherited `/dev/vhost-vsock` descriptor, used as it is.
        fd: Option<i32>,
    },
}

/// A vsock device (`-device virtio-vsock-device` or `-device vhost-vsock-device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// `id=`, for messages.
    pub id: String,
    /// `guest-cid=`: the guest's context id (3 and up).
    pub cid: u64,
    /// Who serves the connections.
    pub backend: VsockBackend,
}

/// The whole machine description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// `-name`, shown in logs.
    pub name: Option<String>,
    /// `-uuid`, shown in logs.
    pub uuid: Option<String>,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// How guest RAM is backed (shared, hugetlbfs, preallocated, dumpable).
    pub ram_options: address_space::RamOptions,
    /// Kernel image (ELF, raw or bzImage).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Guest command line as the user gave it.
    pub cmdline: String,
    /// UART backend.
    pub serial: SerialConfig,
    /// Every `-chardev` the machine opens (those of vhost-user devices and the monitor are
    /// theirs and not here), in command-line order.
    pub chardevs: Vec<ChardevConfig>,
    /// The virtio-console device with its one console port, if any.
    pub console: Option<ConsoleConfig>,
    /// virtio-blk disks, in command-line order (the first is the guest's vda).
    pub drives: Vec<DriveConfig>,
    /// Replaceable virtio-blk devices for QMP hot-plug (`device_add`), created only with a QMP
    /// monitor: the drives fill slots 0.., the rest start empty. More drives than slots get one
    /// slot each. Default [`crate::block_slots::DEFAULT_BLK_SLOTS`] (4).
    pub blk_slots: usize,
    /// Replaceable virtio-net devices for QMP hot-plug, like `blk_slots`: the nets fill slots
    /// 0.., the rest start empty with their link down. Default
    /// [`crate::net_slots::DEFAULT_NET_SLOTS`] (2).
    pub net_slots: usize,
    /// virtio-net devices, in command-line order; their slots follow the disks'.
    pub nets: Vec<NetConfig>,
    /// The virtio-rng device, if any.
    pub rng: Option<virtio::RngOptions>,
    /// The virtio-balloon device, if any.
    pub balloon: Option<virtio::BalloonOptions>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// vhost-user devices (disks and file systems served by other processes), in order.
    pub vhost_user: Vec<virtio::VhostUserOptions>,
    /// `-object iothread,id=`: the iothreads to start, by id, in order.
    pub iothreads: Vec<String>,
    /// Where the QMP monitor listens, if anywhere.
    pub qmp: Option<crate::qmp_server::QmpEndpoint>,
    /// Install the seccomp filters (`-disable-seccomp` clears it).
    pub seccomp: bool,
    /// `-incoming file:<dir>`: start from the snapshot in this directory instead of booting.
    pub incoming: Option<std::path::PathBuf>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            name: None,
            uuid: None,
            cpus: 1,
            ram_size: 256 << 20,
            ram_options: address_space::RamOptions::default(),
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            serial: SerialConfig::None,
            chardevs: Vec::new(),
            console: None,
            drives: Vec::new(),
            blk_slots: crate::block_slots::DEFAULT_BLK_SLOTS,
            net_slots: crate::net_slots::DEFAULT_NET_SLOTS,
            nets: Vec::new(),
            rng: None,
            balloon: None,
            vsock: None,
            vhost_user: Vec::new(),
            iothreads: Vec::new(),
            qmp: None,
            seccomp: true,
            incoming: None,
        }
    }
}
