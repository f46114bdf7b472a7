//! What block and net hot-plug share. virtio-mmio has no hot-plug signalling, so, as StratoVirt
//! does, a machine with a monitor gets replaceable devices ("slots") at boot, and QMP puts
//! backends behind them and takes them back: `block_slots.rs` for disks, `net_slots.rs` for
//! taps. This file has the slot table both use, the `device_add` id and address rules, and
//! the `DEVICE_DELETED` event. Errors are worded as QEMU words them.

use qmp::schema::{DeviceAddArgs, DeviceDeletedInfo};
use qmp::{Event, QmpError};
use std::ops::{Deref, DerefMut};
use virtio::VirtioDevice;

/// A device to place, with a description for the log.
pub type Labelled = (String, Box<dyn VirtioDevice>);

/// One replaceable device.
pub struct Slot<D> {
    /// The device (a handle to it) that stays in place for the VM's life.
    pub device: D,
    /// The device id QMP knows it by and the backend behind it, while one is attached.
    pub occupant: Option<(String, String)>,
}

/// The slots of one kind, indexed by the slot number `device_add` takes as `addr`.
pub struct SlotTable<D> {
    slots: Vec<Slot<D>>,
}

impl<D> Default for SlotTable<D> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<D> Deref for SlotTable<D> {
    type Target = [Slot<D>];

    fn deref(&self) -> &[Slot<D>] {
        &self.slots
    }
}

impl<D> DerefMut for SlotTable<D> {
    fn deref_mut(&mut self) -> &mut [Slot<D>] {
        &mut self.slots
    }
}

impl<D> SlotTable<D> {
    /// Adds the next slot, holding `occupant` (device id, backend) if it is filled at boot.
    pub fn push(&mut self, device: D, occupant: Option<(String, String)>) {
        self.slots.push(Slot { device, occupant });
    }

    /// The slot holding device `id`.
    pub fn slot_of(&self, id: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.occupant.as_ref().is_some_and(|(d, _)| d == id))
    }

    /// Whether one of these slots holds device `id`.
    pub fn has_device(&self, id: &str) -> bool {
        self.slot_of(id).is_some()
    }

    /// The slot `addr` names, or the first free one when there is no `addr`; it must exist
    /// and be free. `kind` (`"Block"`, `"Net"`) words the errors.
    pub fn pick(&self, kind: &str, id: &str, addr: Option<&str>) -> Result<usize, QmpError> {
        let lower = kind.to_lowercase();
        let Some(addr) = addr else {
            return self
                .slots
                .iter()
                .position(|s| s.occupant.is_none())
                .ok_or_else(|| {
                    QmpError::generic(format!(
                        "No free {lower} slot for '{id}': all {} are in use",
                        self.slots.len()
                    ))
                });
        };
        let index = parse_addr(addr).ok_or_else(|| {
            QmpError::generic(format!(
                "Property 'addr' doesn't take value '{addr}' (expected a slot number such as 0x1)"
            ))
        })?;
        match self.slots.get(index).map(|s| &s.occupant) {
            None => Err(QmpError::generic(format!(
                "{kind} slot {index:#x} does not exist: the machine has {} {lower} slots",
                self.slots.len()
            ))),
            Some(Some((other, _))) => Err(QmpError::generic(format!(
                "{kind} slot {index:#x} not available for {id}, in use by {other}"
            ))),
            Some(None) => Ok(index),
        }
    }

    /// Empties the slot holding device `id` and returns its number and backend.
    pub fn vacate(&mut self, id: &str) -> Option<(usize, String)> {
        let index = self.slot_of(id)?;
        let (_, backend) = self.slots[index].occupant.take()?;
        Some((index, backend))
    }
}

/// The `id` of a `device_add`: it is required (`device_del` needs it) and must not be `in_use`.
pub fn new_device_id(
    args: &DeviceAddArgs,
    in_use: impl Fn(&str) -> bool,
) -> Result<String, QmpError> {
    let id = args.id.clone().ok_or_else(|| {
        QmpError::generic("Parameter 'id' is missing (device_del needs it to unplug)")
    })?;
    if in_use(&id) {
        return Err(duplicate_device_id(&id));
    }
    Ok(id)
}

/// QEMU's error for a `device_add` whose id another device has.
pub fn duplicate_device_id(id: &str) -> QmpError {
    QmpError::generic(format!("Duplicate ID '{id}' for device"))
}

/// The `DEVICE_DELETED` event of device `id` (on virtio-mmio its path is its id).
pub fn device_deleted(id: &str) -> Event {
    Event::DeviceDeleted(DeviceDeletedInfo {
        device: Some(id.to_owned()),
        path: id.to_owned(),
    })
}

/// `"0x1"`, `"0X1"` or `"1"` (hex, as QEMU reads a device address).
fn parse_addr(addr: &str) -> Option<usize> {
    let digits = addr
        .strip_prefix("0x")
        .or_else(|| addr.strip_prefix("0X"))
        .unwrap_or(addr);
    usize::from_str_radix(digits, 16).ok()
}

/// The system's text for an error, without Rust's " (os error N)".
pub fn os_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(occupants: &[Option<&str>]) -> SlotTable<()> {
        let mut table = SlotTable::default();
        for o in occupants {
            table.push((), o.map(|id| (id.to_owned(), format!("{id}-backend"))));
        }
        table
    }

    #[test]
    fn addresses_are_hex_with_or_without_a_prefix() {
        assert_eq!(parse_addr("0x1"), Some(1));
        assert_eq!(parse_addr("0XA"), Some(10));
        assert_eq!(parse_addr("b"), Some(11));
        assert_eq!(parse_addr("0xg"), None);
    }

    #[test]
    fn without_an_address_the_first_free_slot_is_picked() {
        let t = table(&[Some("a"), None, None]);
        assert_eq!(t.pick("Block", "x", None).expect("free"), 1);
        let full = table(&[Some("a")]);
        let err = full.pick("Net", "x", None).expect_err("full");
        assert!(
            err.desc.contains("No free net slot for 'x': all 1"),
            "{}",
            err.desc
        );
    }

    #[test]
    fn an_address_must_name_an_existing_free_slot() {
        let t = table(&[Some("a"), None]);
        assert_eq!(t.pick("Block", "x", Some("0x1")).expect("free"), 1);
        let used = t.pick("Block", "x", Some("0")).expect_err("used");
        assert!(used.desc.contains("in use by a"), "{}", used.desc);
        let missing = t.pick("Block", "x", Some("0x5")).expect_err("missing");
        assert!(missing.desc.contains("does not exist"), "{}", missing.desc);
    }

    #[test]
    fn vacating_a_device_frees_its_slot_and_returns_its_backend() {
        let mut t = table(&[None, Some("b")]);
        assert!(t.has_device("b"));
        assert_eq!(t.vacate("b"), Some((1, "b-backend".to_owned())));
        assert!(!t.has_device("b"));
        assert_eq!(t.vacate("b"), None);
    }
}
