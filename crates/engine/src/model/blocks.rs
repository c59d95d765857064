//! Building blocks shared by every architecture: the attention half (RoPE, KV write, causal GQA,
//! output projection, residual) and the SwiGLU half (activation, down projection, residual).
//! Each arch file only says how its projections are laid out.

use super::config::ModelConfig;
use super::rope::{RopeSet, RopeTable};
use crate::backend::{AttnSeg, Backend};

/// Consecutive rows of one pass that continue one sequence: rows [row0, row0 + n_rows) of the
/// pass are positions [pos0, pos0 + n_rows) of the sequence in KV slot `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub slot: usize,
    pub row0: usize,
    pub n_rows: usize,
    pub pos0: usize,
    /// The LongRoPE factor set this sequence's K rows are rotated with.
    pub set: RopeSet,
}

/// One pass over `n_rows` rows, made of one or more segments (distinct slots, in row order).
/// Only attention looks at the segments; every other op works on rows alone, which is why
/// sequences can share a pass without changing each other's bits.
pub struct Step<'a> {
    pub n_rows: usize,
    pub segments: &'a [Segment],
    pub rope: &'a RopeTable,
}

/// Activation buffers for up to `max_rows` rows.
pub struct Scratch<B: Backend> {
    pub max_rows: usize,
    /// residual stream [n, n_embd]
    pub x: B::Buf,
    /// normed input [n, n_embd]
    pub h: B::Buf,
    /// fused projection output [n, max(qkv, 2*ff)]
    pub fused: B::Buf,
    /// [n, n_head*head_dim]
    pub q: B::Buf,
    /// [n, n_head_kv*head_dim]
    pub k: B::Buf,
    pub v: B::Buf,
    /// attention output [n, n_head*head_dim]
    pub att: B::Buf,
    /// projection back to the residual [n, n_embd]
    pub o: B::Buf,
    /// [n, n_ff]
    pub gate: B::Buf,
    pub up: B::Buf,
    pub act: B::Buf,
}

impl<B: Backend> Scratch<B> {
    pub fn new(b: &B, cfg: &ModelConfig, max_rows: usize) -> Scratch<B> {
        let n = max_rows;
        let q = cfg.n_embd_q();
        let kv = cfg.n_embd_kv();
        let fused = (q + 2 * kv).max(2 * cfg.n_ff);
        Scratch {
            max_rows,
            x: b.alloc(n * cfg.n_embd),
            h: b.alloc(n * cfg.n_embd),
            fused: b.alloc(n * fused),
            q: b.alloc(n * q),
            k: b.alloc(n * kv),
            v: b.alloc(n * kv),
            att: b.alloc(n * q),
            o: b.alloc(n * cfg.n_embd),
            gate: b.alloc(n * cfg.n_ff),
            up: b.alloc(n * cfg.n_ff),
            act: b.alloc(n * cfg.n_ff),
        }
    }
}

/// Given s.q / s.k / s.v: rotate, write K/V rows into each segment's cache slot, attend,
/// project, add to s.x. `kv` holds this layer's (K, V) of every slot.
pub fn attention_block<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    step: &Step,
    s: &mut Scratch<B>,
    kv: &mut [(B::Buf, B::Buf)],
    attn_output: &B::Matrix,
) {
    let n = step.n_rows;
    let (wq, wkv, hd) = (cfg.n_embd_q(), cfg.n_embd_kv(), cfg.head_dim);
    for g in step.segments {
        let (r0, m, p0) = (g.row0, g.n_rows, g.pos0);
        let (k_cache, v_cache) = &mut kv[g.slot];
        b.rope(step.rope, g.set, &mut s.q, r0, m, wq, hd, p0);
        b.rope(step.rope, g.set, &mut s.k, r0, m, wkv, hd, p0);
        b.kv_write(k_cache, &s.k, r0, wkv, p0, m);
        b.kv_write(v_cache, &s.v, r0, wkv, p0, m);
    }
    let segs: Vec<AttnSeg<'_, B::Buf>> = step
        .segments
        .iter()
        .map(|g| AttnSeg {
            row0: g.row0,
            n_rows: g.n_rows,
            pos0: g.pos0,
            k_cache: &kv[g.slot].0,
            v_cache: &kv[g.slot].1,
        })
        .collect();
    b.attention(&s.q, &segs, cfg.n_head, cfg.n_head_kv, hd, &mut s.att);
    b.matmul(attn_output, &s.att, n, &mut s.o);
    b.add_assign(&mut s.x, &s.o, n * cfg.n_embd);
}

/// Given s.gate / s.up: SwiGLU, down projection, add to s.x.
pub fn ffn_block<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    n_rows: usize,
    s: &mut Scratch<B>,
    ffn_down: &B::Matrix,
) {
    b.swiglu(&s.gate, &s.up, n_rows * cfg.n_ff, &mut s.act);
    b.matmul(ffn_down, &s.act, n_rows, &mut s.o);
    b.add_assign(&mut s.x, &s.o, n_rows * cfg.n_embd);
}
