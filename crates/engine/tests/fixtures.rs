//! Tiny fixtures (testdata/fixtures): our f32 reference path against transformers' logits.

use std::path::PathBuf;

use verispec::backend::ComputePath;
use verispec::engine::{argmax, Engine, LoadOptions};
use verispec::model::LogitRows;

/// Achievable with f32 compute and an f32 KV cache (fixtures/README.md).
const MAX_ABS_DIFF: f32 = 1e-3;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures")
}

fn golden(case: &str) -> serde_json::Value {
    let p = testdata().join(format!("{case}.golden.json"));
    serde_json::from_slice(&std::fs::read(&p).expect("golden json")).expect("parse golden")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load(case: &str, path: ComputePath) -> Engine {
    let opts = LoadOptions { path, threads: 2, n_ctx: None };
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
        eprintln!("{case} seq{si} ({} tokens): max |diff| = {max_diff:e}", input.len());
        assert!(max_diff <= MAX_ABS_DIFF, "{case} seq{si}: max |diff| {max_diff} > {MAX_ABS_DIFF}");
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
