//! The region tree: RAM, device I/O, containers and aliases.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::error::AddressSpaceError;
use crate::ram::RamBlock;
use crate::ram_backing::RamOptions;

/// A device region on the PIO or MMIO bus; offsets are relative to the region's base.
pub trait IoHandler: Send {
    /// Fills `data` with the bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes the bytes of `data` written at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device handler shared between the region tree, flat views and vCPU threads.
pub type SharedIo = Arc<Mutex<dyn IoHandler>>;

pub(crate) use crate::sync::lock;

/// A region placed in a container.
#[derive(Clone)]
pub(crate) struct Subregion {
    /// The placed region.
    pub(crate) region: Region,
    /// Its offset inside the container.
    pub(crate) offset: u64,
    /// Its priority among its siblings.
    pub(crate) priority: i32,
}

/// What a region is.
pub(crate) enum RegionKind {
    /// Guest RAM backed by host memory.
    Ram(Arc<RamBlock>),
    /// A device handled by an [`IoHandler`].
    Io(SharedIo),
    /// A holder of subregions, most visible first.
    Container(Mutex<Vec<Subregion>>),
    /// A window onto `[offset, offset + size)` of another region.
    Alias {
        /// The region looked through.
        target: Region,
        /// Where the window starts inside `target`.
        offset: u64,
    },
}

struct RegionInner {
    name: String,
    size: u64,
    kind: RegionKind,
}

/// A node of the region tree; cloning it is cheap and gives another handle to the same node.
///
/// Changes to the tree (`add_subregion`, `remove_subregion`) become visible to an
/// [`AddressSpace`](crate::AddressSpace) only at its next `commit()`.
#[derive(Clone)]
pub struct Region {
    inner: Arc<RegionInner>,
}

impl Region {
    fn new(name: &str, size: u64, kind: RegionKind) -> Region {
        Region {
            inner: Arc::new(RegionInner {
                name: name.to_owned(),
                size,
                kind,
            }),
        }
    }

    /// A RAM region of `size` bytes backed by an anonymous, private, zero-filled mapping.
    pub fn ram(name: &str, size: u64) -> Result<Region, AddressSpaceError> {
        Region::ram_with(name, size, &RamOptions::default())
    }

    /// A RAM region whose host memory is set up as `options` ask (shared, hugetlbfs,
    /// preallocated, excluded from core dumps).
    pub fn ram_with(
        name: &str,
        size: u64,
        options: &RamOptions,
    ) -> Result<Region, AddressSpaceError> {
        let block = RamBlock::new(name, size, options)?;
        Ok(Region::new(name, size, RegionKind::Ram(Arc::new(block))))
    }

    /// A device region of `size` bytes whose accesses go to `handler`.
    pub fn io(name: &str, size: u64, handler: SharedIo) -> Region {
        Region::new(name, size, RegionKind::Io(handler))
    }

    /// An empty container of `size` bytes; the parts no subregion covers are holes.
    pub fn container(name: &str, size: u64) -> Region {
        Region::new(name, size, RegionKind::Container(Mutex::new(Vec::new())))
    }

    /// A window of `size` bytes onto `[offset, offset + size)` of `target`.
    ///
    /// The part of the window past the end of `target` is a hole.
    pub fn alias(name: &str, target: &Region, offset: u64, size: u64) -> Region {
        let kind = RegionKind::Alias {
            target: target.clone(),
            offset,
        };
        Region::new(name, size, kind)
    }

    /// Places `child` at `offset` in this container.
    ///
    /// Where subregions overlap, the one with the higher `priority` is seen; between equal
    /// priorities, the one added later. Holes of a container child let lower ones show through.
    pub fn add_subregion(
        &self,
        child: Region,
        offset: u64,
        priority: i32,
    ) -> Result<(), AddressSpaceError> {
        let children = self.container_children()?;
        self.check_fits(&child, offset)?;
        if child.reaches(self) {
            return Err(AddressSpaceError::Cycle {
                container: self.name().to_owned(),
                child: child.name().to_owned(),
            });
        }
        let mut children = lock(children);
        if children.iter().any(|sub| sub.region.ptr_eq(&child)) {
            return Err(AddressSpaceError::AlreadyASubregion {
                container: self.name().to_owned(),
                child: child.name().to_owned(),
            });
        }
        let at = children.partition_point(|sub| sub.priority > priority);
        let sub = Subregion {
            region: child,
            offset,
            priority,
        };
        children.insert(at, sub);
        Ok(())
    }

    /// Takes `child` out of this container.
    pub fn remove_subregion(&self, child: &Region) -> Result<(), AddressSpaceError> {
        let mut children = lock(self.container_children()?);
        let Some(at) = children.iter().position(|sub| sub.region.ptr_eq(child)) else {
            return Err(AddressSpaceError::NotASubregion {
                container: self.name().to_owned(),
                child: child.name().to_owned(),
            });
        };
        children.remove(at);
        Ok(())
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The region's size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Whether subregions can be added to this region.
    pub fn is_container(&self) -> bool {
        matches!(self.inner.kind, RegionKind::Container(_))
    }

    /// The host memory of a RAM region; `None` for other kinds.
    pub fn ram_block(&self) -> Option<&Arc<RamBlock>> {
        match &self.inner.kind {
            RegionKind::Ram(block) => Some(block),
            _ => None,
        }
    }

    /// Whether both handles refer to the same region.
    pub fn ptr_eq(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn kind(&self) -> &RegionKind {
        &self.inner.kind
    }

    /// A copy of a container's subregions, most visible first; empty for other kinds.
    pub(crate) fn subregions(&self) -> Vec<Subregion> {
        match &self.inner.kind {
            RegionKind::Container(children) => lock(children).clone(),
            _ => Vec::new(),
        }
    }

    fn container_children(&self) -> Result<&Mutex<Vec<Subregion>>, AddressSpaceError> {
        match &self.inner.kind {
            RegionKind::Container(children) => Ok(children),
            _ => Err(AddressSpaceError::NotAContainer {
                name: self.name().to_owned(),
            }),
        }
    }

    fn check_fits(&self, child: &Region, offset: u64) -> Result<(), AddressSpaceError> {
        let end = offset.checked_add(child.size());
        if end.is_some_and(|end| end <= self.size()) {
            return Ok(());
        }
        Err(AddressSpaceError::OutOfBounds {
            container: self.name().to_owned(),
            container_size: self.size(),
            child: child.name().to_owned(),
            offset,
            size: child.size(),
        })
    }

    /// Whether `target` is this region or can be reached from it through subregions and aliases.
    fn reaches(&self, target: &Region) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![self.clone()];
        while let Some(region) = stack.pop() {
            if region.ptr_eq(target) {
                return true;
            }
            if !seen.insert(Arc::as_ptr(&region.inner)) {
                continue;
            }
            match region.kind() {
                RegionKind::Container(_) => {
                    stack.extend(region.subregions().into_iter().map(|sub| sub.region));
                }
                RegionKind::Alias { target, .. } => stack.push(target.clone()),
                RegionKind::Ram(_) | RegionKind::Io(_) => {}
            }
        }
        false
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind() {
            RegionKind::Ram(_) => "ram",
            RegionKind::Io(_) => "io",
            RegionKind::Container(_) => "container",
            RegionKind::Alias { .. } => "alias",
        };
        f.debug_struct("Region")
            .field("name", &self.name())
            .field("size", &format_args!("{:#x}", self.size()))
            .field("kind", &kind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl IoHandler for Nothing {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    fn device(name: &str, size: u64) -> Region {
        Region::io(name, size, Arc::new(Mutex::new(Nothing)))
    }

    fn names(container: &Region) -> Vec<String> {
        let subs = container.subregions();
        subs.iter()
            .map(|sub| sub.region.name().to_owned())
            .collect()
    }

    #[test]
    fn subregion_cannot_be_added_to_a_non_container() {
        let io = device("io", 0x10);
        let error = io.add_subregion(device("x", 1), 0, 0).expect_err("io");
        assert!(matches!(error, AddressSpaceError::NotAContainer { .. }));
    }

    #[test]
    fn subregion_past_the_container_end_is_refused() {
        let root = Region::container("root", 0x100);
        let error = root
            .add_subregion(device("x", 0x10), 0xf8, 0)
            .expect_err("too far");
        assert!(matches!(error, AddressSpaceError::OutOfBounds { .. }));
    }

    #[test]
    fn subregion_whose_end_overflows_is_refused() {
        let root = Region::container("root", u64::MAX);
        let error = root
            .add_subregion(device("x", 0x10), u64::MAX - 1, 0)
            .expect_err("overflow");
        assert!(matches!(error, AddressSpaceError::OutOfBounds { .. }));
    }

    #[test]
    fn container_cannot_contain_itself_through_an_alias() {
        let root = Region::container("root", 0x100);
        let inner = Region::container("inner", 0x80);
        root.add_subregion(inner.clone(), 0, 0).expect("add");
        let alias = Region::alias("loop", &root, 0, 0x40);
        let error = inner.add_subregion(alias, 0, 0).expect_err("cycle");
        assert!(matches!(error, AddressSpaceError::Cycle { .. }));
    }

    #[test]
    fn container_cannot_be_added_to_itself() {
        let root = Region::container("root", 0x100);
        let error = root.add_subregion(root.clone(), 0, 0).expect_err("self");
        assert!(matches!(error, AddressSpaceError::Cycle { .. }));
    }

    #[test]
    fn same_subregion_twice_is_refused() {
        let root = Region::container("root", 0x100);
        let io = device("io", 0x10);
        root.add_subregion(io.clone(), 0, 0).expect("add");
        let error = root.add_subregion(io, 0x20, 0).expect_err("twice");
        assert!(matches!(error, AddressSpaceError::AlreadyASubregion { .. }));
    }

    #[test]
    fn subregions_are_kept_most_visible_first() {
        let root = Region::container("root", 0x100);
        root.add_subregion(device("low", 1), 0, -1).expect("add");
        root.add_subregion(device("high", 1), 0, 5).expect("add");
        root.add_subregion(device("mid-old", 1), 0, 0).expect("add");
        root.add_subregion(device("mid-new", 1), 0, 0).expect("add");
        assert_eq!(names(&root), ["high", "mid-new", "mid-old", "low"]);
    }

    #[test]
    fn removed_subregion_is_gone() {
        let root = Region::container("root", 0x100);
        let io = device("io", 0x10);
        root.add_subregion(io.clone(), 0, 0).expect("add");
        root.remove_subregion(&io).expect("remove");
        assert!(names(&root).is_empty());
    }

    #[test]
    fn removing_a_region_that_is_not_a_child_fails() {
        let root = Region::container("root", 0x100);
        let error = root.remove_subregion(&device("io", 1)).expect_err("absent");
        assert!(matches!(error, AddressSpaceError::NotASubregion { .. }));
    }

    #[test]
    fn clones_are_the_same_region() {
        let io = device("io", 0x10);
        assert!(io.clone().ptr_eq(&io));
        assert!(!device("io", 0x10).ptr_eq(&io));
    }
}
