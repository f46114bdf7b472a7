//! Log lines with a timestamp and the thread name, written by `env_logger` to stderr or to the
//! file given with `-D`. The `NIMBUS_LOG` environment variable sets the level (error, warn,
//! info, debug, trace; default warn) or, in env_logger's syntax, levels per module
//! (`machine=debug`, `info,virtio=trace`); modules it does not name stay at warn.

use crate::settings::LogTarget;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that sets the log level.
pub const LEVEL_VAR: &str = "NIMBUS_LOG";

/// The `-D` file cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path:?}")]
pub struct LogFileError {
    /// The file given with `-D`.
    path: PathBuf,
    /// Why.
    #[source]
    source: io::Error,
}

/// A logger builder: warn for every module, then the directives of `spec` (NIMBUS_LOG).
fn builder(spec: Option<&str>) -> env_logger::Builder {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Warn)
        .format(write_line);
    if let Some(spec) = spec {
        builder.parse_filters(spec);
    }
    builder
}

/// `[<secs>.<micros> <LEVEL> <thread>] message`.
/// The main thread's id, taken when the logger is installed (on the main thread).
static MAIN_THREAD: std::sync::OnceLock<std::thread::ThreadId> = std::sync::OnceLock::new();

/// The thread's name; "main" for the main thread, which has none because Nimbus starts without
/// Rust's runtime start (`#![no_main]`, src/main.rs).
fn thread_name(thread: &std::thread::Thread) -> &str {
    match thread.name() {
        Some(name) => name,
        None if MAIN_THREAD.get() == Some(&thread.id()) => "main",
        None => "?",
    }
}

fn write_line(out: &mut env_logger::fmt::Formatter, record: &log::Record) -> io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let thread = std::thread::current();
    writeln!(
        out,
        "[{}.{:06} {:<5} {}] {}",
        now.as_secs(),
        now.subsec_micros(),
        record.level(),
        thread_name(&thread),
        record.args()
    )
}

/// Installs the logger writing to `target`; a `-D` file is also where a seccomp violation is
/// reported.
pub fn init(target: &LogTarget) -> Result<(), LogFileError> {
    let _ = MAIN_THREAD.set(std::thread::current().id());
    let target = match target {
        LogTarget::Stderr => env_logger::Target::Stderr,
        LogTarget::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LogFileError {
                    path: path.clone(),
                    source,
                })?;
            // The logger keeps the file open until the process ends.
            machine::seccomp_also_report_to(file.as_raw_fd());
            env_logger::Target::Pipe(Box::new(file))
        }
    };
    let spec = std::env::var(LEVEL_VAR).ok();
    // Only fails if a logger is already installed, and this is the only place that installs one.
    let _ = builder(spec.as_deref()).target(target).try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::{Level, LevelFilter, Log, Metadata};
    use std::sync::{Arc, Mutex};

    fn enabled(logger: &env_logger::Logger, level: Level, target: &str) -> bool {
        logger.enabled(&Metadata::builder().level(level).target(target).build())
    }

    #[test]
    fn level_defaults_to_warn_and_parses_names() {
        assert_eq!(builder(None).build().filter(), LevelFilter::Warn);
        assert_eq!(builder(Some("debug")).build().filter(), LevelFilter::Debug);
        assert_eq!(builder(Some(" INFO ")).build().filter(), LevelFilter::Info);
    }

    #[test]
    fn unknown_word_leaves_other_modules_at_warn() {
        let logger = builder(Some("loud")).build();
        assert!(enabled(&logger, Level::Warn, "nimbus"));
        assert!(!enabled(&logger, Level::Info, "nimbus"));
    }

    #[test]
    fn module_directives_raise_only_that_module() {
        let logger = builder(Some("machine=debug")).build();
        assert!(enabled(&logger, Level::Debug, "machine::vcpu"));
        assert!(!enabled(&logger, Level::Info, "virtio::net"));
        assert!(enabled(&logger, Level::Warn, "virtio::net"));
    }

    /// A `Write` whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn line_has_timestamp_level_thread_and_message() {
        let out = Shared::default();
        let logger = builder(None)
            .target(env_logger::Target::Pipe(Box::new(out.clone())))
            .build();
        let thread = std::thread::Builder::new().name("vcpu0".into());
        let handle = thread.spawn(move || {
            logger.log(
                &log::Record::builder()
                    .level(Level::Warn)
                    .target("machine")
                    .args(format_args!("triple fault"))
                    .build(),
            )
        });
        handle.expect("spawn").join().expect("join");
        let text = String::from_utf8(out.0.lock().expect("not poisoned").clone()).expect("utf8");
        let (stamp, rest) = text
            .strip_prefix('[')
            .and_then(|t| t.split_once(' '))
            .expect("a stamp");
        let (secs, micros) = stamp.split_once('.').expect("secs.micros");
        assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{text}");
        assert_eq!(rest, "WARN  vcpu0] triple fault\n");
    }
}
