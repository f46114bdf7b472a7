//! The flat view: the region tree rendered into sorted, non-overlapping ranges.

use std::fmt;
use std::sync::Arc;

use crate::ram::RamBlock;
use crate::region::{Region, RegionKind, SharedIo};

/// What a flat range maps to.
#[derive(Clone)]
pub enum FlatTarget {
    /// Guest RAM.
    Ram {
        /// Host virtual address of the first byte of this range (already offset).
        host_addr: u64,
        /// The RAM block the bytes belong to; holding it keeps them mapped.
        region: Arc<RamBlock>,
        /// Offset of the first byte of this range inside `region`.
        offset: u64,
    },
    /// A device.
    Io {
        /// The device's handler.
        handler: SharedIo,
        /// Offset of the first byte of this range inside the device region.
        offset: u64,
    },
}

impl FlatTarget {
    /// Offset of the range's first byte inside the RAM block or device region.
    pub fn offset(&self) -> u64 {
        match self {
            FlatTarget::Ram { offset, .. } | FlatTarget::Io { offset, .. } => *offset,
        }
    }

    /// Whether both targets are the same RAM block or the same device handler.
    pub fn same_leaf(&self, other: &FlatTarget) -> bool {
        match (self, other) {
            (FlatTarget::Ram { region: a, .. }, FlatTarget::Ram { region: b, .. }) => {
                Arc::ptr_eq(a, b)
            }
            (FlatTarget::Io { handler: a, .. }, FlatTarget::Io { handler: b, .. }) => {
                Arc::ptr_eq(a, b)
            }
            _ => false,
        }
    }

    /// The same target, `by` bytes further in.
    fn advanced(&self, by: u64) -> FlatTarget {
        match self {
            FlatTarget::Ram {
                host_addr,
                region,
                offset,
            } => FlatTarget::Ram {
                host_addr: host_addr + by,
                region: Arc::clone(region),
                offset: offset + by,
            },
            FlatTarget::Io { handler, offset } => FlatTarget::Io {
                handler: Arc::clone(handler),
                offset: offset + by,
            },
        }
    }
}

impl fmt::Debug for FlatTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlatTarget::Ram {
                host_addr,
                region,
                offset,
            } => f
                .debug_struct("Ram")
                .field("host_addr", &format_args!("{host_addr:#x}"))
                .field("block", &region.name())
                .field("offset", &format_args!("{offset:#x}"))
                .finish(),
            FlatTarget::Io { offset, .. } => f
                .debug_struct("Io")
                .field("offset", &format_args!("{offset:#x}"))
                .finish_non_exhaustive(),
        }
    }
}

/// One piece of the flat view: `[base, base + size)` maps to `target`.
#[derive(Clone, Debug)]
pub struct FlatRange {
    /// First address of the range in the address space.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// What the range maps to.
    pub target: FlatTarget,
    /// Name of the RAM or I/O region the range shows (not of aliases or containers).
    pub name: String,
}

impl FlatRange {
    /// One past the last address of the range (saturating at `u64::MAX`).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether `addr` falls inside the range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }

    /// Whether both ranges map the same addresses to the same bytes of the same leaf region.
    pub fn same_as(&self, other: &FlatRange) -> bool {
        self.base == other.base
            && self.size == other.size
            && self.target.offset() == other.target.offset()
            && self.target.same_leaf(&other.target)
            && self.name == other.name
    }

    /// Whether `next` starts where this range ends and carries on with the next bytes.
    fn continued_by(&self, next: &FlatRange) -> bool {
        self.base.checked_add(self.size) == Some(next.base)
            && self.target.offset().checked_add(self.size) == Some(next.target.offset())
            && self.target.same_leaf(&next.target)
            && self.name == next.name
    }
}

/// A rendered address space: sorted, non-overlapping ranges, with adjacent pieces of the same
/// region at contiguous offsets merged.
#[derive(Clone, Debug, Default)]
pub struct FlatView {
    ranges: Vec<FlatRange>,
}

impl FlatView {
    /// The ranges, sorted by base address.
    pub fn ranges(&self) -> &[FlatRange] {
        &self.ranges
    }

    /// The range that contains `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<&FlatRange> {
        let after = self.ranges.partition_point(|range| range.base <= addr);
        let candidate = self.ranges.get(after.checked_sub(1)?)?;
        candidate.contains(addr).then_some(candidate)
    }

    /// Base address of the first range that starts after `addr`, if any.
    pub(crate) fn next_base_after(&self, addr: u64) -> Option<u64> {
        let after = self.ranges.partition_point(|range| range.base <= addr);
        self.ranges.get(after).map(|range| range.base)
    }

    /// Renders the tree under `root`, with the root's first byte at address 0.
    pub(crate) fn render(root: &Region) -> FlatView {
        let mut builder = Builder::default();
        let whole = Span {
            lo: 0,
            hi: i128::from(root.size()),
        };
        render_region(root, 0, whole, &mut builder);
        builder.finish()
    }
}

/// A half-open range of addresses; `i128` so that alias arithmetic can go below zero.
#[derive(Clone, Copy)]
struct Span {
    lo: i128,
    hi: i128,
}

/// Renders `region`, whose first byte is at address `base`, into the part `clip` of the space.
///
/// Subregions are rendered most visible first, and each only fills what is still uncovered.
fn render_region(region: &Region, base: i128, clip: Span, out: &mut Builder) {
    let span = Span {
        lo: clip.lo.max(base),
        hi: clip.hi.min(base + i128::from(region.size())),
    };
    if span.lo >= span.hi {
        return;
    }
    let offset = to_u64(span.lo - base);
    match region.kind() {
        RegionKind::Ram(block) => {
            let target = FlatTarget::Ram {
                host_addr: block.host_addr() + offset,
                region: Arc::clone(block),
                offset,
            };
            out.fill(span, region.name(), &target);
        }
        RegionKind::Io(handler) => {
            let target = FlatTarget::Io {
                handler: Arc::clone(handler),
                offset,
            };
            out.fill(span, region.name(), &target);
        }
        RegionKind::Container(_) => {
            for sub in region.subregions() {
                render_region(&sub.region, base + i128::from(sub.offset), span, out);
            }
        }
        RegionKind::Alias { target, offset } => {
            render_region(target, base - i128::from(*offset), span, out);
        }
    }
}

/// Converts a rendered address, which always lies within the root region, back to `u64`.
fn to_u64(value: i128) -> u64 {
    u64::try_from(value).expect("rendered addresses lie within the root region")
}

/// Collects ranges, each new one filling only the addresses not covered yet.
#[derive(Default)]
struct Builder {
    ranges: Vec<FlatRange>,
}

impl Builder {
    /// Maps the uncovered parts of `span` to `target`, whose first byte is at `span.lo`.
    fn fill(&mut self, span: Span, name: &str, target: &FlatTarget) {
        let (lo, hi) = (to_u64(span.lo), to_u64(span.hi));
        let mut at = self.ranges.partition_point(|range| range.end() <= lo);
        let mut cursor = lo;
        while cursor < hi {
            if let Some(range) = self.ranges.get(at).filter(|range| range.base <= cursor) {
                cursor = range.end();
                at += 1;
                continue;
            }
            let gap_end = self.ranges.get(at).map_or(hi, |range| range.base.min(hi));
            let piece = FlatRange {
                base: cursor,
                size: gap_end - cursor,
                target: target.advanced(cursor - lo),
                name: name.to_owned(),
            };
            self.ranges.insert(at, piece);
            at += 1;
            cursor = gap_end;
        }
    }

    /// The view, with continuing pieces merged.
    fn finish(self) -> FlatView {
        let mut ranges: Vec<FlatRange> = Vec::with_capacity(self.ranges.len());
        for range in self.ranges {
            match ranges.last_mut() {
                Some(last) if last.continued_by(&range) => last.size += range.size,
                _ => ranges.push(range),
            }
        }
        FlatView { ranges }
    }
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{device, layout, ram};

    fn render(root: &Region) -> Vec<(u64, u64, String, u64)> {
        layout(&FlatView::render(root))
    }

    fn entry(base: u64, size: u64, name: &str, offset: u64) -> (u64, u64, String, u64) {
        (base, size, name.to_owned(), offset)
    }

    #[test]
    fn single_ram_region_is_one_range() {
        let root = Region::container("root", 0x10000);
        let mem = ram("ram", 0x4000);
        root.add_subregion(mem.clone(), 0x1000, 0).expect("add");
        let view = FlatView::render(&root);
        assert_eq!(layout(&view), [entry(0x1000, 0x4000, "ram", 0)]);
        let block = mem.ram_block().expect("ram");
        match &view.ranges()[0].target {
            FlatTarget::Ram { host_addr, .. } => assert_eq!(*host_addr, block.host_addr()),
            FlatTarget::Io { .. } => panic!("RAM rendered as I/O"),
        }
    }

    #[test]
    fn io_with_higher_priority_splits_ram_in_three() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(ram("ram", 0x4000), 0, 0).expect("add");
        root.add_subregion(device("io", 0x1000), 0x1000, 1)
            .expect("add");
        let expected = [
            entry(0, 0x1000, "ram", 0),
            entry(0x1000, 0x1000, "io", 0),
            entry(0x2000, 0x2000, "ram", 0x2000),
        ];
        assert_eq!(render(&root), expected);
    }

    #[test]
    fn io_with_lower_priority_is_hidden_by_ram() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(ram("ram", 0x4000), 0, 1).expect("add");
        root.add_subregion(device("io", 0x1000), 0x1000, 0)
            .expect("add");
        assert_eq!(render(&root), [entry(0, 0x4000, "ram", 0)]);
    }

    #[test]
    fn equal_priority_region_added_later_wins() {
        let root = Region::container("root", 0x100);
        root.add_subregion(device("first", 0x20), 0x10, 0)
            .expect("add");
        root.add_subregion(device("second", 0x20), 0x20, 0)
            .expect("add");
        let expected = [
            entry(0x10, 0x10, "first", 0),
            entry(0x20, 0x20, "second", 0),
        ];
        assert_eq!(render(&root), expected);
    }

    #[test]
    fn nested_containers_add_their_offsets() {
        let root = Region::container("root", 0x10000);
        let outer = Region::container("outer", 0x4000);
        let inner = Region::container("inner", 0x1000);
        inner
            .add_subregion(device("io", 0x10), 0x20, 0)
            .expect("add");
        outer.add_subregion(inner, 0x1000, 0).expect("add");
        root.add_subregion(outer, 0x8000, 0).expect("add");
        assert_eq!(render(&root), [entry(0x9020, 0x10, "io", 0)]);
    }

    #[test]
    fn alias_of_ram_shows_the_aliased_bytes_at_the_alias_address() {
        let root = Region::container("root", 0x100000);
        let mem = ram("ram", 0x4000);
        let window = Region::alias("window", &mem, 0x2000, 0x1000);
        root.add_subregion(window, 0x80000, 0).expect("add");
        let view = FlatView::render(&root);
        assert_eq!(layout(&view), [entry(0x80000, 0x1000, "ram", 0x2000)]);
        let block = mem.ram_block().expect("ram");
        match &view.ranges()[0].target {
            FlatTarget::Ram { host_addr, .. } => {
                assert_eq!(*host_addr, block.host_addr() + 0x2000);
            }
            FlatTarget::Io { .. } => panic!("RAM rendered as I/O"),
        }
    }

    #[test]
    fn alias_of_container_shows_its_subregions() {
        let root = Region::container("root", 0x10000);
        let bus = Region::container("bus", 0x1000);
        bus.add_subregion(device("a", 0x100), 0x100, 0)
            .expect("add");
        bus.add_subregion(device("b", 0x100), 0x300, 0)
            .expect("add");
        let window = Region::alias("window", &bus, 0x180, 0x200);
        root.add_subregion(window, 0x4000, 0).expect("add");
        let expected = [entry(0x4000, 0x80, "a", 0x80), entry(0x4180, 0x80, "b", 0)];
        assert_eq!(render(&root), expected);
    }

    #[test]
    fn alias_of_alias_adds_both_offsets() {
        let root = Region::container("root", 0x10000);
        let io = device("io", 0x1000);
        let first = Region::alias("first", &io, 0x100, 0x800);
        let second = Region::alias("second", &first, 0x40, 0x100);
        root.add_subregion(second, 0x2000, 0).expect("add");
        assert_eq!(render(&root), [entry(0x2000, 0x100, "io", 0x140)]);
    }

    #[test]
    fn alias_past_the_end_of_its_target_is_a_hole_there() {
        let root = Region::container("root", 0x1000);
        let io = device("io", 0x100);
        root.add_subregion(Region::alias("tail", &io, 0xc0, 0x80), 0, 0)
            .expect("add");
        assert_eq!(render(&root), [entry(0, 0x40, "io", 0xc0)]);
    }

    #[test]
    fn container_holes_show_lower_priority_regions() {
        let root = Region::container("root", 0x1000);
        root.add_subregion(device("below", 0x400), 0, 0)
            .expect("add");
        let top = Region::container("top", 0x400);
        top.add_subregion(device("dev", 0x100), 0x100, 0)
            .expect("add");
        root.add_subregion(top, 0, 1).expect("add");
        let expected = [
            entry(0, 0x100, "below", 0),
            entry(0x100, 0x100, "dev", 0),
            entry(0x200, 0x200, "below", 0x200),
        ];
        assert_eq!(render(&root), expected);
    }

    #[test]
    fn empty_container_renders_nothing() {
        let root = Region::container("root", 0x1000);
        root.add_subregion(Region::container("empty", 0x100), 0, 0)
            .expect("add");
        assert!(render(&root).is_empty());
    }

    #[test]
    fn adjacent_aliases_of_contiguous_ram_are_merged() {
        let root = Region::container("root", 0x10000);
        let mem = ram("ram", 0x4000);
        let low = Region::alias("low", &mem, 0, 0x2000);
        let high = Region::alias("high", &mem, 0x2000, 0x2000);
        root.add_subregion(low, 0x1000, 0).expect("add");
        root.add_subregion(high, 0x3000, 0).expect("add");
        assert_eq!(render(&root), [entry(0x1000, 0x4000, "ram", 0)]);
    }

    #[test]
    fn pieces_split_by_a_hidden_region_are_merged_again() {
        let root = Region::container("root", 0x1000);
        root.add_subregion(device("dev", 0x400), 0, 1).expect("add");
        root.add_subregion(device("hidden", 0x100), 0x100, 0)
            .expect("add");
        assert_eq!(render(&root), [entry(0, 0x400, "dev", 0)]);
    }

    #[test]
    fn adjacent_aliases_of_non_contiguous_bytes_stay_apart() {
        let root = Region::container("root", 0x10000);
        let io = device("io", 0x1000);
        root.add_subregion(Region::alias("a", &io, 0x100, 0x10), 0, 0)
            .expect("add");
        root.add_subregion(Region::alias("b", &io, 0x100, 0x10), 0x10, 0)
            .expect("add");
        let expected = [entry(0, 0x10, "io", 0x100), entry(0x10, 0x10, "io", 0x100)];
        assert_eq!(render(&root), expected);
    }

    #[test]
    fn find_returns_the_range_holding_the_address() {
        let root = Region::container("root", 0x1000);
        root.add_subregion(device("a", 0x10), 0x10, 0).expect("add");
        root.add_subregion(device("b", 0x10), 0x30, 0).expect("add");
        let view = FlatView::render(&root);
        assert_eq!(view.find(0x1f).map(|r| r.name.as_str()), Some("a"));
        assert_eq!(view.find(0x30).map(|r| r.name.as_str()), Some("b"));
        assert!(view.find(0x20).is_none());
        assert!(view.find(0).is_none());
        assert!(view.find(u64::MAX).is_none());
    }

    #[test]
    fn root_of_the_full_64_bit_size_renders() {
        let root = Region::container("root", u64::MAX);
        root.add_subregion(device("top", 0x10), u64::MAX - 0x10, 0)
            .expect("add");
        assert_eq!(render(&root), [entry(u64::MAX - 0x10, 0x10, "top", 0)]);
    }
}
