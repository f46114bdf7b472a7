//! `-device virtio-vsock-device,id=<id>,guest-cid=<N>,uds-path=<path>` (hybrid vsock, served
//! in process) and `-device vhost-vsock-device,id=<id>,guest-cid=<N>[,vhostfd=<N>]` (the
//! kernel's vhost-vsock, as StratoVirt and QEMU take it).

use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};
use machine::{VsockBackend, VsockConfig, VSOCK_GUEST_CIDS};
use std::path::PathBuf;

/// The in-process vsock device (Firecracker's hybrid vsock).
pub const HYBRID_VSOCK_DEVICE: &str = "virtio-vsock-device";
/// The kernel vhost-vsock device.
pub const VHOST_VSOCK_DEVICE: &str = "vhost-vsock-device";

/// The vsock device of the `-device` values, if any.
pub fn parse_vsock(devices: &[String]) -> Result<Option<VsockConfig>, SettingsError> {
    let vsocks: Vec<&String> = devices
        .iter()
        .filter(|d| {
            let driver = OptList::parse(d, Some("driver"));
            matches!(
                driver.get("driver"),
                Some(HYBRID_VSOCK_DEVICE | VHOST_VSOCK_DEVICE)
            )
        })
        .collect();
    let Some(value) = vsocks.first() else {
        return Ok(None);
    };
    if vsocks.len() > 1 {
        return Err(SettingsError::NotSupported(
            "more than one vsock device".to_string(),
        ));
    }
    let opts = OptList::parse(value, Some("driver"));
    let hybrid = opts.get("driver") == Some(HYBRID_VSOCK_DEVICE);
    let allowed: &[&str] = if hybrid {
        &["driver", "id", "guest-cid", "uds-path", "bus"]
    } else {
        &["driver", "id", "guest-cid", "vhostfd", "bus"]
    };
    if let Some(key) = opts.unknown_key(allowed) {
        return Err(invalid("device", value, format!("unknown option '{key}'")));
    }
    let cid = opts
        .number::<u64>("guest-cid")
        .map_err(|r| invalid("device", value, r))?
        .ok_or_else(|| invalid("device", value, "guest-cid=<N> is required"))?;
    if !VSOCK_GUEST_CIDS.contains(&cid) {
        let (min, max) = (VSOCK_GUEST_CIDS.start(), VSOCK_GUEST_CIDS.end());
        return Err(invalid(
            "device",
            value,
            format!("guest-cid must be between {min} and {max}"),
        ));
    }
    let backend = if hybrid {
        let path = opts
            .get("uds-path")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid("device", value, "uds-path=<path> is required"))?;
        VsockBackend::Hybrid {
            uds_path: PathBuf::from(path),
        }
    } else {
        let fd = opts
            .number::<i32>("vhostfd")
            .map_err(|r| invalid("device", value, r))?;
        if fd.is_some_and(|fd| fd < 3) {
            return Err(invalid("device", value, "vhostfd must be 3 or more"));
        }
        VsockBackend::Vhost { fd }
    };
    Ok(Some(VsockConfig {
        id: opts.get("id").unwrap_or("vsock0").to_string(),
        cid,
        backend,
    }))
}

/// The inherited descriptor the vsock device uses, to keep open.
pub fn inherited_vsock_fd(vsock: Option<&VsockConfig>) -> Option<i32> {
    match vsock?.backend {
        VsockBackend::Vhost { fd } => fd,
        VsockBackend::Hybrid { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<VsockConfig>, SettingsError> {
        parse_vsock(&[value.to_string()])
    }

    #[test]
    fn hybrid_vsock_takes_its_cid_and_socket_path() {
        let config = parse("virtio-vsock-device,id=vsock0,guest-cid=3,uds-path=/run/v.sock")
            .expect("ok")
            .expect("a device");
        assert_eq!(
            config,
            VsockConfig {
                id: "vsock0".into(),
                cid: 3,
                backend: VsockBackend::Hybrid {
                    uds_path: "/run/v.sock".into()
                },
            }
        );
    }

    #[test]
    fn kata_vhost_vsock_flags_are_read_with_the_inherited_fd() {
        let config = parse("vhost-vsock-device,id=vsock-id,guest-cid=1234,vhostfd=5")
            .expect("ok")
            .expect("a device");
        assert_eq!(config.backend, VsockBackend::Vhost { fd: Some(5) });
        assert_eq!(inherited_vsock_fd(Some(&config)), Some(5));
        let config = parse("vhost-vsock-device,id=v,guest-cid=3")
            .expect("ok")
            .expect("a device");
        assert_eq!(config.backend, VsockBackend::Vhost { fd: None });
    }

    #[test]
    fn bad_vsock_options_are_refused_naming_the_problem() {
        for (value, reason) in [
            (
                "virtio-vsock-device,uds-path=/v",
                "guest-cid=<N> is required",
            ),
            (
                "virtio-vsock-device,guest-cid=2,uds-path=/v",
                "between 3 and",
            ),
            (
                "virtio-vsock-device,guest-cid=4294967295,uds-path=/v",
                "between 3 and",
            ),
            (
                "virtio-vsock-device,guest-cid=x,uds-path=/v",
                "must be a number",
            ),
            (
                "virtio-vsock-device,guest-cid=3",
                "uds-path=<path> is required",
            ),
            (
                "virtio-vsock-device,guest-cid=3,uds-path=/v,vhostfd=3",
                "unknown option 'vhostfd'",
            ),
            (
                "vhost-vsock-device,guest-cid=3,uds-path=/v",
                "unknown option 'uds-path'",
            ),
            (
                "vhost-vsock-device,guest-cid=3,vhostfd=1",
                "vhostfd must be 3 or more",
            ),
        ] {
            let err = parse(value).expect_err(value).to_string();
            assert!(err.contains(reason), "{value}: {err}");
        }
        let two = [
            "virtio-vsock-device,guest-cid=3,uds-path=/a".to_string(),
            "virtio-vsock-device,guest-cid=4,uds-path=/b".to_string(),
        ];
        assert!(matches!(
            parse_vsock(&two),
            Err(SettingsError::NotSupported(_))
        ));
    }
}
