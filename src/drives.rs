//! `-drive` and `-device virtio-blk-device` into the machine's disks.

use crate::backends::{pair_up, Backend};
use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};
use machine::{Aio, DriveConfig, ThrottleLimits, MAX_BLK_QUEUES as MAX_QUEUES};

use std::path::PathBuf;

/// The `-device` driver of a disk.
pub const BLOCK_DEVICE: &str = "virtio-blk-device";
/// Bytes of a virtio-blk serial.
const SERIAL_MAX: usize = 20;

const DRIVE_KEYS: &[&str] = &[
    "id",
    "file",
    "readonly",
    "direct",
    "aio",
    "format",
    "if",
    "cache",
    "discard",
    "detect-zeroes",
    "iops",
    "bps",
    "throttling.iops-total",
    "throttling.bps-total",
];

/// Builds one disk per `-drive`, in command-line order, with the serial from the
/// `-device virtio-blk-device` that uses it. `devices` holds every `-device` value.
pub fn parse_drives(
    drives: &[String],
    devices: &[String],
) -> Result<Vec<DriveConfig>, SettingsError> {
    let paired = pair_up::<DriveConfig>(drives, devices)?;
    Ok(paired.into_iter().map(|d| d.config).collect())
}

impl Backend for DriveConfig {
    const FLAG: &'static str = "drive";
    const DRIVER: &'static str = BLOCK_DEVICE;
    const DEVICE_KEYS: &'static [&'static str] =
        &["driver", "drive", "id", "serial", "iothread", "num-queues"];

    fn parse(value: &str) -> Result<DriveConfig, SettingsError> {
        parse_drive(value)
    }

    fn backend_id(&self) -> &str {
        &self.id
    }

    /// `serial=`, `num-queues=` and `iothread=` (checked against the iothreads in `iothread_opts.rs`).
    fn attach(&mut self, value: &str, opts: &OptList) -> Result<(), SettingsError> {
        self.iothread = opts.get("iothread").map(str::to_owned);
        if let Some(serial) = opts.get("serial") {
            if serial.len() > SERIAL_MAX {
                return Err(invalid("device", value, "serial is longer than 20 bytes"));
            }
            self.serial = serial.to_string();
        }
        if let Some(n) = opts.get("num-queues") {
            self.num_queues = n
                .parse::<u16>()
                .ok()
                .filter(|n| (1..=MAX_QUEUES).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "device",
                        value,
                        format!("num-queues must be a number from 1 to {MAX_QUEUES}"),
                    )
                })?;
        }
        Ok(())
    }
}

fn parse_drive(value: &str) -> Result<DriveConfig, SettingsError> {
    let opts = OptList::parse(value, None);
    if let Some(key) = opts.unknown_key(DRIVE_KEYS) {
        return Err(invalid("drive", value, format!("unknown option '{key}'")));
    }
    for key in ["cache", "detect-zeroes"] {
        if opts.get(key).is_some() {
            return Err(SettingsError::NotSupported(format!("-drive {key}=")));
        }
    }
    let flag = |key| {
        opts.flag(key, false)
            .map_err(|r| invalid("drive", value, r))
    };
    let readonly = flag("readonly")?;
    let direct = flag("direct")?;
    let aio = match opts.get("aio") {
        None | Some("off" | "threads") => Aio::Off,
        Some("io_uring") => Aio::IoUring,
        Some("native") => Aio::Native,
        Some(_) => {
            return Err(invalid(
                "drive",
                value,
                "aio must be native, io_uring or off",
            ))
        }
    };
    match opts.get("format") {
        None | Some("raw") => {}
        Some(_) => {
            return Err(invalid(
                "drive",
                value,
                "only format=raw images are supported",
            ))
        }
    }
    match opts.get("if") {
        None | Some("none") => {}
        Some(other) => return Err(SettingsError::NotSupported(format!("-drive if={other}"))),
    }
    match opts.get("discard") {
        None | Some("unmap" | "on") => {}
        Some(other) => {
            return Err(SettingsError::NotSupported(format!(
                "-drive discard={other}"
            )))
        }
    }
    let id = opts
        .get("id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| invalid("drive", value, "id=<id> is required"))?;
    let file = opts
        .get("file")
        .filter(|f| !f.is_empty())
        .ok_or_else(|| invalid("drive", value, "file=<path> is required"))?;
    Ok(DriveConfig {
        id: id.to_string(),
        path: PathBuf::from(file),
        readonly,
        serial: id.to_string(),
        aio,
        direct,
        iothread: None,
        num_queues: 1,
        throttle: ThrottleLimits {
            iops: limit(&opts, value, "iops", "throttling.iops-total")?,
            bps: limit(&opts, value, "bps", "throttling.bps-total")?,
        },
    })
}

/// A throttling limit given as StratoVirt's `key=` or QEMU's `qemu_key=` (not both): a
/// positive number per second; absent or 0 is unlimited, as in QEMU.
fn limit(
    opts: &OptList,
    value: &str,
    key: &str,
    qemu_key: &str,
) -> Result<Option<u64>, SettingsError> {
    let given = match (opts.get(key), opts.get(qemu_key)) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "drive",
                value,
                format!("give {key}= or {qemu_key}=, not both"),
            ))
        }
        (Some(v), None) => (key, v),
        (None, Some(v)) => (qemu_key, v),
        (None, None) => return Ok(None),
    };
    let n = given.1.parse::<u64>().map_err(|_| {
        invalid(
            "drive",
            value,
            format!("{}= must be a whole number per second", given.0),
        )
    })?;
    Ok((n > 0).then_some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn parse(drives: &[&str], devices: &[&str]) -> Result<Vec<DriveConfig>, SettingsError> {
        parse_drives(&strings(drives), &strings(devices))
    }

    #[test]
    fn drives_come_in_command_line_order_with_their_serials() {
        let disks = parse(
            &[
                "id=root,file=/r.img,readonly=on,direct=off",
                "id=data,file=/d.img,aio=off",
            ],
            &[
                "virtio-blk-device,drive=data,id=b1,serial=SN1",
                "virtio-blk-device,drive=root,id=b0",
            ],
        )
        .expect("ok");
        assert_eq!(disks.len(), 2);
        assert_eq!((disks[0].id.as_str(), disks[0].readonly), ("root", true));
        assert_eq!(disks[0].serial, "root");
        assert_eq!(disks[0].path, PathBuf::from("/r.img"));
        assert_eq!((disks[1].id.as_str(), disks[1].readonly), ("data", false));
        assert_eq!(disks[1].serial, "SN1");
    }

    #[test]
    fn drive_without_id_or_file_is_refused() {
        assert!(parse(&["file=/r.img"], &[]).is_err());
        assert!(parse(&["id=r"], &["virtio-blk-device,drive=r"]).is_err());
    }

    #[test]
    fn drive_no_device_uses_is_refused() {
        let err = parse(&["id=r,file=/r.img"], &[]).expect_err("unused");
        assert!(
            err.to_string()
                .contains("no -device virtio-blk-device,drive=r"),
            "{err}"
        );
    }

    #[test]
    fn device_naming_an_unknown_or_taken_drive_is_refused() {
        assert!(parse(&["id=r,file=/r.img"], &["virtio-blk-device,drive=x"]).is_err());
        let twice = ["virtio-blk-device,drive=r", "virtio-blk-device,drive=r"];
        assert!(parse(&["id=r,file=/r.img"], &twice).is_err());
        assert!(parse(
            &["id=r,file=/a", "id=r,file=/b"],
            &["virtio-blk-device,drive=r"]
        )
        .is_err());
    }

    #[test]
    fn aio_and_direct_choose_the_engine_and_o_direct() {
        let cases = [
            ("id=r,file=/r", Aio::Off, false),
            ("id=r,file=/r,aio=off", Aio::Off, false),
            ("id=r,file=/r,aio=threads", Aio::Off, false),
            ("id=r,file=/r,aio=io_uring", Aio::IoUring, false),
            ("id=r,file=/r,aio=native,direct=on", Aio::Native, true),
            ("id=r,file=/r,direct=on", Aio::Off, true),
            ("id=r,file=/r,direct=off,aio=io_uring", Aio::IoUring, false),
        ];
        for (drive, aio, direct) in cases {
            let disks = parse(&[drive], &["virtio-blk-device,drive=r"]).expect(drive);
            assert_eq!((disks[0].aio, disks[0].direct), (aio, direct), "{drive}");
        }
    }

    #[test]
    fn bad_aio_or_direct_values_are_refused() {
        for drive in ["id=r,file=/r,aio=posix", "id=r,file=/r,direct=maybe"] {
            let err = parse(&[drive], &["virtio-blk-device,drive=r"]).expect_err(drive);
            assert!(
                matches!(err, SettingsError::InvalidValue { .. }),
                "{drive}: {err}"
            );
        }
    }

    #[test]
    fn unimplemented_drive_options_are_not_supported_yet() {
        let drive = "id=r,file=/r,cache=none";
        let err = parse(&[drive], &["virtio-blk-device,drive=r"]).expect_err(drive);
        assert!(
            matches!(err, SettingsError::NotSupported(_)),
            "{drive}: {err}"
        );
        assert!(parse(&["id=r,file=/r,bogus=1"], &["virtio-blk-device,drive=r"]).is_err());
        assert!(parse(
            &["id=r,file=/r,format=qcow2"],
            &["virtio-blk-device,drive=r"]
        )
        .is_err());
    }

    #[test]
    fn throttling_limits_take_stratovirt_or_qemu_names() {
        let cases = [
            ("id=r,file=/r", None, None),
            ("id=r,file=/r,iops=500", Some(500), None),
            ("id=r,file=/r,bps=1048576,iops=0", None, Some(1 << 20)),
            (
                "id=r,file=/r,throttling.iops-total=7,throttling.bps-total=9",
                Some(7),
                Some(9),
            ),
        ];
        for (drive, iops, bps) in cases {
            let disks = parse(&[drive], &["virtio-blk-device,drive=r"]).expect(drive);
            assert_eq!(disks[0].throttle, ThrottleLimits { iops, bps }, "{drive}");
        }
        for drive in [
            "id=r,file=/r,iops=fast",
            "id=r,file=/r,bps=-1",
            "id=r,file=/r,iops=5,throttling.iops-total=5",
        ] {
            let err = parse(&[drive], &["virtio-blk-device,drive=r"]).expect_err(drive);
            assert!(
                matches!(err, SettingsError::InvalidValue { .. }),
                "{drive}: {err}"
            );
        }
    }

    #[test]
    fn num_queues_is_taken_from_the_device() {
        let disks = parse(&["id=r,file=/r"], &["virtio-blk-device,drive=r"]).expect("ok");
        assert_eq!(disks[0].num_queues, 1);
        let disks = parse(
            &["id=r,file=/r"],
            &["virtio-blk-device,drive=r,num-queues=4"],
        )
        .expect("ok");
        assert_eq!(disks[0].num_queues, 4);
        for device in [
            "virtio-blk-device,drive=r,num-queues=0",
            "virtio-blk-device,drive=r,num-queues=33",
            "virtio-blk-device,drive=r,num-queues=two",
        ] {
            assert!(parse(&["id=r,file=/r"], &[device]).is_err(), "{device}");
        }
    }

    #[test]
    fn serial_longer_than_20_bytes_is_refused() {
        let device = format!("virtio-blk-device,drive=r,serial={}", "x".repeat(21));
        assert!(parse(&["id=r,file=/r"], &[device.as_str()]).is_err());
    }
}
