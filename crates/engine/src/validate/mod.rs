//! Gates every artifact passes before use (`verispec validate`):
//! - hashes: each shard file's sha256 equals the manifest's;
//! - golden: fixed probe inputs through each shard against the f32 reference path (cosine,
//!   rmse, max_abs, cosine per token); any NaN/Inf fails and names the shard and layer;
//! - parity: a T-row block pass against T sequential passes, per token; max |diff| must be 0;
//! - residency: the ops actually dispatched during the probe, per device; `strict` fails when an
//!   op of a shard placed on a GPU ran elsewhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::backend::ComputePath;
use crate::engine::{Engine, LoadOptions, ShardFactory};
use crate::model::rope::RopeTable;
use crate::model::{Activations, LogitRows, ShardOutput, ShardRunner};
use crate::shard::export::{sha256_file, Progress};
use crate::shard::manifest::Manifest;
use crate::EngineError;

/// Documented defaults (docs/VALIDATION.md).
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// Minimum cosine of a shard's output (whole probe and each token) against the reference.
    pub min_cos: f64,
    /// Maximum rmse relative to the reference output's rms.
    pub max_rel_rmse: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_cos: 0.999,
            max_rel_rmse: 0.05,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub strict: bool,
    pub thresholds: Thresholds,
    pub threads: usize,
    /// Probe tokens: a prefix, then one block of `verify_width` rows.
    pub probe_prefix: usize,
    pub device_override: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub shard: usize,
    pub gate: &'static str,
    pub pass: bool,
    pub detail: String,
    pub metrics: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub manifest: PathBuf,
    pub reference: String,
    pub pass: bool,
    pub gates: Vec<Gate>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Compare {
    pub cos: f64,
    pub rmse: f64,
    pub max_abs: f64,
    pub cos_per_token: Vec<f64>,
    pub max_abs_per_token: Vec<f64>,
    pub non_finite: usize,
}

/// Compare `got` with `want`, both [rows, width].
pub fn compare(got: &[f32], want: &[f32], width: usize) -> Compare {
    fn cos(a: &[f32], b: &[f32]) -> f64 {
        let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            ab += x as f64 * y as f64;
            aa += x as f64 * x as f64;
            bb += y as f64 * y as f64;
        }
        if aa == 0.0 && bb == 0.0 {
            1.0
        } else {
            ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
        }
    }
    let mut c = Compare {
        cos: cos(got, want),
        non_finite: got.iter().chain(want).filter(|v| !v.is_finite()).count(),
        ..Default::default()
    };
    let mut se = 0f64;
    for (&a, &b) in got.iter().zip(want) {
        let d = (a as f64 - b as f64).abs();
        se += d * d;
        c.max_abs = c.max_abs.max(d);
    }
    c.rmse = (se / got.len().max(1) as f64).sqrt();
    for (a, b) in got.chunks(width).zip(want.chunks(width)) {
        c.cos_per_token.push(cos(a, b));
        c.max_abs_per_token.push(
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() as f64)
                .fold(0.0, f64::max),
        );
    }
    c
}

/// Deterministic probe ids (an LCG), all below n_vocab.
pub fn probe_ids(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % n_vocab as u64) as u32
        })
        .collect()
}

fn rows_of(a: &Activations, r: std::ops::Range<usize>, width: usize) -> Activations {
    match a {
        Activations::Tokens(t) => Activations::Tokens(t[r].to_vec()),
        Activations::Hidden(h) => Activations::Hidden(h[r.start * width..r.end * width].to_vec()),
    }
}

fn output_vec(o: ShardOutput) -> Vec<f32> {
    match o {
        ShardOutput::Hidden(h) | ShardOutput::Logits(h) => h,
    }
}

/// Find the source model the manifest was exported from, if it is still there.
fn locate_source(m: &Manifest, manifest_path: &Path) -> Option<PathBuf> {
    let p = PathBuf::from(&m.source.path);
    if p.exists() {
        return Some(p);
    }
    let q = manifest_path.parent()?.join(&m.source.path);
    q.exists().then_some(q)
}

pub fn validate_manifest(
    manifest_path: &Path,
    opts: &ValidateOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, EngineError> {
    let m = Manifest::load(manifest_path)?;
    let mut gates = Vec::new();

    // hashes
    let mut hashes_ok = true;
    for (i, e) in m.shards.iter().enumerate() {
        let p = m.shard_path(manifest_path, i);
        let (pass, detail) = if !p.exists() {
            (false, format!("shard {i} ({}): file is missing", e.path))
        } else {
            let got = sha256_file(&p, progress)?;
            if got == e.sha256 {
                (true, format!("shard {i} ({}): sha256 ok", e.path))
            } else {
                (
                    false,
                    format!(
                        "shard {i} ({}): sha256 mismatch: file {got}, manifest {}",
                        e.path, e.sha256
                    ),
                )
            }
        };
        hashes_ok &= pass;
        gates.push(Gate {
            shard: i,
            gate: "hashes",
            pass,
            detail,
            metrics: serde_json::json!({}),
        });
    }
    if !hashes_ok {
        // A file that is not what the manifest promised is not used for anything else.
        return Ok(Report {
            manifest: manifest_path.to_path_buf(),
            reference: String::new(),
            pass: false,
            gates,
        });
    }

    let load = |path| LoadOptions {
        path,
        threads: opts.threads,
        n_ctx: None,
    };
    let fast = Engine::load_manifest(
        manifest_path,
        load(ComputePath::Fast),
        opts.device_override.as_deref(),
    )?;
    // The reference: the source model's f32 path split at the same boundaries if it is still
    // there, else the shard files themselves on the reference path.
    let (reference, ref_name) = match locate_source(&m, manifest_path) {
        Some(src) => (
            Engine::load(&src, load(ComputePath::Reference))?,
            format!("{} (f32 reference path)", src.display()),
        ),
        None => (
            Engine::load_manifest(manifest_path, load(ComputePath::Reference), Some("cpu"))?,
            "the shard files (f32 reference path; source model not found)".to_string(),
        ),
    };
    let cfg = fast.cfg.clone();
    let t = m.verify_width;
    let n_probe = opts.probe_prefix + t;
    let ids = probe_ids(n_probe, cfg.n_vocab, 0);
    let rope = RopeTable::new(&cfg.rope, n_probe);
    let set = rope.set_for(n_probe - 1);

    // Reference inputs and outputs at every shard boundary of the manifest.
    let mut ref_io: Vec<(Activations, Vec<f32>)> = Vec::new();
    {
        let mut act = Activations::Tokens(ids.clone());
        let ref_shards = reference_runners(&reference, &m, n_probe)?;
        for mut r in ref_shards {
            let out = output_vec(r.forward(&act, 0, set, &rope, LogitRows::All)?);
            let next = Activations::Hidden(out.clone());
            ref_io.push((act, out));
            act = next;
        }
    }

    for (i, factory) in fast.shards.iter().enumerate() {
        let e = &m.shards[i];
        let width = if e.lm_head { cfg.n_vocab } else { cfg.n_embd };
        let (input, want) = &ref_io[i];

        // golden (with a finite check after every layer)
        let mut r = factory.new_runner(n_probe);
        r.reset_op_counts();
        r.set_check_finite(true);
        let golden = match r.forward(input, 0, set, &rope, LogitRows::All) {
            Err(EngineError::NonFinite { layer, what }) => Gate {
                shard: i,
                gate: "golden",
                pass: false,
                detail: format!(
                    "shard {i} ({}): NaN/Inf after layer {layer}: {what}",
                    e.path
                ),
                metrics: serde_json::json!({"nan_layer": layer}),
            },
            Err(err) => return Err(err),
            Ok(out) => {
                let got = output_vec(out);
                let c = compare(&got, want, width);
                let ref_rms = (want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
                    / want.len().max(1) as f64)
                    .sqrt();
                let rel_rmse = c.rmse / ref_rms.max(f64::MIN_POSITIVE);
                let min_tok = c.cos_per_token.iter().copied().fold(1.0, f64::min);
                let th = &opts.thresholds;
                let pass = c.non_finite == 0
                    && c.cos >= th.min_cos
                    && min_tok >= th.min_cos
                    && rel_rmse <= th.max_rel_rmse;
                Gate {
                    shard: i,
                    gate: "golden",
                    pass,
                    detail: format!(
                        "shard {i} ({}): cos {:.6}, min token cos {:.6}, rmse {:.3e} ({:.2}% of rms), max_abs {:.3e}{}",
                        e.path,
                        c.cos,
                        min_tok,
                        c.rmse,
                        rel_rmse * 100.0,
                        c.max_abs,
                        if c.non_finite > 0 { format!(", {} non-finite values", c.non_finite) } else { String::new() }
                    ),
                    metrics: serde_json::to_value(&c).unwrap_or_default(),
                }
            }
        };
        gates.push(golden);

        // residency: what the golden probe actually dispatched
        let counts = r.op_counts();
        let device = r.device();
        let placed = opts
            .device_override
            .clone()
            .unwrap_or_else(|| e.device.clone());
        let off_device: Vec<&str> = if device == placed {
            Vec::new()
        } else {
            counts.keys().copied().collect()
        };
        let total: u64 = counts.values().sum();
        let pass = !opts.strict || off_device.is_empty();
        gates.push(Gate {
            shard: i,
            gate: "residency",
            pass,
            detail: if off_device.is_empty() {
                format!("shard {i} ({}): {total} ops, all on {device}", e.path)
            } else {
                format!(
                    "shard {i} ({}): placed on {placed} but ops ran on {device}: {}",
                    e.path,
                    off_device.join(", ")
                )
            },
            metrics: serde_json::json!({"device": device, "placed": placed, "ops": counts}),
        });

        // parity: block of T rows vs T single rows after the same prefix
        let p = opts.probe_prefix;
        let mut a = factory.new_runner(n_probe);
        a.forward(
            &rows_of(input, 0..p, cfg.n_embd),
            0,
            set,
            &rope,
            LogitRows::None,
        )?;
        let block = output_vec(a.forward(
            &rows_of(input, p..n_probe, cfg.n_embd),
            p,
            set,
            &rope,
            LogitRows::All,
        )?);
        let mut b = factory.new_runner(n_probe);
        b.forward(
            &rows_of(input, 0..p, cfg.n_embd),
            0,
            set,
            &rope,
            LogitRows::None,
        )?;
        let mut seq = Vec::new();
        for k in p..n_probe {
            seq.extend(output_vec(b.forward(
                &rows_of(input, k..k + 1, cfg.n_embd),
                k,
                set,
                &rope,
                LogitRows::All,
            )?));
        }
        let c = compare(&block, &seq, width);
        let bits_equal = block.len() == seq.len()
            && block
                .iter()
                .zip(&seq)
                .all(|(x, y)| x.to_bits() == y.to_bits());
        gates.push(Gate {
            shard: i,
            gate: "parity",
            pass: bits_equal,
            detail: format!(
                "shard {i} ({}): T={t} block vs sequential: max |diff| per token {:?}",
                e.path, c.max_abs_per_token
            ),
            metrics: serde_json::to_value(&c).unwrap_or_default(),
        });
    }
    let pass = gates.iter().all(|g| g.pass);
    Ok(Report {
        manifest: manifest_path.to_path_buf(),
        reference: ref_name,
        pass,
        gates,
    })
}

/// Runners of the reference engine split at the manifest's boundaries.
fn reference_runners(
    reference: &Engine,
    m: &Manifest,
    n_ctx: usize,
) -> Result<Vec<Box<dyn ShardRunner>>, EngineError> {
    if reference.shards.len() == m.shards.len() {
        return Ok(reference
            .shards
            .iter()
            .map(|f| f.new_runner(n_ctx))
            .collect());
    }
    // The unsharded source: load its layers again in the manifest's ranges.
    let ranges: Vec<(usize, usize, bool, bool)> = m
        .shards
        .iter()
        .map(|s| (s.layers[0], s.layers[1], s.embed, s.lm_head))
        .collect();
    let factories: Vec<Arc<dyn ShardFactory>> = reference.split(&ranges)?;
    Ok(factories.iter().map(|f| f.new_runner(n_ctx)).collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct ParityCase {
    /// Tokens before the block.
    pub position: usize,
    pub width: usize,
    pub cos_per_token: Vec<f64>,
    pub max_abs_per_token: Vec<f64>,
    /// Every logit of every row has the same bits in both runs.
    pub bit_exact: bool,
}

/// Block-vs-sequential on the whole model: at each prefix length and width, one T-row pass
/// against T single-token steps, compared on every logit.
pub fn parity_check(
    engine: &Engine,
    positions: &[usize],
    widths: &[usize],
) -> Result<Vec<ParityCase>, EngineError> {
    let v = engine.cfg.n_vocab;
    let longest =
        positions.iter().max().copied().unwrap_or(0) + widths.iter().max().copied().unwrap_or(1);
    if longest > engine.n_ctx {
        return Err(EngineError::BadInput(format!(
            "parity probes need {longest} positions but the context is {}",
            engine.n_ctx
        )));
    }
    let ids = probe_ids(longest, v, 1);
    let mut out = Vec::new();
    for &pos in positions {
        for &w in widths {
            let mut a = engine.new_session();
            let mut b = engine.new_session();
            if pos > 0 {
                a.forward(&ids[..pos], LogitRows::None)?;
                b.forward(&ids[..pos], LogitRows::None)?;
            }
            let block = a.forward(&ids[pos..pos + w], LogitRows::All)?;
            let mut seq = Vec::with_capacity(block.len());
            for k in pos..pos + w {
                seq.extend(b.forward(&ids[k..k + 1], LogitRows::Last)?);
            }
            let c = compare(&block, &seq, v);
            out.push(ParityCase {
                position: pos,
                width: w,
                bit_exact: block
                    .iter()
                    .zip(&seq)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                cos_per_token: c.cos_per_token,
                max_abs_per_token: c.max_abs_per_token,
            });
        }
    }
    Ok(out)
}
