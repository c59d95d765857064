//! Byte-pair merging of one pre-token.
//!
//! Symbols start as one token per byte (the vocabulary's byte chars); the adjacent pair with
//! the lowest merge rank is merged first, the leftmost on ties, until no listed pair is left.
//! This is the order llama.cpp's priority queue produces (rank, then left position).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// A fast non-cryptographic hasher (the rustc "Fx" hash) for the vocabulary maps.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// "No token".
pub const NONE: u32 = u32::MAX;

/// The merge table: (left id, right id) → (rank, merged id).
pub struct Merges {
    table: FxMap<u64, (u32, u32)>,
    /// The token of each byte's char, or NONE when the vocabulary lacks it.
    byte_ids: [u32; 256],
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    ((left as u64) << 32) | right as u64
}

/// A queued pair: (rank, left index, right index, left id, right id).
type Candidate = (u32, u32, u32, u32, u32);

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
}

impl Merges {
    pub fn new(byte_ids: [u32; 256], capacity: usize) -> Merges {
        let mut table = FxMap::default();
        table.reserve(capacity);
        Merges { table, byte_ids }
    }

    /// Add a merge; the first rank given for a pair wins, as in llama.cpp.
    pub fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.table
            .entry(pair_key(left, right))
            .or_insert((rank, merged));
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    #[inline]
    fn get(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        if left == NONE || right == NONE {
            return None;
        }
        self.table.get(&pair_key(left, right)).copied()
    }

    /// Encode the bytes of one pre-token. Bytes without a token are dropped, as llama.cpp does.
    pub fn encode(&self, bytes: &[u8], out: &mut Vec<u32>) {
        match bytes.len() {
            0 => return,
            1 => {
                let id = self.byte_ids[bytes[0] as usize];
                if id != NONE {
                    out.push(id);
                }
                return;
            }
            _ => {}
        }
        let n = bytes.len();
        let mut syms: Vec<Sym> = bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| Sym {
                id: self.byte_ids[b as usize],
                prev: if i == 0 { NONE } else { i as u32 - 1 },
                next: if i + 1 == n { NONE } else { i as u32 + 1 },
            })
            .collect();
        // Lowest rank first, then leftmost.
        let mut heap: BinaryHeap<Reverse<Candidate>> = BinaryHeap::with_capacity(n);
        let push = |heap: &mut BinaryHeap<_>, syms: &[Sym], l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (li, ri) = (syms[l as usize].id, syms[r as usize].id);
            if let Some((rank, _)) = self.get(li, ri) {
                heap.push(Reverse((rank, l, r, li, ri)));
            }
        };
        for i in 0..n as u32 - 1 {
            push(&mut heap, &syms, i, i + 1);
        }
        while let Some(Reverse((_, l, r, li, ri))) = heap.pop() {
            let (lu, ru) = (l as usize, r as usize);
            if syms[lu].id != li || syms[ru].id != ri || syms[lu].next != r {
                continue; // stale: one side has changed since this pair was queued
            }
            let Some((_, merged)) = self.get(li, ri) else {
                continue;
            };
            let after = syms[ru].next;
            syms[lu].id = merged;
            syms[lu].next = after;
            syms[ru].id = NONE;
            syms[ru].next = NONE;
            if after != NONE {
                syms[after as usize].prev = l;
            }
            let before = syms[lu].prev;
            push(&mut heap, &syms, before, l);
            push(&mut heap, &syms, l, after);
        }
        let mut i = 0u32;
        while i != NONE {
            let s = syms[i as usize];
            if s.id != NONE {
                out.push(s.id);
            }
            i = s.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vocabulary: bytes a=0 b=1 c=2, then ab=3 bc=4 abc=5 aa=6.
    fn merges() -> Merges {
        let mut byte_ids = [NONE; 256];
        byte_ids[b'a' as usize] = 0;
        byte_ids[b'b' as usize] = 1;
        byte_ids[b'c' as usize] = 2;
        let mut m = Merges::new(byte_ids, 4);
        m.insert(1, 2, 0, 4); // b c
        m.insert(0, 1, 1, 3); // a b
        m.insert(0, 4, 2, 5); // a bc
        m.insert(0, 0, 3, 6); // a a
        m.insert(1, 2, 9, 3); // duplicate pair: the first rank stays
        m
    }

    fn enc(m: &Merges, s: &str) -> Vec<u32> {
        let mut out = Vec::new();
        m.encode(s.as_bytes(), &mut out);
        out
    }

    #[test]
    fn lowest_rank_first() {
        let m = merges();
        assert_eq!(m.len(), 4);
        assert_eq!(enc(&m, "abc"), [5]); // bc (rank 0) before ab (rank 1), then a+bc
        assert_eq!(enc(&m, "ab"), [3]);
        assert_eq!(enc(&m, "abab"), [3, 3]);
        assert_eq!(enc(&m, "aaa"), [6, 0]); // leftmost on ties
        assert_eq!(enc(&m, "aaaa"), [6, 6]);
        assert_eq!(enc(&m, "axb"), [0, 1]); // 'x' has no token: dropped
        assert_eq!(enc(&m, "c"), [2]);
        assert_eq!(enc(&m, ""), Vec::<u32>::new());
    }
}
