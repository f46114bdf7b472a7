//! The guest's memory statistics (the stats queue), as QEMU shows them in its `guest-stats`
//! property: every name, -1 for what the guest did not report, and the host time of the last
//! update.

use serde::Serialize;
use std::collections::BTreeMap;

/// QEMU's names of the statistics, indexed by the virtio tag.
pub const STAT_NAMES: [&str; 10] = [
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
    "stat-htlb-pgalloc",
    "stat-htlb-pgfail",
];

/// Bytes of one entry: le16 tag, le64 value.
pub const STAT_ENTRY: usize = 10;
/// Most entries read from one stats buffer.
pub const MAX_STAT_ENTRIES: usize = 64;

/// The answer to `qom-get` of `guest-stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestStats {
    /// Each statistic by name; -1 when the guest did not report it.
    pub stats: BTreeMap<&'static str, i64>,
    /// Host time (seconds since the epoch) of the last update; 0 before the first.
    #[serde(rename = "last-update")]
    pub last_update: u64,
}

/// The last statistics the guest sent.
#[derive(Debug, Clone)]
pub struct Stats {
    values: [i64; STAT_NAMES.len()],
    last_update: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            values: [-1; STAT_NAMES.len()],
            last_update: 0,
        }
    }
}

impl Stats {
    /// Takes in a stats buffer's bytes (whole entries only; unknown tags are skipped), stamped
    /// with `now` (seconds since the epoch).
    pub fn update(&mut self, bytes: &[u8], now: u64) {
        for entry in bytes.chunks_exact(STAT_ENTRY).take(MAX_STAT_ENTRIES) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[2..10]);
            if let Some(slot) = self.values.get_mut(usize::from(tag)) {
                *slot = i64::try_from(u64::from_le_bytes(value)).unwrap_or(i64::MAX);
            }
        }
        self.last_update = now;
    }

    /// QEMU's `guest-stats` shape.
    pub fn guest_stats(&self) -> GuestStats {
        GuestStats {
            stats: STAT_NAMES.iter().copied().zip(self.values).collect(),
            last_update: self.last_update,
        }
    }
}
