//! llama: separate Q/K/V and gate/up projections; Q/K rows in GGUF's interleaved (NORM) order.

use super::blocks::{attention_block, ffn_block, Scratch, Step};
use super::config::ModelConfig;
use super::weights::TensorSource;
use crate::backend::Backend;
use crate::EngineError;

// hparams: see config.rs (all read from `llama.*` keys).

// tensors
pub struct LlamaLayer<B: Backend> {
    pub attn_norm: B::Vector,
    /// [n_head*head_dim, n_embd]
    pub attn_q: B::Matrix,
    /// [n_head_kv*head_dim, n_embd]
    pub attn_k: B::Matrix,
    pub attn_v: B::Matrix,
    /// [n_embd, n_head*head_dim]
    pub attn_output: B::Matrix,
    pub ffn_norm: B::Vector,
    /// [n_ff, n_embd]
    pub ffn_gate: B::Matrix,
    pub ffn_up: B::Matrix,
    /// [n_embd, n_ff]
    pub ffn_down: B::Matrix,
}

impl<B: Backend> LlamaLayer<B> {
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
        Ok(LlamaLayer {
            attn_norm: v("attn_norm")?,
            attn_q: m("attn_q", [d, q])?,
            attn_k: m("attn_k", [d, kv])?,
            attn_v: m("attn_v", [d, kv])?,
            attn_output: m("attn_output", [q, d])?,
            ffn_norm: v("ffn_norm")?,
            ffn_gate: m("ffn_gate", [d, ff])?,
            ffn_up: m("ffn_up", [d, ff])?,
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
        b.rms_norm(&s.x, &self.attn_norm, cfg.rms_eps, n, &mut s.h);
        b.matmul_multi(
            &[&self.attn_q, &self.attn_k, &self.attn_v],
            &s.h,
            n,
            &mut [&mut s.q, &mut s.k, &mut s.v],
        );
        attention_block(b, cfg, step, s, kv, &self.attn_output);
        b.rms_norm(&s.x, &self.ffn_norm, cfg.rms_eps, n, &mut s.h);
        b.matmul_multi(
            &[&self.ffn_gate, &self.ffn_up],
            &s.h,
            n,
            &mut [&mut s.gate, &mut s.up],
        );
        ffn_block(b, cfg, n, s, &self.ffn_down);
    }
}
