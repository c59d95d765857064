//! SmolLM2-135M (real weights, Q4_1) against llama.cpp's greedy goldens (testdata/golden).
//! llama.cpp multiplies Q4_1 weights by 8-bit activations, so near-ties may flip: a
//! disagreement is accepted only where llama.cpp's own top-1/top-2 margin is small.

mod common;

use verispec::backend::ComputePath;
use verispec::engine::{argmax, Engine, LoadOptions};
use verispec::generate::{greedy, Flow};
use verispec::model::LogitRows;

/// Teacher-forced agreement required with llama.cpp's tokens.
const MIN_AGREEMENT: f64 = 0.98;
/// A disagreement is acceptable only where llama.cpp's top-1/top-2 margin is below this.
const NEAR_TIE: f32 = 0.1;

fn teacher_forced(path: ComputePath) {
    let Some(model) = common::smollm2() else { return };
    let opts = LoadOptions { path, threads: 2, n_ctx: None };
    let engine = Engine::load(&model, opts).unwrap();
    let v = engine.cfg.n_vocab;
    let (mut agree, mut total) = (0usize, 0usize);
    for rec in common::golden_records() {
        let mut all = rec.prompt_ids.clone();
        all.extend(&rec.generated);
        let mut s = engine.new_session();
        // Positions whose next token is golden: the last prompt row and every generated row
        // but the last.
        let logits = s.forward(&all[..all.len() - 1], LogitRows::All).unwrap();
        let p = rec.prompt_ids.len();
        for i in 0..rec.generated.len() {
            let row = &logits[(p - 1 + i) * v..(p + i) * v];
            let ours = argmax(row);
            total += 1;
            if ours == rec.generated[i] {
                agree += 1;
            } else {
                assert!(
                    rec.margin(i) < NEAR_TIE,
                    "{:?} step {i}: ours {ours}, llama.cpp {} with margin {}",
                    rec.prompt,
                    rec.generated[i],
                    rec.margin(i)
                );
            }
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!("{path:?}: teacher-forced agreement {agree}/{total} = {rate:.4}");
    assert!(rate >= MIN_AGREEMENT, "agreement {rate} < {MIN_AGREEMENT}");
}

#[test]
fn smollm2_teacher_forced_reference() {
    teacher_forced(ComputePath::Reference);
}

#[test]
fn smollm2_teacher_forced_fast() {
    teacher_forced(ComputePath::Fast);
}

/// Free-running greedy (--ignore-eos) reproduces the golden sequence up to its first near-tie.
#[test]
fn smollm2_free_running_matches_until_first_near_tie() {
    let Some(model) = common::smollm2() else { return };
    let opts = LoadOptions { path: ComputePath::Fast, threads: 2, n_ctx: None };
    let engine = Engine::load(&model, opts).unwrap();
    for rec in common::golden_records().iter().filter(|r| r.generated.len() <= 64) {
        let n = rec.generated.len();
        let mut got = Vec::new();
        let mut s = engine.new_session();
        greedy(&mut s, &rec.prompt_ids, n, |t| {
            got.push(t);
            Flow::Continue
        })
        .unwrap();
        let first_tie = (0..n).find(|&i| rec.margin(i) < NEAR_TIE).unwrap_or(n);
        assert_eq!(
            got[..first_tie],
            rec.generated[..first_tie],
            "{:?}: differs before the first near-tie at step {first_tie}",
            rec.prompt
        );
        eprintln!("{:?}: first near-tie at {first_tie}, matched", rec.prompt.chars().take(30).collect::<String>());
    }
}
