//! `-chardev socket,id=<id>,path=<sock>` with `-device vhost-user-blk-device,id=,chardev=
//! [,num-queues=N]` or `-device vhost-user-fs-device,id=,chardev=,tag=[,num-request-queues=N]
//! [,queue-size=N]`, as StratoVirt and QEMU take them.

use crate::cli::Parsed;
use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};
use machine::{VhostUserKind, VhostUserOptions};
use std::path::PathBuf;
use std::time::Duration;

/// The vhost-user disk.
pub const VHOST_USER_BLK: &str = "vhost-user-blk-device";
/// The vhost-user file system (virtio-fs).
pub const VHOST_USER_FS: &str = "vhost-user-fs-device";

/// Most queues of one device (virtio-mmio has room for more, back ends rarely serve more).
const MAX_QUEUES: u64 = 16;
/// virtio-fs's tag field.
const MAX_TAG: usize = 36;

/// Every vhost-user device of the command line, in order.
pub fn parse_vhost_user(parsed: &Parsed) -> Result<Vec<VhostUserOptions>, SettingsError> {
    let chardevs = parsed.all("chardev");
    let mut out: Vec<VhostUserOptions> = Vec::new();
    for value in parsed.all("device") {
        let opts = OptList::parse(&value, Some("driver"));
        let driver = opts.get("driver");
        if !matches!(driver, Some(VHOST_USER_BLK | VHOST_USER_FS)) {
            continue;
        }
        let blk = driver == Some(VHOST_USER_BLK);
        let allowed: &[&str] = if blk {
            &["driver", "id", "chardev", "num-queues", "bus", "bootindex"]
        } else {
            &[
                "driver",
                "id",
                "chardev",
                "tag",
                "num-request-queues",
                "queue-size",
                "bus",
            ]
        };
        if let Some(key) = opts.unknown_key(allowed) {
            return Err(invalid("device", &value, format!("unknown option '{key}'")));
        }
        let number = |key: &str, default: u64, range: std::ops::RangeInclusive<u64>| {
            let n = opts
                .number::<u64>(key)
                .map_err(|r| invalid("device", &value, r))?
                .unwrap_or(default);
            if !range.contains(&n) {
                return Err(invalid(
                    "device",
                    &value,
                    format!(
                        "{key} must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            Ok(n as u16)
        };
        let kind = if blk {
            VhostUserKind::Blk {
                num_queues: number("num-queues", 1, 1..=MAX_QUEUES)?,
            }
        } else {
            let tag = opts
                .get("tag")
                .filter(|t| !t.is_empty())
                .ok_or_else(|| invalid("device", &value, "tag=<mount tag> is required"))?;
            if tag.len() > MAX_TAG {
                return Err(invalid(
                    "device",
                    &value,
                    format!("tag must be at most {MAX_TAG} bytes"),
                ));
            }
            let queue_size = number("queue-size", 128, 2..=1024)?;
            if !queue_size.is_power_of_two() {
                return Err(invalid("device", &value, "queue-size must be a power of 2"));
            }
            VhostUserKind::Fs {
                tag: tag.to_string(),
                request_queues: number("num-request-queues", 1, 1..=MAX_QUEUES - 1)?,
                queue_size,
            }
        };
        let chardev_id = opts
            .get("chardev")
            .ok_or_else(|| invalid("device", &value, "chardev=<id> is required"))?;
        let (socket, reconnect) = chardev_socket(&chardevs, chardev_id)
            .map_err(|reason| invalid("device", &value, reason))?;
        let id = opts
            .get("id")
            .map_or_else(|| format!("vhost-user{}", out.len()), str::to_string);
        if out.iter().any(|o| o.id == id) {
            return Err(invalid("device", &value, format!("duplicate id '{id}'")));
        }
        out.push(VhostUserOptions {
            id,
            socket,
            kind,
            reconnect,
        });
    }
    Ok(out)
}

/// The socket path of `-chardev socket,id=<id>,path=<path>[,reconnect=N]`, and the reconnect
/// period (`reconnect=0`, QEMU's default, is none). `server,nowait` is accepted (Kata writes
/// it) but Nimbus always connects to the back end, which listens: virtiofsd and
/// qemu-storage-daemon serve their socket.
fn chardev_socket(chardevs: &[String], id: &str) -> Result<(PathBuf, Option<Duration>), String> {
    let chardev = chardevs
        .iter()
        .map(|c| OptList::parse(c, Some("backend")))
        .find(|c| c.get("id") == Some(id))
        .ok_or_else(|| format!("no -chardev with id '{id}'"))?;
    if chardev.get("backend") != Some("socket") {
        return Err(format!("-chardev '{id}' must be a socket"));
    }
    let reconnect = match chardev.get("reconnect") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(0) => None,
            Ok(secs) if secs <= MAX_RECONNECT_SECS => Some(Duration::from_secs(secs)),
            _ => {
                return Err(format!(
                    "-chardev '{id}': reconnect= must be seconds from 0 to {MAX_RECONNECT_SECS}, \
                     not '{text}'"
                ))
            }
        },
    };
    let path = chardev
        .get("path")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| format!("-chardev '{id}' needs path=<socket>"))?;
    Ok((path, reconnect))
}

/// Longest reconnect period (a day).
const MAX_RECONNECT_SECS: u64 = 86_400;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn kata_virtio_fs_flags_give_a_fs_device_on_the_socket() {
        let parsed = parse(&words(
            "-chardev socket,id=virtio_fs,path=/run/k/virtiofs_kata.socket,server,nowait \
             -device vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0",
        ))
        .expect("parse");
        let devices = parse_vhost_user(&parsed).expect("ok");
        assert_eq!(
            devices,
            [VhostUserOptions {
                id: "virtio-fs0".into(),
                socket: "/run/k/virtiofs_kata.socket".into(),
                kind: VhostUserKind::Fs {
                    tag: "kataShared".into(),
                    request_queues: 1,
                    queue_size: 128
                },
                reconnect: None,
            }]
        );
    }

    #[test]
    fn vhost_user_blk_takes_its_queue_count() {
        let parsed = parse(&words(
            "-chardev socket,id=c1,path=/run/b.sock -device vhost-user-blk-device,id=vub0,chardev=c1,num-queues=2",
        ))
        .expect("parse");
        let devices = parse_vhost_user(&parsed).expect("ok");
        assert_eq!(devices[0].kind, VhostUserKind::Blk { num_queues: 2 });
        assert_eq!(devices[0].reconnect, None);
    }

    #[test]
    fn reconnect_takes_seconds_and_zero_is_none() {
        for (value, period) in [("1", Some(Duration::from_secs(1))), ("0", None)] {
            let parsed = parse(&words(&format!(
                "-chardev socket,id=c1,path=/run/b.sock,reconnect={value} \
                 -device vhost-user-blk-device,id=vub0,chardev=c1"
            )))
            .expect("parse");
            assert_eq!(parse_vhost_user(&parsed).expect("ok")[0].reconnect, period);
        }
    }

    #[test]
    fn bad_vhost_user_options_are_refused_naming_the_problem() {
        for (line, reason) in [
            ("-device vhost-user-fs-device,id=f,tag=t", "chardev=<id> is required"),
            ("-device vhost-user-fs-device,id=f,chardev=c,tag=t", "no -chardev with id 'c'"),
            ("-chardev socket,id=c,path=/s -device vhost-user-fs-device,chardev=c", "tag=<mount tag>"),
            ("-chardev socket,id=c,path=/s -device vhost-user-fs-device,chardev=c,tag=t,queue-size=100", "power of 2"),
            ("-chardev socket,id=c,path=/s -device vhost-user-blk-device,chardev=c,num-queues=0", "between 1 and 16"),
            ("-chardev socket,id=c,path=/s,reconnect=soon -device vhost-user-blk-device,chardev=c", "reconnect= must be seconds"),
            ("-chardev socket,id=c -device vhost-user-blk-device,chardev=c", "path=<socket>"),
            ("-chardev socket,id=c,path=/s -device vhost-user-blk-device,chardev=c,frob=1", "unknown option 'frob'"),
        ] {
            let parsed = parse(&words(line)).expect("parse");
            let err = parse_vhost_user(&parsed).expect_err(line).to_string();
            assert!(err.contains(reason), "{line}: {err}");
        }
    }
}
