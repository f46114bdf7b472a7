//! A list kept inline while short (a request's descriptors and data segments usually are), so
//! that serving a request allocates nothing; longer ones move to the heap.

/// Up to `N` items inline, more on the heap.
#[derive(Debug, Clone)]
pub(crate) enum SmallList<T: Copy + Default, const N: usize> {
    Inline([T; N], usize),
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> SmallList<T, N> {
    /// An empty list.
    pub(crate) fn new() -> Self {
        SmallList::Inline([T::default(); N], 0)
    }

    /// Appends `item`.
    pub(crate) fn push(&mut self, item: T) {
        match self {
            SmallList::Inline(items, n) if *n < N => {
                items[*n] = item;
                *n += 1;
            }
            SmallList::Inline(items, _) => {
                let mut heap = Vec::with_capacity(2 * N);
                heap.extend_from_slice(items);
                heap.push(item);
                *self = SmallList::Heap(heap);
            }
            SmallList::Heap(v) => v.push(item),
        }
    }
}

impl<T: Copy + Default, const N: usize> std::ops::Deref for SmallList<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            SmallList::Inline(items, n) => &items[..*n],
            SmallList::Heap(v) => v,
        }
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for SmallList<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut list = SmallList::new();
        for item in iter {
            list.push(item);
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_inline_up_to_n_then_keeps_every_item_on_the_heap() {
        let mut l: SmallList<u32, 3> = SmallList::new();
        for i in 0..3 {
            l.push(i);
        }
        assert!(matches!(l, SmallList::Inline(_, 3)));
        l.push(3);
        l.push(4);
        assert!(matches!(l, SmallList::Heap(_)));
        assert_eq!(&*l, &[0, 1, 2, 3, 4]);
        let c: SmallList<u32, 2> = (5..8).collect();
        assert_eq!(&*c, &[5, 6, 7]);
    }
}
