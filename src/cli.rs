//! The command line as QEMU and StratoVirt users write it, parsed with clap underneath.
//!
//! clap has no single-dash long flags, so every known flag (`-m`, `-kernel`, `--kernel`) is
//! rewritten to `--name=value` before clap sees it; anything unknown stops here with an error
//! that names it.

use clap::{Arg, ArgAction, ArgMatches, Command};

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// A switch: `-nographic`.
    Nothing,
    /// Exactly one value: `-m 512`.
    Value,
    /// An optional value that never starts with `-`: `-D [file]`.
    OptionalValue,
}

/// Every flag Nimbus accepts: name, how it takes a value, repeatable.
const FLAGS: &[(&str, Takes, bool)] = &[
    ("machine", Takes::Value, false),
    ("smp", Takes::Value, false),
    ("m", Takes::Value, false),
    ("mem-prealloc", Takes::Nothing, false),
    ("mem-path", Takes::Value, false),
    ("kernel", Takes::Value, false),
    ("append", Takes::Value, false),
    ("initrd", Takes::Value, false),
    ("drive", Takes::Value, true),
    ("device", Takes::Value, true),
    ("netdev", Takes::Value, true),
    ("object", Takes::Value, true),
    ("chardev", Takes::Value, true),
    ("serial", Takes::Value, false),
    ("qmp", Takes::Value, true),
    ("mon", Takes::Value, true),
    ("D", Takes::OptionalValue, false),
    ("daemonize", Takes::Nothing, false),
    ("pidfile", Takes::Value, false),
    ("disable-seccomp", Takes::Nothing, false),
    ("name", Takes::Value, false),
    ("uuid", Takes::Value, false),
    ("incoming", Takes::Value, false),
    ("version", Takes::Nothing, false),
    ("help", Takes::Nothing, false),
    ("h", Takes::Nothing, false),
    // Accepted for compatibility; they change nothing on this machine.
    ("nodefaults", Takes::Nothing, false),
    ("no-user-config", Takes::Nothing, false),
    ("nographic", Takes::Nothing, false),
    ("no-shutdown", Takes::Nothing, false),
    ("no-reboot", Takes::Nothing, false),
    ("enable-kvm", Takes::Nothing, false),
    ("sandbox", Takes::Value, false),
    ("msg", Takes::Value, false),
    ("rtc", Takes::Value, false),
    ("boot", Takes::Value, false),
    ("overcommit", Takes::Value, false),
    ("realtime", Takes::Value, false),
];

/// A command line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag Nimbus does not know.
    #[error("unknown flag '{0}'")]
    UnknownFlag(String),
    /// A word that is not a flag where a flag was expected.
    #[error("unexpected argument '{0}'")]
    UnexpectedArgument(String),
    /// A flag at the end of the line without its value.
    #[error("flag '-{0}' needs a value")]
    MissingValue(String),
    /// A switch given a value.
    #[error("flag '-{0}' takes no value")]
    UnexpectedValue(String),
    /// clap refused the normalized line.
    #[error("{0}")]
    Parse(String),
}

fn lookup(name: &str) -> Option<(Takes, bool)> {
    FLAGS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, takes, multi)| (*takes, *multi))
}

/// Splits a flag word into its name and an inline `=value` (only for `--name=value`).
fn flag_name(word: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = word.strip_prefix("--") {
        return Some(match rest.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (rest, None),
        });
    }
    word.strip_prefix('-')
        .filter(|rest| !rest.is_empty())
        .map(|rest| (rest, None))
}

/// Rewrites `args` (without the program name) into `--name[=value]` words for clap.
pub fn normalize(args: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::with_capacity(args.len());
    let mut words = args.iter().peekable();
    while let Some(word) = words.next() {
        let (name, inline) =
            flag_name(word).ok_or_else(|| CliError::UnexpectedArgument(word.clone()))?;
        let (takes, _) = lookup(name).ok_or_else(|| CliError::UnknownFlag(word.clone()))?;
        let value = match (takes, inline) {
            (Takes::Nothing, Some(_)) => return Err(CliError::UnexpectedValue(name.to_string())),
            (Takes::Nothing, None) => None,
            (_, Some(value)) => Some(value.to_string()),
            (Takes::Value, None) => Some(
                words
                    .next()
                    .ok_or_else(|| CliError::MissingValue(name.to_string()))?
                    .clone(),
            ),
            (Takes::OptionalValue, None) => words.next_if(|next| !next.starts_with('-')).cloned(),
        };
        out.push(match value {
            Some(value) => format!("--{name}={value}"),
            None => format!("--{name}"),
        });
    }
    Ok(out)
}

fn command() -> Command {
    let mut cmd = Command::new("nimbus")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true);
    for (name, takes, _) in FLAGS {
        let arg = Arg::new(*name).long(*name);
        cmd = cmd.arg(match takes {
            Takes::Nothing => arg.action(ArgAction::Count),
            Takes::Value => arg
                .action(ArgAction::Append)
                .num_args(1)
                .allow_hyphen_values(true),
            Takes::OptionalValue => arg
                .action(ArgAction::Append)
                .num_args(0..=1)
                .default_missing_value(""),
        });
    }
    cmd
}

/// The parsed command line: every flag's values in order, switches counted.
#[derive(Debug)]
pub struct Parsed {
    matches: ArgMatches,
}

impl Parsed {
    /// All values of a repeatable flag, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.matches
            .get_many::<String>(name)
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    }

    /// The last value of a flag (QEMU lets a later flag override an earlier one).
    pub fn last(&self, name: &str) -> Option<String> {
        self.all(name).pop()
    }

    /// Whether a switch was given.
    pub fn has(&self, name: &str) -> bool {
        self.matches.get_count(name) > 0
    }
}

/// Parses `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Parsed, CliError> {
    let words = normalize(args)?;
    let matches = command().try_get_matches_from(words).map_err(|err| {
        let text = err.to_string();
        let first = text.lines().next().unwrap_or("invalid command line");
        CliError::Parse(first.trim_start_matches("error: ").to_string())
    })?;
    Ok(Parsed { matches })
}

/// The text `-help` prints.
pub fn help_text() -> String {
    let mut text = String::from(
        "usage: nimbus -machine microvm -smp N -m SIZE -kernel IMAGE [-initrd FILE] \
         [-append CMDLINE] [-serial stdio|pty|file,path=P|chardev:ID] [-D [LOGFILE]]\n\nflags:\n",
    );
    for (name, takes, multi) in FLAGS {
        let value = match takes {
            Takes::Nothing => "",
            Takes::Value => " <value>",
            Takes::OptionalValue => " [<value>]",
        };
        let repeat = if *multi { " (repeatable)" } else { "" };
        text.push_str(&format!("  -{name}{value}{repeat}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn single_dash_flags_become_long_flags_with_values() {
        let out = normalize(&words("-m 512 -kernel vmlinux -nographic")).expect("ok");
        assert_eq!(out, vec!["--m=512", "--kernel=vmlinux", "--nographic"]);
    }

    #[test]
    fn double_dash_spelling_also_works() {
        let out = normalize(&words("--m=512 --smp 2")).expect("ok");
        assert_eq!(out, vec!["--m=512", "--smp=2"]);
    }

    #[test]
    fn unknown_flag_is_named_as_written() {
        let err = normalize(&words("-m 128 -frobnicate")).expect_err("unknown");
        assert_eq!(err.to_string(), "unknown flag '-frobnicate'");
    }

    #[test]
    fn missing_value_names_the_flag() {
        let err = normalize(&words("-kernel")).expect_err("missing");
        assert_eq!(err.to_string(), "flag '-kernel' needs a value");
    }

    #[test]
    fn optional_log_value_does_not_swallow_the_next_flag() {
        let out = normalize(&words("-D -disable-seccomp -D /tmp/log")).expect("ok");
        assert_eq!(out, vec!["--D", "--disable-seccomp", "--D=/tmp/log"]);
    }

    #[test]
    fn values_starting_with_a_dash_are_kept() {
        let parsed = parse(&["-append".to_string(), "-weird".to_string()]).expect("ok");
        assert_eq!(parsed.last("append").as_deref(), Some("-weird"));
    }

    #[test]
    fn repeated_flags_keep_every_value_in_order() {
        let parsed = parse(&words("-device a -device b -m 1 -m 2")).expect("ok");
        assert_eq!(parsed.all("device"), vec!["a", "b"]);
        assert_eq!(parsed.last("m").as_deref(), Some("2"));
    }

    #[test]
    fn bare_log_flag_has_an_empty_value() {
        let parsed = parse(&words("-D")).expect("ok");
        assert_eq!(parsed.last("D").as_deref(), Some(""));
    }

    #[test]
    fn stray_word_is_refused() {
        let err = normalize(&words("vmlinux")).expect_err("stray");
        assert_eq!(err.to_string(), "unexpected argument 'vmlinux'");
    }

    #[test]
    fn switch_with_value_is_refused() {
        let err = normalize(&words("--nographic=yes")).expect_err("value");
        assert_eq!(err.to_string(), "flag '-nographic' takes no value");
    }
}
