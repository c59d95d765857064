//! Model definition: config from GGUF, one file per architecture, RoPE, and the shard that runs
//! a layer range with its own KV state.

pub mod blocks;
pub mod config;
pub mod llama;
pub mod phi3;
pub mod rope;
pub mod weights;

use std::ops::Range;
use std::sync::Arc;

use crate::backend::{Backend, OpCounts};
use crate::kv_cache::KvCache;
use crate::EngineError;
use blocks::{Scratch, Step};
use config::{Arch, ModelConfig};
use rope::{RopeSet, RopeTable};
use weights::TensorSource;

/// Rows processed per pass; longer inputs are split into blocks of this many rows.
pub const MAX_BLOCK_ROWS: usize = 64;

/// A typed layer per architecture.
pub enum Layer<B: Backend> {
    Llama(llama::LlamaLayer<B>),
    Phi3(phi3::Phi3Layer<B>),
}

impl<B: Backend> Layer<B> {
    fn load(b: &B, src: &TensorSource, cfg: &ModelConfig, i: usize) -> Result<Self, EngineError> {
        Ok(match cfg.arch {
            Arch::Llama => Layer::Llama(llama::LlamaLayer::load(b, src, cfg, i)?),
            Arch::Phi3 => Layer::Phi3(phi3::Phi3Layer::load(b, src, cfg, i)?),
        })
    }

    fn forward(
        &self,
        b: &B,
        cfg: &ModelConfig,
        step: &Step,
        s: &mut Scratch<B>,
        kv: &mut (B::Buf, B::Buf),
    ) {
        match self {
            Layer::Llama(l) => l.forward(b, cfg, step, s, kv),
            Layer::Phi3(l) => l.forward(b, cfg, step, s, kv),
        }
    }
}

/// Which part of the model a shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    /// Layers [start, end).
    pub layers: Range<usize>,
    pub has_embed: bool,
    /// Holds output_norm and the LM head.
    pub has_head: bool,
}

pub struct ShardWeights<B: Backend> {
    pub spec: ShardSpec,
    /// token_embd [n_vocab, n_embd]
    pub embed: Option<Arc<B::Matrix>>,
    pub layers: Vec<Layer<B>>,
    pub output_norm: Option<B::Vector>,
    /// output (or token_embd when tied, shared with `embed`) [n_vocab, n_embd]
    pub output: Option<Arc<B::Matrix>>,
}

impl<B: Backend> ShardWeights<B> {
    /// Load the tensors of `spec` from `src`. Layer tensors keep their global names
    /// (`blk.{i}.*`), so shard files and the full model are read by the same code.
    pub fn load(
        b: &B,
        src: &TensorSource,
        cfg: &ModelConfig,
        spec: ShardSpec,
    ) -> Result<Self, EngineError> {
        if spec.layers.start > spec.layers.end || spec.layers.end > cfg.n_layer {
            return Err(EngineError::Model(format!(
                "layer range {:?} is outside the model's {} layers",
                spec.layers, cfg.n_layer
            )));
        }
        let embd_shape = [cfg.n_embd, cfg.n_vocab];
        let embed = if spec.has_embed {
            Some(Arc::new(b.load_matrix(&embed_tensor(src, cfg)?)?))
        } else {
            None
        };
        let layers = spec
            .layers
            .clone()
            .map(|i| Layer::load(b, src, cfg, i))
            .collect::<Result<Vec<_>, _>>()?;
        let (output_norm, output) = if spec.has_head {
            let norm = b.load_vector(&src.get_shaped("output_norm.weight", &[cfg.n_embd])?)?;
            let out = if src.has("output.weight") {
                Arc::new(b.load_matrix(&src.get_shaped("output.weight", &embd_shape)?)?)
            } else if let Some(e) = &embed {
                e.clone()
            } else {
                Arc::new(b.load_matrix(&embed_tensor(src, cfg)?)?)
            };
            (Some(norm), Some(out))
        } else {
            (None, None)
        };
        Ok(ShardWeights {
            spec,
            embed,
            layers,
            output_norm,
            output,
        })
    }
}

/// token_embd; it may have more rows than the vocabulary (padding), which are never used.
fn embed_tensor(src: &TensorSource, cfg: &ModelConfig) -> Result<weights::HostTensor, EngineError> {
    let t = src.get("token_embd.weight")?;
    if t.info.shape.len() != 2 || t.info.shape[0] != cfg.n_embd as u64 {
        return Err(EngineError::Model(format!(
            "token_embd.weight has shape {:?}, expected [{}, n_vocab]",
            t.info.shape, cfg.n_embd
        )));
    }
    Ok(t)
}

/// What flows between shards.
#[derive(Debug, Clone)]
pub enum Activations {
    Tokens(Vec<u32>),
    /// [n_rows, n_embd]
    Hidden(Vec<f32>),
}

impl Activations {
    pub fn n_rows(&self, n_embd: usize) -> usize {
        match self {
            Activations::Tokens(t) => t.len(),
            Activations::Hidden(h) => h.len() / n_embd,
        }
    }
}

/// Which rows of a pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    None,
    Last,
    All,
}

/// Output of a shard: the hidden state for the next shard, or logits from the last one.
#[derive(Debug, Clone)]
pub enum ShardOutput {
    Hidden(Vec<f32>),
    /// [n_logit_rows, n_vocab]
    Logits(Vec<f32>),
}

/// A shard as the pipeline sees it, whatever its backend.
pub trait ShardRunner: Send {
    fn spec(&self) -> &ShardSpec;
    fn device(&self) -> String;
    /// Run the shard over rows at positions [pos0, pos0 + n), writing their KV rows.
    fn forward(
        &mut self,
        input: &Activations,
        pos0: usize,
        set: RopeSet,
        rope: &RopeTable,
        logits: LogitRows,
    ) -> Result<ShardOutput, EngineError>;
    fn truncate(&mut self, len: usize);
    fn op_counts(&self) -> OpCounts;
    fn reset_op_counts(&self);
    /// Check the hidden state for NaN/Inf after every layer (validation probes).
    fn set_check_finite(&mut self, on: bool);
    /// Time spent since the last reset.
    fn timing(&self) -> ShardTiming;
    /// The bits of the valid K and V rows of every layer.
    fn kv_bits(&self) -> Vec<u32>;
    fn reset_timing(&mut self);
}

/// A layer range with its weights, KV state and scratch buffers on one backend.
pub struct Shard<B: Backend> {
    pub backend: Arc<B>,
    pub cfg: Arc<ModelConfig>,
    pub weights: Arc<ShardWeights<B>>,
    pub kv: KvCache<B>,
    scratch: Scratch<B>,
    logits_buf: B::Buf,
    check_finite: bool,
    timing: ShardTiming,
}

/// Wall time a shard spent, split into its layers and its LM head.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardTiming {
    pub layers_s: f64,
    pub head_s: f64,
    pub passes: u64,
}

impl<B: Backend> Shard<B> {
    pub fn new(
        backend: Arc<B>,
        cfg: Arc<ModelConfig>,
        weights: Arc<ShardWeights<B>>,
        n_ctx: usize,
    ) -> Shard<B> {
        let b = &*backend;
        let kv = KvCache::new(b, weights.layers.len(), n_ctx, cfg.n_embd_kv());
        let scratch = Scratch::new(b, &cfg, MAX_BLOCK_ROWS);
        let logits_buf = if weights.spec.has_head {
            b.alloc(MAX_BLOCK_ROWS * cfg.n_vocab)
        } else {
            b.alloc(0)
        };
        Shard {
            backend,
            cfg,
            weights,
            kv,
            scratch,
            logits_buf,
            check_finite: false,
            timing: ShardTiming::default(),
        }
    }
}

impl<B: Backend> Shard<B> {
    fn forward_inner(
        &mut self,
        input: &Activations,
        pos0: usize,
        set: RopeSet,
        rope: &RopeTable,
        logits: LogitRows,
    ) -> Result<ShardOutput, EngineError> {
        let b = &*self.backend;
        let cfg = &*self.cfg;
        let w = &*self.weights;
        let d = cfg.n_embd;
        let n_total = input.n_rows(d);
        if pos0 > self.kv.len() {
            return Err(EngineError::BadInput(format!(
                "pass starts at position {pos0} but the cache holds only {} rows",
                self.kv.len()
            )));
        }
        if pos0 + n_total > self.kv.n_ctx || pos0 + n_total > rope.n_ctx() {
            return Err(EngineError::BadInput(format!(
                "{} tokens do not fit in the context of {} (use a larger --ctx)",
                pos0 + n_total,
                self.kv.n_ctx
            )));
        }
        let mut hidden_out = Vec::new();
        let mut logits_out = Vec::new();
        let mut r0 = 0;
        while r0 < n_total {
            let n = (n_total - r0).min(MAX_BLOCK_ROWS);
            let s = &mut self.scratch;
            match input {
                Activations::Tokens(ids) => {
                    let e = w.embed.as_ref().ok_or_else(|| {
                        EngineError::Model("token ids given to a shard without token_embd".into())
                    })?;
                    b.embed(e, &ids[r0..r0 + n], &mut s.x)?;
                }
                Activations::Hidden(h) => b.upload(&h[r0 * d..(r0 + n) * d], &mut s.x),
            }
            let t_layers = std::time::Instant::now();
            let step = Step {
                pos0: pos0 + r0,
                n_rows: n,
                set,
                rope,
            };
            for (li, (layer, kv)) in w.layers.iter().zip(self.kv.layers.iter_mut()).enumerate() {
                layer.forward(b, cfg, &step, s, kv);
                if self.check_finite {
                    let mut x = vec![0f32; n * d];
                    b.download(&s.x, 0, &mut x);
                    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                        return Err(EngineError::NonFinite {
                            layer: w.spec.layers.start + li,
                            what: format!("hidden state row {} value {}", r0 + i / d, x[i]),
                        });
                    }
                }
            }
            self.kv.set_len(pos0 + r0 + n);
            let t_head = std::time::Instant::now();
            self.timing.layers_s += (t_head - t_layers).as_secs_f64();
            match (&w.output_norm, &w.output) {
                (Some(norm), Some(out)) => {
                    let rows: Range<usize> = match logits {
                        LogitRows::None => 0..0,
                        LogitRows::All => 0..n,
                        LogitRows::Last if r0 + n == n_total => n - 1..n,
                        LogitRows::Last => 0..0,
                    };
                    if !rows.is_empty() {
                        b.rms_norm(&s.x, norm, cfg.rms_eps, n, &mut s.h);
                        let src = if rows.len() == n {
                            &s.h
                        } else {
                            // Only the last row: view h as one row of n*d and take its tail.
                            b.copy_cols(&s.h, n * d, (n - 1) * d, d, 1, &mut s.o);
                            &s.o
                        };
                        b.matmul(out, src, rows.len(), &mut self.logits_buf);
                        let v = cfg.n_vocab;
                        let start = logits_out.len();
                        logits_out.resize(start + rows.len() * v, 0.0);
                        b.download(&self.logits_buf, 0, &mut logits_out[start..]);
                    }
                }
                _ => {
                    let start = hidden_out.len();
                    hidden_out.resize(start + n * d, 0.0);
                    b.download(&s.x, 0, &mut hidden_out[start..]);
                }
            }
            self.timing.head_s += t_head.elapsed().as_secs_f64();
            r0 += n;
        }
        self.timing.passes += 1;
        Ok(if w.spec.has_head {
            ShardOutput::Logits(logits_out)
        } else {
            ShardOutput::Hidden(hidden_out)
        })
    }
}

impl<B: Backend> ShardRunner for Shard<B> {
    fn spec(&self) -> &ShardSpec {
        &self.weights.spec
    }

    fn device(&self) -> String {
        self.backend.device_name()
    }

    fn forward(
        &mut self,
        input: &Activations,
        pos0: usize,
        set: RopeSet,
        rope: &RopeTable,
        logits: LogitRows,
    ) -> Result<ShardOutput, EngineError> {
        let backend = self.backend.clone();
        backend.scope(|| self.forward_inner(input, pos0, set, rope, logits))
    }

    fn truncate(&mut self, len: usize) {
        self.kv.truncate(len);
    }

    fn op_counts(&self) -> OpCounts {
        self.backend.op_counts()
    }

    fn reset_op_counts(&self) {
        self.backend.reset_op_counts()
    }

    fn set_check_finite(&mut self, on: bool) {
        self.check_finite = on;
    }

    fn timing(&self) -> ShardTiming {
        self.timing
    }

    fn reset_timing(&mut self) {
        self.timing = ShardTiming::default();
    }

    fn kv_bits(&self) -> Vec<u32> {
        let n = self.kv.len() * self.kv.width;
        let b = &*self.backend;
        let mut out = Vec::new();
        let mut row = vec![0f32; n];
        for (k, v) in &self.kv.layers {
            for buf in [k, v] {
                b.download(buf, 0, &mut row);
                out.extend(row.iter().map(|x| x.to_bits()));
            }
        }
        out
    }
}
