//! Per-shard KV cache: for each layer, K and V rows [n_ctx, n_head_kv*head_dim] (K after RoPE).
//! Rollback is `truncate(len)`: rows past `len` are simply overwritten by the next write.

use crate::backend::Backend;

pub struct KvCache<B: Backend> {
    /// One (K, V) pair per layer of the shard.
    pub layers: Vec<(B::Buf, B::Buf)>,
    pub n_ctx: usize,
    pub width: usize,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(b: &B, n_layers: usize, n_ctx: usize, width: usize) -> KvCache<B> {
        KvCache {
            layers: (0..n_layers)
                .map(|_| (b.alloc(n_ctx * width), b.alloc(n_ctx * width)))
                .collect(),
            n_ctx,
            width,
            len: 0,
        }
    }

    /// Positions [0, len) hold valid rows.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Mark rows [0, len) valid after a pass wrote them.
    pub fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.n_ctx);
        self.len = len;
    }

    /// Roll back to the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.n_ctx * self.width * 4
    }
}
