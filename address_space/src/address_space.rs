//! An address space: a root region, its current flat view, its listeners and access dispatch.

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use vm_memory::GuestMemoryMmap;

use crate::error::AddressSpaceError;
use crate::flat_view::{FlatRange, FlatTarget, FlatView};
use crate::guest_memory;
use crate::listener::{replay, Listener, ViewDiff};
use crate::region::{lock, Region};

/// Size of the x86 port I/O space.
pub const IO_SPACE_SIZE: u64 = 0x1_0000;

/// Which bus an address space models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceKind {
    /// System memory: RAM and MMIO.
    Memory,
    /// Port I/O: at most 64 KiB, no RAM.
    Io,
}

/// The view and the guest memory built from it, swapped together on commit.
#[derive(Clone)]
struct Snapshot {
    view: Arc<FlatView>,
    memory: Arc<GuestMemoryMmap>,
}

/// A guest address space; share it between vCPU threads through an `Arc`.
pub struct AddressSpace {
    kind: SpaceKind,
    root: Region,
    current: RwLock<Snapshot>,
    listeners: Mutex<Vec<Box<dyn Listener>>>,
}

impl AddressSpace {
    /// An address space over the container `root`, rendered once.
    pub fn new(kind: SpaceKind, root: Region) -> Result<AddressSpace, AddressSpaceError> {
        if !root.is_container() {
            return Err(AddressSpaceError::NotAContainer {
                name: root.name().to_owned(),
            });
        }
        if kind == SpaceKind::Io && root.size() > IO_SPACE_SIZE {
            return Err(AddressSpaceError::IoSpaceTooLarge {
                name: root.name().to_owned(),
                size: root.size(),
            });
        }
        let current = RwLock::new(render(kind, &root)?);
        Ok(AddressSpace {
            kind,
            root,
            current,
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// Which bus this space models.
    pub fn kind(&self) -> SpaceKind {
        self.kind
    }

    /// The root container; change the tree through it, then `commit()`.
    pub fn root(&self) -> &Region {
        &self.root
    }

    /// Adds a listener, which is first told about every range of the current view.
    ///
    /// If it refuses one, the ranges it accepted are taken back and it is not added.
    pub fn register_listener(
        &self,
        mut listener: Box<dyn Listener>,
    ) -> Result<(), AddressSpaceError> {
        let mut listeners = lock(&self.listeners);
        replay(listener.as_mut(), &self.flat_view())?;
        listeners.push(listener);
        Ok(())
    }

    /// Re-renders the tree, switches to the new view and tells listeners what changed.
    ///
    /// Listeners hear of every removed range before any added one; ranges identical in both
    /// views are not reported. If rendering fails the old view stays. If a listener fails, the
    /// new view is already in place and the remaining notifications are skipped: the listener
    /// is out of step, which a VM should treat as fatal.
    pub fn commit(&self) -> Result<(), AddressSpaceError> {
        let mut listeners = lock(&self.listeners);
        let new = render(self.kind, &self.root)?;
        let old = std::mem::replace(&mut *self.write_current(), new.clone());
        ViewDiff::between(&old.view, &new.view).notify(&mut listeners)?;
        Ok(())
    }

    /// The current flat view.
    pub fn flat_view(&self) -> Arc<FlatView> {
        Arc::clone(&self.read_current().view)
    }

    /// A `GuestMemoryMmap` of every RAM range of the current view, at the view's addresses.
    ///
    /// Rebuilt on commit; RAM ranges that do not start on a page boundary of their block are
    /// cut to start at the next one (see the crate documentation).
    pub fn memory(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&self.read_current().memory)
    }

    /// Reads `data.len()` bytes at `addr`, split over the ranges they fall in.
    ///
    /// Unmapped bytes read as 0xff; returns false if any byte was unmapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let view = self.flat_view();
        let mut mapped = true;
        for_each_piece(&view, addr, data.len(), |range, at, span| {
            let bytes = &mut data[span];
            match range {
                Some(range) => read_range(range, at, bytes),
                None => {
                    bytes.fill(0xff);
                    mapped = false;
                }
            }
        });
        mapped
    }

    /// Writes `data` at `addr`, split over the ranges it falls in.
    ///
    /// Bytes to unmapped addresses are dropped; returns false if any byte was unmapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let view = self.flat_view();
        let mut mapped = true;
        for_each_piece(&view, addr, data.len(), |range, at, span| match range {
            Some(range) => write_range(range, at, &data[span]),
            None => mapped = false,
        });
        mapped
    }

    fn read_current(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        crate::sync::read(&self.current)
    }

    fn write_current(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        crate::sync::write(&self.current)
    }
}

impl fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSpace")
            .field("kind", &self.kind)
            .field("root", &self.root)
            .field("view", &self.flat_view())
            .finish_non_exhaustive()
    }
}

/// Renders `root` and builds its guest memory, checking what `kind` allows.
fn render(kind: SpaceKind, root: &Region) -> Result<Snapshot, AddressSpaceError> {
    let view = FlatView::render(root);
    if kind == SpaceKind::Io {
        let ram = view
            .ranges()
            .iter()
            .find(|range| matches!(range.target, FlatTarget::Ram { .. }));
        if let Some(range) = ram {
            return Err(AddressSpaceError::RamInIoSpace {
                name: range.name.clone(),
                base: range.base,
            });
        }
    }
    let memory = guest_memory::build(&view)?;
    Ok(Snapshot {
        view: Arc::new(view),
        memory: Arc::new(memory),
    })
}

/// Splits the access `[addr, addr + len)` at range boundaries and calls `each` with the range
/// (or `None` for a hole), the piece's first address and its span inside the access buffer.
fn for_each_piece(
    view: &FlatView,
    addr: u64,
    len: usize,
    mut each: impl FnMut(Option<&FlatRange>, u64, std::ops::Range<usize>),
) {
    let mut done = 0;
    while done < len {
        let left = len - done;
        let Some(at) = u64::try_from(done).ok().and_then(|d| addr.checked_add(d)) else {
            each(None, u64::MAX, done..len);
            return;
        };
        let (range, piece) = match view.find(at) {
            Some(range) => (Some(range), range.size - (at - range.base)),
            None => (None, view.next_base_after(at).map_or(u64::MAX, |b| b - at)),
        };
        let piece = usize::try_from(piece).map_or(left, |piece| piece.min(left));
        each(range, at, done..done + piece);
        done += piece;
    }
}

/// Reads from one range; `at` lies inside it and `data` does not run past its end.
fn read_range(range: &FlatRange, at: u64, data: &mut [u8]) {
    let offset = range.target.offset() + (at - range.base);
    match &range.target {
        FlatTarget::Ram { region, .. } => {
            if !region.read(offset, data) {
                data.fill(0xff);
            }
        }
        FlatTarget::Io { handler, .. } => lock(handler).read(offset, data),
    }
}

/// Writes to one range; `at` lies inside it and `data` does not run past its end.
fn write_range(range: &FlatRange, at: u64, data: &[u8]) {
    let offset = range.target.offset() + (at - range.base);
    match &range.target {
        FlatTarget::Ram { region, .. } => {
            region.write(offset, data);
        }
        FlatTarget::Io { handler, .. } => lock(handler).write(offset, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ListenerError;
    use crate::host_mapping::page_size;
    use crate::region::SharedIo;
    use crate::test_util::{accesses, device, layout, ram, recorder, Access};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    /// A listener that writes what it is told into a shared log.
    struct Logger {
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Listener for Logger {
        fn region_removed(&mut self, range: &FlatRange) -> Result<(), ListenerError> {
            let entry = format!("-{}@{:#x}+{:#x}", range.name, range.base, range.size);
            lock(&self.log).push(entry);
            Ok(())
        }

        fn region_added(&mut self, range: &FlatRange) -> Result<(), ListenerError> {
            let entry = format!("+{}@{:#x}+{:#x}", range.name, range.base, range.size);
            lock(&self.log).push(entry);
            Ok(())
        }
    }

    fn logged_space(root: Region) -> (AddressSpace, Arc<Mutex<Vec<String>>>) {
        let space = AddressSpace::new(SpaceKind::Memory, root).expect("space");
        let log = Arc::new(Mutex::new(Vec::new()));
        let logger = Logger {
            log: Arc::clone(&log),
        };
        space.register_listener(Box::new(logger)).expect("register");
        (space, log)
    }

    fn take(log: &Mutex<Vec<String>>) -> Vec<String> {
        std::mem::take(&mut *lock(log))
    }

    fn memory_space(size: u64) -> AddressSpace {
        let root = Region::container("root", size);
        AddressSpace::new(SpaceKind::Memory, root).expect("space")
    }

    #[test]
    fn new_listener_hears_of_every_current_range() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(device("a", 0x10), 0x100, 0)
            .expect("add");
        root.add_subregion(device("b", 0x20), 0x200, 0)
            .expect("add");
        let (_space, log) = logged_space(root);
        assert_eq!(take(&log), ["+a@0x100+0x10", "+b@0x200+0x20"]);
    }

    #[test]
    fn listener_hears_removals_before_additions() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(ram("ram", 0x4000), 0, 0).expect("add");
        let (space, log) = logged_space(root);
        take(&log);
        space
            .root()
            .add_subregion(device("io", 0x1000), 0x1000, 1)
            .expect("add");
        space.commit().expect("commit");
        let expected = [
            "-ram@0x0+0x4000",
            "+ram@0x0+0x1000",
            "+io@0x1000+0x1000",
            "+ram@0x2000+0x2000",
        ];
        assert_eq!(take(&log), expected);
    }

    #[test]
    fn listener_hears_only_of_changed_ranges() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(device("a", 0x10), 0x100, 0)
            .expect("add");
        let (space, log) = logged_space(root);
        take(&log);
        let b = device("b", 0x10);
        space
            .root()
            .add_subregion(b.clone(), 0x200, 0)
            .expect("add");
        space.commit().expect("commit");
        assert_eq!(take(&log), ["+b@0x200+0x10"]);
        space.root().remove_subregion(&b).expect("remove");
        space.commit().expect("commit");
        assert_eq!(take(&log), ["-b@0x200+0x10"]);
        space.commit().expect("commit");
        assert!(take(&log).is_empty());
    }

    struct Failing;

    impl Listener for Failing {
        fn region_removed(&mut self, _range: &FlatRange) -> Result<(), ListenerError> {
            Ok(())
        }

        fn region_added(&mut self, _range: &FlatRange) -> Result<(), ListenerError> {
            Err(ListenerError::new("no more slots"))
        }
    }

    #[test]
    fn listener_error_fails_the_commit() {
        let space = memory_space(0x10000);
        space
            .register_listener(Box::new(Failing))
            .expect("empty view");
        space
            .root()
            .add_subregion(device("io", 0x10), 0, 0)
            .expect("add");
        let error = space.commit().expect_err("listener refuses");
        assert!(matches!(error, AddressSpaceError::Listener { .. }));
    }

    #[test]
    fn listener_refusing_the_current_view_is_not_registered() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(device("io", 0x10), 0, 0).expect("add");
        let space = AddressSpace::new(SpaceKind::Memory, root).expect("space");
        assert!(space.register_listener(Box::new(Failing)).is_err());
        assert_eq!(lock(&space.listeners).len(), 0);
    }

    #[test]
    fn removing_a_subregion_and_committing_restores_the_view() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(ram("ram", 0x4000), 0, 0).expect("add");
        let space = AddressSpace::new(SpaceKind::Memory, root).expect("space");
        let before = layout(&space.flat_view());
        let io = device("io", 0x1000);
        space
            .root()
            .add_subregion(io.clone(), 0x1000, 1)
            .expect("add");
        space.commit().expect("commit");
        assert_eq!(space.flat_view().ranges().len(), 3);
        space.root().remove_subregion(&io).expect("remove");
        space.commit().expect("commit");
        assert_eq!(layout(&space.flat_view()), before);
    }

    #[test]
    fn tree_changes_are_invisible_until_commit() {
        let space = memory_space(0x10000);
        space
            .root()
            .add_subregion(device("io", 0x10), 0, 0)
            .expect("add");
        assert!(space.flat_view().ranges().is_empty());
        space.commit().expect("commit");
        assert_eq!(space.flat_view().ranges().len(), 1);
    }

    #[test]
    fn root_must_be_a_container() {
        let error = AddressSpace::new(SpaceKind::Memory, device("io", 0x10)).expect_err("io");
        assert!(matches!(error, AddressSpaceError::NotAContainer { .. }));
    }

    #[test]
    fn io_space_refuses_ram() {
        let root = Region::container("ports", IO_SPACE_SIZE);
        root.add_subregion(ram("ram", 0x1000), 0, 0).expect("add");
        let error = AddressSpace::new(SpaceKind::Io, root).expect_err("ram");
        assert!(matches!(error, AddressSpaceError::RamInIoSpace { .. }));
    }

    #[test]
    fn io_space_refuses_a_root_over_64_kib() {
        let root = Region::container("ports", IO_SPACE_SIZE + 1);
        let error = AddressSpace::new(SpaceKind::Io, root).expect_err("too big");
        assert!(matches!(error, AddressSpaceError::IoSpaceTooLarge { .. }));
    }

    #[test]
    fn failed_commit_keeps_the_old_view() {
        let root = Region::container("ports", IO_SPACE_SIZE);
        root.add_subregion(device("uart", 8), 0x3f8, 0)
            .expect("add");
        let space = AddressSpace::new(SpaceKind::Io, root).expect("space");
        space
            .root()
            .add_subregion(ram("ram", 0x1000), 0, 0)
            .expect("add");
        assert!(space.commit().is_err());
        assert_eq!(
            layout(&space.flat_view()),
            [(0x3f8, 8, "uart".to_owned(), 0)]
        );
    }

    #[test]
    fn io_access_gets_the_offset_inside_the_device() {
        let handler = recorder(0x40);
        let shared: SharedIo = handler.clone();
        let space = memory_space(0x10000);
        let window = Region::alias("win", &Region::io("dev", 0x100, shared), 0x80, 0x80);
        space.root().add_subregion(window, 0x1000, 0).expect("add");
        space.commit().expect("commit");
        let mut data = [0_u8; 2];
        assert!(space.read(0x1004, &mut data));
        assert_eq!(data, [0xc4, 0xc5]);
        assert!(space.write(0x1010, &[9]));
        let expected = [
            Access::Read {
                offset: 0x84,
                len: 2,
            },
            Access::Write {
                offset: 0x90,
                data: vec![9],
            },
        ];
        assert_eq!(accesses(&handler), expected);
    }

    #[test]
    fn access_across_two_devices_is_split_between_them() {
        let (first, second) = (recorder(0x10), recorder(0x80));
        let space = memory_space(0x10000);
        let root = space.root();
        root.add_subregion(Region::io("a", 0x10, first.clone()), 0x100, 0)
            .expect("add");
        root.add_subregion(Region::io("b", 0x10, second.clone()), 0x110, 0)
            .expect("add");
        space.commit().expect("commit");
        let mut data = [0_u8; 4];
        assert!(space.read(0x10e, &mut data));
        assert_eq!(data, [0x1e, 0x1f, 0x80, 0x81]);
        assert!(space.write(0x10f, &[1, 2]));
        let write_a = Access::Write {
            offset: 0xf,
            data: vec![1],
        };
        let write_b = Access::Write {
            offset: 0,
            data: vec![2],
        };
        assert_eq!(accesses(&first)[1], write_a);
        assert_eq!(accesses(&second)[1], write_b);
    }

    #[test]
    fn unmapped_read_fills_ff_and_reports_false() {
        let space = memory_space(0x10000);
        let mut data = [0_u8; 4];
        assert!(!space.read(0x500, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!space.write(0x500, &data));
    }

    #[test]
    fn partly_mapped_read_fills_only_the_hole() {
        let space = memory_space(0x10000);
        space
            .root()
            .add_subregion(Region::io("dev", 0x10, recorder(0)), 0x10, 0)
            .expect("add");
        space.commit().expect("commit");
        let mut data = [0_u8; 4];
        assert!(!space.read(0xe, &mut data));
        assert_eq!(data, [0xff, 0xff, 0, 1]);
    }

    #[test]
    fn read_past_the_top_of_the_address_space_is_unmapped() {
        let space = memory_space(u64::MAX);
        let mut data = [0_u8; 4];
        assert!(!space.read(u64::MAX - 1, &mut data));
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn ram_reads_back_what_was_written_through_dispatch() {
        let space = memory_space(0x100000);
        space
            .root()
            .add_subregion(ram("ram", 0x4000), 0x8000, 0)
            .expect("add");
        space.commit().expect("commit");
        assert!(space.write(0x8ffe, &[1, 2, 3, 4]));
        let mut data = [0_u8; 4];
        assert!(space.read(0x8ffe, &mut data));
        assert_eq!(data, [1, 2, 3, 4]);
        let value: u32 = space.memory().read_obj(GuestAddress(0x8ffe)).expect("read");
        assert_eq!(value, 0x0403_0201);
    }

    #[test]
    fn bytes_written_through_memory_are_read_through_dispatch() {
        let page = page_size();
        let space = memory_space(0x1_0000_0000);
        let mem = ram("ram", 4 * page);
        space.root().add_subregion(mem.clone(), 0, 0).expect("add");
        let high = Region::alias("high", &mem, 2 * page, 2 * page);
        space
            .root()
            .add_subregion(high, 0x8000_0000, 0)
            .expect("add");
        space.commit().expect("commit");
        let memory = space.memory();
        let layout: Vec<_> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(layout, [(0, 4 * page), (0x8000_0000, 2 * page)]);
        memory
            .write_obj(0x1122_3344_u32, GuestAddress(0x8000_0010))
            .expect("write");
        let mut data = [0_u8; 4];
        assert!(space.read(2 * page + 0x10, &mut data));
        assert_eq!(u32::from_le_bytes(data), 0x1122_3344);
    }

    #[test]
    fn memory_follows_commits() {
        let space = memory_space(0x100000);
        assert_eq!(space.memory().num_regions(), 0);
        space
            .root()
            .add_subregion(ram("ram", 0x4000), 0, 0)
            .expect("add");
        space.commit().expect("commit");
        assert_eq!(space.memory().num_regions(), 1);
    }

    #[test]
    fn vcpu_threads_dispatch_while_the_view_changes() {
        let space = Arc::new(memory_space(0x10000));
        let dev = Region::io("dev", 0x10, recorder(0x20));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let space = Arc::clone(&space);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let mut data = [0_u8; 1];
                        let mapped = space.read(0x100, &mut data);
                        assert_eq!(data, if mapped { [0x20] } else { [0xff] });
                    }
                })
            })
            .collect();
        for _ in 0..50 {
            space
                .root()
                .add_subregion(dev.clone(), 0x100, 0)
                .expect("add");
            space.commit().expect("commit");
            space.root().remove_subregion(&dev).expect("remove");
            space.commit().expect("commit");
        }
        for reader in readers {
            reader.join().expect("reader thread");
        }
    }

    #[test]
    fn address_space_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<AddressSpace>();
        shareable::<Region>();
        shareable::<FlatView>();
    }
}
