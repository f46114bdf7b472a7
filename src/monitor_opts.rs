//! `-qmp`, `-chardev socket,...` and `-mon chardev=...,mode=control`: where the QMP monitor
//! listens.

use crate::cli::Parsed;
use crate::opts::{parse_bool, OptList};
use crate::settings::{invalid, SettingsError};
use machine::QmpEndpoint;
use std::path::PathBuf;

/// Whether the options make this end the listening side (`server`, `server=on`), without
/// waiting for a client first (`nowait`, `wait=off`; waiting is not supported).
fn check_server(flag: &'static str, value: &str, opts: &OptList) -> Result<(), SettingsError> {
    let server = opts.get("server").map(parse_bool);
    if server != Some(Some(true)) {
        return Err(SettingsError::NotSupported(format!(
            "-{flag} as a client (add server,nowait)"
        )));
    }
    let wait = opts.get("nowait").is_none()
        && opts
            .flag("wait", true)
            .map_err(|r| invalid(flag, value, r))?;
    if wait {
        return Err(SettingsError::NotSupported(format!(
            "-{flag} waiting for a client (add nowait)"
        )));
    }
    Ok(())
}

/// `unix:<path>,server,nowait` or `tcp:<host>:<port>,server,nowait`.
fn parse_qmp(value: &str) -> Result<QmpEndpoint, SettingsError> {
    let opts = OptList::parse(value, Some("addr"));
    let addr = opts.get("addr").unwrap_or_default();
    let endpoint = if let Some(path) = addr.strip_prefix("unix:") {
        QmpEndpoint::Unix(PathBuf::from(path))
    } else if let Some(hostport) = addr.strip_prefix("tcp:") {
        if !hostport.contains(':') {
            return Err(invalid("qmp", value, "tcp needs <host>:<port>"));
        }
        QmpEndpoint::Tcp(hostport.to_string())
    } else {
        return Err(invalid(
            "qmp",
            value,
            "expected unix:<path>,server,nowait or tcp:<host>:<port>,server,nowait",
        ));
    };
    check_server("qmp", value, &opts)?;
    Ok(endpoint)
}

/// A `-chardev socket,id=..,path=..|host=..,port=..,server,nowait` as a QMP endpoint.
fn chardev_endpoint(value: &str) -> Result<(String, QmpEndpoint), SettingsError> {
    let opts = OptList::parse(value, Some("backend"));
    if opts.get("backend") != Some("socket") {
        let backend = opts.get("backend").unwrap_or_default();
        return Err(SettingsError::NotSupported(format!(
            "-chardev {backend} as a monitor"
        )));
    }
    let id = opts
        .get("id")
        .ok_or_else(|| invalid("chardev", value, "id=<id> is required"))?;
    let endpoint = match (opts.get("path"), opts.get("host"), opts.get("port")) {
        (Some(path), _, _) => QmpEndpoint::Unix(PathBuf::from(path)),
        (None, host, Some(port)) => {
            QmpEndpoint::Tcp(format!("{}:{port}", host.unwrap_or("127.0.0.1")))
        }
        _ => {
            return Err(invalid(
                "chardev",
                value,
                "socket needs path=<path> or host=..,port=..",
            ))
        }
    };
    check_server("chardev", value, &opts)?;
    Ok((id.to_string(), endpoint))
}

/// The QMP endpoint of the command line, if any.
pub fn qmp_endpoint(parsed: &Parsed) -> Result<Option<QmpEndpoint>, SettingsError> {
    let mut endpoints = Vec::new();
    for value in parsed.all("qmp") {
        endpoints.push(parse_qmp(&value)?);
    }
    for value in parsed.all("mon") {
        let opts = OptList::parse(&value, Some("name"));
        let id = opts
            .get("chardev")
            .ok_or_else(|| invalid("mon", &value, "chardev=<id> is required"))?;
        if opts.get("mode") != Some("control") {
            return Err(SettingsError::NotSupported(
                "the human monitor (use mode=control)".to_string(),
            ));
        }
        let chardev = parsed
            .all("chardev")
            .into_iter()
            .find(|c| OptList::parse(c, Some("backend")).get("id") == Some(id))
            .ok_or_else(|| invalid("mon", &value, format!("no -chardev with id '{id}'")))?;
        endpoints.push(chardev_endpoint(&chardev)?.1);
    }
    if endpoints.len() > 1 {
        return Err(SettingsError::NotSupported(
            "more than one QMP monitor".to_string(),
        ));
    }
    Ok(endpoints.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_qmp_socket_as_kata_writes_it() {
        let ep = parse_qmp("unix:/run/vc/qmp.sock,server,nowait").expect("ok");
        assert_eq!(ep, QmpEndpoint::Unix("/run/vc/qmp.sock".into()));
    }

    #[test]
    fn tcp_qmp_socket_with_qemu_boolean_spelling() {
        let ep = parse_qmp("tcp:127.0.0.1:4444,server=on,wait=off").expect("ok");
        assert_eq!(ep, QmpEndpoint::Tcp("127.0.0.1:4444".into()));
    }

    #[test]
    fn client_mode_and_waiting_are_refused_by_name() {
        assert!(matches!(
            parse_qmp("unix:/tmp/q"),
            Err(SettingsError::NotSupported(_))
        ));
        assert!(matches!(
            parse_qmp("unix:/tmp/q,server"),
            Err(SettingsError::NotSupported(_))
        ));
        assert!(parse_qmp("stdio").is_err());
    }

    #[test]
    fn chardev_socket_with_path_is_a_unix_endpoint() {
        let (id, ep) =
            chardev_endpoint("socket,id=mon0,path=/tmp/m.sock,server,nowait").expect("ok");
        assert_eq!(id, "mon0");
        assert_eq!(ep, QmpEndpoint::Unix("/tmp/m.sock".into()));
    }
}
