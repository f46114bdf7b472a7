//! The pages in the balloon, what inflating, deflating and reporting does with them, and the
//! counters of what the guest named that was ignored.

use address_space::{RamDiscard, DISCARD_PAGE};

/// Gives guest RAM back to the host; [`RamDiscard`] in the VMM, a recorder in tests.
pub trait Discard: Send + Sync {
    /// Whether `[gpa, gpa + len)` is page aligned and wholly inside one RAM range.
    fn is_ram(&self, gpa: u64, len: u64) -> bool;
    /// Releases the host memory of a range [`Discard::is_ram`] accepted.
    fn discard(&self, gpa: u64, len: u64) -> Result<(), String>;
    /// The end of the highest RAM range.
    fn ram_end(&self) -> u64;
}

impl Discard for RamDiscard {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        RamDiscard::is_ram(self, gpa, len)
    }

    fn discard(&self, gpa: u64, len: u64) -> Result<(), String> {
        RamDiscard::discard(self, gpa, len)
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
                )
            })
    }

    fn ram_end(&self) -> u64 {
        self.end()
    }
}

/// What the device did and what it ignored, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BalloonCounters {
    /// Pages put in the balloon (and given back to the host).
    pub inflated_pages: u64,
    /// Pages taken out of the balloon.
    pub deflated_pages: u64,
    /// Bytes the guest reported free (and given back to the host).
    pub reported_bytes: u64,
    /// Pages named that are not guest RAM (never touched).
    pub ignored_outside_ram: u64,
    /// Pages inflated while already in the balloon.
    pub ignored_repeated: u64,
    /// Pages deflated that were not in the balloon.
    pub ignored_not_inflated: u64,
    /// Requests dropped whole (bad buffers, odd lengths, too long).
    pub dropped_requests: u64,
    /// Discards the kernel refused.
    pub discard_errors: u64,
}

impl BalloonCounters {
    /// Pages and requests ignored, all kinds together.
    pub fn ignored(&self) -> u64 {
        self.ignored_outside_ram
            + self.ignored_repeated
            + self.ignored_not_inflated
            + self.dropped_requests
    }
}

/// One bit per 4 KiB page of guest-physical memory below the end of RAM: set while the page
/// is in the balloon.
#[derive(Debug, Default)]
pub struct Inflated {
    bits: Vec<u64>,
}

impl Inflated {
    /// A map for guest-physical memory up to `end`.
    pub fn new(end: u64) -> Inflated {
        let pages = end.div_ceil(DISCARD_PAGE);
        Inflated {
            bits: vec![0; usize::try_from(pages.div_ceil(64)).unwrap_or(0)],
        }
    }

    /// Sets page `pfn`'s bit; false if it was set already (or is past the end).
    fn insert(&mut self, pfn: u64) -> bool {
        let Some(word) = self.bits.get_mut((pfn / 64) as usize) else {
            return false;
        };
        let mask = 1 << (pfn % 64);
        let was = *word & mask != 0;
        *word |= mask;
        !was
    }

    /// Clears page `pfn`'s bit; false if it was not set.
    fn remove(&mut self, pfn: u64) -> bool {
        let Some(word) = self.bits.get_mut((pfn / 64) as usize) else {
            return false;
        };
        let mask = 1 << (pfn % 64);
        let was = *word & mask != 0;
        *word &= !mask;
        was
    }

    /// Pages in the balloon.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Empties the balloon (device reset: the guest forgot its pages).
    pub fn clear(&mut self) {
        self.bits.fill(0);
    }
}

/// Puts the pages `pfns` in the balloon and releases them, contiguous runs in one call.
/// Pages outside RAM and pages already inflated are only counted.
pub fn inflate(
    pfns: &[u32],
    map: &mut Inflated,
    ram: &dyn Discard,
    counters: &mut BalloonCounters,
) {
    let mut run: Option<(u64, u64)> = None;
    for &pfn in pfns {
        let pfn = u64::from(pfn);
        let gpa = pfn * DISCARD_PAGE;
        if !ram.is_ram(gpa, DISCARD_PAGE) {
            counters.ignored_outside_ram += 1;
            continue;
        }
        if !map.insert(pfn) {
            counters.ignored_repeated += 1;
            continue;
        }
        counters.inflated_pages += 1;
        run = match run {
            Some((start, len)) if start + len == gpa && ram.is_ram(start, len + DISCARD_PAGE) => {
                Some((start, len + DISCARD_PAGE))
            }
            Some((start, len)) => {
                release(ram, start, len, counters);
                Some((gpa, DISCARD_PAGE))
            }
            None => Some((gpa, DISCARD_PAGE)),
        };
    }
    if let Some((start, len)) = run {
        release(ram, start, len, counters);
    }
}

/// Takes the pages `pfns` out of the balloon: nothing to do for memory (a page comes back
/// when the guest touches it); pages not in the balloon are only counted.
pub fn deflate(pfns: &[u32], map: &mut Inflated, counters: &mut BalloonCounters) {
    for &pfn in pfns {
        if map.remove(u64::from(pfn)) {
            counters.deflated_pages += 1;
        } else {
            counters.ignored_not_inflated += 1;
        }
    }
}

/// Releases a range the guest reported free; outside RAM (or unaligned), it is only counted.
pub fn report(gpa: u64, len: u64, ram: &dyn Discard, counters: &mut BalloonCounters) {
    if !ram.is_ram(gpa, len) {
        counters.ignored_outside_ram += len.div_ceil(DISCARD_PAGE).max(1);
        return;
    }
    counters.reported_bytes += len;
    release(ram, gpa, len, counters);
}

fn release(ram: &dyn Discard, gpa: u64, len: u64, counters: &mut BalloonCounters) {
    if let Err(err) = ram.discard(gpa, len) {
        counters.discard_errors += 1;
        log::warn!("virtio-balloon: {err}");
    }
}
