//! The presence filter: a Bloom filter of every entry the main index may hold in its
//! results, failures and latest trees, so that a lookup of something the index has never
//! recorded (the tasks of a new ring of views, a new object) is answered "no" without
//! asking sled. At ten million tasks the index is 24 GB; each of those lookups went to a
//! random place of it, and a plan after a new ring spent most of its time there
//! (BENCHMARKS.md, "The presence filter").
//!
//! A Bloom filter never says "absent" for an entry that was put in it, and gc and
//! `forget_result` may delete entries without telling it: it only ever holds a superset of
//! the index, so a "maybe" falls back to the index and a "no" is exact. The store decides
//! when the filter speaks for the index at all (`Store`: the stamp of the main index's
//! files, as for the stage summaries).
//!
//! It grows in layers, each four times the one before, so that it never needs the entries
//! it was made from; a lookup asks every layer. Each layer is a blocked Bloom filter: an
//! entry's bits all lie in one 64-byte block (one cache line), about 10 bits per entry and
//! 7 probes, for about 1% of false "maybe"s per full layer.
//!
//! File layout (`presence/<digest>`, the digest of its bytes): `mvcpres1`, layer count
//! (u64 LE), then per layer its capacity, entries and block count (u64 LE each) and its
//! blocks (8 u64 LE each).

use super::index::Tree;
use anyhow::{Result, bail};

const MAGIC: &[u8; 8] = b"mvcpres1";
const BITS_PER_ENTRY: u64 = 10;
const PROBES: usize = 7;
const GROWTH: u64 = 4;
/// The first layer of a new cache: 80 KiB on disk.
pub const FIRST_CAPACITY: u64 = 1 << 16;

type Block = [u64; 8];

#[derive(Clone, Debug, PartialEq, Eq)]
struct Layer {
    capacity: u64,
    entries: u64,
    blocks: Vec<Block>,
}

impl Layer {
    fn new(capacity: u64) -> Layer {
        let blocks = (capacity * BITS_PER_ENTRY).div_ceil(512).max(1);
        Layer {
            capacity,
            entries: 0,
            blocks: vec![[0; 8]; blocks as usize],
        }
    }

    fn block(&self, probe: &Probe) -> usize {
        // The block: the high bits of a 64×64-bit product, which spreads a uniform hash
        // over any number of blocks without a division.
        ((probe.select as u128 * self.blocks.len() as u128) >> 64) as usize
    }

    fn holds(&self, probe: &Probe) -> bool {
        let block = &self.blocks[self.block(probe)];
        probe
            .bits
            .iter()
            .all(|&bit| block[bit as usize / 64] & (1 << (bit % 64)) != 0)
    }

    fn set(&mut self, probe: &Probe) {
        let b = self.block(probe);
        let block = &mut self.blocks[b];
        for &bit in &probe.bits {
            block[bit as usize / 64] |= 1 << (bit % 64);
        }
        self.entries += 1;
    }
}

/// Where an entry's bits are: its block, and its 7 bits (of 512) in it.
struct Probe {
    select: u64,
    bits: [u16; PROBES],
}

impl Probe {
    fn of(tree: Tree, key: &[u8]) -> Probe {
        let mut h = blake3::Hasher::new();
        h.update(tree.name().as_bytes());
        h.update(b"\0");
        h.update(key);
        let hash = h.finalize();
        let bytes = hash.as_bytes();
        let select = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let mut bits = [0u16; PROBES];
        for (i, bit) in bits.iter_mut().enumerate() {
            *bit = u16::from_le_bytes([bytes[8 + 2 * i], bytes[9 + 2 * i]]) % 512;
        }
        Probe { select, bits }
    }
}

/// The trees whose entries the filter holds.
pub fn covers(tree: Tree) -> bool {
    matches!(tree, Tree::Tasks | Tree::Failures | Tree::Latest)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    layers: Vec<Layer>,
}

impl Presence {
    /// An empty filter sized for `expected` entries before it adds a layer.
    pub fn new(expected: u64) -> Presence {
        Presence {
            layers: vec![Layer::new(expected.max(FIRST_CAPACITY))],
        }
    }

    /// Whether the index may hold `key` in `tree`: `false` is certain.
    pub fn may_hold(&self, tree: Tree, key: &[u8]) -> bool {
        let probe = Probe::of(tree, key);
        self.layers.iter().any(|layer| layer.holds(&probe))
    }

    /// Notes that the index holds `key` in `tree` (from now on, `may_hold` says so).
    pub fn insert(&mut self, tree: Tree, key: &[u8]) {
        let probe = Probe::of(tree, key);
        // Already answered "maybe" (put before, or a false positive that stays one): the
        // entry is not counted twice against the layer's capacity.
        if self.layers.iter().any(|layer| layer.holds(&probe)) {
            return;
        }
        let last = self.layers.last().expect("a filter has a layer");
        if last.entries >= last.capacity {
            let capacity = last.capacity * GROWTH;
            self.layers.push(Layer::new(capacity));
        }
        self.layers.last_mut().unwrap().set(&probe);
    }

    /// Entries put in it (a false positive at insertion is not counted).
    pub fn entries(&self) -> u64 {
        self.layers.iter().map(|l| l.entries).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let blocks: usize = self.layers.iter().map(|l| l.blocks.len()).sum();
        let mut out = Vec::with_capacity(16 + self.layers.len() * 24 + blocks * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.layers.len() as u64).to_le_bytes());
        for layer in &self.layers {
            for n in [layer.capacity, layer.entries, layer.blocks.len() as u64] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            for block in &layer.blocks {
                for word in block {
                    out.extend_from_slice(&word.to_le_bytes());
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Presence> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                bail!("the presence filter is cut short");
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(8)? != MAGIC {
            bail!("not a presence filter (wrong magic)");
        }
        let number = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
        let count = number(take(8)?);
        let mut layers = Vec::new();
        for _ in 0..count {
            let capacity = number(take(8)?);
            let entries = number(take(8)?);
            let blocks = number(take(8)?);
            if blocks == 0 || blocks != (capacity * BITS_PER_ENTRY).div_ceil(512).max(1) {
                bail!("a layer of the presence filter has {blocks} blocks for {capacity} entries");
            }
            let words = take(blocks as usize * 64)?;
            let blocks = words
                .chunks_exact(64)
                .map(|b| std::array::from_fn(|i| number(&b[i * 8..i * 8 + 8])))
                .collect();
            layers.push(Layer {
                capacity,
                entries,
                blocks,
            });
        }
        if layers.is_empty() || !rest.is_empty() {
            bail!("the presence filter has no layer, or bytes after its last");
        }
        Ok(Presence { layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn what_was_put_in_is_always_held_and_what_was_not_rarely_is() {
        let mut filter = Presence::new(1000);
        for i in 0..100_000 {
            filter.insert(Tree::Tasks, &key(i));
        }
        // It grew in layers of 1000 (the first is at least FIRST_CAPACITY), 4×, …
        assert!((0..100_000).all(|i| filter.may_hold(Tree::Tasks, &key(i))));
        let false_maybes = (100_000..200_000)
            .filter(|&i| filter.may_hold(Tree::Tasks, &key(i)))
            .count();
        assert!(
            false_maybes < 2_000,
            "{false_maybes} false positives in 100,000"
        );
        // Trees are apart: a result's key is not a latest entry's.
        let other_tree = (0..10_000)
            .filter(|&i| filter.may_hold(Tree::Latest, &key(i)))
            .count();
        assert!(other_tree < 200, "{other_tree}");
    }

    #[test]
    fn it_grows_in_layers_without_its_entries() {
        let mut filter = Presence::new(0);
        let n = FIRST_CAPACITY * 4;
        for i in 0..n {
            filter.insert(Tree::Latest, &key(i));
        }
        assert_eq!(filter.layers.len(), 2, "{:?}", filter.layers.len());
        assert_eq!(filter.layers[1].capacity, FIRST_CAPACITY * 4);
        assert!(filter.entries() > n - n / 50 && filter.entries() <= n);
        assert!((0..n).all(|i| filter.may_hold(Tree::Latest, &key(i))));
    }

    #[test]
    fn it_reads_back_what_it_wrote_and_refuses_damaged_bytes() {
        let mut filter = Presence::new(10);
        for i in 0..(FIRST_CAPACITY + 10) {
            filter.insert(Tree::Failures, &key(i));
        }
        let bytes = filter.encode();
        assert_eq!(Presence::decode(&bytes).unwrap(), filter);
        let short = Presence::decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(short.to_string().contains("cut short"), "{short}");
        let mut longer = bytes.clone();
        longer.push(0);
        let after = Presence::decode(&longer).unwrap_err();
        assert!(after.to_string().contains("bytes after"), "{after}");
        let magic = Presence::decode(b"mvcmemo1\0\0\0\0\0\0\0\0").unwrap_err();
        assert!(magic.to_string().contains("wrong magic"), "{magic}");
        let mut lying = bytes.clone();
        lying[16] ^= 1; // the first layer's capacity
        let lie = Presence::decode(&lying).unwrap_err();
        assert!(lie.to_string().contains("blocks for"), "{lie}");
    }
}
