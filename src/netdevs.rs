//! `-netdev tap,...` and `-device virtio-net-device,...` into the machine's network devices.
//!
//! Only the command line is checked here; the taps are opened (or, for inherited descriptors,
//! checked to be taps) when the machine builds the devices, before the guest runs.

use crate::backends::{pair_up, Backend, Claimed};
use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};
use machine::{MacAddr, NetConfig, TapSource};

/// The `-device` driver of a network device.
pub const NET_DEVICE: &str = "virtio-net-device";

const NETDEV_KEYS: &[&str] = &[
    "type",
    "id",
    "ifname",
    "fd",
    "fds",
    "vhost",
    "vhostfd",
    "vhostfds",
    "queues",
    "script",
    "downscript",
];
/// `-netdev` types of QEMU that Nimbus does not have.
const OTHER_NETDEV_TYPES: &[&str] = &[
    "user",
    "bridge",
    "socket",
    "stream",
    "dgram",
    "l2tpv3",
    "vde",
    "vhost-user",
    "vhost-vdpa",
    "hubport",
];

/// Builds one network device per `-netdev`, in command-line order, with the MAC and id of the
/// `-device virtio-net-device` that uses it. `devices` holds every `-device` value.
pub fn parse_netdevs(
    netdevs: &[String],
    devices: &[String],
) -> Result<Vec<NetConfig>, SettingsError> {
    let paired = pair_up::<NetConfig>(netdevs, devices)?;
    check_fds_used_once(&paired)?;
    Ok(paired.into_iter().map(|n| n.config).collect())
}

impl Backend for NetConfig {
    const FLAG: &'static str = "netdev";
    const DRIVER: &'static str = NET_DEVICE;
    const DEVICE_KEYS: &'static [&'static str] = &["driver", "netdev", "id", "mac", "iothread"];

    fn parse(value: &str) -> Result<NetConfig, SettingsError> {
        parse_netdev(value)
    }

    fn backend_id(&self) -> &str {
        &self.netdev
    }

    /// `mac=`, the device's `id=` and `iothread=` (checked against the iothreads in
    /// `iothread_opts.rs`; refused with vhost-net, whose frames the kernel moves).
    fn attach(&mut self, value: &str, opts: &OptList) -> Result<(), SettingsError> {
        if let Some(iothread) = opts.get("iothread") {
            if self.vhost || self.vhostfd.is_some() {
                let reason = "iothread= is not supported with vhost=on";
                return Err(invalid("device", value, reason));
            }
            self.iothread = Some(iothread.to_owned());
        }
        if let Some(mac) = opts.get("mac") {
            let mac = mac
                .parse::<MacAddr>()
                .map_err(|err| invalid("device", value, err.to_string()))?;
            self.mac = Some(mac.0);
        }
        if let Some(device_id) = opts.get("id").filter(|i| !i.is_empty()) {
            self.id = device_id.to_string();
        }
        Ok(())
    }
}

/// The inherited descriptors the devices use (taps and vhost-net), to keep open at start.
pub fn inherited_fds(nets: &[NetConfig]) -> Vec<i32> {
    let mut fds = Vec::new();
    for net in nets {
        if let TapSource::Fd(fd) = net.tap {
            fds.push(fd);
        }
        fds.extend(net.vhostfd);
    }
    fds
}

fn check_fds_used_once(parsed: &[Claimed<NetConfig>]) -> Result<(), SettingsError> {
    let mut seen: Vec<i32> = Vec::new();
    for netdev in parsed {
        let config = std::slice::from_ref(&netdev.config);
        for fd in inherited_fds(config) {
            if seen.contains(&fd) {
                let reason = format!("fd {fd} is used twice");
                return Err(invalid("netdev", &netdev.value, reason));
            }
            seen.push(fd);
        }
    }
    Ok(())
}

fn parse_netdev(value: &str) -> Result<NetConfig, SettingsError> {
    let opts = OptList::parse(value, Some("type"));
    match opts.get("type") {
        Some("tap") => {}
        Some(kind) if OTHER_NETDEV_TYPES.contains(&kind) => {
            return Err(SettingsError::NotSupported(format!("-netdev {kind}")))
        }
        Some(kind) => {
            let reason = format!("unknown netdev type '{kind}' (only tap)");
            return Err(invalid("netdev", value, reason));
        }
        None => return Err(invalid("netdev", value, "the type (tap) is required")),
    }
    if let Some(key) = opts.unknown_key(NETDEV_KEYS) {
        return Err(invalid("netdev", value, format!("unknown option '{key}'")));
    }
    let netdev = opts
        .get("id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| invalid("netdev", value, "id=<id> is required"))?;
    for key in ["script", "downscript"] {
        match opts.get(key) {
            None | Some("no" | "") => {}
            Some(_) => return Err(SettingsError::NotSupported(format!("-netdev {key}="))),
        }
    }
    if let Some(queues) = opts.get("queues") {
        if queues != "1" {
            return Err(invalid("netdev", value, "multiqueue is not supported yet"));
        }
    }
    let tap = tap_source(value, &opts)?;
    let (vhost, vhostfd) = vhost_options(value, &opts)?;
    Ok(NetConfig {
        id: netdev.to_string(),
        netdev: netdev.to_string(),
        tap,
        mac: None,
        vhost,
        vhostfd,
        iothread: None,
    })
}

/// Exactly one of `ifname=`, `fd=` and `fds=` (with a single descriptor).
fn tap_source(value: &str, opts: &OptList) -> Result<TapSource, SettingsError> {
    match (opts.get("ifname"), opts.get("fd"), opts.get("fds")) {
        (Some(name), None, None) if !name.is_empty() => Ok(TapSource::Name(name.to_string())),
        (None, Some(fd), None) => Ok(TapSource::Fd(parse_fd(value, "fd", fd)?)),
        (None, None, Some(fds)) => {
            if fds.contains(':') {
                return Err(invalid("netdev", value, "multiqueue is not supported yet"));
            }
            Ok(TapSource::Fd(parse_fd(value, "fds", fds)?))
        }
        (None, None, None) | (Some(_), None, None) => Err(invalid(
            "netdev",
            value,
            "the tap is missing: give ifname=<tap>, fd=<N> or fds=<N>",
        )),
        _ => Err(invalid(
            "netdev",
            value,
            "give only one of ifname=, fd= and fds=",
        )),
    }
}

/// `vhost=on|off` and `vhostfd=N` (which implies vhost=on, as in QEMU).
fn vhost_options(value: &str, opts: &OptList) -> Result<(bool, Option<i32>), SettingsError> {
    if let Some(fds) = opts.get("vhostfds") {
        if fds.contains(':') {
            return Err(invalid("netdev", value, "multiqueue is not supported yet"));
        }
    }
    let vhostfd = match opts.get("vhostfd").or(opts.get("vhostfds")) {
        Some(fd) => Some(parse_fd(value, "vhostfd", fd)?),
        None => None,
    };
    let vhost = opts
        .flag("vhost", vhostfd.is_some())
        .map_err(|r| invalid("netdev", value, r))?;
    if !vhost && vhostfd.is_some() {
        return Err(invalid("netdev", value, "vhostfd= needs vhost=on"));
    }
    Ok((vhost, vhostfd))
}

/// An inherited descriptor number: above stderr.
fn parse_fd(value: &str, key: &str, text: &str) -> Result<i32, SettingsError> {
    match text.parse::<i32>() {
        Ok(fd) if fd > 2 => Ok(fd),
        Ok(fd) if fd >= 0 => Err(invalid(
            "netdev",
            value,
            format!("{key}={fd} is standard input, output or error, not a tap"),
        )),
        _ => Err(invalid(
            "netdev",
            value,
            format!("{key} must be a descriptor number"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn parse(netdevs: &[&str], devices: &[&str]) -> Result<Vec<NetConfig>, SettingsError> {
        parse_netdevs(&strings(netdevs), &strings(devices))
    }

    fn refusal(netdev: &str, device: &str) -> String {
        parse(&[netdev], &[device]).expect_err(netdev).to_string()
    }

    const DEV: &str = "virtio-net-device,netdev=n0,id=net0";

    #[test]
    fn tap_by_name_with_mac_and_device_id() {
        let nets = parse(
            &["tap,id=n0,ifname=tap0"],
            &["virtio-net-device,netdev=n0,id=net0,mac=52:54:00:12:34:56"],
        )
        .expect("ok");
        assert_eq!(
            nets,
            vec![NetConfig {
                id: "net0".into(),
                netdev: "n0".into(),
                tap: TapSource::Name("tap0".into()),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                vhost: false,
                vhostfd: None,
                iothread: None,
            }]
        );
        assert!(inherited_fds(&nets).is_empty());
    }

    #[test]
    fn device_id_defaults_to_the_netdev_id() {
        let nets = parse(&["tap,id=n0,ifname=tap0"], &["virtio-net-device,netdev=n0"]);
        assert_eq!(nets.expect("ok")[0].id, "n0");
    }

    #[test]
    fn inherited_fd_and_single_fds_are_kept_open() {
        let nets = parse(
            &["tap,id=n0,fd=3", "tap,id=n1,fds=4"],
            &[DEV, "virtio-net-device,netdev=n1,id=net1"],
        )
        .expect("ok");
        assert_eq!(nets[0].tap, TapSource::Fd(3));
        assert_eq!(nets[1].tap, TapSource::Fd(4));
        assert_eq!(inherited_fds(&nets), vec![3, 4]);
    }

    #[test]
    fn several_fds_are_multiqueue_which_is_not_supported_yet() {
        let err = refusal("tap,id=n0,fds=3:4", DEV);
        assert!(err.contains("multiqueue is not supported yet"), "{err}");
        assert!(err.contains("-netdev"), "{err}");
        let err = refusal("tap,id=n0,ifname=t,queues=2", DEV);
        assert!(err.contains("multiqueue is not supported yet"), "{err}");
    }

    #[test]
    fn vhostfd_implies_vhost_and_is_kept_open() {
        let nets = parse(&["tap,id=n0,fds=3,vhostfd=5"], &[DEV]).expect("ok");
        assert!(nets[0].vhost);
        assert_eq!(nets[0].vhostfd, Some(5));
        assert_eq!(inherited_fds(&nets), vec![3, 5]);
        let nets = parse(&["tap,id=n0,ifname=t,vhost=on"], &[DEV]).expect("ok");
        assert!(nets[0].vhost && nets[0].vhostfd.is_none());
        let nets = parse(&["tap,id=n0,ifname=t,vhost=off"], &[DEV]).expect("ok");
        assert!(!nets[0].vhost);
    }

    #[test]
    fn contradictory_vhost_options_are_refused() {
        assert!(parse(&["tap,id=n0,ifname=t,vhost=off,vhostfd=5"], &[DEV]).is_err());
        assert!(parse(&["tap,id=n0,ifname=t,vhost=maybe"], &[DEV]).is_err());
    }

    #[test]
    fn missing_or_ambiguous_tap_is_refused_naming_the_netdev() {
        let err = refusal("tap,id=n0", DEV);
        assert!(
            err.starts_with("invalid value 'tap,id=n0' for -netdev"),
            "{err}"
        );
        assert!(err.contains("the tap is missing"), "{err}");
        assert!(refusal("tap,id=n0,ifname=", DEV).contains("the tap is missing"));
        let err = refusal("tap,id=n0,ifname=t,fd=3", DEV);
        assert!(err.contains("only one of"), "{err}");
    }

    #[test]
    fn bad_descriptor_numbers_are_refused() {
        for netdev in ["tap,id=n0,fd=x", "tap,id=n0,fd=-1", "tap,id=n0,fd=1"] {
            let err = refusal(netdev, DEV);
            assert!(err.contains("for -netdev"), "{netdev}: {err}");
        }
        let twice = parse(
            &["tap,id=n0,fd=3", "tap,id=n1,fd=3"],
            &[DEV, "virtio-net-device,netdev=n1"],
        );
        assert!(twice
            .expect_err("twice")
            .to_string()
            .contains("fd 3 is used twice"));
    }

    #[test]
    fn other_netdev_types_are_not_supported_and_unknown_ones_invalid() {
        let err = refusal("user,id=n0", DEV);
        assert_eq!(err, "-netdev user is not supported yet");
        assert!(refusal("frob,id=n0", DEV).contains("unknown netdev type 'frob'"));
        assert!(refusal("tap,id=n0,ifname=t,bogus=1", DEV).contains("unknown option 'bogus'"));
        assert!(refusal("tap,ifname=t", DEV).contains("id=<id> is required"));
        assert!(matches!(
            parse(&["tap,id=n0,ifname=t,script=/etc/qemu-ifup"], &[DEV]),
            Err(SettingsError::NotSupported(_))
        ));
        assert!(parse(&["tap,id=n0,ifname=t,script=no,downscript=no"], &[DEV]).is_ok());
    }

    #[test]
    fn netdev_and_device_must_pair_up() {
        let err = parse(&["tap,id=n0,ifname=t"], &[]).expect_err("unused");
        assert!(
            err.to_string()
                .contains("no -device virtio-net-device,netdev=n0 uses it"),
            "{err}"
        );
        let err = parse(&[], &[DEV]).expect_err("no netdev");
        assert!(err.to_string().contains("no -netdev with id 'n0'"), "{err}");
        assert!(parse(&["tap,id=n0,ifname=t"], &[DEV, DEV]).is_err());
        assert!(parse(&["tap,id=n0,ifname=t"], &["virtio-net-device,id=x"]).is_err());
        assert!(parse(&["tap,id=n0,ifname=a", "tap,id=n0,ifname=b"], &[DEV]).is_err());
    }

    #[test]
    fn device_options_are_checked() {
        // MacAddr's parser words the reason; the first line names the -device and its mac.
        for mac in ["52:54:00", "01:00:5e:00:00:01"] {
            let device = format!("virtio-net-device,netdev=n0,mac={mac}");
            let err = refusal("tap,id=n0,ifname=t", &device);
            assert!(
                err.starts_with(&format!("invalid value '{device}' for -device: ")),
                "{err}"
            );
        }
        let err = refusal("tap,id=n0,ifname=t", "virtio-net-device,netdev=n0,bogus=1");
        assert!(err.contains("unknown option 'bogus'"), "{err}");
        let nets = parse(
            &["tap,id=n0,ifname=t"],
            &["virtio-net-device,netdev=n0,iothread=io0"],
        )
        .expect("iothread= is kept; iothread_opts.rs checks the id");
        assert_eq!(nets[0].iothread.as_deref(), Some("io0"));
        let err = refusal(
            "tap,id=n0,ifname=t,vhost=on",
            "virtio-net-device,netdev=n0,iothread=io0",
        );
        assert!(
            err.contains("iothread= is not supported with vhost=on"),
            "{err}"
        );
    }
}
