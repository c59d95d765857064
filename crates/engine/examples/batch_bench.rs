//! Decode speed of N sequences that share passes (`Engine::batched_sessions`) against one
//! session of its own, greedy, on the same model.
//!
//!     cargo run --release --example batch_bench -- MODEL [TOKENS] [ROUNDS] [N,N,..]
//!
//! Prints, per round, tok/s of a plain session and the aggregate tok/s of N batched sessions
//! decoding at once (each from a different prompt), and checks that every batched sequence's
//! tokens equal the plain session's on the same prompt.

use std::time::Instant;

use verispec::engine::{Engine, LoadOptions, Session};
use verispec::generate::{greedy, Flow};

fn decode(s: &mut Session, prompt: &[u32], n: usize) -> Vec<u32> {
    s.reset();
    let mut out = Vec::new();
    greedy(s, prompt, n, |t, _| {
        out.push(t);
        Flow::Continue
    })
    .unwrap();
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .expect("usage: batch_bench MODEL [TOKENS] [ROUNDS] [N,..]");
    let n_tok: usize = args.get(2).map_or(64, |s| s.parse().unwrap());
    let rounds: usize = args.get(3).map_or(3, |s| s.parse().unwrap());
    let counts: Vec<usize> = args
        .get(4)
        .map_or("1,2,4".into(), |s| s.clone())
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let engine = Engine::load(model.as_ref(), LoadOptions::default()).unwrap();
    let prompts: Vec<Vec<u32>> = (0..8u32)
        .map(|i| vec![1 + i, 100 + 7 * i, 300 + 11 * i])
        .collect();
    let mut plain = engine.new_session();
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| decode(&mut plain, p, n_tok))
        .collect();
    let max = *counts.iter().max().unwrap();
    let mut batched = engine.batched_sessions(max).unwrap();
    for r in 0..rounds {
        let t0 = Instant::now();
        decode(&mut plain, &prompts[0], n_tok);
        let alone = n_tok as f64 / t0.elapsed().as_secs_f64();
        let mut line = format!("round {r}: plain 1 seq {alone:.1} tok/s");
        for &n in &counts {
            let guards: Vec<_> = batched[..n].iter().map(|s| s.busy()).collect();
            let before = batched[0].batch_stats().unwrap();
            let t0 = Instant::now();
            let outs: Vec<Vec<u32>> = std::thread::scope(|sc| {
                let hs: Vec<_> = batched[..n]
                    .iter_mut()
                    .zip(guards)
                    .enumerate()
                    .map(|(i, (s, g))| {
                        let p = &prompts[i];
                        sc.spawn(move || {
                            let o = decode(s, p, n_tok);
                            drop(g);
                            o
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let secs = t0.elapsed().as_secs_f64();
            for (i, o) in outs.iter().enumerate() {
                assert_eq!(o, &want[i], "sequence {i} differs from the plain session's");
            }
            let after = batched[0].batch_stats().unwrap();
            let passes = (after.passes - before.passes) as f64;
            line += &format!(
                ", batched {n} seq {:.1} tok/s ({:.2} ms/pass wall, {:.2} in the pass)",
                (n * n_tok) as f64 / secs,
                secs * 1e3 / passes,
                (after.pass_s - before.pass_s) * 1e3 / passes
            );
        }
        println!("{line}");
    }
    println!("batch stats: {:?}", batched[0].batch_stats().unwrap());
}
