//! Tiny fixtures (testdata/fixtures): our f32 reference path against transformers' logits.

mod common;

use std::path::PathBuf;

use verispec::backend::ComputePath;
use verispec::engine::{argmax, Engine, LoadOptions};
use verispec::model::LogitRows;

/// Achievable with f32 compute and an f32 KV cache (fixtures/README.md).
const MAX_ABS_DIFF: f32 = 1e-3;

/// testdata/fixtures, or `$VERISPEC_FIXTURES_DIR`: the same checks on fixtures made by
/// shared/tools/make_goldens.py with another `--seed` (testdata/fixtures/README.md).
fn testdata() -> PathBuf {
    if let Some(dir) = std::env::var_os("VERISPEC_FIXTURES_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures")
}

fn golden(case: &str) -> serde_json::Value {
    let p = testdata().join(format!("{case}.golden.json"));
    serde_json::from_slice(&std::fs::read(&p).expect("golden json")).expect("parse golden")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(case: &str, path: ComputePath) -> Engine {
    let opts = LoadOptions {
        path,
        threads: 2,
        n_ctx: None,
    };
    Engine::load(&testdata().join(format!("{case}.gguf")), opts).expect("load fixture")
}

fn check_logits(case: &str, path: ComputePath) {
    let g = golden(case);
    let engine = load(case, path);
    for (si, seq) in g["sequences"].as_array().unwrap().iter().enumerate() {
        let input = ids(&seq["input_ids"]);
        let file = testdata().join(seq["logits_file"].as_str().unwrap());
        let (want, shape) = verispec::npy::decode_f32(&std::fs::read(file).unwrap()).unwrap();
        assert_eq!(shape, vec![input.len(), engine.cfg.n_vocab]);
        let mut s = engine.new_session();
        let got = s.forward(&input, LogitRows::All).unwrap();
        let v = engine.cfg.n_vocab;
        let mut max_diff = 0f32;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let d = (a - b).abs();
            assert!(d.is_finite(), "{case} seq{si}: non-finite logit at {i}");
            max_diff = max_diff.max(d);
        }
        let want_argmax = ids(&seq["argmax"]);
        for t in 0..input.len() {
            assert_eq!(
                argmax(&got[t * v..(t + 1) * v]),
                want_argmax[t],
                "{case} seq{si}: argmax differs at position {t}"
            );
        }
        eprintln!(
            "{case} seq{si} ({} tokens): max |diff| = {max_diff:e}",
            input.len()
        );
        assert!(
            max_diff <= MAX_ABS_DIFF,
            "{case} seq{si}: max |diff| {max_diff} > {MAX_ABS_DIFF}"
        );
    }
}

fn check_greedy(case: &str, path: ComputePath) {
    let g = golden(case);
    let prompt = ids(&g["greedy"]["prompt_ids"]);
    let want = ids(&g["greedy"]["generated_ids"]);
    let engine = load(case, path);
    let mut s = engine.new_session();
    let mut logits = s.forward(&prompt, LogitRows::Last).unwrap();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let t = argmax(&logits);
        got.push(t);
        logits = s.forward(&[t], LogitRows::Last).unwrap();
    }
    assert_eq!(got, want, "{case}: greedy output differs");
}

#[test]
fn tiny_phi3_reference_logits() {
    check_logits("tiny-phi3", ComputePath::Reference);
}

#[test]
fn tiny_llama_reference_logits() {
    check_logits("tiny-llama", ComputePath::Reference);
}

#[test]
fn tiny_phi3_reference_greedy() {
    check_greedy("tiny-phi3", ComputePath::Reference);
}

#[test]
fn tiny_llama_reference_greedy() {
    check_greedy("tiny-llama", ComputePath::Reference);
}

/// Incremental decoding across original_context_length re-encodes with the long factors, so
/// every step's logits equal a no-cache forward over the same tokens (the golden rows past 64).
#[test]
fn tiny_phi3_longrope_switch_matches_no_cache_forward() {
    let g = golden("tiny-phi3");
    let seq = &g["sequences"][1];
    let input = ids(&seq["input_ids"]);
    let file = testdata().join(seq["logits_file"].as_str().unwrap());
    let (want, _) = verispec::npy::decode_f32(&std::fs::read(file).unwrap()).unwrap();
    let orig = g["original_context_length"].as_u64().unwrap() as usize;
    let engine = load("tiny-phi3", ComputePath::Reference);
    let v = engine.cfg.n_vocab;
    let mut s = engine.new_session();
    let prefill = 40;
    s.forward(&input[..prefill], LogitRows::Last).unwrap();
    let mut checked = 0;
    for t in prefill..input.len() {
        let got = s.forward(&input[t..t + 1], LogitRows::Last).unwrap();
        if t >= orig {
            let row = &want[t * v..(t + 1) * v];
            let d = got
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= MAX_ABS_DIFF, "position {t}: max |diff| {d}");
            assert_eq!(argmax(&got), argmax(row), "position {t}");
            checked += 1;
        }
    }
    assert_eq!(checked, input.len() - orig);
}

/// Batch invariance on the reference path: a T-row pass equals T single-row passes bit for
/// bit, for every row's logits, with 1 and 2 threads.
#[test]
fn reference_block_equals_sequential_bitwise() {
    // "2 threads" must mean two threads even while other tests keep the CPUs busy.
    verispec::backend::cpu::set_contention_guard(false);
    for case in ["tiny-phi3", "tiny-llama"] {
        let g = golden(case);
        let input = ids(&g["sequences"][0]["input_ids"]);
        let mut runs = Vec::new();
        for threads in [1, 2] {
            let opts = LoadOptions {
                path: ComputePath::Reference,
                threads,
                n_ctx: None,
            };
            let engine = Engine::load(&testdata().join(format!("{case}.gguf")), opts).unwrap();
            let r = common::block_vs_steps(&engine, &input, 30, 4);
            assert_eq!(
                r.block_logits, r.step_logits,
                "{case}: block != sequential ({threads} threads)"
            );
            runs.push(r.block_logits);
        }
        assert_eq!(runs[0], runs[1], "{case}: 1 thread != 2 threads");
    }
}

/// Fast path (int8 activations) against our own f32 reference path on the tiny fixtures.
/// Thresholds (docs/NUMERICS.md): cosine of every position's logits >= 0.999, and top-1
/// agreement on >= 99% of positions.
#[test]
fn fast_path_tracks_reference_on_fixtures() {
    const MIN_COS: f64 = 0.999;
    const MIN_TOP1: f64 = 0.99;
    for case in ["tiny-phi3", "tiny-llama"] {
        let g = golden(case);
        let fast = load(case, ComputePath::Fast);
        let reference = load(case, ComputePath::Reference);
        let v = fast.cfg.n_vocab;
        let (mut agree, mut total, mut worst) = (0, 0, 1f64);
        for seq in g["sequences"].as_array().unwrap() {
            let input = ids(&seq["input_ids"]);
            let a = fast.new_session().forward(&input, LogitRows::All).unwrap();
            let b = reference
                .new_session()
                .forward(&input, LogitRows::All)
                .unwrap();
            let c = verispec::validate::compare(&a, &b, v);
            worst = c.cos_per_token.iter().copied().fold(worst, f64::min);
            for t in 0..input.len() {
                total += 1;
                agree +=
                    (argmax(&a[t * v..(t + 1) * v]) == argmax(&b[t * v..(t + 1) * v])) as usize;
            }
        }
        let top1 = agree as f64 / total as f64;
        eprintln!("{case}: fast vs reference: min cosine {worst:.6}, top-1 {agree}/{total}");
        assert!(worst >= MIN_COS, "{case}: cosine {worst}");
        assert!(top1 >= MIN_TOP1, "{case}: top-1 agreement {top1}");
    }
}

/// Batch invariance on the fast path for the whole model: every row's logits and every KV row
/// of a T-row pass equal T single-row passes bit for bit, for T = 2..8, with 1 and 2 threads.
#[test]
fn fast_block_equals_sequential_bitwise() {
    // "2 threads" must mean two threads even while other tests keep the CPUs busy.
    verispec::backend::cpu::set_contention_guard(false);
    for case in ["tiny-phi3", "tiny-llama"] {
        let g = golden(case);
        let input = ids(&g["sequences"][1]["input_ids"]);
        let mut per_threads = Vec::new();
        for threads in [1, 2] {
            let opts = LoadOptions {
                path: ComputePath::Fast,
                threads,
                n_ctx: None,
            };
            let engine = Engine::load(&testdata().join(format!("{case}.gguf")), opts).unwrap();
            let mut all = Vec::new();
            // Blocks never straddle the LongRoPE switch at 64 (the verifier cuts them there).
            for (prefix, block) in [(20, 2), (30, 4), (56, 8), (59, 5), (70, 8)] {
                let r = common::block_vs_steps(&engine, &input, prefix, block);
                assert_eq!(
                    r.block_logits, r.step_logits,
                    "{case}: T={block} at {prefix}, {threads} threads"
                );
                assert_eq!(r.block_kv, r.step_kv, "{case}: KV rows differ, T={block}");
                all.extend(r.block_logits);
            }
            per_threads.push(all);
        }
        assert_eq!(
            per_threads[0], per_threads[1],
            "{case}: 1 thread != 2 threads"
        );
    }
}
