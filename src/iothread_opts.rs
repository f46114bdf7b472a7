//! `-object iothread,id=<id>` and the `iothread=<id>` that `-device virtio-blk-device` and
//! `-device virtio-net-device` use to be served on it.

use crate::cli::Parsed;
use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};

/// The `-object` type of an iothread.
pub const IOTHREAD_OBJECT: &str = "iothread";

/// Options QEMU's iothread takes that Nimbus accepts only at their default, 0 (no polling, no
/// batching): the loop waits in `epoll_wait`.
const POLL_KEYS: [&str; 4] = ["poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch"];

/// The iothreads of the command line, by id in order; every `-device` that names one by
/// `iothread=` is checked to name one of them.
pub fn parse_iothreads(parsed: &Parsed) -> Result<Vec<String>, SettingsError> {
    let mut ids: Vec<String> = Vec::new();
    for value in parsed.all("object") {
        let opts = OptList::parse(&value, Some("qom-type"));
        if opts.get("qom-type") != Some(IOTHREAD_OBJECT) {
            continue;
        }
        let mut keys = vec!["qom-type", "id"];
        keys.extend(POLL_KEYS);
        if let Some(key) = opts.unknown_key(&keys) {
            return Err(invalid("object", &value, format!("unknown option '{key}'")));
        }
        for key in POLL_KEYS {
            let number = opts
                .number::<u64>(key)
                .map_err(|r| invalid("object", &value, r))?;
            if number.is_some_and(|n| n != 0) {
                return Err(SettingsError::NotSupported(format!(
                    "-object iothread,{key}= other than 0"
                )));
            }
        }
        let id = opts
            .get("id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| invalid("object", &value, "id=<id> is required"))?;
        if ids.iter().any(|other| other == id) {
            return Err(invalid("object", &value, format!("duplicate id '{id}'")));
        }
        ids.push(id.to_owned());
    }
    for value in parsed.all("device") {
        let opts = OptList::parse(&value, Some("driver"));
        if let Some(id) = opts.get("iothread") {
            if !ids.iter().any(|known| known == id) {
                let reason = format!("no -object iothread with id '{id}'");
                return Err(invalid("device", &value, reason));
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;

    fn iothreads(line: &str) -> Result<Vec<String>, SettingsError> {
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse_iothreads(&parse(&words).expect("parse"))
    }

    #[test]
    fn iothreads_come_in_order_and_devices_name_them() {
        let ids = iothreads(
            "-object iothread,id=io1 -object iothread,id=io2,poll-max-ns=0 \
             -device virtio-blk-device,drive=d,iothread=io2",
        )
        .expect("ok");
        assert_eq!(ids, ["io1", "io2"]);
        assert!(iothreads("").expect("none").is_empty());
    }

    #[test]
    fn unknown_iothread_id_is_refused_naming_the_device() {
        let err =
            iothreads("-object iothread,id=io1 -device virtio-blk-device,drive=d,iothread=io9")
                .expect_err("io9 does not exist");
        assert_eq!(
            err.to_string(),
            "invalid value 'virtio-blk-device,drive=d,iothread=io9' for -device: \
             no -object iothread with id 'io9'"
        );
    }

    #[test]
    fn bad_iothread_objects_are_refused() {
        for line in [
            "-object iothread",
            "-object iothread,id=a -object iothread,id=a",
            "-object iothread,id=a,bogus=1",
            "-object iothread,id=a,poll-max-ns=lots",
        ] {
            assert!(
                matches!(iothreads(line), Err(SettingsError::InvalidValue { .. })),
                "{line}"
            );
        }
        assert!(matches!(
            iothreads("-object iothread,id=a,poll-max-ns=32768"),
            Err(SettingsError::NotSupported(_))
        ));
    }
}
