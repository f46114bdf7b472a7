//! Backends (`-drive`, `-netdev`) and the `-device` entries that use them: each backend id is
//! given once, and each backend is claimed by exactly one device of its driver.

use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};

/// A backend flag whose entries one `-device` each must use.
pub trait Backend: Sized {
    /// The backend's flag without the dash, also the device's key naming it: `drive`.
    const FLAG: &'static str;
    /// The `-device` driver that uses it: `virtio-blk-device`.
    const DRIVER: &'static str;
    /// The options that driver's `-device` takes.
    const DEVICE_KEYS: &'static [&'static str];

    /// Reads one backend flag's value.
    fn parse(value: &str) -> Result<Self, SettingsError>;

    /// The backend id that devices name.
    fn backend_id(&self) -> &str;

    /// Takes the options of the `-device` (`value`) that claims this backend.
    fn attach(&mut self, value: &str, opts: &OptList) -> Result<(), SettingsError>;
}

/// A backend as given on the command line.
pub struct Claimed<T> {
    /// The flag's value, for errors that name it.
    pub value: String,
    /// The backend with its device's options.
    pub config: T,
    claimed: bool,
}

/// One `T` per backend value, in command-line order, each with the options of the `-device`
/// that uses it. `devices` holds every `-device` value; those of other drivers are skipped.
pub fn pair_up<T: Backend>(
    backends: &[String],
    devices: &[String],
) -> Result<Vec<Claimed<T>>, SettingsError> {
    let mut parsed: Vec<Claimed<T>> = Vec::with_capacity(backends.len());
    for value in backends {
        let config = T::parse(value)?;
        if parsed
            .iter()
            .any(|b| b.config.backend_id() == config.backend_id())
        {
            let reason = format!("{} id '{}' used twice", T::FLAG, config.backend_id());
            return Err(invalid(T::FLAG, value, reason));
        }
        parsed.push(Claimed {
            value: value.clone(),
            config,
            claimed: false,
        });
    }
    for value in devices {
        let opts = OptList::parse(value, Some("driver"));
        if opts.get("driver") == Some(T::DRIVER) {
            claim(&mut parsed, value, &opts)?;
        }
    }
    if let Some(unused) = parsed.iter().find(|b| !b.claimed) {
        let reason = format!(
            "no -device {},{}={} uses it",
            T::DRIVER,
            T::FLAG,
            unused.config.backend_id()
        );
        return Err(invalid(T::FLAG, &unused.value, reason));
    }
    Ok(parsed)
}

/// Attaches the backend a `-device` (`value`) names, with the device's options.
fn claim<T: Backend>(
    backends: &mut [Claimed<T>],
    value: &str,
    opts: &OptList,
) -> Result<(), SettingsError> {
    if let Some(key) = opts.unknown_key(T::DEVICE_KEYS) {
        return Err(invalid("device", value, format!("unknown option '{key}'")));
    }
    let id = opts
        .get(T::FLAG)
        .ok_or_else(|| invalid("device", value, format!("{}=<id> is required", T::FLAG)))?;
    let Some(backend) = backends.iter_mut().find(|b| b.config.backend_id() == id) else {
        let reason = format!("no -{} with id '{id}'", T::FLAG);
        return Err(invalid("device", value, reason));
    };
    if backend.claimed {
        let reason = format!("{} '{id}' is already in use", T::FLAG);
        return Err(invalid("device", value, reason));
    }
    backend.config.attach(value, opts)?;
    backend.claimed = true;
    Ok(())
}
