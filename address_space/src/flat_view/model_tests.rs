//! Randomized check of rendering against a naive model that resolves every byte of a small
//! space by walking the region tree.

use std::cmp::Reverse;

use super::{FlatTarget, FlatView};
use crate::region::{Region, SharedIo};
use crate::test_util::recorder;

/// Size of the random address spaces.
const SPACE: u64 = 0x1000;
/// Number of random trees checked.
const ITERATIONS: u64 = 500;
/// Regions per tree, not counting the root.
const MAX_NODES: u64 = 16;
/// Subregions tried for each inner container.
const MAX_CHILDREN: u64 = 4;
/// Subregions tried for the root.
const ROOT_CHILDREN: (u64, u64) = (4, 10);

/// A xorshift64 generator, so that failures can be replayed from the seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `[0, bound)`; `bound` must not be zero.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// A number in `[low, high]`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

/// A subregion as the model remembers it.
struct ModelChild {
    node: usize,
    offset: u64,
    priority: i32,
    /// Global insertion order: among equal priorities the highest wins.
    seq: u64,
}

/// What the model knows of each region, independently of the crate's own bookkeeping.
enum ModelNode {
    Leaf {
        name: String,
        size: u64,
    },
    Container {
        size: u64,
        children: Vec<ModelChild>,
    },
    Alias {
        size: u64,
        target: usize,
        offset: u64,
    },
}

impl ModelNode {
    fn size(&self) -> u64 {
        match self {
            ModelNode::Leaf { size, .. }
            | ModelNode::Container { size, .. }
            | ModelNode::Alias { size, .. } => *size,
        }
    }
}

/// A random tree: the real regions and the model, index for index.
struct Tree {
    regions: Vec<Region>,
    model: Vec<ModelNode>,
    seq: u64,
}

impl Tree {
    /// The leaf region and the offset inside it that `addr` of node `node` shows.
    fn resolve(&self, node: usize, addr: u64) -> Option<(String, u64)> {
        match &self.model[node] {
            ModelNode::Leaf { name, size } => (addr < *size).then(|| (name.clone(), addr)),
            ModelNode::Alias {
                size,
                target,
                offset,
            } => {
                if addr >= *size {
                    return None;
                }
                self.resolve(*target, offset + addr)
            }
            ModelNode::Container { size, children } => {
                if addr >= *size {
                    return None;
                }
                let mut order: Vec<&ModelChild> = children.iter().collect();
                order.sort_by_key(|child| (Reverse(child.priority), Reverse(child.seq)));
                order
                    .into_iter()
                    .filter(|child| addr >= child.offset)
                    .find_map(|child| self.resolve(child.node, addr - child.offset))
            }
        }
    }

    fn push(&mut self, region: Region, node: ModelNode) -> usize {
        self.regions.push(region);
        self.model.push(node);
        self.model.len() - 1
    }

    fn add_leaf(&mut self, rng: &mut XorShift) {
        let name = format!("leaf{}", self.regions.len());
        let size = rng.between(1, 0x200);
        let region = if rng.below(2) == 0 {
            Region::ram(&name, size).expect("map test RAM")
        } else {
            let handler: SharedIo = recorder(0);
            Region::io(&name, size, handler)
        };
        self.push(region, ModelNode::Leaf { name, size });
    }

    fn add_alias(&mut self, rng: &mut XorShift) {
        let target = usize::try_from(rng.below(self.regions.len() as u64)).expect("index");
        let offset = rng.below(self.model[target].size() + 0x40);
        let size = rng.between(1, 0x300);
        let name = format!("alias{}", self.regions.len());
        let region = Region::alias(&name, &self.regions[target], offset, size);
        let node = ModelNode::Alias {
            size,
            target,
            offset,
        };
        self.push(region, node);
    }

    /// A container over random earlier nodes, some of them removed again.
    fn add_container(&mut self, rng: &mut XorShift, size: u64, tries: u64) -> usize {
        let name = format!("container{}", self.regions.len());
        let region = Region::container(&name, size);
        let mut children = Vec::new();
        for _ in 0..tries {
            if self.regions.is_empty() {
                break;
            }
            let node = usize::try_from(rng.below(self.regions.len() as u64)).expect("index");
            let child_size = self.model[node].size();
            if child_size > size || children.iter().any(|c: &ModelChild| c.node == node) {
                continue;
            }
            let offset = rng.below(size - child_size + 1);
            let priority = i32::try_from(rng.below(5)).expect("small") - 2;
            region
                .add_subregion(self.regions[node].clone(), offset, priority)
                .expect("child fits");
            self.seq += 1;
            let seq = self.seq;
            children.push(ModelChild {
                node,
                offset,
                priority,
                seq,
            });
        }
        if !children.is_empty() && rng.below(4) == 0 {
            let gone =
                children.remove(usize::try_from(rng.below(children.len() as u64)).expect("index"));
            region
                .remove_subregion(&self.regions[gone.node])
                .expect("remove child");
        }
        self.push(region, ModelNode::Container { size, children })
    }

    /// A random tree; returns it with the index of its root, a container of `SPACE` bytes.
    fn random(rng: &mut XorShift) -> (Tree, usize) {
        let mut tree = Tree {
            regions: Vec::new(),
            model: Vec::new(),
            seq: 0,
        };
        for _ in 0..rng.between(4, MAX_NODES) {
            match rng.below(5) {
                0 if !tree.regions.is_empty() => tree.add_alias(rng),
                1 => {
                    let size = rng.between(1, 0x800);
                    let tries = rng.below(MAX_CHILDREN + 1);
                    tree.add_container(rng, size, tries);
                }
                _ => tree.add_leaf(rng),
            }
        }
        let tries = rng.between(ROOT_CHILDREN.0, ROOT_CHILDREN.1);
        let root = tree.add_container(rng, SPACE, tries);
        (tree, root)
    }
}

/// Checks that ranges are sorted, disjoint, inside the space and merged as far as possible.
fn check_shape(view: &FlatView) {
    for range in view.ranges() {
        assert!(range.size > 0 && range.end() <= SPACE, "{range:?}");
        if let FlatTarget::Ram {
            host_addr,
            region,
            offset,
        } = &range.target
        {
            assert_eq!(*host_addr, region.host_addr() + offset);
        }
    }
    for pair in view.ranges().windows(2) {
        assert!(pair[0].end() <= pair[1].base, "{pair:?}");
        assert!(!pair[0].continued_by(&pair[1]), "not merged: {pair:?}");
    }
}

/// Checks every byte of the space against the model.
fn check_bytes(view: &FlatView, tree: &Tree, root: usize, seed: u64) {
    for addr in 0..SPACE {
        let expected = tree.resolve(root, addr);
        let actual = view.find(addr).map(|range| {
            (
                range.name.clone(),
                range.target.offset() + (addr - range.base),
            )
        });
        assert_eq!(actual, expected, "seed {seed:#x}, address {addr:#x}");
    }
}

#[test]
fn rendering_matches_the_byte_by_byte_model_for_random_trees() {
    let mut ranges = 0;
    for iteration in 0..ITERATIONS {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (iteration + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut rng = XorShift(seed);
        let (tree, root) = Tree::random(&mut rng);
        let view = FlatView::render(&tree.regions[root]);
        check_shape(&view);
        check_bytes(&view, &tree, root, seed);
        ranges += view.ranges().len();
    }
    assert!(
        ranges as u64 > 3 * ITERATIONS,
        "random trees too sparse: {ranges} ranges"
    );
}

#[test]
fn xorshift_is_deterministic_for_a_seed() {
    let (mut a, mut b) = (XorShift(42), XorShift(42));
    let first: Vec<u64> = (0..4).map(|_| a.next()).collect();
    let second: Vec<u64> = (0..4).map(|_| b.next()).collect();
    assert_eq!(first, second);
}
