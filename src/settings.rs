//! Turns the parsed command line into the machine's configuration, checking every value.

use crate::balloon_opts::{parse_balloon, BALLOON_DEVICE};
use crate::cli::Parsed;
use crate::drives::{parse_drives, BLOCK_DEVICE};
use crate::iothread_opts::parse_iothreads;
use crate::netdevs::{inherited_fds, parse_netdevs, NET_DEVICE};
use crate::opts::{parse_size, OptList};
use crate::rng_opts::{parse_rng, RNG_DEVICE};
use crate::vhost_user_opts::{parse_vhost_user, VHOST_USER_BLK, VHOST_USER_FS};
use crate::vsock_opts::{inherited_vsock_fd, parse_vsock, HYBRID_VSOCK_DEVICE, VHOST_VSOCK_DEVICE};
use machine::layout::{MAX_RAM, MAX_VCPUS, MIN_RAM};
use machine::{MachineConfig, RamBacking, RamOptions, SerialConfig};
use std::path::PathBuf;

/// A flag whose value makes no sense, or a combination Nimbus cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value that does not parse or is out of range.
    #[error("invalid value '{value}' for -{flag}: {reason}")]
    InvalidValue {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// No `-kernel`.
    #[error("no kernel given: -kernel <image> is required")]
    MissingKernel,
    /// The kernel or initrd cannot be opened.
    #[error("cannot open {what} {path:?}")]
    OpenFile {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A feature that a later version will have.
    #[error("{0} is not supported yet")]
    NotSupported(String),
    /// Flags that cannot go together.
    #[error("{0}")]
    Conflict(&'static str),
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error (default, and bare `-D`).
    Stderr,
    /// `-D <file>`.
    File(PathBuf),
}

/// Everything `main` needs to run.
#[derive(Debug)]
pub struct Settings {
    /// The machine to build.
    pub machine: MachineConfig,
    /// Where logs go.
    pub log: LogTarget,
    /// `-daemonize`.
    pub daemonize: bool,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// Inherited descriptors named on the command line, kept open.
    pub inherited_fds: Vec<i32>,
}

pub(crate) fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::InvalidValue {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The snapshot directory of `-incoming file:<dir>`.
fn parse_incoming(uri: &str) -> Result<PathBuf, SettingsError> {
    match uri.strip_prefix("file:") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Err(invalid(
            "incoming",
            uri,
            "expected file:<snapshot directory> (what QMP migrate wrote)",
        )),
    }
}

/// Builds the settings from `parsed`.
pub fn from_parsed(parsed: &Parsed) -> Result<Settings, SettingsError> {
    refuse_unsupported(parsed)?;
    let machine_opts = machine_opts(parsed)?;
    let ram_options = ram_options(parsed, &machine_opts);
    let incoming = parsed
        .last("incoming")
        .map(|uri| parse_incoming(&uri))
        .transpose()?;
    // A restored guest is already running its kernel: -kernel is optional then, and unused.
    let kernel = match (parsed.last("kernel"), &incoming) {
        (Some(kernel), _) => PathBuf::from(kernel),
        (None, Some(_)) => PathBuf::new(),
        (None, None) => return Err(SettingsError::MissingKernel),
    };
    if incoming.is_none() {
        check_readable(&kernel, "kernel image")?;
    }
    let initrd = parsed.last("initrd").map(PathBuf::from);
    if let Some(initrd) = &initrd {
        check_readable(initrd, "initrd")?;
    }
    let consoles = crate::chardev_opts::parse_consoles(parsed, parse_serial)?;
    let machine = MachineConfig {
        name: parsed.last("name").map(|n| name_of(&n)),
        uuid: parsed.last("uuid"),
        cpus: parsed.last("smp").map_or(Ok(1), |s| parse_smp(&s))?,
        ram_size: parsed
            .last("m")
            .map_or(Ok(256 << 20), |m| parse_memory(&m))?,
        ram_options,
        kernel,
        initrd,
        cmdline: parsed.last("append").unwrap_or_default(),
        serial: consoles.serial,
        chardevs: consoles.chardevs,
        console: consoles.console,
        drives: parse_drives(&parsed.all("drive"), &parsed.all("device"))?,
        nets: parse_netdevs(&parsed.all("netdev"), &parsed.all("device"))?,
        rng: parse_rng(parsed)?,
        balloon: parse_balloon(&parsed.all("device"))?,
        vsock: parse_vsock(&parsed.all("device"))?,
        vhost_user: parse_vhost_user(parsed)?,
        iothreads: parse_iothreads(parsed)?,
        qmp: crate::monitor_opts::qmp_endpoint(parsed)?,
        blk_slots: machine_opts.blk_slots,
        net_slots: machine_opts.net_slots,
        seccomp: !parsed.has("disable-seccomp"),
        incoming,
    };
    let mut inherited_fds = inherited_fds(&machine.nets);
    inherited_fds.extend(inherited_vsock_fd(machine.vsock.as_ref()));
    let log = match parsed.last("D") {
        Some(path) if !path.is_empty() => LogTarget::File(PathBuf::from(path)),
        _ => LogTarget::Stderr,
    };
    let daemonize = parsed.has("daemonize");
    if daemonize && machine.serial == SerialConfig::Stdio {
        return Err(SettingsError::Conflict(
            "-daemonize cannot be used with -serial stdio",
        ));
    }
    let stdio_chardev = machine
        .chardevs
        .iter()
        .any(|c| c.backend == machine::ChardevBackend::Stdio);
    if daemonize && stdio_chardev {
        return Err(SettingsError::Conflict(
            "-daemonize cannot be used with -chardev stdio",
        ));
    }
    if daemonize && parsed.last("D").is_some_and(|d| d.is_empty()) {
        return Err(SettingsError::Conflict(
            "-daemonize needs -D <file>: a bare -D logs to stderr",
        ));
    }
    Ok(Settings {
        machine,
        log,
        daemonize,
        pidfile: parsed.last("pidfile").map(PathBuf::from),
        inherited_fds,
    })
}

fn refuse_unsupported(parsed: &Parsed) -> Result<(), SettingsError> {
    if parsed.last("pidfile").is_some() && !parsed.has("daemonize") {
        return Err(SettingsError::Conflict("-pidfile needs -daemonize"));
    }
    let devices = parsed.all("device");
    let other_device = devices.iter().find(|d| {
        let driver = OptList::parse(d, Some("driver"))
            .get("driver")
            .map(str::to_owned);
        !matches!(
            driver.as_deref(),
            Some(
                BLOCK_DEVICE
                    | NET_DEVICE
                    | RNG_DEVICE
                    | BALLOON_DEVICE
                    | HYBRID_VSOCK_DEVICE
                    | VHOST_VSOCK_DEVICE
                    | VHOST_USER_BLK
                    | VHOST_USER_FS
                    | crate::chardev_opts::VIRTIO_SERIAL
                    | crate::chardev_opts::VIRTCONSOLE
            )
        )
    });
    if let Some(device) = other_device {
        let opts = OptList::parse(device, Some("driver"));
        let kind = opts.get("driver").unwrap_or_default();
        return Err(invalid(
            "device",
            device,
            format!("unknown device type '{kind}'"),
        ));
    }
    Ok(())
}

/// What `-machine` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MachineOpts {
    /// `dump-guest-core` (default on).
    dump: bool,
    /// `mem-share` (default off).
    shared: bool,
    /// `blk-slots`: replaceable block devices for QMP hot-plug.
    blk_slots: usize,
    /// `net-slots`: replaceable net devices for QMP hot-plug.
    net_slots: usize,
}

impl Default for MachineOpts {
    fn default() -> Self {
        MachineOpts {
            dump: true,
            shared: false,
            blk_slots: machine::DEFAULT_BLK_SLOTS,
            net_slots: machine::DEFAULT_NET_SLOTS,
        }
    }
}

/// Checks `-machine` and returns its options.
fn parse_machine(value: &str) -> Result<MachineOpts, SettingsError> {
    let opts = OptList::parse(value, Some("type"));
    let keys = [
        "type",
        "dump-guest-core",
        "mem-share",
        "accel",
        "blk-slots",
        "net-slots",
    ];
    if let Some(key) = opts.unknown_key(&keys) {
        return Err(invalid("machine", value, format!("unknown option '{key}'")));
    }
    match opts.get("type") {
        Some("microvm") | None => {}
        Some(other) => {
            return Err(invalid(
                "machine",
                value,
                format!("unknown machine type '{other}' (only microvm)"),
            ))
        }
    }
    let flag = |key, default| {
        opts.flag(key, default)
            .map_err(|r| invalid("machine", value, r))
    };
    let slots = |key: &str, default: usize| -> Result<usize, SettingsError> {
        opts.get(key).map_or(Ok(default), |v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n <= machine::layout::VIRTIO_IRQS.len())
                .ok_or_else(|| {
                    let max = machine::layout::VIRTIO_IRQS.len();
                    invalid(
                        "machine",
                        value,
                        format!("{key} must be a number from 0 to {max}"),
                    )
                })
        })
    };
    let defaults = MachineOpts::default();
    Ok(MachineOpts {
        dump: flag("dump-guest-core", defaults.dump)?,
        shared: flag("mem-share", defaults.shared)?,
        blk_slots: slots("blk-slots", defaults.blk_slots)?,
        net_slots: slots("net-slots", defaults.net_slots)?,
    })
}

fn machine_opts(parsed: &Parsed) -> Result<MachineOpts, SettingsError> {
    parsed
        .last("machine")
        .map_or(Ok(MachineOpts::default()), |m| parse_machine(&m))
}

/// Guest RAM backing from `-machine`, `-mem-path` and `-mem-prealloc`.
fn ram_options(parsed: &Parsed, machine: &MachineOpts) -> RamOptions {
    let MachineOpts { dump, shared, .. } = *machine;
    let backing = match (parsed.last("mem-path"), shared) {
        (Some(dir), _) => RamBacking::Hugetlbfs(PathBuf::from(dir)),
        (None, true) => RamBacking::SharedMemfd,
        (None, false) => RamBacking::Anonymous,
    };
    RamOptions {
        backing,
        prealloc: parsed.has("mem-prealloc"),
        dump,
    }
}

fn parse_smp(value: &str) -> Result<u8, SettingsError> {
    let opts = OptList::parse(value, Some("cpus"));
    let keys = [
        "cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads",
    ];
    if let Some(key) = opts.unknown_key(&keys) {
        return Err(invalid("smp", value, format!("unknown option '{key}'")));
    }
    let number = |key| {
        opts.number::<u32>(key)
            .map_err(|r| invalid("smp", value, r))
    };
    let topology: u32 = ["sockets", "dies", "clusters", "cores", "threads"]
        .iter()
        .map(|k| number(k).map(|n| n.unwrap_or(1)))
        .product::<Result<u32, _>>()?;
    let cpus = number("cpus")?.unwrap_or(topology);
    if cpus == 0 || cpus > u32::from(MAX_VCPUS) {
        return Err(invalid(
            "smp",
            value,
            format!("the vCPU count must be 1 to {MAX_VCPUS}"),
        ));
    }
    if let Some(max) = number("maxcpus")? {
        if max < cpus {
            return Err(invalid("smp", value, "maxcpus is less than cpus"));
        }
        if max > cpus {
            return Err(SettingsError::NotSupported(
                "vCPU hot-plug (maxcpus above cpus)".to_string(),
            ));
        }
    }
    u8::try_from(cpus).map_err(|_| invalid("smp", value, "too many vCPUs"))
}

fn parse_memory(value: &str) -> Result<u64, SettingsError> {
    let opts = OptList::parse(value, Some("size"));
    if let Some(key) = opts.unknown_key(&["size", "maxmem", "slots"]) {
        return Err(invalid("m", value, format!("unknown option '{key}'")));
    }
    let text = opts
        .get("size")
        .ok_or_else(|| invalid("m", value, "no size given"))?;
    let size = parse_size(text, 1 << 20)
        .ok_or_else(|| invalid("m", value, "expected a size such as 512, 512M or 2G"))?;
    if !(MIN_RAM..=MAX_RAM).contains(&size) {
        return Err(invalid(
            "m",
            value,
            format!("guest RAM must be {}M to {}G", MIN_RAM >> 20, MAX_RAM >> 30),
        ));
    }
    if size % (1 << 20) != 0 {
        return Err(invalid(
            "m",
            value,
            "guest RAM must be a whole number of MiB",
        ));
    }
    Ok(size)
}

fn parse_serial(value: &str) -> Result<SerialConfig, SettingsError> {
    if value == "stdio" {
        return Ok(SerialConfig::Stdio);
    }
    if value == "none" || value == "null" {
        return Ok(SerialConfig::None);
    }
    if let Some(path) = value.strip_prefix("file:") {
        return Ok(SerialConfig::File(PathBuf::from(path)));
    }
    let opts = OptList::parse(value, Some("backend"));
    match (opts.get("backend"), opts.get("path")) {
        (Some("file"), Some(path)) => Ok(SerialConfig::File(PathBuf::from(path))),
        (Some("file"), None) => Err(invalid("serial", value, "file needs path=<file>")),
        (Some(b @ ("socket" | "unix" | "tcp")), _) => {
            Err(SettingsError::NotSupported(format!("-serial {b}")))
        }
        (Some(b), _) if b.starts_with("chardev:") => {
            Err(SettingsError::NotSupported(format!("-serial {b}")))
        }
        _ => Err(invalid(
            "serial",
            value,
            "expected stdio, none, pty, chardev:<id> or file,path=<file>",
        )),
    }
}

fn check_readable(path: &PathBuf, what: &'static str) -> Result<(), SettingsError> {
    let open = |source| SettingsError::OpenFile {
        what,
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(open)?;
    if meta.is_dir() {
        return Err(open(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory",
        )));
    }
    std::fs::File::open(path).map(drop).map_err(open)
}

/// `-name guest=foo,debug-threads=on` or `-name foo`.
fn name_of(value: &str) -> String {
    OptList::parse(value, Some("guest"))
        .get("guest")
        .unwrap_or(value)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_in_mib_and_with_suffix() {
        assert_eq!(parse_memory("512").expect("ok"), 512 << 20);
        assert_eq!(parse_memory("size=2G,maxmem=4G").expect("ok"), 2 << 30);
    }

    #[test]
    fn malformed_memory_size_names_the_flag_and_value() {
        let err = parse_memory("12xyz").expect_err("bad");
        assert!(
            err.to_string().starts_with("invalid value '12xyz' for -m"),
            "{err}"
        );
    }

    #[test]
    fn memory_below_the_minimum_is_refused() {
        assert!(parse_memory("8").is_err());
    }

    #[test]
    fn smp_takes_a_count_or_a_topology() {
        assert_eq!(parse_smp("2").expect("ok"), 2);
        assert_eq!(
            parse_smp("cpus=4,sockets=1,cores=4,threads=1").expect("ok"),
            4
        );
        assert_eq!(parse_smp("sockets=1,cores=2,threads=2").expect("ok"), 4);
        assert!(parse_smp("0").is_err());
        assert!(parse_smp("two").is_err());
        assert!(parse_smp("2,maxcpus=1").is_err());
    }

    #[test]
    fn serial_backends() {
        assert_eq!(parse_serial("stdio").expect("ok"), SerialConfig::Stdio);
        assert_eq!(
            parse_serial("file,path=/tmp/c").expect("ok"),
            SerialConfig::File("/tmp/c".into())
        );
        assert!(matches!(
            parse_serial("socket,path=/tmp/s"),
            Err(SettingsError::NotSupported(_))
        ));
        assert!(parse_serial("bogus").is_err());
    }

    #[test]
    fn machine_type_must_be_microvm() {
        let opts = parse_machine("microvm,dump-guest-core=off").expect("ok");
        assert_eq!((opts.dump, opts.shared), (false, false));
        let opts = parse_machine("type=microvm,mem-share=on").expect("ok");
        assert_eq!((opts.dump, opts.shared), (true, true));
        assert!(parse_machine("q35").is_err());
        assert!(parse_machine("microvm,dump-guest-core=perhaps").is_err());
    }

    #[test]
    fn hotplug_slot_counts_are_machine_options() {
        let opts = parse_machine("microvm").expect("ok");
        assert_eq!((opts.blk_slots, opts.net_slots), (4, 2));
        let opts = parse_machine("microvm,blk-slots=2,net-slots=0").expect("ok");
        assert_eq!((opts.blk_slots, opts.net_slots), (2, 0));
        for bad in [
            "microvm,blk-slots=9",
            "microvm,net-slots=-1",
            "microvm,net-slots=two",
        ] {
            let err = parse_machine(bad).expect_err(bad).to_string();
            assert!(err.contains("must be a number from 0 to 8"), "{err}");
        }
    }

    #[test]
    fn name_accepts_qemu_guest_key() {
        assert_eq!(name_of("guest=vm1,debug-threads=on"), "vm1");
        assert_eq!(name_of("sandbox-abc"), "sandbox-abc");
    }
}
