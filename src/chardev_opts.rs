//! `-chardev stdio|pty|file|socket,id=...` for the UART and virtconsole, `-serial pty` and
//! `-serial chardev:<id>`, and `-device virtio-serial-device` with `-device
//! virtconsole,chardev=` (StratoVirt's spelling).
//!
//! A socket chardev named by a vhost-user device or by `-mon` stays theirs (they connect to
//! or serve it themselves) and is not opened here.

use crate::cli::Parsed;
use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};
use machine::{ChardevBackend, ChardevConfig, ConsoleConfig, SerialConfig};
use std::path::PathBuf;

/// The virtio-serial bus device.
pub const VIRTIO_SERIAL: &str = "virtio-serial-device";
/// A console port on it.
pub const VIRTCONSOLE: &str = "virtconsole";
/// The label QEMU gives `-serial pty`'s chardev.
const SERIAL_LABEL: &str = "serial0";

/// The chardevs the machine opens, the UART's back end and the console port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consoles {
    /// The chardevs, in command-line order (`-serial pty`'s last).
    pub chardevs: Vec<ChardevConfig>,
    /// The UART's back end.
    pub serial: SerialConfig,
    /// The virtconsole, if any.
    pub console: Option<ConsoleConfig>,
}

/// Reads `-chardev`, `-serial`, and the virtio-serial devices of `parsed`; `serial` parses the
/// UART's built-in back ends (stdio, file, none).
pub fn parse_consoles(
    parsed: &Parsed,
    serial: impl Fn(&str) -> Result<SerialConfig, SettingsError>,
) -> Result<Consoles, SettingsError> {
    let taken = chardevs_of_others(parsed);
    let mut chardevs: Vec<ChardevConfig> = Vec::new();
    for value in parsed.all("chardev") {
        let opts = OptList::parse(&value, Some("backend"));
        if opts
            .get("id")
            .is_some_and(|id| taken.iter().any(|t| t == id))
        {
            continue;
        }
        let chardev = parse_chardev(&value)?;
        if chardevs.iter().any(|c| c.id == chardev.id) {
            return Err(invalid(
                "chardev",
                &value,
                format!("duplicate id '{}'", chardev.id),
            ));
        }
        chardevs.push(chardev);
    }
    let serial = match parsed.last("serial") {
        None => SerialConfig::None,
        Some(value) if value == "pty" => {
            if chardevs.iter().any(|c| c.id == SERIAL_LABEL) {
                return Err(invalid(
                    "serial",
                    &value,
                    format!("a -chardev already has id '{SERIAL_LABEL}'"),
                ));
            }
            chardevs.push(ChardevConfig {
                id: SERIAL_LABEL.to_string(),
                backend: ChardevBackend::Pty,
            });
            SerialConfig::Chardev(SERIAL_LABEL.to_string())
        }
        Some(value) => match value.strip_prefix("chardev:") {
            Some(id) => {
                if !chardevs.iter().any(|c| c.id == id) {
                    return Err(invalid(
                        "serial",
                        &value,
                        format!("no -chardev with id '{id}'"),
                    ));
                }
                SerialConfig::Chardev(id.to_string())
            }
            None => serial(&value)?,
        },
    };
    let stdio_users = chardevs
        .iter()
        .filter(|c| c.backend == ChardevBackend::Stdio)
        .count()
        + usize::from(serial == SerialConfig::Stdio);
    if stdio_users > 1 {
        return Err(SettingsError::Conflict(
            "only one of -serial stdio and -chardev stdio can read the terminal",
        ));
    }
    let console = parse_virtconsole(&parsed.all("device"), &chardevs)?;
    for used in console.iter().map(|c| &c.chardev) {
        if serial == SerialConfig::Chardev(used.clone()) {
            return Err(invalid(
                "device",
                VIRTCONSOLE,
                format!("chardev '{used}' is already the serial port's"),
            ));
        }
    }
    Ok(Consoles {
        chardevs,
        serial,
        console,
    })
}

/// Chardev ids that vhost-user devices and `-mon` use.
fn chardevs_of_others(parsed: &Parsed) -> Vec<String> {
    let devices = parsed.all("device").into_iter().filter(|d| {
        let opts = OptList::parse(d, Some("driver"));
        opts.get("driver")
            .is_some_and(|drv| drv.starts_with("vhost-user"))
    });
    devices
        .chain(parsed.all("mon"))
        .filter_map(|v| {
            OptList::parse(&v, Some("driver"))
                .get("chardev")
                .map(str::to_string)
        })
        .collect()
}

/// One `-chardev`.
fn parse_chardev(value: &str) -> Result<ChardevConfig, SettingsError> {
    let opts = OptList::parse(value, Some("backend"));
    let id = opts
        .get("id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| invalid("chardev", value, "id=<id> is required"))?
        .to_string();
    let path = || {
        opts.get("path")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| invalid("chardev", value, "path=<path> is required"))
    };
    let (backend, allowed): (_, &[&str]) = match opts.get("backend") {
        Some("stdio") => (ChardevBackend::Stdio, &["backend", "id", "signal", "mux"]),
        Some("pty") => (ChardevBackend::Pty, &["backend", "id"]),
        Some("file") => (ChardevBackend::File(path()?), &["backend", "id", "path"]),
        Some("socket") => {
            if opts.get("host").is_some() || opts.get("port").is_some() {
                return Err(SettingsError::NotSupported(
                    "-chardev socket over TCP for a console (use path=)".to_string(),
                ));
            }
            let server = opts
                .flag("server", false)
                .map_err(|r| invalid("chardev", value, r))?;
            let backend = if server {
                ChardevBackend::SocketServer(path()?)
            } else {
                ChardevBackend::SocketClient(path()?)
            };
            (
                backend,
                &["backend", "id", "path", "server", "nowait", "wait"],
            )
        }
        Some(other) => {
            return Err(SettingsError::NotSupported(format!("-chardev {other}")));
        }
        None => {
            return Err(invalid(
                "chardev",
                value,
                "expected stdio, pty, file or socket",
            ))
        }
    };
    if let Some(key) = opts.unknown_key(allowed) {
        return Err(invalid("chardev", value, format!("unknown option '{key}'")));
    }
    Ok(ChardevConfig { id, backend })
}

/// `-device virtconsole,id=,chardev=[,nr=0]`, which needs a `-device virtio-serial-device`.
fn parse_virtconsole(
    devices: &[String],
    chardevs: &[ChardevConfig],
) -> Result<Option<ConsoleConfig>, SettingsError> {
    let driver_is =
        |d: &String, name: &str| OptList::parse(d, Some("driver")).get("driver") == Some(name);
    let buses: Vec<&String> = devices
        .iter()
        .filter(|d| driver_is(d, VIRTIO_SERIAL))
        .collect();
    for bus in &buses {
        let opts = OptList::parse(bus, Some("driver"));
        if let Some(key) = opts.unknown_key(&["driver", "id", "max_ports", "bus"]) {
            return Err(invalid("device", bus, format!("unknown option '{key}'")));
        }
    }
    if buses.len() > 1 {
        return Err(SettingsError::NotSupported(
            "more than one virtio-serial-device".to_string(),
        ));
    }
    let ports: Vec<&String> = devices
        .iter()
        .filter(|d| driver_is(d, VIRTCONSOLE))
        .collect();
    let Some(port) = ports.first() else {
        return Ok(None);
    };
    if ports.len() > 1 {
        return Err(SettingsError::NotSupported(
            "more than one virtconsole (one port, number 0)".to_string(),
        ));
    }
    if buses.is_empty() {
        return Err(invalid(
            "device",
            port,
            "needs a -device virtio-serial-device to sit on",
        ));
    }
    let opts = OptList::parse(port, Some("driver"));
    if let Some(key) = opts.unknown_key(&["driver", "id", "chardev", "nr", "bus", "name"]) {
        return Err(invalid("device", port, format!("unknown option '{key}'")));
    }
    let nr = opts
        .number::<u32>("nr")
        .map_err(|r| invalid("device", port, r))?;
    if nr.is_some_and(|n| n != 0) {
        return Err(SettingsError::NotSupported(
            "virtconsole nr= other than 0".to_string(),
        ));
    }
    let chardev = opts
        .get("chardev")
        .ok_or_else(|| invalid("device", port, "chardev=<id> is required"))?;
    if !chardevs.iter().any(|c| c.id == chardev) {
        return Err(invalid(
            "device",
            port,
            format!("no -chardev with id '{chardev}'"),
        ));
    }
    Ok(Some(ConsoleConfig {
        id: opts.get("id").unwrap_or("virtconsole0").to_string(),
        chardev: chardev.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consoles(args: &[&str]) -> Result<Consoles, SettingsError> {
        let args: Vec<String> = args.iter().copied().map(String::from).collect();
        let parsed = crate::cli::parse(&args).expect("parse");
        parse_consoles(&parsed, |_| Ok(SerialConfig::Stdio))
    }

    #[test]
    fn socket_server_feeds_virtconsole() {
        let c = consoles(&[
            "-chardev",
            "socket,id=c0,path=/tmp/c.sock,server,nowait",
            "-device",
            "virtio-serial-device,id=vs0",
            "-device",
            "virtconsole,id=con0,chardev=c0",
        ])
        .expect("ok");
        assert_eq!(
            c.chardevs,
            vec![ChardevConfig {
                id: "c0".into(),
                backend: ChardevBackend::SocketServer("/tmp/c.sock".into())
            }]
        );
        assert_eq!(
            c.console,
            Some(ConsoleConfig {
                id: "con0".into(),
                chardev: "c0".into()
            })
        );
    }

    #[test]
    fn serial_pty_is_a_chardev_labelled_serial0() {
        let c = consoles(&["-serial", "pty"]).expect("ok");
        assert_eq!(c.serial, SerialConfig::Chardev("serial0".into()));
        assert_eq!(c.chardevs[0].backend, ChardevBackend::Pty);
    }

    #[test]
    fn serial_chardev_must_name_a_chardev() {
        let c = consoles(&["-chardev", "pty,id=p", "-serial", "chardev:p"]).expect("ok");
        assert_eq!(c.serial, SerialConfig::Chardev("p".into()));
        let err = consoles(&["-serial", "chardev:q"]).expect_err("unknown");
        assert!(err.to_string().contains("no -chardev with id 'q'"), "{err}");
    }

    #[test]
    fn vhost_user_and_monitor_chardevs_stay_theirs() {
        let c = consoles(&[
            "-chardev",
            "socket,id=vu,path=/tmp/vu.sock",
            "-device",
            "vhost-user-blk-device,id=d,chardev=vu",
            "-chardev",
            "socket,id=mon0,path=/tmp/m.sock,server,nowait",
            "-mon",
            "chardev=mon0,mode=control",
        ])
        .expect("ok");
        assert!(c.chardevs.is_empty());
    }

    #[test]
    fn virtconsole_needs_the_bus_and_port_zero() {
        let no_bus = consoles(&["-chardev", "pty,id=c0", "-device", "virtconsole,chardev=c0"]);
        assert!(no_bus.is_err());
        let nr1 = consoles(&[
            "-chardev",
            "pty,id=c0",
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole,chardev=c0,nr=1",
        ]);
        assert!(nr1.is_err());
    }

    #[test]
    fn stdio_has_one_reader() {
        let both = consoles(&["-serial", "stdio", "-chardev", "stdio,id=s"]);
        assert!(both.is_err());
        assert!(consoles(&["-chardev", "stdio,id=s"]).is_ok());
    }

    #[test]
    fn file_needs_a_path_and_unknown_backends_are_refused() {
        assert!(consoles(&["-chardev", "file,id=f"]).is_err());
        assert!(consoles(&["-chardev", "spicevmc,id=s"]).is_err());
        assert!(consoles(&["-chardev", "pty,id=p,bogus=1"]).is_err());
    }
}
