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
use blocks::{Scratch, Segment, Step};
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
        kv: &mut [(B::Buf, B::Buf)],
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

/// Run `ids` through a pipeline of shards, each handing its hidden state to the next, with
/// `pass` running one shard; returns the last shard's logits.
pub fn run_pipeline(
    shards: &mut [Box<dyn ShardRunner>],
    ids: Vec<u32>,
    mut pass: impl FnMut(&mut dyn ShardRunner, &Activations) -> Result<ShardOutput, EngineError>,
) -> Result<Vec<f32>, EngineError> {
    let mut act = Activations::Tokens(ids);
    let n = shards.len();
    for (i, shard) in shards.iter_mut().enumerate() {
        match pass(shard.as_mut(), &act)? {
            ShardOutput::Hidden(h) => act = Activations::Hidden(h),
            ShardOutput::Logits(l) if i + 1 == n => return Ok(l),
            ShardOutput::Logits(_) => {
                return Err(EngineError::Model(format!(
                    "shard {i} produced logits but is not the last shard"
                )))
            }
        }
    }
    Err(EngineError::Model("the last shard holds no LM head".into()))
}

/// One sequence's rows in a pass: `n_rows` rows at positions [pos0, pos0 + n_rows) of the
/// sequence held in KV slot `slot`, and which of them need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRows {
    pub slot: usize,
    pub pos0: usize,
    pub n_rows: usize,
    pub set: RopeSet,
    pub logits: LogitRows,
}

/// A shard as the pipeline sees it, whatever its backend.
pub trait ShardRunner: Send {
    fn spec(&self) -> &ShardSpec;
    fn device(&self) -> String;
    /// How many sequences (KV slots) the shard holds.
    fn n_slots(&self) -> usize;
    /// Run one pass of at most `MAX_BLOCK_ROWS` rows made of several sequences' rows, in the
    /// order of `seqs` (distinct slots). Each slot is first rolled back to its `pos0`. Logits
    /// (from the last shard) come in the same order: per sequence, the rows it asked for.
    fn forward_batch(
        &mut self,
        input: &Activations,
        seqs: &[SeqRows],
        rope: &RopeTable,
    ) -> Result<ShardOutput, EngineError>;
    /// Run the shard over rows at positions [pos0, pos0 + n) of slot 0, writing their KV rows,
    /// in blocks of at most `MAX_BLOCK_ROWS`.
    fn forward(
        &mut self,
        input: &Activations,
        pos0: usize,
        set: RopeSet,
        rope: &RopeTable,
        logits: LogitRows,
    ) -> Result<ShardOutput, EngineError>;
    /// Roll slot `slot` back to its first `len` positions.
    fn truncate(&mut self, slot: usize, len: usize);
    fn op_counts(&self) -> OpCounts;
    fn reset_op_counts(&self);
    /// Check the hidden state for NaN/Inf after every layer (validation probes).
    fn set_check_finite(&mut self, on: bool);
    /// Time spent since the last reset.
    fn timing(&self) -> ShardTiming;
    /// The bits of the valid K and V rows of every layer of slot 0.
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
        n_slots: usize,
    ) -> Shard<B> {
        let b = &*backend;
        let kv = KvCache::new(
            b,
            weights.layers.len(),
            n_slots.max(1),
            n_ctx,
            cfg.n_embd_kv(),
        );
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
    /// Check a pass's sequences against the slots and the context; return its segments.
    fn segments(&self, seqs: &[SeqRows], rope: &RopeTable) -> Result<Vec<Segment>, EngineError> {
        let mut segs = Vec::with_capacity(seqs.len());
        let mut row0 = 0;
        for (i, q) in seqs.iter().enumerate() {
            if q.slot >= self.kv.n_slots() || seqs[..i].iter().any(|p| p.slot == q.slot) {
                return Err(EngineError::BadInput(format!(
                    "slot {} is out of range or repeated in one pass ({} slots)",
                    q.slot,
                    self.kv.n_slots()
                )));
            }
            if q.pos0 > self.kv.len(q.slot) {
                return Err(EngineError::BadInput(format!(
                    "pass starts at position {} but the cache holds only {} rows",
                    q.pos0,
                    self.kv.len(q.slot)
                )));
            }
            if q.pos0 + q.n_rows > self.kv.n_ctx || q.pos0 + q.n_rows > rope.n_ctx() {
                return Err(EngineError::BadInput(format!(
                    "{} tokens do not fit in the context of {} (use a larger --ctx)",
                    q.pos0 + q.n_rows,
                    self.kv.n_ctx
                )));
            }
            segs.push(Segment {
                slot: q.slot,
                row0,
                n_rows: q.n_rows,
                pos0: q.pos0,
                set: q.set,
            });
            row0 += q.n_rows;
        }
        if row0 == 0 || row0 > MAX_BLOCK_ROWS {
            return Err(EngineError::BadInput(format!(
                "a pass holds 1..={MAX_BLOCK_ROWS} rows, not {row0}"
            )));
        }
        Ok(segs)
    }

    fn forward_pass(
        &mut self,
        input: &Activations,
        seqs: &[SeqRows],
        rope: &RopeTable,
    ) -> Result<ShardOutput, EngineError> {
        let segs = self.segments(seqs, rope)?;
        let b = &*self.backend;
        let cfg = &*self.cfg;
        let w = &*self.weights;
        let d = cfg.n_embd;
        let n = segs.iter().map(|g| g.n_rows).sum::<usize>();
        if input.n_rows(d) != n {
            return Err(EngineError::BadInput(format!(
                "the pass has {} input rows for {n} sequence rows",
                input.n_rows(d)
            )));
        }
        let s = &mut self.scratch;
        match input {
            Activations::Tokens(ids) => {
                let e = w.embed.as_ref().ok_or_else(|| {
                    EngineError::Model("token ids given to a shard without token_embd".into())
                })?;
                b.embed(e, ids, &mut s.x)?;
            }
            Activations::Hidden(h) => b.upload(h, &mut s.x),
        }
        for g in &segs {
            self.kv.truncate(g.slot, g.pos0);
        }
        let t_layers = std::time::Instant::now();
        let step = Step {
            n_rows: n,
            segments: &segs,
            rope,
        };
        for (li, (layer, kv)) in w.layers.iter().zip(self.kv.layers.iter_mut()).enumerate() {
            layer.forward(b, cfg, &step, s, kv);
            if self.check_finite {
                let mut x = vec![0f32; n * d];
                b.download(&s.x, 0, &mut x);
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    let g = segs
                        .iter()
                        .find(|g| i / d < g.row0 + g.n_rows)
                        .unwrap_or(&segs[0]);
                    return Err(EngineError::NonFinite {
                        layer: w.spec.layers.start + li,
                        what: format!(
                            "hidden state at position {} value {}",
                            g.pos0 + i / d - g.row0,
                            x[i]
                        ),
                    });
                }
            }
        }
        for g in &segs {
            self.kv.set_len(g.slot, g.pos0 + g.n_rows);
        }
        let t_head = std::time::Instant::now();
        self.timing.layers_s += (t_head - t_layers).as_secs_f64();
        let out = match (&w.output_norm, &w.output) {
            (Some(norm), Some(out)) => {
                let mut rows = Vec::new();
                for (g, q) in segs.iter().zip(seqs) {
                    match q.logits {
                        LogitRows::None => {}
                        LogitRows::Last => rows.push(g.row0 + g.n_rows - 1),
                        LogitRows::All => rows.extend(g.row0..g.row0 + g.n_rows),
                    }
                }
                let mut logits = vec![0f32; rows.len() * cfg.n_vocab];
                if !rows.is_empty() {
                    b.rms_norm(&s.x, norm, cfg.rms_eps, n, &mut s.h);
                    let src = if rows.len() == n {
                        &s.h
                    } else {
                        b.gather_rows(&s.h, d, &rows, &mut s.o);
                        &s.o
                    };
                    b.matmul(out, src, rows.len(), &mut self.logits_buf);
                    b.download(&self.logits_buf, 0, &mut logits);
                }
                ShardOutput::Logits(logits)
            }
            _ => {
                let mut hidden = vec![0f32; n * d];
                b.download(&s.x, 0, &mut hidden);
                ShardOutput::Hidden(hidden)
            }
        };
        self.timing.head_s += t_head.elapsed().as_secs_f64();
        self.timing.passes += 1;
        Ok(out)
    }

    /// Slot 0's rows [pos0, pos0 + n), a block of `MAX_BLOCK_ROWS` at a time.
    fn forward_blocks(
        &mut self,
        input: &Activations,
        pos0: usize,
        set: RopeSet,
        rope: &RopeTable,
        logits: LogitRows,
    ) -> Result<ShardOutput, EngineError> {
        let d = self.cfg.n_embd;
        let n_total = input.n_rows(d);
        if n_total == 0 {
            return Err(EngineError::BadInput("no rows to process".into()));
        }
        let mut hidden_out = Vec::new();
        let mut logits_out = Vec::new();
        let mut r0 = 0;
        while r0 < n_total {
            let n = (n_total - r0).min(MAX_BLOCK_ROWS);
            let block = match input {
                _ if n == n_total => std::borrow::Cow::Borrowed(input),
                Activations::Tokens(ids) => {
                    std::borrow::Cow::Owned(Activations::Tokens(ids[r0..r0 + n].to_vec()))
                }
                Activations::Hidden(h) => {
                    std::borrow::Cow::Owned(Activations::Hidden(h[r0 * d..(r0 + n) * d].to_vec()))
                }
            };
            let rows = match logits {
                LogitRows::Last if r0 + n < n_total => LogitRows::None,
                l => l,
            };
            let seq = SeqRows {
                slot: 0,
                pos0: pos0 + r0,
                n_rows: n,
                set,
                logits: rows,
            };
            match self.forward_pass(&block, &[seq], rope)? {
                ShardOutput::Hidden(h) => hidden_out.extend_from_slice(&h),
                ShardOutput::Logits(l) => logits_out.extend_from_slice(&l),
            }
            r0 += n;
        }
        Ok(if self.weights.spec.has_head {
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

    fn n_slots(&self) -> usize {
        self.kv.n_slots()
    }

    fn forward_batch(
        &mut self,
        input: &Activations,
        seqs: &[SeqRows],
        rope: &RopeTable,
    ) -> Result<ShardOutput, EngineError> {
        let backend = self.backend.clone();
        backend.scope(|| self.forward_pass(input, seqs, rope))
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
        backend.scope(|| self.forward_blocks(input, pos0, set, rope, logits))
    }

    fn truncate(&mut self, slot: usize, len: usize) {
        self.kv.truncate(slot, len);
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
        let n = self.kv.len(0) * self.kv.width;
        let b = &*self.backend;
        let mut out = Vec::new();
        let mut row = vec![0f32; n];
        for slots in &self.kv.layers {
            let (k, v) = &slots[0];
            for buf in [k, v] {
                b.download(buf, 0, &mut row);
                out.extend(row.iter().map(|x| x.to_bits()));
            }
        }
        out
    }
}
