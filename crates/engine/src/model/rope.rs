//! Rotary position embeddings: NORM (adjacent pairs, GGUF llama) and NEOX (halves, phi3),
//! partial rotary, and Phi-3 LongRoPE with transformers' semantics.
//!
//! cos/sin follow transformers' float32 arithmetic: inv_freq[i] = 1 / (factor[i] * base^(2i/n_rot)),
//! angle = pos * inv_freq[i] (one f32 product), then cos/sin scaled by the attention factor.
//! The tables are shared by every path, so a row's rotation never depends on the batch.

use super::config::{RopeConfig, RopeKind};

/// Which LongRoPE factor set a pass uses. Models without LongRoPE always use `Short`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeSet {
    Short,
    Long,
}

#[derive(Debug, Clone)]
pub struct RopeTable {
    pub kind: RopeKind,
    pub n_rot: usize,
    n_ctx: usize,
    /// [n_ctx, n_rot/2] for the short (or only) factor set.
    cos_short: Vec<f32>,
    sin_short: Vec<f32>,
    /// [n_ctx, n_rot/2] for the long set; empty without LongRoPE.
    cos_long: Vec<f32>,
    sin_long: Vec<f32>,
    /// LongRoPE's original context; None without LongRoPE.
    pub original_context: Option<usize>,
}

fn table(
    n_ctx: usize,
    n_rot: usize,
    base: f32,
    factors: Option<&[f32]>,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let half = n_rot / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (2 * i) as f32 / n_rot as f32;
            let f = factors.map_or(1.0, |f| f[i]);
            1.0 / (f * base.powf(exponent))
        })
        .collect();
    let mut cos = vec![0f32; n_ctx * half];
    let mut sin = vec![0f32; n_ctx * half];
    for p in 0..n_ctx {
        for i in 0..half {
            let angle = (p as f32) * inv_freq[i];
            // f64 cos of the f32 angle rounds to the correctly rounded f32 result.
            cos[p * half + i] = ((angle as f64).cos() as f32) * scale;
            sin[p * half + i] = ((angle as f64).sin() as f32) * scale;
        }
    }
    (cos, sin)
}

impl RopeTable {
    pub fn new(cfg: &RopeConfig, n_ctx: usize) -> RopeTable {
        let (cos_short, sin_short, cos_long, sin_long, original_context) = match &cfg.longrope {
            None => {
                let (c, s) = table(n_ctx, cfg.n_rot, cfg.freq_base, None, 1.0);
                (c, s, Vec::new(), Vec::new(), None)
            }
            Some(lr) => {
                let (cs, ss) = table(
                    n_ctx,
                    cfg.n_rot,
                    cfg.freq_base,
                    Some(&lr.short_factors),
                    lr.attn_factor,
                );
                let (cl, sl) = table(
                    n_ctx,
                    cfg.n_rot,
                    cfg.freq_base,
                    Some(&lr.long_factors),
                    lr.attn_factor,
                );
                (cs, ss, cl, sl, Some(lr.original_context_length as usize))
            }
        };
        RopeTable {
            kind: cfg.kind,
            n_rot: cfg.n_rot,
            n_ctx,
            cos_short,
            sin_short,
            cos_long,
            sin_long,
            original_context,
        }
    }

    /// The factor set transformers uses for a sequence whose last position is `max_pos`.
    pub fn set_for(&self, max_pos: usize) -> RopeSet {
        match self.original_context {
            Some(orig) if max_pos + 1 > orig => RopeSet::Long,
            _ => RopeSet::Short,
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// (cos, sin) rows for one position, each [n_rot/2].
    pub fn row(&self, set: RopeSet, pos: usize) -> (&[f32], &[f32]) {
        let half = self.n_rot / 2;
        let (c, s) = match set {
            RopeSet::Long if !self.cos_long.is_empty() => (&self.cos_long, &self.sin_long),
            _ => (&self.cos_short, &self.sin_short),
        };
        (
            &c[pos * half..(pos + 1) * half],
            &s[pos * half..(pos + 1) * half],
        )
    }

    /// Rotate one row of `n_head` heads of `head_dim` in place.
    pub fn apply_row(&self, set: RopeSet, pos: usize, x: &mut [f32], head_dim: usize) {
        let (cos, sin) = self.row(set, pos);
        let half = self.n_rot / 2;
        for head in x.chunks_exact_mut(head_dim) {
            match self.kind {
                RopeKind::Norm => {
                    for i in 0..half {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * cos[i] - x1 * sin[i];
                        head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                    }
                }
                RopeKind::Neox => {
                    for i in 0..half {
                        let (x0, x1) = (head[i], head[i + half]);
                        head[i] = x0 * cos[i] - x1 * sin[i];
                        head[i + half] = x1 * cos[i] + x0 * sin[i];
                    }
                }
            }
        }
    }
}
