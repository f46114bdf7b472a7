//! Listeners: observers kept in step with the flat view, such as the KVM memory-slot table.

use crate::error::ListenerError;
use crate::flat_view::{FlatRange, FlatView};

/// An observer of the flat view of an [`AddressSpace`](crate::AddressSpace).
///
/// Listeners are called with the listener list locked: they must not call
/// `register_listener` or `commit` on the same address space.
pub trait Listener: Send {
    /// Called for every range that left the view, before any `region_added` of the same commit.
    fn region_removed(&mut self, range: &FlatRange) -> Result<(), ListenerError>;
    /// Called for every range that entered the view.
    fn region_added(&mut self, range: &FlatRange) -> Result<(), ListenerError>;
}

/// What changed between two views.
#[derive(Debug, Default)]
pub(crate) struct ViewDiff<'a> {
    /// Ranges of the old view that are not in the new one.
    pub(crate) removed: Vec<&'a FlatRange>,
    /// Ranges of the new view that were not in the old one.
    pub(crate) added: Vec<&'a FlatRange>,
}

impl<'a> ViewDiff<'a> {
    /// Compares two views; ranges identical in both are in neither list.
    pub(crate) fn between(old: &'a FlatView, new: &'a FlatView) -> Self {
        let (old, new) = (old.ranges(), new.ranges());
        let mut diff = ViewDiff::default();
        let (mut i, mut j) = (0, 0);
        while let (Some(before), Some(after)) = (old.get(i), new.get(j)) {
            if before.same_as(after) {
                i += 1;
                j += 1;
            } else if before.base < after.base {
                diff.removed.push(before);
                i += 1;
            } else if after.base < before.base {
                diff.added.push(after);
                j += 1;
            } else {
                diff.removed.push(before);
                diff.added.push(after);
                i += 1;
                j += 1;
            }
        }
        diff.removed.extend(&old[i..]);
        diff.added.extend(&new[j..]);
        diff
    }

    /// Tells every listener about all removals, then about all additions.
    ///
    /// Stops at the first listener error.
    pub(crate) fn notify(&self, listeners: &mut [Box<dyn Listener>]) -> Result<(), ListenerError> {
        for listener in listeners.iter_mut() {
            for range in &self.removed {
                listener.region_removed(range)?;
            }
        }
        for listener in listeners.iter_mut() {
            for range in &self.added {
                listener.region_added(range)?;
            }
        }
        Ok(())
    }
}

/// Tells `listener` about every range of `view`; on failure, takes back what it was told.
pub(crate) fn replay(listener: &mut dyn Listener, view: &FlatView) -> Result<(), ListenerError> {
    for (done, range) in view.ranges().iter().enumerate() {
        if let Err(error) = listener.region_added(range) {
            for added in view.ranges()[..done].iter().rev() {
                if let Err(undo) = listener.region_removed(added) {
                    log::warn!("cannot take back range {:?}: {undo}", added.name);
                }
            }
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Region;
    use crate::test_util::device;

    fn names(ranges: &[&FlatRange]) -> Vec<String> {
        ranges.iter().map(|range| range.name.clone()).collect()
    }

    fn root_with(regions: &[(&Region, u64)]) -> Region {
        let root = Region::container("root", 0x1000);
        for (region, offset) in regions {
            root.add_subregion((*region).clone(), *offset, 0)
                .expect("add");
        }
        root
    }

    #[test]
    fn identical_views_have_no_changes() {
        let (a, b) = (device("a", 0x10), device("b", 0x10));
        let view = FlatView::render(&root_with(&[(&a, 0), (&b, 0x20)]));
        let again = FlatView::render(&root_with(&[(&a, 0), (&b, 0x20)]));
        let diff = ViewDiff::between(&view, &again);
        assert!(diff.removed.is_empty() && diff.added.is_empty());
    }

    #[test]
    fn only_changed_ranges_are_reported() {
        let (a, b, c) = (device("a", 0x10), device("b", 0x10), device("c", 0x10));
        let old = FlatView::render(&root_with(&[(&a, 0), (&b, 0x20)]));
        let new = FlatView::render(&root_with(&[(&a, 0), (&c, 0x20), (&b, 0x40)]));
        let diff = ViewDiff::between(&old, &new);
        assert_eq!(names(&diff.removed), ["b"]);
        assert_eq!(names(&diff.added), ["c", "b"]);
    }

    #[test]
    fn same_place_with_another_region_is_removed_and_added() {
        let (a, b) = (device("x", 0x10), device("x", 0x10));
        let old = FlatView::render(&root_with(&[(&a, 0)]));
        let new = FlatView::render(&root_with(&[(&b, 0)]));
        let diff = ViewDiff::between(&old, &new);
        assert_eq!((diff.removed.len(), diff.added.len()), (1, 1));
    }

    struct Refuser {
        refuse: String,
        seen: Vec<String>,
    }

    impl Listener for Refuser {
        fn region_removed(&mut self, range: &FlatRange) -> Result<(), ListenerError> {
            self.seen.push(format!("-{}", range.name));
            Ok(())
        }

        fn region_added(&mut self, range: &FlatRange) -> Result<(), ListenerError> {
            if range.name == self.refuse {
                return Err(ListenerError::new("refused"));
            }
            self.seen.push(format!("+{}", range.name));
            Ok(())
        }
    }

    #[test]
    fn failed_replay_takes_back_the_ranges_already_added() {
        let (a, b, c) = (device("a", 0x10), device("b", 0x10), device("c", 0x10));
        let view = FlatView::render(&root_with(&[(&a, 0), (&b, 0x20), (&c, 0x40)]));
        let mut listener = Refuser {
            refuse: "c".to_owned(),
            seen: Vec::new(),
        };
        assert!(replay(&mut listener, &view).is_err());
        assert_eq!(listener.seen, ["+a", "+b", "-b", "-a"]);
    }
}
