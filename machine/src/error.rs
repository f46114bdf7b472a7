//! Errors of building and running the machine, each named for the step that failed.

use std::path::PathBuf;

/// Why the machine could not be built or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The host's KVM lacks something the machine needs.
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Setting up the in-kernel irqchip, PIT or TSS failed.
    #[error("cannot set up the in-kernel {what}")]
    SetupVm {
        /// The piece that failed.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest's memory or I/O space could not be built.
    #[error("cannot build the guest address space")]
    AddressSpace(#[source] address_space::AddressSpaceError),
    /// The kernel, initrd or boot structures could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot_loader::BootError),
    /// A vCPU could not be created or configured.
    #[error("cannot set up vCPU {id}")]
    SetupVcpu {
        /// The vCPU index.
        id: u8,
        /// What failed.
        #[source]
        source: crate::vcpu::VcpuSetupError,
    },
    /// The seccomp filters could not be built or installed.
    #[error("cannot set up seccomp")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    /// A vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {id}")]
    SpawnVcpu {
        /// The vCPU index.
        id: u8,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU hit an exit it cannot continue from.
    #[error("vCPU {id}: {fault}")]
    VcpuFault {
        /// The vCPU index.
        id: u8,
        /// What happened.
        fault: crate::vcpu::VcpuFault,
    },
    /// An interrupt line could not be wired.
    #[error("cannot wire interrupt line {irq}")]
    Irq {
        /// The GSI.
        irq: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A virtqueue notification eventfd could not be created or bound to QueueNotify.
    #[error("cannot set up the ioeventfd of queue {queue} of the virtio device at {base:#x}")]
    Ioeventfd {
        /// The device's MMIO base.
        base: u64,
        /// The queue index.
        queue: usize,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The serial console's output file could not be opened.
    #[error("cannot open serial output file {path:?}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A disk could not be set up.
    #[error("cannot set up drive '{id}'")]
    Drive {
        /// The drive id.
        id: String,
        /// What failed.
        #[source]
        source: virtio::BlockError,
    },
    /// A network device could not be set up (its tap, vhost-net, its options).
    #[error("cannot set up netdev '{netdev}'")]
    Netdev {
        /// The netdev id.
        netdev: String,
        /// Why.
        #[source]
        source: crate::net_devices::NetdevError,
    },
    /// vhost-net is missing, or `vhostfd=` is not a vhost-net descriptor: one line naming the
    /// netdev and the device node or the descriptor (the error has no cause to add).
    #[error("cannot set up netdev '{netdev}': {error}")]
    NetdevVhost {
        /// The netdev id.
        netdev: String,
        /// What is missing or wrong.
        error: virtio::net::VhostError,
    },
    /// More virtio devices than IRQ lines set aside for them.
    #[error(
        "too many virtio devices: {given} given ({drives} disks, {nets} network devices, \
         {others} other), at most {max} fit the interrupt lines"
    )]
    TooManyVirtioDevices {
        /// How many the configuration has.
        given: usize,
        /// Disks among them.
        drives: usize,
        /// Network devices among them.
        nets: usize,
        /// Other devices (the entropy and vsock devices).
        others: usize,
        /// How many fit.
        max: usize,
    },
    /// The QMP socket could not be set up.
    #[error("cannot listen for QMP on {endpoint:?}")]
    QmpSocket {
        /// Where it should listen.
        endpoint: crate::qmp_server::QmpEndpoint,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A chardev could not be opened (its message names it).
    #[error(transparent)]
    Chardev(#[from] crate::chardev::ChardevError),
    /// A front end names a chardev that was not opened.
    #[error("{frontend}: no chardev with id '{id}'")]
    UnknownChardev {
        /// Who names it (`-serial`, `virtconsole 'con0'`).
        frontend: String,
        /// The id.
        id: String,
    },
    /// The entropy device could not be created.
    #[error("cannot create the virtio-rng device")]
    Rng(#[source] virtio::RngError),
    /// The balloon could not be created.
    #[error("cannot create the virtio-balloon device")]
    Balloon(#[source] virtio::BalloonError),
    /// The vsock device could not be created (its first line names the device and the
    /// problem: one line for a missing /dev/vhost-vsock).
    #[error(transparent)]
    Vsock(crate::vsock_devices::VsockDeviceError),
    /// A vhost-user device could not be set up (the message names the device, the back end's
    /// socket or the request it refused).
    #[error(transparent)]
    VhostUser(virtio::VhostUserError),
    /// The snapshot of `-incoming` cannot be used. One line with the reason and its causes
    /// (what differs, what is damaged): a runtime reads the first line only.
    #[error("cannot restore the snapshot in {dir:?}: {reason}")]
    Restore {
        /// The snapshot directory.
        dir: std::path::PathBuf,
        /// Why, with its causes.
        reason: String,
    },
    /// The vhost-user watchdog thread could not be started.
    #[error("cannot start the vhost-user watchdog thread")]
    Watchdog(#[source] std::io::Error),
    /// The event loop failed.
    #[error("event loop failed")]
    EventLoop(#[source] std::io::Error),
    /// An iothread could not be started, or ended before its devices joined it.
    #[error("cannot start iothread '{id}'")]
    IoThread {
        /// Its id.
        id: String,
        /// Why.
        #[source]
        source: crate::iothread::IoThreadError,
    },
    /// A device names an iothread that does not exist.
    #[error("device '{device}' names iothread '{iothread}', which no -object iothread defines")]
    UnknownIoThread {
        /// The device (drive or netdev id).
        device: String,
        /// The unknown id.
        iothread: String,
    },
    /// A device that cannot be served by an iothread was given one.
    #[error("device '{device}': iothread= is not supported with {why}")]
    IoThreadRefused {
        /// The device (netdev id).
        device: String,
        /// What it is.
        why: &'static str,
    },
    /// A source the VM cannot run without could not join the event loop.
    #[error("cannot watch {what}")]
    Watch {
        /// What it is.
        what: &'static str,
        /// Why.
        #[source]
        source: event_manager::Error,
    },
    /// The event manager could not be created or failed while waiting.
    #[error("event loop failed")]
    EventManager(#[source] event_manager::Error),
    /// The terminal could not be switched to raw mode.
    #[error("cannot put the terminal in raw mode")]
    Terminal(#[source] std::io::Error),
}

impl From<address_space::AddressSpaceError> for MachineError {
    fn from(err: address_space::AddressSpaceError) -> Self {
        MachineError::AddressSpace(err)
    }
}

/// `err` and its causes on one line.
pub(crate) fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl MachineError {
    /// The error for a snapshot in `dir` that cannot be restored.
    pub(crate) fn restore(dir: &std::path::Path, source: &crate::snapshot::SnapshotError) -> Self {
        MachineError::Restore {
            dir: dir.to_owned(),
            reason: one_line(source),
        }
    }
}
