//! Building blocks shared by every architecture: the attention half (RoPE, KV write, causal GQA,
//! output projection, residual) and the SwiGLU half (activation, down projection, residual).
//! Each arch file only says how its projections are laid out.

use super::config::ModelConfig;
use super::rope::{RopeSet, RopeTable};
use crate::backend::Backend;

/// One pass over `n_rows` consecutive positions starting at `pos0`.
pub struct Step<'a> {
    pub pos0: usize,
    pub n_rows: usize,
    pub set: RopeSet,
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

/// Given s.q / s.k / s.v: rotate, write K/V rows into the cache, attend, project, add to s.x.
pub fn attention_block<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    step: &Step,
    s: &mut Scratch<B>,
    kv: &mut (B::Buf, B::Buf),
    attn_output: &B::Matrix,
) {
    let n = step.n_rows;
    let (wq, wkv) = (cfg.n_embd_q(), cfg.n_embd_kv());
    b.rope(
        step.rope,
        step.set,
        &mut s.q,
        n,
        wq,
        cfg.head_dim,
        step.pos0,
    );
    b.rope(
        step.rope,
        step.set,
        &mut s.k,
        n,
        wkv,
        cfg.head_dim,
        step.pos0,
    );
    b.kv_write(&mut kv.0, &s.k, wkv, step.pos0, n);
    b.kv_write(&mut kv.1, &s.v, wkv, step.pos0, n);
    b.attention(
        &s.q,
        &kv.0,
        &kv.1,
        cfg.n_head,
        cfg.n_head_kv,
        cfg.head_dim,
        step.pos0,
        n,
        &mut s.att,
    );
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
