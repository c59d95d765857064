//! phi3: fused attn_qkv ([Q | K | V] rows) and fused ffn_up (gate rows first, then up);
//! NEOX (rotate-half) RoPE over the first n_rot dims of each head; LongRoPE factors.

use super::blocks::{attention_block, ffn_block, Scratch, Step};
use super::config::ModelConfig;
use super::weights::TensorSource;
use crate::backend::Backend;
use crate::EngineError;

// hparams: see config.rs (all read from `phi3.*` keys, plus rope_factors_{long,short}).

// tensors
pub struct Phi3Layer<B: Backend> {
    pub attn_norm: B::Vector,
    /// [n_head*head_dim + 2*n_head_kv*head_dim, n_embd]
    pub attn_qkv: B::Matrix,
    /// [n_embd, n_head*head_dim]
    pub attn_output: B::Matrix,
    pub ffn_norm: B::Vector,
    /// [2*n_ff, n_embd]: gate rows, then up rows
    pub ffn_up: B::Matrix,
    /// [n_embd, n_ff]
    pub ffn_down: B::Matrix,
}

impl<B: Backend> Phi3Layer<B> {
    pub fn load(
        b: &B,
        src: &TensorSource,
        cfg: &ModelConfig,
        i: usize,
    ) -> Result<Self, EngineError> {
        let (d, q, kv, ff) = (cfg.n_embd, cfg.n_embd_q(), cfg.n_embd_kv(), cfg.n_ff);
        let m = |name: &str, shape: [usize; 2]| -> Result<B::Matrix, EngineError> {
            b.load_matrix(&src.get_shaped(&format!("blk.{i}.{name}.weight"), &shape)?)
        };
        let v = |name: &str| -> Result<B::Vector, EngineError> {
            b.load_vector(&src.get_shaped(&format!("blk.{i}.{name}.weight"), &[d])?)
        };
        Ok(Phi3Layer {
            attn_norm: v("attn_norm")?,
            attn_qkv: m("attn_qkv", [d, q + 2 * kv])?,
            attn_output: m("attn_output", [q, d])?,
            ffn_norm: v("ffn_norm")?,
            ffn_up: m("ffn_up", [d, 2 * ff])?,
            ffn_down: m("ffn_down", [ff, d])?,
        })
    }

    // forward
    pub fn forward(
        &self,
        b: &B,
        cfg: &ModelConfig,
        step: &Step,
        s: &mut Scratch<B>,
        kv: &mut [(B::Buf, B::Buf)],
    ) {
        let n = step.n_rows;
        let (q, kvw, ff) = (cfg.n_embd_q(), cfg.n_embd_kv(), cfg.n_ff);
        b.rms_norm(&s.x, &self.attn_norm, cfg.rms_eps, n, &mut s.h);
        b.matmul(&self.attn_qkv, &s.h, n, &mut s.fused);
        let w = q + 2 * kvw;
        b.copy_cols(&s.fused, w, 0, q, n, &mut s.q);
        b.copy_cols(&s.fused, w, q, kvw, n, &mut s.k);
        b.copy_cols(&s.fused, w, q + kvw, kvw, n, &mut s.v);
        attention_block(b, cfg, step, s, kv, &self.attn_output);
        b.rms_norm(&s.x, &self.ffn_norm, cfg.rms_eps, n, &mut s.h);
        b.matmul(&self.ffn_up, &s.h, n, &mut s.fused);
        b.copy_cols(&s.fused, 2 * ff, 0, ff, n, &mut s.gate);
        b.copy_cols(&s.fused, 2 * ff, ff, ff, n, &mut s.up);
        ffn_block(b, cfg, n, s, &self.ffn_down);
    }
}
