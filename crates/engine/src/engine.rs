//! Loading a model and running sessions over it.
//!
//! `Engine` holds the immutable parts (mapped file, config, tokenizer, shard weights) and can be
//! shared between threads; a `Session` owns the KV state of every shard and the token history.
//! A server thread drives sessions; the CLI drives one.

use std::path::Path;
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::backend::{ComputePath, OpCounts};
use crate::batch;
use crate::gguf::GgufFile;
use crate::model::config::ModelConfig;
use crate::model::rope::{RopeSet, RopeTable};
use crate::model::weights::TensorSource;
use crate::model::{run_pipeline, LogitRows, Shard, ShardRunner, ShardSpec, ShardWeights};
use crate::shard::manifest::{parse_device, Device, Manifest};
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// Runtime parameters (not model hyperparameters).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub path: ComputePath,
    pub threads: usize,
    /// Context size; None = min(context_length, 4096).
    pub n_ctx: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            path: ComputePath::Fast,
            threads: default_threads(),
            n_ctx: None,
        }
    }
}

/// Physical cores, as far as std can tell (it reports logical CPUs; on SMT machines we halve).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1)
}

/// Makes fresh shard runners (with empty KV) over shared weights.
pub trait ShardFactory: Send + Sync {
    fn spec(&self) -> &ShardSpec;
    fn device(&self) -> String;
    /// A runner with one KV slot.
    fn new_runner(&self, n_ctx: usize) -> Box<dyn ShardRunner> {
        self.new_runner_slots(n_ctx, 1)
    }
    /// A runner with `n_slots` KV slots, for sequences that share passes.
    fn new_runner_slots(&self, n_ctx: usize, n_slots: usize) -> Box<dyn ShardRunner>;
}

struct Factory<B: Backend> {
    backend: Arc<B>,
    cfg: Arc<ModelConfig>,
    weights: Arc<ShardWeights<B>>,
}

impl<B: Backend> ShardFactory for Factory<B> {
    fn spec(&self) -> &ShardSpec {
        &self.weights.spec
    }
    fn device(&self) -> String {
        self.backend.device_name()
    }
    fn new_runner_slots(&self, n_ctx: usize, n_slots: usize) -> Box<dyn ShardRunner> {
        Box::new(Shard::new(
            self.backend.clone(),
            self.cfg.clone(),
            self.weights.clone(),
            n_ctx,
            n_slots,
        ))
    }
}

pub struct Engine {
    pub file: Arc<GgufFile>,
    pub cfg: Arc<ModelConfig>,
    pub tokenizer: Arc<Tokenizer>,
    pub n_ctx: usize,
    pub rope: Arc<RopeTable>,
    pub shards: Vec<Arc<dyn ShardFactory>>,
    pub options: LoadOptions,
    /// Bytes of weights one decode step reads (layers, final norm, LM head).
    pub weight_bytes: u64,
}

/// Bytes of the tensors a decode step reads from these files: every layer tensor, output_norm
/// and the LM head (token_embd when tied). The embedding lookup reads one row: left out.
fn decode_weight_bytes(files: &[Arc<GgufFile>], tied: bool) -> u64 {
    files
        .iter()
        .flat_map(|f| f.tensors.iter())
        .filter(|t| {
            let n = t.name.as_str();
            n.starts_with("blk.")
                || n == "output_norm.weight"
                || n == "output.weight"
                || (tied && n == "token_embd.weight")
        })
        .map(|t| (t.name.as_str(), t.n_bytes))
        .fold((0u64, false), |(sum, seen_embd), (name, b)| {
            if name == "token_embd.weight" {
                // A sharded tied model carries token_embd twice (embedding and head); the head
                // reads it once per token.
                if seen_embd {
                    (sum, true)
                } else {
                    (sum + b, true)
                }
            } else {
                (sum + b, seen_embd)
            }
        })
        .0
}

impl Engine {
    /// Load a single GGUF file as one shard on the CPU.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Engine, EngineError> {
        let file = Arc::new(GgufFile::open(path)?);
        let cfg = Arc::new(ModelConfig::from_gguf(&file)?);
        let n_ctx = resolve_ctx(&cfg, options.n_ctx)?;
        let backend = Arc::new(CpuBackend::new(options.path, options.threads)?);
        let src = TensorSource { file: file.clone() };
        let spec = ShardSpec {
            layers: 0..cfg.n_layer,
            has_embed: true,
            has_head: true,
        };
        let weights = Arc::new(ShardWeights::load(&*backend, &src, &cfg, spec)?);
        let rope = Arc::new(RopeTable::new(&cfg.rope, n_ctx));
        let weight_bytes = decode_weight_bytes(std::slice::from_ref(&file), cfg.tied_embeddings);
        let tokenizer = Arc::new(Tokenizer::from_gguf(&file)?);
        check_vocab(&tokenizer, &cfg)?;
        Ok(Engine {
            tokenizer,
            weight_bytes,
            file,
            cfg: cfg.clone(),
            n_ctx,
            rope,
            shards: vec![Arc::new(Factory {
                backend,
                cfg,
                weights,
            })],
            options,
        })
    }

    /// Load a sharded model from its manifest. Every shard file carries the source's metadata;
    /// the config comes from the first and must agree with every other.
    pub fn load_manifest(
        manifest_path: &Path,
        options: LoadOptions,
        device_override: Option<&str>,
    ) -> Result<Engine, EngineError> {
        let m = Manifest::load(manifest_path)?;
        let mut files = Vec::new();
        for (i, e) in m.shards.iter().enumerate() {
            let p = m.shard_path(manifest_path, i);
            let f = GgufFile::open(&p)
                .map_err(|err| EngineError::Model(format!("shard {i} ({}): {err}", e.path)))?;
            let range = (
                f.opt_u32("verispec.shard.layer_start")?,
                f.opt_u32("verispec.shard.layer_end")?,
            );
            if range != (Some(e.layers[0] as u32), Some(e.layers[1] as u32)) {
                return Err(EngineError::Model(format!(
                    "shard {i} ({}): the file holds layers {:?}, the manifest says {}:{}",
                    e.path, range, e.layers[0], e.layers[1]
                )));
            }
            files.push(Arc::new(f));
        }
        let cfg = Arc::new(ModelConfig::from_gguf(&files[0])?);
        if cfg.n_layer != m.source.n_layer {
            return Err(EngineError::Model(format!(
                "the manifest says {} layers, the shards' config {}",
                m.source.n_layer, cfg.n_layer
            )));
        }
        let n_ctx = resolve_ctx(&cfg, options.n_ctx)?;
        let cpu = Arc::new(CpuBackend::new(options.path, options.threads)?);
        let mut shards: Vec<Arc<dyn ShardFactory>> = Vec::new();
        for (i, (e, f)) in m.shards.iter().zip(&files).enumerate() {
            let other = ModelConfig::from_gguf(f)?;
            if other != *cfg {
                return Err(EngineError::Model(format!(
                    "shard {i} ({}): its model config differs from shard 0's",
                    e.path
                )));
            }
            let device = device_override.unwrap_or(&e.device);
            match parse_device(device).map_err(EngineError::BadInput)? {
                Device::Cpu => {}
                Device::Cuda(_) => {
                    return Err(EngineError::Backend(format!(
                        "shard {i} is placed on {device}, but this build has no CUDA backend; \
                         pass --device cpu to run it on the CPU"
                    )))
                }
            }
            let spec = ShardSpec {
                layers: e.layers[0]..e.layers[1],
                has_embed: e.embed,
                has_head: e.lm_head,
            };
            let src = TensorSource { file: f.clone() };
            let weights = ShardWeights::load(&*cpu, &src, &cfg, spec)
                .map_err(|err| EngineError::Model(format!("shard {i} ({}): {err}", e.path)))?;
            let backend = Arc::new(cpu.sibling());
            shards.push(Arc::new(Factory {
                backend,
                cfg: cfg.clone(),
                weights: Arc::new(weights),
            }));
        }
        let tokenizer = Arc::new(Tokenizer::from_gguf(&files[0])?);
        check_vocab(&tokenizer, &cfg)?;
        Ok(Engine {
            tokenizer,
            weight_bytes: decode_weight_bytes(&files, cfg.tied_embeddings),
            file: files[0].clone(),
            rope: Arc::new(RopeTable::new(&cfg.rope, n_ctx)),
            cfg,
            n_ctx,
            shards,
            options,
        })
    }

    /// Factories for the same (single-file) model split into `ranges` of
    /// (start, end, has_embed, has_head), on this engine's compute path.
    pub fn split(
        &self,
        ranges: &[(usize, usize, bool, bool)],
    ) -> Result<Vec<Arc<dyn ShardFactory>>, EngineError> {
        let cpu = CpuBackend::new(self.options.path, self.options.threads)?;
        let src = TensorSource {
            file: self.file.clone(),
        };
        ranges
            .iter()
            .map(|&(start, end, has_embed, has_head)| {
                let spec = ShardSpec {
                    layers: start..end,
                    has_embed,
                    has_head,
                };
                let weights = ShardWeights::load(&cpu, &src, &self.cfg, spec)?;
                Ok(Arc::new(Factory {
                    backend: Arc::new(cpu.sibling()),
                    cfg: self.cfg.clone(),
                    weights: Arc::new(weights),
                }) as Arc<dyn ShardFactory>)
            })
            .collect()
    }

    pub fn new_session(&self) -> Session {
        let shards = self
            .shards
            .iter()
            .map(|f| f.new_runner(self.n_ctx))
            .collect();
        self.session(Exec::Local(shards))
    }

    /// `n` sessions whose passes are merged: each holds one KV slot of shards that a batch
    /// thread drives, and forward calls made at the same time from different threads run as
    /// one pass (see `batch`). Every session's logits have the same bits as a
    /// `new_session()`'s would: the kernels are batch-invariant and attention reads only the
    /// row's own slot.
    pub fn batched_sessions(&self, n: usize) -> Result<Vec<Session>, EngineError> {
        if !(1..=batch::MAX_SLOTS).contains(&n) {
            return Err(EngineError::BadInput(format!(
                "the number of parallel sequences must be 1..={}, not {n}",
                batch::MAX_SLOTS
            )));
        }
        let runners = self
            .shards
            .iter()
            .map(|f| f.new_runner_slots(self.n_ctx, n))
            .collect();
        let shared = batch::spawn(runners, self.rope.clone(), self.cfg.n_vocab)?;
        Ok((0..n)
            .map(|slot| {
                self.session(Exec::Batched {
                    slot,
                    batch: shared.clone(),
                })
            })
            .collect())
    }

    fn session(&self, exec: Exec) -> Session {
        Session {
            cfg: self.cfg.clone(),
            rope: self.rope.clone(),
            exec,
            tokens: Vec::new(),
            set: RopeSet::Short,
            n_ctx: self.n_ctx,
        }
    }
}

/// Where a session's passes run.
enum Exec {
    /// Its own shard runners (slot 0 of each).
    Local(Vec<Box<dyn ShardRunner>>),
    /// Slot `slot` of runners that a batch thread shares between sessions.
    Batched {
        slot: usize,
        batch: Arc<batch::Shared>,
    },
}

fn check_vocab(tok: &Tokenizer, cfg: &ModelConfig) -> Result<(), EngineError> {
    if tok.n_vocab() > cfg.n_vocab {
        return Err(EngineError::Model(format!(
            "the tokenizer has {} tokens but the model's vocabulary is {}",
            tok.n_vocab(),
            cfg.n_vocab
        )));
    }
    Ok(())
}

fn resolve_ctx(cfg: &ModelConfig, requested: Option<usize>) -> Result<usize, EngineError> {
    match requested {
        None => Ok(cfg.n_ctx_train.min(4096)),
        Some(0) => Err(EngineError::BadInput("--ctx must be at least 1".into())),
        Some(n) if n > cfg.n_ctx_train => Err(EngineError::BadInput(format!(
            "--ctx {n} exceeds the model's context length {}",
            cfg.n_ctx_train
        ))),
        Some(n) => Ok(n),
    }
}

/// The KV state of every shard plus the tokens it holds.
pub struct Session {
    pub cfg: Arc<ModelConfig>,
    rope: Arc<RopeTable>,
    exec: Exec,
    tokens: Vec<u32>,
    /// The LongRoPE factor set the cached K rows were rotated with.
    set: RopeSet,
    n_ctx: usize,
}

impl Session {
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn rope(&self) -> &RopeTable {
        &self.rope
    }

    /// Roll every shard back to the first `len` tokens. (A batched session's slot is rolled
    /// back by its next pass, which starts at `len`.)
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        if let Exec::Local(shards) = &mut self.exec {
            for s in shards {
                s.truncate(0, len);
            }
        }
    }

    /// Mark the session as generating until the guard drops: a batched session's batch
    /// thread then waits for its next pass before running the others' (up to a few
    /// milliseconds), so that sequences decoding together share passes.
    pub fn busy(&self) -> Busy {
        Busy {
            _guard: match &self.exec {
                Exec::Batched { slot, batch } => Some(batch.enter(*slot)),
                Exec::Local(_) => None,
            },
        }
    }

    pub fn reset(&mut self) {
        self.truncate(0);
        self.set = RopeSet::Short;
    }

    /// Append `ids` and return logits for the requested rows ([rows, n_vocab]).
    ///
    /// LongRoPE: the factor set is chosen from the total length, as a no-cache forward pass
    /// would. When that set differs from the one the cache was built with (the sequence just
    /// crossed original_context_length, or was rolled back below it), the whole sequence is
    /// re-encoded with the new set, so logits always equal a no-cache forward.
    pub fn forward(&mut self, ids: &[u32], rows: LogitRows) -> Result<Vec<f32>, EngineError> {
        if ids.is_empty() {
            return Err(EngineError::BadInput("no tokens to process".into()));
        }
        let n_vocab = self.cfg.n_vocab as u32;
        if let Some(&bad) = ids.iter().find(|&&id| id >= n_vocab) {
            return Err(EngineError::BadInput(format!(
                "token id {bad} is out of range (vocabulary has {n_vocab} tokens)"
            )));
        }
        let total = self.tokens.len() + ids.len();
        if total > self.n_ctx {
            return Err(EngineError::BadInput(format!(
                "{total} tokens exceed the context size {} (use a larger --ctx)",
                self.n_ctx
            )));
        }
        let need = self.rope.set_for(total - 1);
        if need != self.set && !self.tokens.is_empty() {
            let mut all = std::mem::take(&mut self.tokens);
            let n_old = all.len();
            all.extend_from_slice(ids);
            self.truncate(0);
            self.set = need;
            let logits = self.run(
                &all,
                0,
                if rows == LogitRows::All {
                    LogitRows::All
                } else {
                    rows
                },
            )?;
            self.tokens = all;
            return Ok(if rows == LogitRows::All {
                logits[n_old * self.cfg.n_vocab..].to_vec()
            } else {
                logits
            });
        }
        self.set = need;
        let pos0 = self.tokens.len();
        let logits = self.run(ids, pos0, rows)?;
        self.tokens.extend_from_slice(ids);
        Ok(logits)
    }

    fn run(&mut self, ids: &[u32], pos0: usize, rows: LogitRows) -> Result<Vec<f32>, EngineError> {
        let shards = match &mut self.exec {
            Exec::Local(shards) => shards,
            Exec::Batched { slot, batch } => {
                return batch.run(*slot, ids.to_vec(), pos0, self.set, rows)
            }
        };
        let (set, rope) = (self.set, &self.rope);
        run_pipeline(shards, ids.to_vec(), |s, act| {
            s.forward(act, pos0, set, rope, rows)
        })
    }

    /// How many sequences are generating on this session's passes, this one included: the
    /// busy slots of its batch (at least 1), or 1 for a session of its own.
    pub fn generating(&self) -> usize {
        match &self.exec {
            Exec::Batched { batch, .. } => batch.busy_slots().max(1),
            Exec::Local(_) => 1,
        }
    }

    /// What the batch thread behind a batched session has run; None for a session of its own.
    pub fn batch_stats(&self) -> Option<batch::BatchStats> {
        match &self.exec {
            Exec::Batched { batch, .. } => Some(batch.stats()),
            Exec::Local(_) => None,
        }
    }

    /// The shards this session owns; none for a batched session, whose shards belong to its
    /// batch thread.
    fn local(&self) -> &[Box<dyn ShardRunner>] {
        match &self.exec {
            Exec::Local(shards) => shards,
            Exec::Batched { .. } => &[],
        }
    }

    /// The bits of every valid KV row of every shard (tests of batch invariance).
    pub fn kv_bits(&self) -> Vec<u32> {
        self.local().iter().flat_map(|s| s.kv_bits()).collect()
    }

    /// Per-shard timing since the last reset.
    pub fn timings(&self) -> Vec<crate::model::ShardTiming> {
        self.local().iter().map(|s| s.timing()).collect()
    }

    pub fn reset_timings(&mut self) {
        if let Exec::Local(shards) = &mut self.exec {
            for s in shards {
                s.reset_timing();
            }
        }
    }

    /// Op counts per shard since the last reset: (device, counts).
    pub fn op_counts(&self) -> Vec<(String, OpCounts)> {
        self.local()
            .iter()
            .map(|s| (s.device(), s.op_counts()))
            .collect()
    }
}

/// See [`Session::busy`].
pub struct Busy {
    _guard: Option<batch::BusyGuard>,
}

/// Index of the largest value; ties go to the lowest index. NaN is never chosen over a number.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}
