//! Helpers shared by the unit tests of this crate.

use std::sync::{Arc, Mutex};

use crate::flat_view::FlatView;
use crate::region::{IoHandler, Region, SharedIo};

/// One access seen by a [`Recorder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read { offset: u64, len: usize },
    Write { offset: u64, data: Vec<u8> },
}

/// A device that records its accesses and reads back `tag + offset` for each byte.
pub(crate) struct Recorder {
    pub(crate) tag: u8,
    pub(crate) accesses: Vec<Access>,
}

impl IoHandler for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.accesses.push(Access::Read {
            offset,
            len: data.len(),
        });
        for (at, byte) in (offset..).zip(data.iter_mut()) {
            *byte = self.tag.wrapping_add(at as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.accesses.push(Access::Write {
            offset,
            data: data.to_vec(),
        });
    }
}

/// A new recorder with `tag`.
pub(crate) fn recorder(tag: u8) -> Arc<Mutex<Recorder>> {
    Arc::new(Mutex::new(Recorder {
        tag,
        accesses: Vec::new(),
    }))
}

/// The accesses `recorder` has seen.
pub(crate) fn accesses(recorder: &Arc<Mutex<Recorder>>) -> Vec<Access> {
    recorder.lock().expect("recorder lock").accesses.clone()
}

/// An I/O region over a fresh recorder.
pub(crate) fn device(name: &str, size: u64) -> Region {
    let handler: SharedIo = recorder(0);
    Region::io(name, size, handler)
}

/// A RAM region that must map.
pub(crate) fn ram(name: &str, size: u64) -> Region {
    Region::ram(name, size).expect("map test RAM")
}

/// The view as `(base, size, leaf name, leaf offset)` tuples.
pub(crate) fn layout(view: &FlatView) -> Vec<(u64, u64, String, u64)> {
    view.ranges()
        .iter()
        .map(|r| (r.base, r.size, r.name.clone(), r.target.offset()))
        .collect()
}

/// The line starting with `field` (`"Rss:"`, `"VmFlags:"`, ...) of the `/proc/self/smaps` entry
/// of the mapping that holds `addr`.
pub(crate) fn smaps_line(addr: u64, field: &str) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
        }
        if inside && line.starts_with(field) {
            return line.to_string();
        }
    }
    panic!("mapping at {addr:#x} not found");
}
