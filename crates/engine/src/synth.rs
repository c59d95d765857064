//! `synth`: write a GGUF with a real model's exact shapes, metadata and vocabulary, and seeded
//! random weights. The phi4-mini preset has Phi-4-mini's shapes and the real o200k vocabulary;
//! tiny-phi3 is the same architecture at test size.
//!
//! Weights are generated directly as quantized blocks (no f32 detour), so the 4 GB q8_0 file is
//! written at disk speed. Every block's values are zero-mean with a standard deviation `std`
//! = 0.9 / sqrt(n_embd) (0.016 for Phi-4-mini, near the reference script's N(0, 0.02)):
//! - Q8_0: q uniform in [-127, 127], d = std * sqrt(3) / 127 * u, u uniform in [0.75, 1.25];
//! - Q4_K: value = d * sc * (q - 7.5) with q uniform in 0..16 (min = scale, dmin = 7.5 d);
//! - Q6_K: value = d * sc * (q - 32) with q uniform in 0..64;
//! - Q3_K: value = d * sc * (q - 4) with q uniform in 0..8, sc = +-(8..16) (random sign);
//! - Q2_K: value = d * sc * q - dmin * sc with q uniform in 0..4, sc in 8..16, dmin = 1.5 d;
//! - IQ4_NL: value = d * table[q], q uniform in 0..16, d of random sign; IQ4_XS: the same
//!   with d * (ls - 32), ls - 32 = +-(8..16);
//! - F16: uniform in [-std sqrt(3), std sqrt(3)];
//! - norms: 1 ± 0.2 (so a missing norm multiply shows); LongRoPE factors: short in [1, 2],
//!   long in [1, 48], sorted ascending, so LongRoPE is exercised.

use std::io::Write;
use std::path::Path;

use half::f16;
use rayon::prelude::*;

use crate::gguf::{GgmlType, GgufWriter, Value};
use crate::tokenizer::o200k::{merges_from_ranks, o200k_ranks};
use crate::tokenizer::{phi4_mini_spec, TokenType, TokenizerSpec};
use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Phi4Mini,
    TinyPhi3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthType {
    Q8_0,
    Q4KM,
    Q5KM,
    Q5_0,
    Q5_1,
    Q3KM,
    Q2K,
    IQ4NL,
    IQ4XS,
    F16,
}

impl SynthType {
    pub fn parse(s: &str) -> Option<SynthType> {
        match s {
            "q8_0" => Some(SynthType::Q8_0),
            "q4_k_m" => Some(SynthType::Q4KM),
            "q5_k_m" => Some(SynthType::Q5KM),
            "q5_0" => Some(SynthType::Q5_0),
            "q5_1" => Some(SynthType::Q5_1),
            "q3_k_m" => Some(SynthType::Q3KM),
            "q2_k" => Some(SynthType::Q2K),
            "iq4_nl" => Some(SynthType::IQ4NL),
            "iq4_xs" => Some(SynthType::IQ4XS),
            "f16" => Some(SynthType::F16),
            _ => None,
        }
    }
}

/// Shapes of a preset.
#[derive(Debug, Clone)]
pub struct Shape {
    pub name: &'static str,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_rot: usize,
    pub n_ctx: usize,
    pub n_ctx_orig: usize,
}

impl Preset {
    pub fn parse(s: &str) -> Option<Preset> {
        match s {
            "phi4-mini" => Some(Preset::Phi4Mini),
            "tiny-phi3" => Some(Preset::TinyPhi3),
            _ => None,
        }
    }

    pub fn shape(self) -> Shape {
        match self {
            Preset::Phi4Mini => Shape {
                name: "Phi-4-mini-shaped random weights",
                n_vocab: 200_064,
                n_embd: 3072,
                n_layer: 32,
                n_head: 24,
                n_head_kv: 8,
                n_ff: 8192,
                n_rot: 96,
                n_ctx: 131_072,
                n_ctx_orig: 4096,
            },
            Preset::TinyPhi3 => Shape {
                name: "tiny phi3 random weights",
                n_vocab: 2048,
                n_embd: 256,
                n_layer: 4,
                n_head: 8,
                n_head_kv: 2,
                n_ff: 512,
                n_rot: 24,
                n_ctx: 1024,
                n_ctx_orig: 64,
            },
        }
    }

    fn tokenizer(self) -> Result<TokenizerSpec, EngineError> {
        let terr = |e: crate::tokenizer::TokenizerError| EngineError::Tokenizer(e.to_string());
        match self {
            Preset::Phi4Mini => phi4_mini_spec().map_err(terr),
            Preset::TinyPhi3 => {
                // The first 2040 o200k ranks plus 8 control tokens, as in testdata/fixtures.
                let ranks = o200k_ranks().map_err(terr)?;
                let ranks = &ranks[..2040];
                let (merges, _) = merges_from_ranks(ranks);
                let mut tokens: Vec<String> = ranks
                    .iter()
                    .map(|b| crate::tokenizer::bytes::encode_bytes(b))
                    .collect();
                let mut types = vec![TokenType::Normal as i32; tokens.len()];
                for t in [
                    "<|endoftext|>",
                    "<|assistant|>",
                    "<|end|>",
                    "<|user|>",
                    "<|system|>",
                ] {
                    tokens.push(t.to_string());
                }
                for i in 0..3 {
                    tokens.push(format!("<|dummy_{i}|>"));
                }
                types.resize(tokens.len(), TokenType::Control as i32);
                Ok(TokenizerSpec {
                    model: "gpt2".into(),
                    pre: "gpt-4o".into(),
                    tokens,
                    token_types: types,
                    merges,
                    bos: Some(2040),
                    eos: Some(2040),
                    eot: None,
                    add_bos: Some(false),
                    add_eos: Some(false),
                    chat_template: Some(crate::tokenizer::PHI4_MINI_CHAT_TEMPLATE.to_string()),
                    name: None,
                })
            }
        }
    }
}

/// llama.cpp's Q4_K_M rule for which layers get more bits (attn_qkv / ffn_down as Q6_K).
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// A small, fast, seedable generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A signed 6-bit scale of magnitude 8..16 and random sign, biased by 32 (Q3_K, IQ4_XS).
fn biased_scale(r: &mut Rng) -> u8 {
    let mag = 8 + (r.next() % 8) as i32;
    let sc = if r.next().is_multiple_of(2) {
        mag
    } else {
        -mag
    };
    (32 + sc) as u8
}

/// Fill `out` with `n_blocks` random blocks of `ty`, deterministic in `seed`.
fn gen_blocks(ty: GgmlType, spread: f32, seed: u64, out: &mut [u8]) {
    let mut r = Rng::new(seed);
    let bs = ty.type_size();
    for b in out.chunks_exact_mut(bs) {
        match ty {
            GgmlType::Q8_0 => {
                let d = spread * 3f32.sqrt() / 127.0 * (0.75 + 0.5 * r.unit());
                b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for q in b[2..].iter_mut() {
                    *q = ((r.next() % 255) as i32 - 127) as i8 as u8;
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                // d * (q - 16) or d * q + m with m = -15.5 d: std of q is 9.23.
                let d = spread / 9.23;
                b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                let q0 = if ty == GgmlType::Q5_1 {
                    b[2..4].copy_from_slice(&f16::from_f32(-15.5 * d).to_le_bytes());
                    4
                } else {
                    2
                };
                for q in b[q0..].iter_mut() {
                    *q = r.next() as u8;
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                // d * sc * (q - 7.5): sc in 32..64, std of (q - 7.5) is 4.61 (Q5_K: q - 15.5,
                // std 9.23).
                let (mid, std) = if ty == GgmlType::Q5K {
                    (15.5, 9.23)
                } else {
                    (7.5, 4.61)
                };
                let d = spread / std / 47.5;
                b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                b[2..4].copy_from_slice(&f16::from_f32(mid * d).to_le_bytes());
                let sc: [u8; 8] = std::array::from_fn(|_| 32 + (r.next() % 32) as u8);
                // 6-bit scales and mins packed as ggml's get_scale_min_k4 reads them; mins = scales.
                let s = &mut b[4..16];
                for j in 0..4 {
                    s[j] = sc[j] & 63;
                    s[j + 4] = sc[j] & 63;
                }
                for j in 4..8 {
                    s[j + 4] = (sc[j] & 0xF) | ((sc[j] & 0xF) << 4);
                    s[j - 4] |= (sc[j] >> 4) << 6;
                    s[j] |= (sc[j] >> 4) << 6;
                }
                for q in b[16..].iter_mut() {
                    *q = r.next() as u8;
                }
            }
            GgmlType::Q6K => {
                // d * sc * (q - 32): sc in 8..16, std of (q - 32) is 18.5.
                let d = spread / 18.5 / 11.5;
                for q in b[..192].iter_mut() {
                    *q = r.next() as u8;
                }
                for s in b[192..208].iter_mut() {
                    *s = (8 + (r.next() % 8)) as u8;
                }
                b[208..210].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            }
            GgmlType::Q3K => {
                // d * sc * (q - 4): |sc| in 8..16 (rms 12.1), std of (q - 4) with its mean is 2.35.
                let d = spread / 2.35 / 12.1;
                for q in b[..96].iter_mut() {
                    *q = r.next() as u8;
                }
                // 6-bit scales biased by 32, packed as ggml's Q3_K unpacking reads them.
                let sc = &mut b[96..108];
                sc.fill(0);
                for j in 0..16 {
                    let v = biased_scale(&mut r);
                    if j < 8 {
                        sc[j] |= v & 0x0f;
                    } else {
                        sc[j - 8] |= (v & 0x0f) << 4;
                    }
                    sc[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
                }
                b[108..110].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            }
            GgmlType::Q2K => {
                // d * sc * q - dmin * sc with dmin = 1.5 d: zero mean; std of q is 1.118.
                let d = spread / 1.118 / 11.5;
                for s in b[..16].iter_mut() {
                    let sc = 8 + (r.next() % 8) as u8;
                    *s = sc | (sc << 4);
                }
                for q in b[16..80].iter_mut() {
                    *q = r.next() as u8;
                }
                b[80..82].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                b[82..84].copy_from_slice(&f16::from_f32(1.5 * d).to_le_bytes());
            }
            GgmlType::IQ4NL | GgmlType::IQ4XS => {
                // The table's values have an rms of 67.4 (mean -5.9): a random sign per block
                // keeps the mean at zero.
                let sign = if r.next().is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                };
                let q0 = if ty == GgmlType::IQ4NL {
                    b[0..2].copy_from_slice(&f16::from_f32(sign * spread / 67.4).to_le_bytes());
                    2
                } else {
                    let d = sign * spread / 67.4 / 12.1;
                    b[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                    let (mut h, mut l) = (0u16, [0u8; 4]);
                    for j in 0..8 {
                        let ls = biased_scale(&mut r);
                        l[j / 2] |= (ls & 0x0f) << (4 * (j % 2));
                        h |= u16::from(ls >> 4) << (2 * j);
                    }
                    b[2..4].copy_from_slice(&h.to_le_bytes());
                    b[4..8].copy_from_slice(&l);
                    8
                };
                for q in b[q0..].iter_mut() {
                    *q = r.next() as u8;
                }
            }
            GgmlType::F16 => {
                let a = spread * 3f32.sqrt();
                b.copy_from_slice(&f16::from_f32((2.0 * r.unit() - 1.0) * a).to_le_bytes());
            }
            _ => b.fill(0),
        }
    }
}

/// The roles of a layer's matrices, which llama-quantize's mixes treat differently.
#[derive(Clone, Copy)]
enum Mat {
    Qkv,
    Out,
    Up,
    Down,
}

struct Planned {
    name: String,
    shape: Vec<u64>,
    ty: GgmlType,
    data: Option<Vec<u8>>,
}

/// Progress: bytes written so far, of the total.
pub type ProgressFn<'a> = &'a mut dyn FnMut(u64, u64);

pub struct SynthOptions {
    pub preset: Preset,
    pub ty: SynthType,
    pub layers: Option<usize>,
    pub seed: u64,
}

pub fn synth(
    opts: &SynthOptions,
    out: &Path,
    force: bool,
    progress: ProgressFn,
) -> Result<u64, EngineError> {
    if out.exists() && !force {
        return Err(EngineError::BadInput(format!(
            "{} already exists; refusing to overwrite it (pass --force to replace it)",
            out.display()
        )));
    }
    let mut sh = opts.preset.shape();
    if let Some(l) = opts.layers {
        if l == 0 || l > 1024 {
            return Err(EngineError::BadInput(format!(
                "--layers {l} is out of range 1..1024"
            )));
        }
        sh.n_layer = l;
    }
    let head_dim = sh.n_embd / sh.n_head;
    // Weight spread 0.9 / sqrt(n_embd): 0.016 for Phi-4-mini (near its 0.02 init), 0.056 for
    // tiny-phi3. A smaller spread lets each token's own embedding dominate the logits (the
    // model repeats its input); a larger one amplifies rounding through 32 random layers.
    let spread = 0.9 / (sh.n_embd as f32).sqrt();
    let kv = sh.n_head_kv * head_dim;
    let mut rng = Rng::new(opts.seed ^ 0x5eed);
    let mut factors = |lo: f32, hi: f32| {
        let mut v: Vec<f32> = (0..sh.n_rot / 2)
            .map(|_| lo + (hi - lo) * rng.unit())
            .collect();
        v.sort_by(f32::total_cmp);
        v
    };
    let short = factors(1.0, 2.0);
    let long = factors(1.0, 48.0);

    let mut w = GgufWriter::new();
    w.set_kv("general.architecture", Value::String("phi3".into()));
    w.set_kv("general.name", Value::String(sh.name.into()));
    let arch = |k: &str| format!("phi3.{k}");
    w.set_kv(arch("context_length"), Value::U32(sh.n_ctx as u32));
    w.set_kv(arch("embedding_length"), Value::U32(sh.n_embd as u32));
    w.set_kv(arch("feed_forward_length"), Value::U32(sh.n_ff as u32));
    w.set_kv(arch("block_count"), Value::U32(sh.n_layer as u32));
    w.set_kv(arch("attention.head_count"), Value::U32(sh.n_head as u32));
    w.set_kv(
        arch("attention.head_count_kv"),
        Value::U32(sh.n_head_kv as u32),
    );
    w.set_kv(arch("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    w.set_kv(arch("rope.dimension_count"), Value::U32(sh.n_rot as u32));
    w.set_kv(arch("rope.freq_base"), Value::F32(10000.0));
    w.set_kv(
        arch("rope.scaling.original_context_length"),
        Value::U32(sh.n_ctx_orig as u32),
    );
    let attn = crate::model::config::default_attn_factor(sh.n_ctx as f64, sh.n_ctx_orig as f64);
    w.set_kv(arch("rope.scaling.attn_factor"), Value::F32(attn));
    w.set_kv(arch("attention.sliding_window"), Value::U32(262_144));
    let file_type: u32 = match opts.ty {
        SynthType::Q8_0 => 7,
        SynthType::Q4KM => 15,
        SynthType::Q5KM => 17,
        SynthType::Q5_0 => 8,
        SynthType::Q5_1 => 9,
        SynthType::Q3KM => 12,
        SynthType::Q2K => 10,
        SynthType::IQ4NL => 25,
        SynthType::IQ4XS => 30,
        SynthType::F16 => 1,
    };
    w.set_kv("general.file_type", Value::U32(file_type));
    w.set_kv("general.quantization_version", Value::U32(2));
    opts.preset.tokenizer()?.write_gguf(&mut w);

    // The tensor plan, in the order llama.cpp's converter writes them. Each matrix's type
    // follows llama-quantize's rules for the mix (`llama_tensor_get_type`; phi3's fused
    // attn_qkv counts as attn_v there).
    let n_gqa = sh.n_head / sh.n_head_kv;
    let mat = |m: Mat, i: usize| {
        let more = use_more_bits(i, sh.n_layer);
        match (opts.ty, m) {
            (SynthType::Q8_0, _) => GgmlType::Q8_0,
            (SynthType::F16, _) => GgmlType::F16,
            (SynthType::Q4KM | SynthType::Q5KM, Mat::Qkv | Mat::Down) if more => GgmlType::Q6K,
            (SynthType::Q4KM, _) => GgmlType::Q4K,
            (SynthType::Q5KM, _) => GgmlType::Q5K,
            (SynthType::Q5_0, _) => GgmlType::Q5_0,
            (SynthType::Q5_1, _) => GgmlType::Q5_1,
            (SynthType::Q3KM, Mat::Qkv) if i < 2 => GgmlType::Q5K,
            (SynthType::Q3KM, Mat::Down) if i < sh.n_layer / 16 => GgmlType::Q5K,
            (SynthType::Q3KM, Mat::Up) => GgmlType::Q3K,
            (SynthType::Q3KM, _) => GgmlType::Q4K,
            (SynthType::Q2K, Mat::Qkv) if n_gqa >= 4 => GgmlType::Q4K,
            (SynthType::Q2K, Mat::Up) => GgmlType::Q2K,
            (SynthType::Q2K, _) => GgmlType::Q3K,
            (SynthType::IQ4NL | SynthType::IQ4XS, Mat::Qkv) if n_gqa >= 4 => GgmlType::Q5K,
            (SynthType::IQ4NL | SynthType::IQ4XS, Mat::Down) if i < sh.n_layer / 8 => GgmlType::Q5K,
            (SynthType::IQ4NL, _) => GgmlType::IQ4NL,
            (SynthType::IQ4XS, _) => GgmlType::IQ4XS,
        }
    };
    let (d, ff) = (sh.n_embd as u64, sh.n_ff as u64);
    let mut plan: Vec<Planned> = Vec::new();
    let mut add = |name: String, shape: Vec<u64>, ty: GgmlType, data: Option<Vec<u8>>| {
        plan.push(Planned {
            name,
            shape,
            ty,
            data,
        })
    };
    let norm = |seed: u64, n: usize| {
        let mut r = Rng::new(seed);
        let v: Vec<f32> = (0..n).map(|_| 0.8 + 0.4 * r.unit()).collect();
        f32_bytes(&v)
    };
    // Tied embeddings are the output matrix: llama-quantize gives them Q6_K in every mix here
    // but q8_0 and f16.
    let embd = match opts.ty {
        SynthType::Q8_0 | SynthType::F16 => mat(Mat::Up, 0),
        _ => GgmlType::Q6K,
    };
    add(
        "token_embd.weight".into(),
        vec![d, sh.n_vocab as u64],
        embd,
        None,
    );
    for i in 0..sh.n_layer {
        let s = opts.seed.wrapping_mul(1000).wrapping_add(i as u64);
        add(
            format!("blk.{i}.attn_norm.weight"),
            vec![d],
            GgmlType::F32,
            Some(norm(s * 2, sh.n_embd)),
        );
        add(
            format!("blk.{i}.attn_qkv.weight"),
            vec![d, d + 2 * kv as u64],
            mat(Mat::Qkv, i),
            None,
        );
        add(
            format!("blk.{i}.attn_output.weight"),
            vec![d, d],
            mat(Mat::Out, i),
            None,
        );
        add(
            format!("blk.{i}.ffn_norm.weight"),
            vec![d],
            GgmlType::F32,
            Some(norm(s * 2 + 1, sh.n_embd)),
        );
        add(
            format!("blk.{i}.ffn_up.weight"),
            vec![d, 2 * ff],
            mat(Mat::Up, i),
            None,
        );
        add(
            format!("blk.{i}.ffn_down.weight"),
            vec![ff, d],
            mat(Mat::Down, i),
            None,
        );
    }
    add(
        "output_norm.weight".into(),
        vec![d],
        GgmlType::F32,
        Some(norm(opts.seed ^ 0xabc, sh.n_embd)),
    );
    add(
        "rope_factors_long.weight".into(),
        vec![long.len() as u64],
        GgmlType::F32,
        Some(f32_bytes(&long)),
    );
    add(
        "rope_factors_short.weight".into(),
        vec![short.len() as u64],
        GgmlType::F32,
        Some(f32_bytes(&short)),
    );

    for p in &plan {
        w.add_tensor(p.name.clone(), &p.shape, p.ty)?;
    }
    let total = w.total_size();
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let free = crate::shard::export::free_space(dir)?;
    if total > free {
        return Err(EngineError::Io(format!(
            "not enough disk space in {}: the file needs {total} bytes, {free} are free; nothing was written",
            dir.display()
        )));
    }

    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let res = (|| -> Result<(), EngineError> {
        let ioe = |e: std::io::Error| EngineError::Io(format!("writing {}: {e}", tmp.display()));
        let file = std::fs::File::create(&tmp).map_err(ioe)?;
        let mut tw = w.begin(std::io::BufWriter::with_capacity(8 << 20, file))?;
        let mut written = 0u64;
        const CHUNK_BLOCKS: usize = 1 << 16;
        for (ti, p) in plan.iter().enumerate() {
            match &p.data {
                Some(bytes) => tw.write_chunk(bytes)?,
                None => {
                    let n: u64 = p.shape.iter().product();
                    let n_blocks = (n / p.ty.block_size() as u64) as usize;
                    let bs = p.ty.type_size();
                    let mut buf = vec![0u8; CHUNK_BLOCKS.min(n_blocks) * bs];
                    let mut b0 = 0;
                    while b0 < n_blocks {
                        let nb = CHUNK_BLOCKS.min(n_blocks - b0);
                        let chunk = &mut buf[..nb * bs];
                        // Sub-chunks of 4096 blocks, each with its own seed: deterministic
                        // whatever the thread count.
                        chunk
                            .par_chunks_mut(4096 * bs)
                            .enumerate()
                            .for_each(|(j, c)| {
                                let seed = opts.seed
                                    ^ ((ti as u64) << 40)
                                    ^ (((b0 / 4096 + j) as u64).wrapping_mul(0x9e37_79b9));
                                gen_blocks(p.ty, spread, seed, c)
                            });
                        tw.write_chunk(chunk)?;
                        written += chunk.len() as u64;
                        progress(written, total);
                        b0 += nb;
                    }
                }
            }
        }
        let mut inner = tw.finish()?;
        inner.flush().map_err(ioe)?;
        inner
            .into_inner()
            .map_err(|e| ioe(e.into_error()))?
            .sync_all()
            .map_err(ioe)?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| EngineError::Io(format!("renaming to {}: {e}", out.display())))?;
    progress(total, total);
    Ok(total)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_layer_rule_matches_llama_quantize_for_32_layers() {
        let more: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        let mut want: Vec<usize> = (0..4).collect();
        want.extend((6..28).step_by(3));
        want.extend(28..32);
        assert_eq!(more, want);
    }

    #[test]
    fn generated_blocks_have_the_intended_spread() {
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q6K,
            GgmlType::Q3K,
            GgmlType::Q2K,
            GgmlType::IQ4NL,
            GgmlType::IQ4XS,
            GgmlType::F16,
        ] {
            let n_blocks = 64;
            let mut bytes = vec![0u8; n_blocks * ty.type_size()];
            gen_blocks(ty, 0.02, 7, &mut bytes);
            let n = n_blocks * ty.block_size();
            let v = crate::quant::dequantize_tensor(ty, &bytes, n).unwrap();
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            assert!(mean.abs() < 0.003, "{ty}: mean {mean}");
            assert!((0.012..0.03).contains(&std), "{ty}: std {std}");
        }
    }
}
