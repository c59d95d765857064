//! Per-shard KV cache: for each layer and each sequence slot, K and V rows
//! [n_ctx, n_head_kv*head_dim] (K after RoPE). A shard has one slot per sequence it can hold
//! at once; sequences in different slots can share a pass (see `model::blocks::Segment`).
//! Rollback is `truncate(slot, len)`: rows past `len` are simply overwritten by the next write.
//!
//! Buffers are allocated zeroed; on the CPU that is a lazy mapping, so a slot's memory becomes
//! resident only as far as its sequence has grown.

use crate::backend::Backend;

pub struct KvCache<B: Backend> {
    /// `layers[l][slot]` is the (K, V) pair of layer `l` of the shard for that slot.
    pub layers: Vec<Vec<(B::Buf, B::Buf)>>,
    pub n_ctx: usize,
    pub width: usize,
    len: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(b: &B, n_layers: usize, n_slots: usize, n_ctx: usize, width: usize) -> KvCache<B> {
        KvCache {
            layers: (0..n_layers)
                .map(|_| {
                    (0..n_slots)
                        .map(|_| (b.alloc(n_ctx * width), b.alloc(n_ctx * width)))
                        .collect()
                })
                .collect(),
            n_ctx,
            width,
            len: vec![0; n_slots],
        }
    }

    pub fn n_slots(&self) -> usize {
        self.len.len()
    }

    /// Positions [0, len) of `slot` hold valid rows.
    pub fn len(&self, slot: usize) -> usize {
        self.len[slot]
    }

    /// Mark rows [0, len) of `slot` valid after a pass wrote them.
    pub fn set_len(&mut self, slot: usize, len: usize) {
        debug_assert!(len <= self.n_ctx);
        self.len[slot] = len;
    }

    /// Roll `slot` back to its first `len` positions.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.len[slot] = self.len[slot].min(len);
    }

    /// Bytes reserved for all slots (on the CPU, resident only once written).
    pub fn bytes(&self) -> usize {
        self.layers.len() * self.n_slots() * 2 * self.n_ctx * self.width * 4
    }
}
