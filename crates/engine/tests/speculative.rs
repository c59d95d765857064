//! Speculative decoding emits exactly greedy's tokens: tiny fixtures at T = 2, 4, 8, several
//! n-gram ranges, random prompts, with the exactness guard on.

mod common;

use verispec::backend::ComputePath;
use verispec::engine::{Engine, LoadOptions};
use verispec::generate::ngram::NgramDrafter;
use verispec::generate::speculative::{speculative, SpecOptions};
use verispec::generate::{greedy, Flow};

fn fixture(case: &str, path: ComputePath) -> Engine {
    let p = common::workspace().join(format!("testdata/fixtures/{case}.gguf"));
    Engine::load(
        &p,
        LoadOptions {
            path,
            threads: 2,
            n_ctx: Some(256),
        },
    )
    .unwrap()
}

fn greedy_ids(engine: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut s = engine.new_session();
    greedy(&mut s, prompt, n, |t| {
        out.push(t);
        Flow::Continue
    })
    .unwrap();
    out
}

fn spec_ids(
    engine: &Engine,
    prompt: &[u32],
    n: usize,
    width: usize,
    ngram: (usize, usize),
    adaptive: bool,
) -> (Vec<u32>, usize) {
    let mut out = Vec::new();
    let mut s = engine.new_session();
    let mut shadow = engine.new_session();
    let mut d = NgramDrafter::new(ngram.0, ngram.1).unwrap();
    let opts = SpecOptions {
        verify_width: width,
        adaptive,
    };
    let (_, st) = speculative(&mut s, &mut d, prompt, n, &opts, Some(&mut shadow), |t| {
        out.push(t);
        Flow::Continue
    })
    .unwrap();
    (out, st.accepted)
}

/// A small deterministic generator for random prompts.
fn lcg_prompt(seed: u64, len: usize, vocab: u32) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn speculative_equals_greedy_on_tiny_fixtures() {
    for case in ["tiny-phi3", "tiny-llama"] {
        let engine = fixture(case, ComputePath::Fast);
        // A repetitive prompt (drafts get accepted) and random ones; 100 new tokens cross the
        // phi3 LongRoPE switch at position 64.
        let mut prompts = vec![[10u32, 20, 30, 40, 50].repeat(4)];
        for seed in 0..3 {
            prompts.push(lcg_prompt(seed, 12, 2040));
        }
        let mut total_accepted = 0;
        for prompt in &prompts {
            let want = greedy_ids(&engine, prompt, 100);
            for width in [2, 4, 8] {
                for ngram in [(1, 8), (2, 4), (3, 3)] {
                    for adaptive in [true, false] {
                        let (got, acc) = spec_ids(&engine, prompt, 100, width, ngram, adaptive);
                        assert_eq!(
                            got, want,
                            "{case} T={width} ngram={ngram:?} adaptive={adaptive}"
                        );
                        total_accepted += acc;
                    }
                }
            }
        }
        assert!(
            total_accepted > 0,
            "{case}: no draft was ever accepted; the test proves nothing"
        );
    }
}

#[test]
fn speculative_respects_max_tokens_and_stop() {
    let engine = fixture("tiny-llama", ComputePath::Fast);
    let prompt = [7u32, 8, 9].repeat(5);
    let want = greedy_ids(&engine, &prompt, 30);
    for n in [1, 2, 3, 17] {
        let (got, _) = spec_ids(&engine, &prompt, n, 4, (1, 8), false);
        assert_eq!(got, want[..n], "max_new = {n}");
    }
    // Stopping from the callback mid-block leaves the session exactly where greedy's is.
    let stop_at = 5;
    let mut s = engine.new_session();
    let mut d = NgramDrafter::new(1, 8).unwrap();
    let mut seen = 0;
    speculative(
        &mut s,
        &mut d,
        &prompt,
        30,
        &SpecOptions::default(),
        None,
        |_| {
            seen += 1;
            if seen == stop_at {
                Flow::Stop
            } else {
                Flow::Continue
            }
        },
    )
    .unwrap();
    let mut g = engine.new_session();
    let mut seen = 0;
    greedy(&mut g, &prompt, 30, |_| {
        seen += 1;
        if seen == stop_at {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })
    .unwrap();
    assert_eq!(s.tokens(), g.tokens());
}
