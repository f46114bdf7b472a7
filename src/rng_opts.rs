//! `-object rng-random,id=<id>,filename=<path>` and
//! `-device virtio-rng-device,rng=<id>,id=<id>[,max-bytes=N,period=MS]`.

use crate::cli::Parsed;
use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};
use machine::RngOptions;
use std::path::PathBuf;

/// The device type of the entropy device.
pub const RNG_DEVICE: &str = "virtio-rng-device";
/// The one `-object` type Nimbus implements.
pub const RNG_OBJECT: &str = "rng-random";
/// QEMU's default rate-limit period in milliseconds.
const DEFAULT_PERIOD_MS: u64 = 1000;

/// Checks every `-object` but iothreads (`iothread_opts.rs`): only `rng-random` exists, others
/// are refused by name. Returns the rng objects as (id, filename).
fn rng_objects(parsed: &Parsed) -> Result<Vec<(String, PathBuf)>, SettingsError> {
    let mut objects = Vec::new();
    for value in parsed.all("object") {
        let opts = OptList::parse(&value, Some("qom-type"));
        match opts.get("qom-type") {
            Some(RNG_OBJECT) => {}
            Some(crate::iothread_opts::IOTHREAD_OBJECT) => continue,
            Some(other) => return Err(SettingsError::NotSupported(format!("-object {other}"))),
            None => return Err(invalid("object", &value, "no object type")),
        }
        if let Some(key) = opts.unknown_key(&["qom-type", "id", "filename"]) {
            return Err(invalid("object", &value, format!("unknown option '{key}'")));
        }
        let id = opts
            .get("id")
            .ok_or_else(|| invalid("object", &value, "id=<id> is required"))?;
        let file = opts.get("filename").unwrap_or("/dev/urandom");
        if objects.iter().any(|(other, _)| other == id) {
            return Err(invalid("object", &value, format!("duplicate id '{id}'")));
        }
        objects.push((id.to_string(), PathBuf::from(file)));
    }
    Ok(objects)
}

/// The entropy device of the command line, if any.
pub fn parse_rng(parsed: &Parsed) -> Result<Option<RngOptions>, SettingsError> {
    let objects = rng_objects(parsed)?;
    let devices: Vec<String> = parsed
        .all("device")
        .into_iter()
        .filter(|d| OptList::parse(d, Some("driver")).get("driver") == Some(RNG_DEVICE))
        .collect();
    let Some(value) = devices.first() else {
        return Ok(None);
    };
    if devices.len() > 1 {
        return Err(SettingsError::NotSupported(
            "more than one virtio-rng-device".to_string(),
        ));
    }
    let opts = OptList::parse(value, Some("driver"));
    if let Some(key) = opts.unknown_key(&["driver", "id", "rng", "max-bytes", "period", "bus"]) {
        return Err(invalid("device", value, format!("unknown option '{key}'")));
    }
    let source = match opts.get("rng") {
        Some(id) => objects
            .iter()
            .find(|(other, _)| other == id)
            .map(|(_, file)| file.clone())
            .ok_or_else(|| {
                invalid(
                    "device",
                    value,
                    format!("no -object rng-random with id '{id}'"),
                )
            })?,
        None => PathBuf::from("/dev/urandom"),
    };
    let number = |key| {
        opts.number::<u64>(key)
            .map_err(|r| invalid("device", value, r))
    };
    let max_bytes = number("max-bytes")?;
    let period_ms = number("period")?.unwrap_or(DEFAULT_PERIOD_MS);
    if period_ms == 0 {
        return Err(invalid("device", value, "period must be at least 1 ms"));
    }
    Ok(Some(RngOptions {
        source,
        max_bytes,
        period_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn kata_rng_flags_give_an_unlimited_urandom_device() {
        let parsed = parse(&words(
            "-object rng-random,id=objrng0,filename=/dev/urandom -device virtio-rng-device,rng=objrng0,id=virtio-rng0",
        ))
        .expect("parse");
        let rng = parse_rng(&parsed).expect("ok").expect("a device");
        assert_eq!(
            rng,
            RngOptions {
                source: "/dev/urandom".into(),
                max_bytes: None,
                period_ms: 1000
            }
        );
    }

    #[test]
    fn rate_limit_options_are_read() {
        let parsed = parse(&words(
            "-object rng-random,id=r,filename=/dev/random -device virtio-rng-device,rng=r,max-bytes=1024,period=500",
        ))
        .expect("parse");
        let rng = parse_rng(&parsed).expect("ok").expect("a device");
        assert_eq!((rng.max_bytes, rng.period_ms), (Some(1024), 500));
        assert_eq!(rng.source, PathBuf::from("/dev/random"));
    }

    #[test]
    fn unknown_backend_ids_and_object_types_are_refused() {
        let parsed = parse(&words("-device virtio-rng-device,rng=nope")).expect("parse");
        assert!(parse_rng(&parsed).is_err());
        let parsed = parse(&words("-object memory-backend-ram,id=m0")).expect("parse");
        assert!(matches!(
            parse_rng(&parsed),
            Err(SettingsError::NotSupported(_))
        ));
    }

    #[test]
    fn bad_numbers_are_refused() {
        let parsed = parse(&words("-device virtio-rng-device,max-bytes=lots")).expect("parse");
        assert!(parse_rng(&parsed).is_err());
        let parsed = parse(&words("-device virtio-rng-device,period=0")).expect("parse");
        assert!(parse_rng(&parsed).is_err());
    }
}
