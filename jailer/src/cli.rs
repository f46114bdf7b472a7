//! The jailer's command line:
//! `nimbus-jailer --id ID --exec-file PATH --uid N --gid N [--chroot-base DIR] [--netns PATH]
//! [--cgroup KEY=VALUE]... [--resource-limit NAME=VALUE]... [--daemonize] [--source PATH]...
//! [--keep-fd N]... -- NIMBUS-ARGS...`

use crate::cgroup::CgroupLimit;
use crate::error::JailError;
use clap::{Arg, ArgAction, Command};
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Where jails go when `--chroot-base` is not given (Firecracker's default too).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// RLIMIT_NOFILE when `--resource-limit no-file=` is not given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;
/// The longest `--id` (Firecracker's limit).
const MAX_ID_LEN: usize = 64;

/// Resource limits set on the jailed process (soft = hard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: open descriptors.
    pub no_file: u64,
    /// RLIMIT_FSIZE: the largest file the process may write, in bytes; unlimited when None.
    pub fsize: Option<u64>,
}

/// Everything the command line asks for.
#[derive(Debug)]
pub struct Config {
    pub id: String,
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub cgroups: Vec<CgroupLimit>,
    pub rlimits: Rlimits,
    pub daemonize: bool,
    pub sources: Vec<PathBuf>,
    pub keep_fds: Vec<RawFd>,
    /// The arguments after `--`, handed to nimbus unchanged.
    pub nimbus_args: Vec<OsString>,
}

fn command() -> Command {
    let many = |name: &'static str| Arg::new(name).long(name).action(ArgAction::Append);
    Command::new("nimbus-jailer")
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(Arg::new("id").long("id").required(true))
        .arg(Arg::new("exec-file").long("exec-file").required(true))
        .arg(Arg::new("uid").long("uid").required(true))
        .arg(Arg::new("gid").long("gid").required(true))
        .arg(Arg::new("chroot-base").long("chroot-base"))
        .arg(Arg::new("netns").long("netns"))
        .arg(many("cgroup"))
        .arg(many("resource-limit"))
        .arg(many("source"))
        .arg(many("keep-fd"))
        .arg(
            Arg::new("daemonize")
                .long("daemonize")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("nimbus-args")
                .num_args(0..)
                .last(true)
                .allow_hyphen_values(true)
                .value_parser(clap::value_parser!(OsString)),
        )
}

/// Parses the jailer's arguments (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Config, JailError> {
    let matches = command()
        .try_get_matches_from(std::iter::once(OsString::from("nimbus-jailer")).chain(args))
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad command line");
            JailError::Usage(first.trim_start_matches("error: ").to_string())
        })?;
    let text = |name: &str| matches.get_one::<String>(name).cloned();
    let all = |name: &str| -> Vec<String> {
        matches
            .get_many::<String>(name)
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    };
    let id = text("id").unwrap_or_default();
    check_id(&id)?;
    let number = |flag: &str| -> Result<u32, JailError> {
        let value = text(flag).unwrap_or_default();
        value
            .parse()
            .map_err(|_| JailError::Usage(format!("--{flag} {value:?} is not a number")))
    };
    let keep_fds = all("keep-fd")
        .iter()
        .map(|v| {
            v.parse::<RawFd>()
                .ok()
                .filter(|fd| *fd >= 0)
                .ok_or_else(|| JailError::Usage(format!("--keep-fd {v:?} is not a descriptor")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Config {
        id,
        exec_file: PathBuf::from(text("exec-file").unwrap_or_default()),
        uid: number("uid")?,
        gid: number("gid")?,
        chroot_base: PathBuf::from(text("chroot-base").unwrap_or(DEFAULT_CHROOT_BASE.into())),
        netns: text("netns").map(PathBuf::from),
        cgroups: all("cgroup")
            .iter()
            .map(|a| CgroupLimit::parse(a))
            .collect::<Result<_, _>>()?,
        rlimits: parse_rlimits(&all("resource-limit"))?,
        daemonize: matches.get_flag("daemonize"),
        sources: all("source").into_iter().map(PathBuf::from).collect(),
        keep_fds,
        nimbus_args: matches
            .get_many::<OsString>("nimbus-args")
            .map(|v| v.cloned().collect())
            .unwrap_or_default(),
    })
}

/// An id names a directory and a cgroup: letters, digits and `-`, 1 to 64 of them.
fn check_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(JailError::Usage(format!(
            "--id {id:?} must be 1 to {MAX_ID_LEN} letters, digits or '-'"
        )))
    }
}

/// `no-file=N` and `fsize=N`, as Firecracker's `--resource-limit`.
fn parse_rlimits(args: &[String]) -> Result<Rlimits, JailError> {
    let mut limits = Rlimits {
        no_file: DEFAULT_NO_FILE,
        fsize: None,
    };
    for arg in args {
        let bad = |why: &str| JailError::RlimitArg {
            arg: arg.clone(),
            why: why.into(),
        };
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=VALUE"))?;
        let value: u64 = value
            .parse()
            .map_err(|_| bad("the value is not a number"))?;
        match name {
            "no-file" => limits.no_file = value,
            "fsize" => limits.fsize = Some(value),
            _ => return Err(bad("known limits are no-file and fsize")),
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    const BASE: [&str; 8] = [
        "--id",
        "vm1",
        "--exec-file",
        "/bin/nimbus",
        "--uid",
        "65534",
        "--gid",
        "65534",
    ];

    #[test]
    fn nimbus_args_after_the_separator_pass_unchanged() {
        let mut list = BASE.to_vec();
        list.extend([
            "--source",
            "/k",
            "--keep-fd",
            "3",
            "--",
            "-m",
            "128",
            "--id",
            "x",
        ]);
        let config = parse(args(&list)).expect("parses");
        assert_eq!(config.id, "vm1");
        assert_eq!(config.uid, 65534);
        assert_eq!(config.chroot_base, PathBuf::from(DEFAULT_CHROOT_BASE));
        assert_eq!(config.sources, vec![PathBuf::from("/k")]);
        assert_eq!(config.keep_fds, vec![3]);
        assert_eq!(config.nimbus_args, args(&["-m", "128", "--id", "x"]));
        assert_eq!(config.rlimits.no_file, DEFAULT_NO_FILE);
    }

    #[test]
    fn ids_that_could_leave_the_chroot_base_are_refused() {
        for id in ["../x", "", "a/b", "."] {
            let mut list = BASE.to_vec();
            list[1] = id;
            assert!(parse(args(&list)).is_err(), "{id:?}");
        }
    }

    #[test]
    fn resource_limits_parse_and_unknown_ones_fail() {
        let mut list = BASE.to_vec();
        list.extend([
            "--resource-limit",
            "no-file=64",
            "--resource-limit",
            "fsize=1024",
        ]);
        let config = parse(args(&list)).expect("parses");
        assert_eq!(
            config.rlimits,
            Rlimits {
                no_file: 64,
                fsize: Some(1024)
            }
        );
        let mut list = BASE.to_vec();
        list.extend(["--resource-limit", "cores=1"]);
        assert!(parse(args(&list)).is_err());
    }

    #[test]
    fn a_missing_required_flag_is_a_usage_error() {
        let err = parse(args(&["--id", "vm1"])).expect_err("fails");
        assert!(matches!(err, JailError::Usage(_)), "{err:?}");
    }
}
