//! `bench`: prefill and decode speed, per-shard layer and head time, the cost of a T-row verify
//! pass against a single step, peak RSS, and decode weight traffic as a share of a measured
//! memory-bandwidth limit.

use std::time::Instant;

use serde::Serialize;

use crate::engine::{argmax, Engine, Session};
use crate::model::LogitRows;
use crate::validate::probe_ids;
use crate::EngineError;

#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardBench {
    pub layers: [usize; 2],
    pub device: String,
    pub layers_ms_per_token: f64,
    pub head_ms_per_token: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    /// The CPU kernel path and its speed knobs, e.g. `avx512vnni (amd: prefetch 0/8192/8192 L2,
    /// rows 2048, tiles 1, streams 1)`.
    pub kernel: String,
    pub prompt_tokens: usize,
    pub n_decode: usize,
    pub repeats: usize,
    pub prefill_tok_s: Spread,
    pub decode_tok_s: Spread,
    pub layers_ms_per_token: f64,
    pub head_ms_per_token: f64,
    pub shards: Vec<ShardBench>,
    pub verify_width: usize,
    /// Time of one T-row pass over the time of one single-token step, at the same position.
    pub verify_ratio: f64,
    /// Bytes of weights a decode step reads.
    pub weight_bytes_per_token: u64,
    pub bandwidth_gbs: f64,
    pub bandwidth_pct: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub n_decode: usize,
    pub repeats: usize,
    pub verify_width: usize,
    pub probe_bandwidth: bool,
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Read bandwidth: `threads` threads each read their own buffer (1 GiB in total) with 256-bit
/// loads; the best of `tries` passes, in GB/s. Each thread reads its buffer as
/// [`PROBE_STREAMS`] interleaved streams, the access pattern of the matmul kernels (one
/// sequential stream per thread reads 10-15% less on the development machine; see
/// docs/KERNELS.md V15).
pub fn bandwidth_probe(threads: usize, total_bytes: usize, tries: usize) -> f64 {
    let threads = threads.max(1);
    // Whole 128-byte steps in each of the streams.
    let per = total_bytes / threads / (128 * PROBE_STREAMS) * (128 * PROBE_STREAMS);
    let bufs: Vec<Vec<u64>> = (0..threads)
        .map(|t| (0..per / 8).map(|i| i as u64 ^ t as u64).collect())
        .collect();
    let mut best = 0f64;
    for _ in 0..tries {
        let start = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = bufs
                .iter()
                .map(|b| s.spawn(move || stream_sum(b)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sums);
        best = best.max((per * threads) as f64 / secs / 1e9);
    }
    best
}

/// Streams per thread in [`bandwidth_probe`].
pub const PROBE_STREAMS: usize = 4;

fn stream_sum(b: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            return unsafe { stream_sum_avx2(b) };
        }
    }
    b.iter().fold(0u64, |a, &x| a ^ x)
}

/// XOR of `b` read as [`PROBE_STREAMS`] equal parts, 128 bytes of each in turn; `b.len()` is a
/// multiple of `16 * PROBE_STREAMS`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_sum_avx2(b: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let part = b.len() / PROBE_STREAMS;
    let n = part / 16;
    let mut acc = [_mm256_setzero_si256(); PROBE_STREAMS];
    for i in 0..n {
        for (k, a) in acc.iter_mut().enumerate() {
            // Four 256-bit loads per 128 bytes; unaligned loads are as fast on aligned data.
            let p = b.as_ptr().add(k * part + 16 * i) as *const __m256i;
            let x = _mm256_xor_si256(_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1)));
            let y = _mm256_xor_si256(_mm256_loadu_si256(p.add(2)), _mm256_loadu_si256(p.add(3)));
            *a = _mm256_xor_si256(*a, _mm256_xor_si256(x, y));
        }
    }
    let mut x = _mm256_setzero_si256();
    for a in acc {
        x = _mm256_xor_si256(x, a);
    }
    let mut out = [0u64; 4];
    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, x);
    out.iter().fold(0, |a, &v| a ^ v)
}

/// One prefill + greedy decode of `n` tokens; returns (prefill s, decode s).
fn one_run(s: &mut Session, prompt: &[u32], n: usize) -> Result<(f64, f64), EngineError> {
    s.reset();
    let t0 = Instant::now();
    let mut logits = s.forward(prompt, LogitRows::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..n {
        let t = argmax(&logits);
        logits = s.forward(&[t], LogitRows::Last)?;
    }
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

pub fn bench(engine: &Engine, opts: &BenchOptions) -> Result<BenchReport, EngineError> {
    let p = opts.prompt_tokens.max(1);
    let t = opts.verify_width;
    if p + opts.n_decode + t + 1 > engine.n_ctx {
        return Err(EngineError::BadInput(format!(
            "{} prompt + {} decode tokens do not fit the context {} (use --ctx)",
            p, opts.n_decode, engine.n_ctx
        )));
    }
    if !(1..=8).contains(&t) {
        return Err(EngineError::BadInput(format!(
            "--verify-width {t} is out of range 1..8"
        )));
    }
    let prompt = probe_ids(p, engine.cfg.n_vocab, 42);
    let mut s = engine.new_session();
    // Warm-up: touch every weight once.
    one_run(&mut s, &prompt[..p.min(8)], 2)?;

    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    s.reset_timings();
    for _ in 0..opts.repeats.max(1) {
        let (a, b) = one_run(&mut s, &prompt, opts.n_decode)?;
        pre.push(p as f64 / a);
        dec.push(opts.n_decode as f64 / b);
    }
    // Per-shard time of the decode steps alone: measure one more decode run separately.
    s.reset();
    s.forward(&prompt, LogitRows::Last)?;
    s.reset_timings();
    let mut tok = prompt[p - 1];
    for _ in 0..opts.n_decode {
        tok = argmax(&s.forward(&[tok], LogitRows::Last)?);
    }
    let nd = opts.n_decode.max(1) as f64;
    let shards: Vec<ShardBench> = engine
        .shards
        .iter()
        .zip(s.timings())
        .map(|(f, tm)| ShardBench {
            layers: [f.spec().layers.start, f.spec().layers.end],
            device: f.device(),
            layers_ms_per_token: tm.layers_s * 1000.0 / nd,
            head_ms_per_token: tm.head_s * 1000.0 / nd,
        })
        .collect();

    // verify_ratio: a T-row pass vs a single step at the same position, interleaved.
    let pos = s.tokens().len();
    let block = probe_ids(t, engine.cfg.n_vocab, 7);
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let a = Instant::now();
        s.forward(&block[..1], LogitRows::All)?;
        one.push(a.elapsed().as_secs_f64());
        s.truncate(pos);
        let b = Instant::now();
        s.forward(&block, LogitRows::All)?;
        many.push(b.elapsed().as_secs_f64());
        s.truncate(pos);
    }
    let verify_ratio = Spread::of(many).median / Spread::of(one).median.max(1e-12);

    let decode = Spread::of(dec);
    let bytes = engine.weight_bytes;
    // Before the probe, whose 1 GiB of buffers would otherwise count as the engine's.
    let peak_rss = peak_rss_bytes();
    let bw = if opts.probe_bandwidth {
        bandwidth_probe(2, 1 << 30, 5)
    } else {
        0.0
    };
    let pct = if bw > 0.0 {
        100.0 * decode.median * bytes as f64 / 1e9 / bw
    } else {
        0.0
    };
    Ok(BenchReport {
        model: engine
            .file
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        threads: engine.options.threads,
        kernel: format!(
            "{} ({})",
            crate::backend::cpu::kernels::KernelPath::detect().name(),
            crate::backend::cpu::kernels::Tuning::get().describe()
        ),
        prompt_tokens: p,
        n_decode: opts.n_decode,
        repeats: opts.repeats.max(1),
        prefill_tok_s: Spread::of(pre),
        decode_tok_s: decode,
        layers_ms_per_token: shards.iter().map(|x| x.layers_ms_per_token).sum(),
        head_ms_per_token: shards.iter().map(|x| x.head_ms_per_token).sum(),
        shards,
        verify_width: t,
        verify_ratio,
        weight_bytes_per_token: bytes,
        bandwidth_gbs: bw,
        bandwidth_pct: pct,
        peak_rss_bytes: peak_rss,
    })
}

/// One line of a prompt suite; extra keys are ignored, so golden files work as suites.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SuitePrompt {
    pub id: String,
    pub prompt: String,
    pub n_gen: usize,
}

pub fn load_suite(path: &std::path::Path) -> Result<Vec<SuitePrompt>, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Io(format!("cannot read suite {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Line {
            id: Option<serde_json::Value>,
            prompt: String,
            n_gen: Option<usize>,
            generated_token_ids: Option<Vec<u32>>,
        }
        let l: Line = serde_json::from_str(line).map_err(|e| {
            EngineError::BadInput(format!("{} line {}: {e}", path.display(), i + 1))
        })?;
        let n_gen = l
            .n_gen
            .or(l.generated_token_ids.as_ref().map(|g| g.len()))
            .ok_or_else(|| {
                EngineError::BadInput(format!("{} line {}: no n_gen", path.display(), i + 1))
            })?;
        let id = match l.id {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => format!("line{}", i + 1),
        };
        out.push(SuitePrompt {
            id,
            prompt: l.prompt,
            n_gen,
        });
    }
    if out.is_empty() {
        return Err(EngineError::BadInput(format!(
            "suite {} has no prompts",
            path.display()
        )));
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFigures {
    /// Tokens decoded after the prefill's first token.
    pub tokens: usize,
    /// Seconds of decoding (after the prefill).
    pub seconds: f64,
    pub tok_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptReport {
    pub id: String,
    pub n_prompt: usize,
    pub n_generated: usize,
    /// Median over runs.
    pub greedy: RunFigures,
    pub speculative: Option<RunFigures>,
    pub drafted: usize,
    pub accepted: usize,
    pub acceptance: f64,
    pub verify_passes: usize,
    /// Speculative output equals greedy output, token for token, on every run.
    pub exact: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub suite: String,
    pub runs: usize,
    pub prompts: Vec<PromptReport>,
    /// Total tokens / total seconds, median over runs.
    pub greedy_tok_s: f64,
    pub speculative_tok_s: Option<f64>,
    pub speedup: Option<f64>,
    pub acceptance: Option<f64>,
    pub exact: Option<bool>,
    pub greedy_tok_s_runs: Vec<f64>,
    pub speculative_tok_s_runs: Vec<f64>,
}

/// Greedy and (optionally) speculative decoding of every prompt, `runs` times, interleaved.
pub fn run_suite(
    engine: &Engine,
    name: &str,
    prompts: &[SuitePrompt],
    spec: Option<&crate::generate::request::Speculation>,
    runs: usize,
    ignore_eos: bool,
    mut progress: impl FnMut(&str),
) -> Result<SuiteReport, EngineError> {
    use crate::generate::request::{generate, GenRequest};
    let runs = runs.max(1);
    let mut reports = Vec::new();
    // per run: (greedy tokens, greedy s, spec tokens, spec s)
    let mut totals = vec![(0usize, 0f64, 0usize, 0f64); runs];
    let (mut all_drafted, mut all_accepted) = (0usize, 0usize);
    let mut all_exact = true;
    for p in prompts {
        let ids = engine.tokenizer.encode(&p.prompt, true, true);
        if ids.is_empty() {
            return Err(EngineError::BadInput(format!("prompt {:?} is empty", p.id)));
        }
        let mut g_runs = Vec::new();
        let mut s_runs = Vec::new();
        let mut exact = true;
        let (mut drafted, mut accepted, mut passes) = (0, 0, 0);
        let mut n_generated = 0;
        for (r, tot) in totals.iter_mut().enumerate() {
            progress(&format!("{} run {}/{}", p.id, r + 1, runs));
            let mut req = GenRequest {
                max_tokens: p.n_gen,
                ignore_eos,
                stop: Vec::new(),
                speculative: None,
                cancel: None,
                logprobs: None,
                sampling: Default::default(),
            };
            let mut s = engine.new_session();
            let g = generate(engine, &mut s, &ids, &req, |_| {})?;
            n_generated = g.generated_ids.len();
            let gf = figures(&g.stats);
            tot.0 += gf.tokens;
            tot.1 += gf.seconds;
            g_runs.push(gf);
            if let Some(sp) = spec {
                req.speculative = Some(sp.clone());
                let mut s = engine.new_session();
                let o = generate(engine, &mut s, &ids, &req, |_| {})?;
                exact &= o.generated_ids == g.generated_ids;
                let sf = figures(&o.stats);
                tot.2 += sf.tokens;
                tot.3 += sf.seconds;
                s_runs.push(sf);
                if let Some(st) = o.spec {
                    drafted = st.drafted;
                    accepted = st.accepted;
                    passes = st.verify_passes;
                }
            }
        }
        all_drafted += drafted;
        all_accepted += accepted;
        all_exact &= exact;
        reports.push(PromptReport {
            id: p.id.clone(),
            n_prompt: ids.len(),
            n_generated,
            greedy: median_figures(g_runs),
            speculative: spec.map(|_| median_figures(s_runs)),
            drafted,
            accepted,
            acceptance: if drafted > 0 {
                accepted as f64 / drafted as f64
            } else {
                0.0
            },
            verify_passes: passes,
            exact: spec.map(|_| exact),
        });
    }
    let g_tps: Vec<f64> = totals.iter().map(|t| t.0 as f64 / t.1.max(1e-12)).collect();
    let s_tps: Vec<f64> = totals.iter().map(|t| t.2 as f64 / t.3.max(1e-12)).collect();
    let g = Spread::of(g_tps.clone()).median;
    let sp = spec.map(|_| Spread::of(s_tps.clone()).median);
    Ok(SuiteReport {
        suite: name.to_string(),
        runs,
        prompts: reports,
        greedy_tok_s: g,
        speculative_tok_s: sp,
        speedup: sp.map(|s| s / g.max(1e-12)),
        acceptance: spec.map(|_| {
            if all_drafted > 0 {
                all_accepted as f64 / all_drafted as f64
            } else {
                0.0
            }
        }),
        exact: spec.map(|_| all_exact),
        greedy_tok_s_runs: g_tps,
        speculative_tok_s_runs: if spec.is_some() { s_tps } else { Vec::new() },
    })
}

fn figures(s: &crate::generate::GenStats) -> RunFigures {
    let tokens = s.n_generated.saturating_sub(1);
    RunFigures {
        tokens,
        seconds: s.decode_s,
        tok_s: if s.decode_s > 0.0 {
            tokens as f64 / s.decode_s
        } else {
            0.0
        },
    }
}

fn median_figures(mut v: Vec<RunFigures>) -> RunFigures {
    v.sort_by(|a, b| a.tok_s.total_cmp(&b.tok_s));
    v.get(v.len() / 2).cloned().unwrap_or_default()
}
