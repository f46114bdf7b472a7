//! Asynchronous events and their data.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// An event the VM reports to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Event {
    /// The VM is shutting down.
    Shutdown(ShutdownInfo),
    /// The VM was reset.
    Reset(ShutdownInfo),
    /// The vCPUs stopped.
    Stop,
    /// The vCPUs resumed.
    Resume,
    /// The guest was asked to power down.
    Powerdown,
    /// A device was removed and its slot is free.
    DeviceDeleted(DeviceDeletedInfo),
    /// The balloon reached a new size.
    BalloonChanged(BalloonChangedInfo),
}

/// The names of all events, as `query-events` lists them.
pub const EVENT_NAMES: &[&str] = &[
    "SHUTDOWN",
    "RESET",
    "STOP",
    "RESUME",
    "POWERDOWN",
    "DEVICE_DELETED",
    "BALLOON_CHANGED",
];

impl Event {
    /// The event name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Shutdown(_) => "SHUTDOWN",
            Event::Reset(_) => "RESET",
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
            Event::Powerdown => "POWERDOWN",
            Event::DeviceDeleted(_) => "DEVICE_DELETED",
            Event::BalloonChanged(_) => "BALLOON_CHANGED",
        }
    }
}

/// Data of `SHUTDOWN` and `RESET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownInfo {
    /// Whether the guest asked for it.
    pub guest: bool,
    /// Why.
    pub reason: ShutdownCause,
}

/// QAPI `ShutdownCause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownCause {
    /// No shutdown or reset.
    None,
    /// An error prevents further use of the guest.
    HostError,
    /// The `quit` command.
    HostQmpQuit,
    /// The `system_reset` command.
    HostQmpSystemReset,
    /// A signal such as SIGTERM.
    HostSignal,
    /// A user interface action.
    HostUi,
    /// The guest powered off.
    GuestShutdown,
    /// The guest rebooted.
    GuestReset,
    /// The guest panicked.
    GuestPanic,
    /// A partial reset of a subsystem.
    SubsystemReset,
}

/// Data of `DEVICE_DELETED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDeletedInfo {
    /// The device id, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The device path.
    pub path: String,
}

/// Data of `BALLOON_CHANGED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonChangedInfo {
    /// Guest memory size in bytes.
    pub actual: i64,
}

/// When an event happened, as seconds and microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

impl From<SystemTime> for Timestamp {
    /// Times before the epoch are clamped to it.
    fn from(time: SystemTime) -> Timestamp {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            microseconds: i64::from(since.subsec_micros()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn event_without_data_has_only_its_name() {
        assert_eq!(
            serde_json::to_value(Event::Stop).expect("serialises"),
            json!({"event": "STOP"})
        );
    }

    #[test]
    fn event_names_match_the_serialised_tag() {
        let events = [
            Event::Shutdown(ShutdownInfo {
                guest: true,
                reason: ShutdownCause::GuestShutdown,
            }),
            Event::Reset(ShutdownInfo {
                guest: false,
                reason: ShutdownCause::HostQmpSystemReset,
            }),
            Event::Stop,
            Event::Resume,
            Event::Powerdown,
            Event::DeviceDeleted(DeviceDeletedInfo {
                device: None,
                path: "p".to_owned(),
            }),
            Event::BalloonChanged(BalloonChangedInfo { actual: 1 }),
        ];
        for (event, name) in events.iter().zip(EVENT_NAMES) {
            let value = serde_json::to_value(event).expect("serialises");
            assert_eq!(value["event"], json!(name));
            assert_eq!(event.name(), *name);
        }
    }

    #[test]
    fn timestamp_splits_seconds_and_microseconds() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(
            Timestamp::from(time),
            Timestamp {
                seconds: 1_700_000_000,
                microseconds: 123_456
            }
        );
    }
}
