//! The jailer's error type. Every variant names the step that failed and, where there is one,
//! the path it acted on; the cause is the `#[source]`. `main` prints the whole chain on one
//! line (`nimbus-jailer: cannot create device node /srv/jailer/vm1/root/dev/kvm: <cause>`).

use std::io;
use std::path::PathBuf;

/// Why the jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The command line is wrong (a missing or repeated flag, a value that does not parse).
    #[error("{0}")]
    Usage(String),
    /// A `--cgroup key=value` the jailer does not know or cannot parse.
    #[error("bad --cgroup {arg:?}: {why}")]
    CgroupArg { arg: String, why: String },
    /// A `--resource-limit name=value` the jailer does not know or cannot parse.
    #[error("bad --resource-limit {arg:?}: {why}")]
    RlimitArg { arg: String, why: String },
    /// The jail directory exists already: another VM with this id, or a stale jail.
    #[error("jail {path} already exists")]
    JailExists { path: PathBuf },
    /// A file-system step on `path` failed.
    #[error("cannot {step} {path}")]
    Path {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A step that acts on the process (namespaces, identity, limits) failed.
    #[error("cannot {step}")]
    Process {
        step: String,
        #[source]
        source: io::Error,
    },
}

impl JailError {
    /// A failed file-system `step` on `path`.
    pub fn path(step: &'static str, path: impl Into<PathBuf>, source: io::Error) -> JailError {
        JailError::Path {
            step,
            path: path.into(),
            source,
        }
    }

    /// A failed process `step`, the cause taken from `errno`.
    pub fn last_os(step: impl Into<String>) -> JailError {
        JailError::Process {
            step: step.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// The error and its causes as one line, without the program name.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            line.push_str(": ");
            line.push_str(&err.to_string());
            cause = err.source();
        }
        line.replace('\n', " ")
    }
}

/// Turns a libc return value into a `JailError::Process` naming `step` when it is -1.
pub fn check(rc: libc::c_int, step: impl FnOnce() -> String) -> Result<libc::c_int, JailError> {
    if rc == -1 {
        Err(JailError::last_os(step()))
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_names_step_path_and_cause() {
        let err = JailError::path(
            "create device node",
            "/srv/jailer/vm1/root/dev/kvm",
            io::Error::from_raw_os_error(libc::EEXIST),
        );
        let line = err.one_line();
        assert!(
            line.starts_with("cannot create device node /srv/jailer/vm1/root/dev/kvm: "),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
