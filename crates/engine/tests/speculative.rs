//! Speculative decoding emits exactly greedy's tokens: tiny fixtures at T = 2, 4, 8, several
//! n-gram ranges, random prompts, with the exactness guard on. With seeded sampling it emits
//! exactly plain sampling's tokens.

mod common;

use common::fixture;
use verispec::backend::ComputePath;
use verispec::engine::{Engine, LoadOptions};
use verispec::generate::ngram::NgramDrafter;
use verispec::generate::sample::Sampling;
use verispec::generate::speculative::{speculative, SpecOptions};
use verispec::generate::{decode, greedy, Flow};

fn greedy_ids(engine: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut s = engine.new_session();
    greedy(&mut s, prompt, n, |t, _| {
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
        ..Default::default()
    };
    let (_, st) = speculative(
        &mut s,
        &mut d,
        prompt,
        n,
        &opts,
        Some(&mut shadow),
        |t, _| {
            out.push(t);
            Flow::Continue
        },
    )
    .unwrap();
    (out, st.accepted)
}

/// A 4-layer tiny-phi3 model of `ty` in a fresh temporary directory: (directory, model).
fn synth_tiny(
    tag: &str,
    ty: verispec::synth::SynthType,
    seed: u64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use verispec::synth::{synth, Preset, SynthOptions};
    let dir = std::env::temp_dir().join(format!("verispec-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("t.gguf");
    let opts = SynthOptions {
        preset: Preset::TinyPhi3,
        ty,
        layers: Some(4),
        seed,
    };
    synth(&opts, &model, true, &mut |_, _| {}).unwrap();
    (dir, model)
}

/// Deterministic random prompts.
fn lcg_prompt(seed: u64, len: usize, vocab: u32) -> Vec<u32> {
    verispec::validate::probe_ids(len, vocab as usize, seed)
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

/// Plain decoding and speculative decoding under `sampling`: (plain, speculative, accepted).
fn sampled_pair(
    engine: &Engine,
    prompt: &[u32],
    n: usize,
    width: usize,
    sampling: &Sampling,
) -> (Vec<u32>, Vec<u32>, usize) {
    let mut plain = Vec::new();
    let mut s = engine.new_session();
    decode(&mut s, prompt, n, sampling, |t, _| {
        plain.push(t);
        Flow::Continue
    })
    .unwrap();
    let mut spec = Vec::new();
    let mut s = engine.new_session();
    let mut shadow = engine.new_session();
    let mut d = NgramDrafter::new(1, 8).unwrap();
    let opts = SpecOptions {
        verify_width: width,
        adaptive: false,
        sampling: sampling.clone(),
        ..Default::default()
    };
    let (_, st) = speculative(
        &mut s,
        &mut d,
        prompt,
        n,
        &opts,
        Some(&mut shadow),
        |t, _| {
            spec.push(t);
            Flow::Continue
        },
    )
    .unwrap();
    (plain, spec, st.accepted)
}

#[test]
fn speculative_sampling_equals_plain_sampling() {
    for case in ["tiny-phi3", "tiny-llama"] {
        let engine = fixture(case, ComputePath::Fast);
        let prompts = [[10u32, 20, 30, 40, 50].repeat(4), lcg_prompt(5, 12, 2040)];
        let greedy_out: Vec<Vec<u32>> =
            prompts.iter().map(|p| greedy_ids(&engine, p, 80)).collect();
        let mut accepted = 0;
        let mut differs_from_greedy = false;
        for (pi, prompt) in prompts.iter().enumerate() {
            let mut by_seed = Vec::new();
            for (temperature, top_k, top_p, min_p) in [
                (0.3f32, 0, 1.0f32, 0.0f32),
                (0.8, 0, 1.0, 0.0),
                (1.0, 40, 0.9, 0.0),
                (1.5, 0, 1.0, 0.05),
            ] {
                for seed in [1u64, 2] {
                    let sampling = Sampling {
                        temperature,
                        top_k,
                        top_p,
                        min_p,
                        seed,
                    };
                    for width in [2, 4, 8] {
                        let (plain, spec, acc) =
                            sampled_pair(&engine, prompt, 80, width, &sampling);
                        assert_eq!(spec, plain, "{case} prompt {pi} T={width} {sampling:?}");
                        accepted += acc;
                        differs_from_greedy |= plain != greedy_out[pi];
                        if width == 4 && temperature == 0.8 {
                            by_seed.push(plain);
                        }
                    }
                }
            }
            assert_ne!(
                by_seed[0], by_seed[1],
                "{case}: seeds 1 and 2 sampled the same tokens"
            );
        }
        assert!(
            differs_from_greedy,
            "{case}: sampling never left the greedy path"
        );
        assert!(
            accepted > 0,
            "{case}: no sampled draft was accepted; the test proves nothing"
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
        |_, _| {
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
    greedy(&mut g, &prompt, 30, |_, _| {
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

fn smollm2_engine() -> Option<Engine> {
    let model = common::smollm2()?;
    Some(
        Engine::load(
            &model,
            LoadOptions {
                path: ComputePath::Fast,
                threads: 2,
                n_ctx: None,
            },
        )
        .unwrap(),
    )
}

/// CI: every SmolLM2 golden prompt and both suites at T=4. Greedy runs once with
/// --ignore-eos; speculative runs with --ignore-eos (must equal it) and with a stop at
/// end-of-generation (must equal its prefix through the first end-of-generation token).
#[test]
fn smollm2_speculative_equals_greedy_on_goldens_and_suites() {
    use verispec::generate::request::{generate, GenRequest, Speculation};
    let Some(engine) = smollm2_engine() else {
        return;
    };
    let mut prompts: Vec<(String, usize)> = common::golden_records()
        .into_iter()
        .map(|r| (r.prompt, r.generated.len()))
        .collect();
    for suite in ["suites/code_edit.jsonl", "suites/open.jsonl"] {
        let p = common::workspace().join(suite);
        for s in verispec::bench::load_suite(&p).unwrap() {
            prompts.push((s.prompt, s.n_gen));
        }
    }
    let mut accepted = 0;
    for (prompt, n) in &prompts {
        let ids = engine.tokenizer.encode(prompt, true, true);
        let mut req = GenRequest {
            max_tokens: *n,
            ignore_eos: true,
            stop: vec![],
            speculative: None,
            cancel: None,
            logprobs: None,
            sampling: Default::default(),
        };
        let greedy = generate(&engine, &mut engine.new_session(), &ids, &req, |_| {}).unwrap();
        req.speculative = Some(Speculation {
            verify_width: 4,
            ..Default::default()
        });
        let spec = generate(&engine, &mut engine.new_session(), &ids, &req, |_| {}).unwrap();
        assert_eq!(
            greedy.generated_ids, spec.generated_ids,
            "{prompt:?} (--ignore-eos)"
        );
        accepted += spec.spec.map_or(0, |s| s.accepted);
        req.ignore_eos = false;
        let stopped = generate(&engine, &mut engine.new_session(), &ids, &req, |_| {}).unwrap();
        let end = greedy
            .generated_ids
            .iter()
            .position(|&t| engine.tokenizer.is_eog(t))
            .map_or(greedy.generated_ids.len(), |i| i + 1);
        assert_eq!(
            stopped.generated_ids,
            greedy.generated_ids[..end],
            "{prompt:?} (stop at EOS)"
        );
    }
    assert!(
        accepted > 100,
        "almost no drafts accepted ({accepted}): the test proves little"
    );
}

/// The full matrix (opt-in): T = 2, 4, 8; n-gram ranges; adaptive on and off; EOS stop and
/// --ignore-eos; goldens, suites and random prompts. Run with
/// `cargo test --release -p verispec-engine --test speculative -- --ignored`.
#[test]
#[ignore]
fn smollm2_speculative_full_matrix() {
    use verispec::generate::request::Speculation;
    let Some(engine) = smollm2_engine() else {
        return;
    };
    let mut prompts: Vec<(String, usize)> = common::golden_records()
        .into_iter()
        .map(|r| (r.prompt, r.generated.len()))
        .collect();
    for suite in ["suites/code_edit.jsonl", "suites/open.jsonl"] {
        for s in verispec::bench::load_suite(&common::workspace().join(suite)).unwrap() {
            prompts.push((s.prompt, s.n_gen));
        }
    }
    for seed in 0..5 {
        let ids = lcg_prompt(seed, 24, 49152);
        prompts.push((engine.tokenizer.decode(&ids), 96));
    }
    use verispec::generate::request::{generate, GenRequest};
    for (prompt, n) in &prompts {
        let ids = engine.tokenizer.encode(prompt, true, true);
        for ignore_eos in [true, false] {
            let mut req = GenRequest {
                max_tokens: *n,
                ignore_eos,
                stop: vec![],
                speculative: None,
                cancel: None,
                logprobs: None,
                sampling: Default::default(),
            };
            let want = generate(&engine, &mut engine.new_session(), &ids, &req, |_| {}).unwrap();
            for width in [2, 4, 8] {
                for (lo, hi) in [(1, 8), (2, 5), (3, 3)] {
                    for adaptive in [true, false] {
                        req.speculative = Some(Speculation {
                            verify_width: width,
                            ngram_min: lo,
                            ngram_max: hi,
                            adaptive,
                            exactness_guard: false,
                            ..Default::default()
                        });
                        let got = generate(&engine, &mut engine.new_session(), &ids, &req, |_| {})
                            .unwrap();
                        assert_eq!(
                            got.generated_ids, want.generated_ids,
                            "{prompt:?} T={width} ngram={lo}..{hi} adaptive={adaptive} ignore_eos={ignore_eos}"
                        );
                    }
                }
            }
        }
    }
}

/// The guard really compares: a shadow session on a different compute path (f32 reference
/// instead of int8) must be reported as a divergence at the first verified position.
#[test]
fn exactness_guard_reports_a_divergence() {
    use verispec::synth::SynthType;
    let (dir, model) = synth_tiny("guard", SynthType::Q8_0, 1);
    let fast = Engine::load(
        &model,
        LoadOptions {
            path: ComputePath::Fast,
            threads: 2,
            n_ctx: Some(128),
        },
    )
    .unwrap();
    let reference = Engine::load(
        &model,
        LoadOptions {
            path: ComputePath::Reference,
            threads: 2,
            n_ctx: Some(128),
        },
    )
    .unwrap();
    let prompt = [5u32, 6, 7, 8].repeat(4);
    let mut s = fast.new_session();
    let mut shadow = reference.new_session();
    let mut d = NgramDrafter::new(1, 8).unwrap();
    let err = speculative(
        &mut s,
        &mut d,
        &prompt,
        20,
        &SpecOptions::default(),
        Some(&mut shadow),
        |_, _| Flow::Continue,
    )
    .unwrap_err();
    match err {
        verispec::EngineError::Exactness(div) => {
            assert_eq!(div.position, prompt.len());
            assert_eq!(div.verify_row.len(), fast.cfg.n_vocab);
            assert!(div
                .summary()
                .contains(&format!("position {}", prompt.len())));
        }
        other => panic!("expected an exactness error, got {other}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// q4_k_m, q5_k_m, q5_0, q5_1, q3_k_m, q2_k, iq4_xs and iq4_nl models (Q4_K / Q5_K / Q5_0 / Q5_1 / Q3_K / Q2_K / IQ4_XS / IQ4_NL and Q6_K weights: 16-row
/// tiles where AVX-512 VNNI or AVX2 runs, rows elsewhere): a 4-row pass gives the bits of 4 single-row passes, 1 thread
/// the bits of 2, and speculative decoding (with the exactness guard) the tokens of greedy
/// decoding.
#[test]
fn k_quant_model_is_batch_invariant_and_speculation_is_exact() {
    // "2 threads" must mean two threads even while other tests keep the CPUs busy.
    verispec::backend::cpu::set_contention_guard(false);
    use verispec::synth::SynthType;
    for (tag, ty, seed) in [
        ("kquant", SynthType::Q4KM, 3),
        ("q5km", SynthType::Q5KM, 5),
        ("q5_0", SynthType::Q5_0, 7),
        ("q5_1", SynthType::Q5_1, 9),
        ("q3km", SynthType::Q3KM, 13),
        ("q2k", SynthType::Q2K, 15),
        ("iq4xs", SynthType::IQ4XS, 17),
        ("iq4nl", SynthType::IQ4NL, 19),
    ] {
        let (dir, model) = synth_tiny(tag, ty, seed);
        let mut per_threads = Vec::new();
        for threads in [1, 2] {
            let engine = Engine::load(
                &model,
                LoadOptions {
                    path: ComputePath::Fast,
                    threads,
                    n_ctx: Some(256),
                },
            )
            .unwrap();
            let input = lcg_prompt(11, 24, engine.cfg.n_vocab as u32);
            let r = common::block_vs_steps(&engine, &input, 20, 4);
            assert_eq!(
                r.block_logits, r.step_logits,
                "{tag} {threads} threads: block != steps"
            );
            assert_eq!(
                r.block_kv, r.step_kv,
                "{tag} {threads} threads: KV rows differ"
            );
            per_threads.push(r.block_logits);
            if threads == 2 {
                let prompt = [input[..8].to_vec(), input[..8].to_vec()].concat();
                let want = greedy_ids(&engine, &prompt, 40);
                let (got, _) = spec_ids(&engine, &prompt, 40, 4, (1, 8), true);
                assert_eq!(got, want, "{tag}: speculative != greedy");
            }
        }
        assert_eq!(
            per_threads[0], per_threads[1],
            "{tag}: 1 thread != 2 threads"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
