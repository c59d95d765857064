//! Seeded sampling that speculative decoding reproduces token for token.
//!
//! A sampled token is a function of two things only: the bits of its logits row and its
//! position in the sequence. The random draw for position `p` is `uniform(seed, p)`, a hash,
//! not the next value of a generator whose state would depend on how many draws came before.
//! A verify pass's row `i` has the bits of the single step at that position (the kernels are
//! batch-invariant), so the verifier computes the very token plain sampling would, and accepts
//! a draft exactly when it equals that token. Speculative sampling is then exact in the same
//! sense as speculative greedy: the same tokens, not merely the same distribution.
//!
//! The filters act on the temperature-scaled distribution, in this order: `top_k` keeps the k
//! most likely tokens (ties to the lowest id), `top_p` the smallest most-likely set whose
//! probability reaches p (after `top_k`), `min_p` the tokens at least `min_p` times as likely
//! as the most likely one. The draw walks the kept tokens in id order. Weights are f32 from the attention softmax's
//! exponential (the same bits on every path and machine); sums are f64, in id order.

use crate::engine::argmax;

/// Token choice: greedy (`temperature` 0) or seeded sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 is greedy (argmax, ties to the lowest id); above 0, logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Nucleus: keep the most likely tokens until their probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the most likely; 0 keeps all.
    pub min_p: f32,
    /// Seed of the position-keyed draws.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::greedy()
    }
}

/// Largest accepted temperature (the server's API allows up to 2, as OpenAI's does; `run`
/// allows this much).
pub const MAX_TEMPERATURE: f32 = 100.0;

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The parameters' ranges; the message names the first bad one.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature <= MAX_TEMPERATURE) {
            return Err(format!(
                "temperature must be between 0 and {MAX_TEMPERATURE}, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        Ok(())
    }

    /// The token at position `pos` (the index it will have in the sequence) given the logits
    /// row that predicts it.
    pub fn pick(&self, row: &[f32], pos: usize) -> u32 {
        if self.is_greedy() || row.len() <= 1 {
            return argmax(row);
        }
        let w = self.weights(row);
        let draw = uniform(self.seed, pos);
        match self.kept(row, &w) {
            None => walk(w.iter().enumerate().map(|(i, &x)| (i, x)), draw),
            Some(ids) => walk(ids.iter().map(|&i| (i as usize, w[i as usize])), draw),
        }
        .unwrap_or_else(|| argmax(row))
    }

    /// exp(l / T - max / T) for every logit l: weights relative to the most likely token
    /// (which weighs exactly 1), with the attention softmax's exponential.
    fn weights(&self, row: &[f32]) -> Vec<f32> {
        let inv = 1.0 / self.temperature;
        let mut w: Vec<f32> = row.iter().map(|&l| l * inv).collect();
        let max = row[argmax(row) as usize] * inv;
        crate::backend::cpu::exp_sub_max(&mut w, max);
        w
    }

    /// The ids the filters keep, ascending; `None` when no filter is on (every id).
    ///
    /// The kept sets are prefixes of the most-likely-first order (ties to the lowest id). To
    /// avoid sorting a whole vocabulary, one pass files the ids into 4096 buckets by the top 12
    /// bits of their weight (ordered as the weights, 8 buckets per octave); top-k and top-p
    /// then sort only the ids from the bucket where the count or the mass is reached (and, for
    /// top-p, one bucket below it, against rounding) up, and find the prefix exactly, in order.
    fn kept(&self, row: &[f32], w: &[f32]) -> Option<Vec<u32>> {
        let n = row.len();
        let top_k = self.top_k > 0 && self.top_k < n;
        if !top_k && self.top_p >= 1.0 && self.min_p <= 0.0 {
            return None;
        }
        let wt = |i: u32| {
            let x = w[i as usize];
            if x > 0.0 {
                x as f64
            } else {
                0.0
            }
        };
        let bucket = |i: u32| (w[i as usize].max(0.0).to_bits() >> 19) as usize;
        let order = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        // The ids from bucket `low` up, most likely first.
        let from_bucket = |ids: &mut dyn Iterator<Item = u32>, low: usize| {
            let mut v: Vec<u32> = ids.filter(|&i| bucket(i) >= low).collect();
            v.sort_unstable_by(order);
            v
        };
        let mut count = vec![0usize; 1 << 12];
        for i in 0..n as u32 {
            count[bucket(i)] += 1;
        }
        let mut ids: Option<Vec<u32>> = None; // None: every id
        if top_k {
            let (mut b, mut above) = (count.len(), 0);
            while b > 0 && above < self.top_k {
                b -= 1;
                above += count[b];
            }
            let mut v = from_bucket(&mut (0..n as u32), b);
            v.truncate(self.top_k);
            v.sort_unstable();
            ids = Some(v);
        }
        if self.top_p < 1.0 {
            let z: f64 = match &ids {
                Some(v) => v.iter().map(|&i| wt(i)).sum(),
                None => (0..n as u32).map(wt).sum(),
            };
            let need = self.top_p as f64 * z;
            let mut mass = vec![0f64; 1 << 12];
            match &ids {
                Some(v) => v.iter().for_each(|&i| mass[bucket(i)] += wt(i)),
                None => (0..n as u32).for_each(|i| mass[bucket(i)] += wt(i)),
            }
            let (mut b, mut above) = (mass.len(), 0.0);
            while b > 0 && above < need {
                b -= 1;
                above += mass[b];
            }
            let prefix = |low: usize| {
                let mut v = match &ids {
                    Some(v) => from_bucket(&mut v.iter().copied(), low),
                    None => from_bucket(&mut (0..n as u32), low),
                };
                let mut cum = 0.0;
                let end = v.iter().position(|&i| {
                    cum += wt(i);
                    cum >= need
                })?;
                v.truncate(end + 1);
                Some(v)
            };
            // Rounding can leave the prefix short only at the edge: then take every id.
            let mut v = prefix(b.saturating_sub(1))
                .or_else(|| prefix(0))
                .unwrap_or_else(|| from_bucket(&mut (0..n as u32), 0));
            v.sort_unstable();
            ids = Some(v);
        }
        let mut ids = ids.unwrap_or_else(|| (0..n as u32).collect());
        if self.min_p > 0.0 {
            let floor = self.min_p as f64;
            ids.retain(|&i| wt(i) >= floor);
        }
        if ids.is_empty() {
            // Only possible with NaN rows: fall back to the argmax.
            ids.push(argmax(row));
        }
        Some(ids)
    }
}

/// The id where the running sum of `weights` (f64, in the order given; NaN and non-positive
/// weights count as 0) passes `draw` times their total.
fn walk(weights: impl Iterator<Item = (usize, f32)> + Clone, draw: f64) -> Option<u32> {
    let pos = |x: f32| if x > 0.0 { x as f64 } else { 0.0 };
    let z: f64 = weights.clone().map(|(_, w)| pos(w)).sum();
    if !(z > 0.0 && z.is_finite()) {
        return None;
    }
    let target = draw * z;
    let mut cum = 0.0;
    let mut last = None;
    for (i, w) in weights {
        let w = pos(w);
        if w == 0.0 {
            continue;
        }
        cum += w;
        last = Some(i as u32);
        if cum > target {
            return last;
        }
    }
    // Rounding left the target at or past the sum: the last token with weight.
    last
}

/// A uniform draw in [0, 1) for position `pos` under `seed`: the top 53 bits of a SplitMix64
/// hash of both.
pub fn uniform(seed: u64, pos: usize) -> f64 {
    let h = mix(seed ^ mix(pos as u64 ^ 0x5851_f42d_4c95_7f2d));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// SplitMix64's finalizer (Steele, Lea, Flood 2014).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for requests that give none: the clock and the process id, hashed.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix(nanos ^ mix(std::process::id() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            seed,
            ..Sampling::greedy()
        }
    }

    /// Frequencies of `n` draws at positions 0..n.
    fn freqs(s: &Sampling, row: &[f32], n: usize) -> Vec<f64> {
        let mut c = vec![0usize; row.len()];
        for pos in 0..n {
            c[s.pick(row, pos) as usize] += 1;
        }
        c.iter().map(|&k| k as f64 / n as f64).collect()
    }

    fn softmax(row: &[f32], t: f64) -> Vec<f64> {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|&l| ((l as f64 - m) / t).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    const ROW: [f32; 6] = [1.0, 2.5, 0.0, 2.0, -1.0, 2.5];

    #[test]
    fn greedy_is_the_argmax() {
        for pos in 0..10 {
            assert_eq!(Sampling::greedy().pick(&ROW, pos), 1);
        }
    }

    #[test]
    fn draws_depend_on_seed_and_position_only() {
        let s = sampling(1.0, 42);
        let a: Vec<u32> = (0..200).map(|p| s.pick(&ROW, p)).collect();
        let b: Vec<u32> = (0..200).map(|p| s.pick(&ROW, p)).collect();
        assert_eq!(a, b);
        let c: Vec<u32> = (0..200).map(|p| sampling(1.0, 43).pick(&ROW, p)).collect();
        assert_ne!(a, c, "another seed gives other draws");
        // Out of order, one position at a time: the same tokens.
        let rev: Vec<u32> = (0..200).rev().map(|p| s.pick(&ROW, p)).collect();
        assert_eq!(a, rev.into_iter().rev().collect::<Vec<_>>());
        let u: Vec<f64> = (0..1000).map(|p| uniform(7, p)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.03, "{mean}");
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        for t in [0.5f32, 1.0, 2.0] {
            let f = freqs(&sampling(t, 9), &ROW, 40_000);
            let p = softmax(&ROW, t as f64);
            for (i, (&fi, &pi)) in f.iter().zip(&p).enumerate() {
                // 40k draws: the standard error is below 0.0025.
                assert!((fi - pi).abs() < 0.01, "T {t} id {i}: {fi} vs {pi}");
            }
        }
    }

    #[test]
    fn filters_keep_the_right_sets() {
        let n = 20_000;
        // top_k 2: ids 1 and 5 (2.5 each), equally often.
        let s = Sampling {
            top_k: 2,
            ..sampling(1.0, 1)
        };
        let f = freqs(&s, &ROW, n);
        assert!(
            f[0] + f[2] + f[3] + f[4] == 0.0 && (f[1] - 0.5).abs() < 0.02,
            "{f:?}"
        );
        // top_k 3 with a tie at the bound: 1, 5 and then 3 (2.0).
        let s = Sampling {
            top_k: 3,
            ..sampling(1.0, 1)
        };
        let f = freqs(&s, &ROW, n);
        assert!(f[0] + f[2] + f[4] == 0.0 && f[3] > 0.1, "{f:?}");
        // top_p: the two 2.5s carry p = 0.30 each, 2.0 0.18; 0.5 needs the first two ids
        // (0.60 >= 0.5), 0.7 needs three.
        let p = softmax(&ROW, 1.0);
        assert!(p[1] + p[5] >= 0.5 && p[1] + p[5] < 0.7 && p[1] + p[5] + p[3] >= 0.7);
        let kept = |top_p: f32| {
            let s = Sampling {
                top_p,
                ..sampling(1.0, 3)
            };
            let f = freqs(&s, &ROW, n);
            (0..ROW.len()).filter(|&i| f[i] > 0.0).collect::<Vec<_>>()
        };
        assert_eq!(kept(0.5), vec![1, 5]);
        assert_eq!(kept(0.7), vec![1, 3, 5]);
        assert_eq!(
            kept(0.01),
            vec![1],
            "a tie at the top goes to the lowest id first"
        );
        assert_eq!(kept(1.0), vec![0, 1, 2, 3, 4, 5]);
        // min_p 0.5: weights relative to the best: e^-0.5 = 0.61 for 2.0, e^-1.5 for 1.0.
        let s = Sampling {
            min_p: 0.5,
            ..sampling(1.0, 5)
        };
        let f = freqs(&s, &ROW, n);
        assert!(f[0] + f[2] + f[4] == 0.0 && f[3] > 0.1, "{f:?}");
        // Kept tokens keep their relative odds: 2.0 vs 2.5 under top_k 3 is e^-0.5.
        let s = Sampling {
            top_k: 3,
            ..sampling(1.0, 11)
        };
        let f = freqs(&s, &ROW, 60_000);
        let want = (-0.5f64).exp() / (2.0 + (-0.5f64).exp());
        assert!((f[3] - want).abs() < 0.01, "{} vs {want}", f[3]);
    }

    #[test]
    fn big_rows_and_odd_values() {
        // A vocabulary-sized row: the nucleus prefilter must not drop what the nucleus needs.
        let row: Vec<f32> = (0..50_000)
            .map(|i| ((i as u64 * 2_654_435_761) % 1000) as f32 / 100.0)
            .collect();
        for top_p in [0.1f32, 0.9, 0.999] {
            let s = Sampling {
                top_p,
                ..sampling(0.7, 2)
            };
            let kept = s.kept(&row, &s.weights(&row)).unwrap();
            // Reference: sort everything.
            let p = softmax(&row, 0.7);
            let mut all: Vec<usize> = (0..row.len()).collect();
            all.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mut cum = 0.0;
            let mut want = Vec::new();
            for &i in &all {
                want.push(i as u32);
                cum += p[i];
                if cum >= top_p as f64 {
                    break;
                }
            }
            want.sort_unstable();
            // Equal up to the rounding of the cumulative sum at the boundary.
            assert!(
                kept.len().abs_diff(want.len()) <= 1,
                "{top_p}: {} vs {}",
                kept.len(),
                want.len()
            );
            let common = kept
                .iter()
                .filter(|i| want.binary_search(i).is_ok())
                .count();
            assert!(common + 1 >= kept.len().max(want.len()));
        }
        // -inf logits are never drawn; a NaN row falls back to the argmax rule.
        let row = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let f = freqs(&sampling(1.0, 4), &row, 2000);
        assert_eq!(f[0] + f[2], 0.0);
        let nan = [f32::NAN; 4];
        assert!(sampling(1.0, 4).pick(&nan, 0) < 4);
    }

    /// Time per pick on a Phi-4-mini-sized row (200064 ids):
    /// `cargo test --release -p verispec-engine --lib pick_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn pick_speed() {
        // Roughly normal logits (a sum of 4 uniform draws, standard deviation ~2.3) with a
        // few tokens far above, as language models' rows look.
        let mut row: Vec<f32> = (0..200_064usize)
            .map(|i| (0..4).map(|k| uniform(99, 4 * i + k) as f32).sum::<f32>() * 4.0 - 8.0)
            .collect();
        for (i, l) in [
            (17usize, 14.0f32),
            (4000, 13.2),
            (90_000, 12.5),
            (150_000, 11.0),
        ] {
            row[i] = l;
        }
        for (name, s) in [
            ("greedy", Sampling::greedy()),
            ("temperature 0.7", sampling(0.7, 1)),
            (
                "0.7, top_p 0.9",
                Sampling {
                    top_p: 0.9,
                    ..sampling(0.7, 1)
                },
            ),
            (
                "0.7, top_k 40, top_p 0.95, min_p 0.05",
                Sampling {
                    top_k: 40,
                    top_p: 0.95,
                    min_p: 0.05,
                    ..sampling(0.7, 1)
                },
            ),
        ] {
            let t = std::time::Instant::now();
            let mut acc = 0u64;
            for pos in 0..50 {
                acc += s.pick(&row, pos) as u64;
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / 50.0;
            eprintln!("{name}: {us:.0} us per pick ({acc})");
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert!(Sampling::greedy().check().is_ok());
        for bad in [
            sampling(-0.1, 0),
            sampling(f32::NAN, 0),
            sampling(1e9, 0),
            Sampling {
                top_p: 0.0,
                ..sampling(1.0, 0)
            },
            Sampling {
                top_p: 1.5,
                ..sampling(1.0, 0)
            },
            Sampling {
                min_p: -0.5,
                ..sampling(1.0, 0)
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
