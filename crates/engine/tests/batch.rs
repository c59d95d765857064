//! Sequences that share passes (`Engine::batched_sessions`) get the same bits as sequences
//! that run alone: every logits row of every step, greedy and speculative, with prompts longer
//! than a pass (chunked), a LongRoPE switch in the middle of decoding (tiny-phi3's
//! original_context_length is 64), and a second request that reuses part of a slot's cache.

mod common;

use std::thread;

use common::fixture;
use verispec::backend::ComputePath;
use verispec::engine::{Engine, Session};
use verispec::generate::ngram::NgramDrafter;
use verispec::generate::speculative::{speculative, SpecOptions};
use verispec::generate::{greedy, Flow};

/// A request: the cached prefix to keep, the tokens to add, and how to decode.
#[derive(Clone)]
struct Req {
    keep: usize,
    prompt: Vec<u32>,
    n: usize,
    speculative: bool,
}

/// Every generated id and the bits of the logits row it came from.
type Trace = Vec<(u32, Vec<u32>)>;

fn serve(session: &mut Session, req: &Req) -> Trace {
    session.truncate(req.keep);
    let mut trace = Trace::new();
    let mut on = |t: u32, row: &[f32]| {
        trace.push((t, row.iter().map(|x| x.to_bits()).collect()));
        Flow::Continue
    };
    if req.speculative {
        let mut d = NgramDrafter::new(1, 4).unwrap();
        // Draft even beside other sequences: verify blocks must share passes here.
        let opts = SpecOptions {
            verify_width: 4,
            adaptive: false,
            max_batch: usize::MAX,
            ..Default::default()
        };
        speculative(session, &mut d, &req.prompt, req.n, &opts, None, &mut on).unwrap();
    } else {
        greedy(session, &req.prompt, req.n, &mut on).unwrap();
    }
    trace
}

/// A prompt of `len` ids that repeats a short phrase (so n-gram drafts get accepted).
fn prompt(n_vocab: u32, seed: u32, len: usize) -> Vec<u32> {
    let phrase: Vec<u32> = (0..5)
        .map(|i| (seed * 7919 + i * 104_729) % n_vocab)
        .collect();
    (0..len).map(|i| phrase[i % phrase.len()]).collect()
}

/// Each client serves its requests in order on one session; all clients run at once.
fn run_clients(engine: &Engine, clients: &[Vec<Req>], batched: bool) -> (Vec<Vec<Trace>>, u64) {
    let mut sessions: Vec<Session> = if batched {
        engine.batched_sessions(clients.len()).unwrap()
    } else {
        clients.iter().map(|_| engine.new_session()).collect()
    };
    let traces = if batched {
        // Mark every slot busy before any client starts, so their first calls share passes.
        let guards: Vec<_> = sessions.iter().map(|s| s.busy()).collect();
        let out = thread::scope(|sc| {
            let handles: Vec<_> = sessions
                .iter_mut()
                .zip(clients)
                .zip(guards)
                .map(|((s, reqs), g)| {
                    sc.spawn(move || {
                        let out: Vec<Trace> = reqs.iter().map(|r| serve(s, r)).collect();
                        drop(g);
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        out
    } else {
        sessions
            .iter_mut()
            .zip(clients)
            .map(|(s, reqs)| reqs.iter().map(|r| serve(s, r)).collect())
            .collect()
    };
    let max_seqs = sessions[0].batch_stats().map_or(0, |b| b.max_seqs);
    (traces, max_seqs)
}

fn check(case: &str, path: ComputePath) {
    let engine = fixture(case, path);
    let v = engine.cfg.n_vocab as u32;
    let req = |keep, seed, len, n, speculative| Req {
        keep,
        prompt: prompt(v, seed, len),
        n,
        speculative,
    };
    let clients = vec![
        // One token, then a follow-up that keeps 10 of its 21 cached tokens.
        vec![req(0, 1, 1, 20, false), req(10, 2, 9, 12, false)],
        // Crosses position 64 while decoding (tiny-phi3 re-encodes with the long factors).
        vec![req(0, 3, 50, 30, false)],
        // Longer than a pass: the prompt runs in chunks beside the others' steps.
        vec![req(0, 4, 130, 16, false)],
        // Speculative, then a follow-up on top of everything cached.
        vec![req(0, 5, 40, 24, true), req(usize::MAX, 6, 3, 10, true)],
    ];
    let (alone, _) = run_clients(&engine, &clients, false);
    let (together, max_seqs) = run_clients(&engine, &clients, true);
    assert!(max_seqs >= 2, "{case} {path:?}: no pass held two sequences");
    for (c, (a, b)) in alone.iter().zip(&together).enumerate() {
        for (r, (ta, tb)) in a.iter().zip(b).enumerate() {
            assert_eq!(ta.len(), tb.len(), "{case} {path:?} client {c} request {r}");
            for (i, (x, y)) in ta.iter().zip(tb).enumerate() {
                assert!(
                    x == y,
                    "{case} {path:?} client {c} request {r}: token {i} differs \
                     (alone {}, batched {})",
                    x.0,
                    y.0
                );
            }
        }
    }
}

#[test]
fn batched_sequences_equal_sequences_alone_bitwise() {
    for case in ["tiny-llama", "tiny-phi3"] {
        for path in [ComputePath::Fast, ComputePath::Reference] {
            check(case, path);
        }
    }
}

#[test]
fn slot_counts_are_bounded() {
    let engine = fixture("tiny-llama", ComputePath::Fast);
    for n in [0, verispec::batch::MAX_SLOTS + 1] {
        let e = engine.batched_sessions(n).err().expect("refused");
        assert!(e.to_string().contains("parallel"), "{e}");
    }
    let mut s = engine.batched_sessions(2).unwrap();
    // A session works without the others and without a busy guard.
    let mut ids = Vec::new();
    greedy(&mut s[1], &[1, 2, 3], 3, |t, _| {
        ids.push(t);
        Flow::Continue
    })
    .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(s[0].batch_stats().unwrap().passes >= 3);
    assert!(engine.new_session().batch_stats().is_none());
}
