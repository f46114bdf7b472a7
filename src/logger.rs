//! Log lines with a timestamp and the thread name, to stderr or a file (`-D`), at the level in
//! the `NIMBUS_LOG` environment variable (error, warn, info, debug, trace; default warn).

use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that sets the log level.
pub const LEVEL_VAR: &str = "NIMBUS_LOG";

struct Logger {
    level: log::LevelFilter,
    out: Mutex<Box<dyn Write + Send>>,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let thread = std::thread::current();
        let line = format!(
            "[{}.{:06} {:<5} {}] {}\n",
            now.as_secs(),
            now.subsec_micros(),
            record.level(),
            thread.name().unwrap_or("?"),
            record.args()
        );
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A log line that cannot be written has nowhere else to go.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

/// The level named by `value`, or warn.
pub fn level_from(value: Option<&str>) -> log::LevelFilter {
    value
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(log::LevelFilter::Warn)
}

/// Installs the logger writing to `out`.
pub fn init(out: Box<dyn Write + Send>) {
    let level = level_from(std::env::var(LEVEL_VAR).ok().as_deref());
    let logger = Logger {
        level,
        out: Mutex::new(out),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_defaults_to_warn_and_parses_names() {
        assert_eq!(level_from(None), log::LevelFilter::Warn);
        assert_eq!(level_from(Some("debug")), log::LevelFilter::Debug);
        assert_eq!(level_from(Some("INFO")), log::LevelFilter::Info);
        assert_eq!(level_from(Some("loud")), log::LevelFilter::Warn);
    }
}
