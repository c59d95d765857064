//! Exact speculative decoding: a drafter proposes, one T-row verify pass checks, accept/reject
//! keeps the longest prefix of drafts that equals the chain of chosen tokens (the argmax, or
//! `sample`'s position-keyed draw) plus the bonus token, and the KV rows of rejected positions
//! are rolled back.
//!
//! Exactness: the verify pass runs the same batch-invariant kernels as a single-token step, so
//! row i of the pass has the same bits as the single step at that position. The emitted tokens
//! are therefore exactly those of plain decoding (greedy, or sampling with the same seed). `--exactness-guard` re-checks this at run time on a shadow
//! session.

use std::time::Instant;

use super::ngram::Drafter;
use super::sample::Sampling;
use super::{Flow, GenStats};
use crate::engine::{argmax, Session};
use crate::model::LogitRows;
use crate::EngineError;

#[derive(Debug, Clone)]
pub struct SpecOptions {
    /// Rows per verify pass (last token + up to T-1 drafts), 2..=8.
    pub verify_width: usize,
    /// Adapt the number of drafts to the measured acceptance and pass cost.
    pub adaptive: bool,
    /// Draft only while at most this many sequences share the passes (this one included; see
    /// `Session::generating`); above it, steps are plain greedy steps. Speculation and
    /// batching spend the same slack (a pass costs little more with more rows), so with other
    /// sequences in the pass, draft rows mostly slow everyone down (BENCHMARKS.md "Fifth
    /// session"; vLLM's `speculative_disable_by_batch_size` is the same rule).
    pub max_batch: usize,
    /// How each token is chosen from its row (greedy by default). A verify row has the bits
    /// of the single step, and a draw depends only on the row and the position, so the
    /// emitted tokens are those of plain decoding with the same `Sampling`.
    pub sampling: Sampling,
}

/// See `SpecOptions::max_batch`.
pub const DEFAULT_MAX_BATCH: usize = 1;

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            verify_width: 4,
            adaptive: true,
            max_batch: DEFAULT_MAX_BATCH,
            sampling: Sampling::greedy(),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpecStats {
    /// Draft tokens that went through a verify pass.
    pub drafted: usize,
    pub accepted: usize,
    /// Decode passes with at least one draft.
    pub verify_passes: usize,
    /// All decode passes (verify passes and plain single-token steps).
    pub decode_passes: usize,
}

impl SpecStats {
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// The first row where a verify pass and sequential single steps disagree.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub position: usize,
    pub verify_row: Vec<f32>,
    pub sequential_row: Vec<f32>,
}

impl Divergence {
    /// The position, both argmaxes, the largest difference, and the top 5 of each row.
    pub fn summary(&self) -> String {
        let max = self
            .verify_row
            .iter()
            .zip(&self.sequential_row)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let top = |row: &[f32]| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.iter()
                .take(5)
                .map(|&i| format!("{i}:{}", row[i]))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "exactness guard: verify pass and sequential steps diverge at position {}: \
             argmax {} vs {}, max |diff| {max:e}\n  verify row top-5:     {}\n  sequential row top-5: {}",
            self.position,
            argmax(&self.verify_row),
            argmax(&self.sequential_row),
            top(&self.verify_row),
            top(&self.sequential_row)
        )
    }
}

/// Chooses how many drafts to verify. It estimates the per-token acceptance probability alpha
/// (decayed counts) and the time of a pass of each width, and picks the draft count k that
/// maximizes expected tokens per second, (1 - alpha^(k+1)) / (1 - alpha) / time(k+1)
/// (Leviathan et al. 2023). k = 0 is a plain greedy step, so speculation never costs much more
/// than greedy when drafts stop being accepted.
struct Controller {
    max_drafts: usize,
    adaptive: bool,
    /// Decayed sums for the acceptance estimate: accepted drafts, and rejections.
    acc: f64,
    rej: f64,
    /// Decayed mean seconds of a pass with `i + 1` rows; None until measured.
    pass_time: Vec<Option<f64>>,
    /// Passes since a wider pass was last timed; an occasional probe keeps estimates fresh.
    since_probe: usize,
}

const DECAY: f64 = 0.9;
const PROBE_EVERY: usize = 16;

impl Controller {
    fn new(verify_width: usize, adaptive: bool) -> Controller {
        Controller {
            max_drafts: verify_width - 1,
            adaptive,
            acc: 1.0,
            rej: 0.0,
            pass_time: vec![None; verify_width],
            since_probe: 0,
        }
    }

    fn alpha(&self) -> f64 {
        (self.acc / (self.acc + self.rej)).clamp(0.0, 0.999)
    }

    /// How many of `available` drafts to verify.
    fn choose(&mut self, available: usize) -> usize {
        let cap = available.min(self.max_drafts);
        if !self.adaptive || cap == 0 {
            return cap;
        }
        let a = self.alpha();
        let t1 = match self.pass_time[0] {
            Some(t) => t,
            None => return cap,
        };
        let mut best = (0usize, 1.0 / t1);
        for k in 1..=cap {
            let Some(t) = self.pass_time[k] else {
                return k; // measure it
            };
            let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            if tokens / t > best.1 {
                best = (k, tokens / t);
            }
        }
        self.since_probe += 1;
        if best.0 == 0 && self.since_probe >= PROBE_EVERY {
            self.since_probe = 0;
            return 1.min(cap);
        }
        best.0
    }

    fn record(&mut self, rows: usize, secs: f64, drafts: usize, accepted: usize) {
        let slot = &mut self.pass_time[rows - 1];
        *slot = Some(match *slot {
            None => secs,
            Some(t) => DECAY * t + (1.0 - DECAY) * secs,
        });
        if drafts > 0 {
            self.acc = DECAY * self.acc + accepted as f64;
            self.rej = DECAY * self.rej + if accepted < drafts { 1.0 } else { 0.0 };
        }
    }
}

/// Speculative decoding. Emits exactly the tokens `decode` would with `opts.sampling` (`greedy`
/// by default), through `on_token`.
/// With `guard`, every accepted token is recomputed on `guard`'s shadow session with single
/// steps and compared bit for bit; the first divergence aborts with `EngineError::Exactness`.
pub fn speculative(
    session: &mut Session,
    drafter: &mut dyn Drafter,
    prompt: &[u32],
    max_new: usize,
    opts: &SpecOptions,
    mut guard: Option<&mut Session>,
    mut on_token: impl FnMut(u32, &[f32]) -> Flow,
) -> Result<(GenStats, SpecStats), EngineError> {
    if !(2..=8).contains(&opts.verify_width) {
        return Err(EngineError::BadInput(format!(
            "--verify-width {} is out of range 2..8",
            opts.verify_width
        )));
    }
    if prompt.is_empty() {
        return Err(EngineError::BadInput(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    if session.tokens().len() + prompt.len() > session.n_ctx() {
        return Err(EngineError::BadInput(format!(
            "the prompt has {} tokens but the context holds {} (use a larger --ctx)",
            session.tokens().len() + prompt.len(),
            session.n_ctx()
        )));
    }
    let mut stats = GenStats {
        n_prompt: prompt.len(),
        ..Default::default()
    };
    let mut spec = SpecStats::default();
    let mut ctl = Controller::new(opts.verify_width, opts.adaptive);

    let t0 = Instant::now();
    let logits = session.forward(prompt, LogitRows::Last)?;
    stats.prefill_s = t0.elapsed().as_secs_f64();
    if let Some(g) = guard.as_deref_mut() {
        g.forward(prompt, LogitRows::Last)?;
    }
    drafter.observe(session.tokens());
    let t1 = Instant::now();
    if max_new == 0 {
        return Ok((stats, spec));
    }
    let mut last = opts.sampling.pick(&logits, session.tokens().len());
    stats.n_generated = 1;
    drafter.observe(&[last]);
    if on_token(last, &logits) == Flow::Stop || max_new == 1 {
        stats.decode_s = t1.elapsed().as_secs_f64();
        return Ok((stats, spec));
    }

    let orig = session.rope().original_context;
    'outer: loop {
        let pos0 = session.tokens().len();
        let remaining = max_new - stats.n_generated;
        let room = session.n_ctx().saturating_sub(pos0);
        if room == 0 {
            break;
        }
        // Drafts beyond `remaining - 1` could never be emitted; beyond `room - 1` never fit.
        let mut available = drafter
            .propose(opts.verify_width - 1)
            .len()
            .min(remaining - 1)
            .min(room - 1);
        // A block never straddles the LongRoPE switch: stop it just before that position.
        if let Some(o) = orig {
            if pos0 < o && pos0 + available >= o {
                available = o - 1 - pos0;
            }
        }
        let k = if session.generating() > opts.max_batch {
            0
        } else {
            ctl.choose(available)
        };
        let mut block = Vec::with_capacity(k + 1);
        block.push(last);
        block.extend(drafter.propose(k).into_iter().take(k));
        let k = block.len() - 1;

        let tp = Instant::now();
        let rows = session.forward(&block, LogitRows::All)?;
        let v = session.cfg.n_vocab;
        // Row i predicts the token at position pos0 + i + 1.
        let preds: Vec<u32> = (0..block.len())
            .map(|i| opts.sampling.pick(&rows[i * v..(i + 1) * v], pos0 + i + 1))
            .collect();
        let mut accepted = 0;
        while accepted < k && block[accepted + 1] == preds[accepted] {
            accepted += 1;
        }
        // Rows [0, accepted] hold valid KV; the rest were speculative.
        session.truncate(pos0 + accepted + 1);
        ctl.record(block.len(), tp.elapsed().as_secs_f64(), k, accepted);
        spec.decode_passes += 1;
        if k > 0 {
            spec.verify_passes += 1;
            spec.drafted += k;
            spec.accepted += accepted;
        }

        if let Some(g) = guard.as_deref_mut() {
            for (i, &tok) in block.iter().take(accepted + 1).enumerate() {
                let seq = g.forward(&[tok], LogitRows::Last)?;
                let row = &rows[i * v..(i + 1) * v];
                if seq.iter().zip(row).any(|(a, b)| a.to_bits() != b.to_bits()) {
                    return Err(EngineError::Exactness(Box::new(Divergence {
                        position: pos0 + i,
                        verify_row: row.to_vec(),
                        sequential_row: seq,
                    })));
                }
            }
        }

        // Emit accepted drafts, then the bonus token (the choice after the last accepted row).
        // Token j is the choice of row j (accepted drafts equal the predictions).
        let emitted: Vec<u32> = block[1..=accepted]
            .iter()
            .copied()
            .chain(std::iter::once(preds[accepted]))
            .collect();
        for (j, &tok) in emitted.iter().enumerate() {
            stats.n_generated += 1;
            drafter.observe(&[tok]);
            let done = stats.n_generated >= max_new;
            if on_token(tok, &rows[j * v..(j + 1) * v]) == Flow::Stop || done {
                // Greedy's state after emitting this token: everything before it is cached.
                session.truncate(pos0 + 1 + j);
                if let Some(g) = guard.as_deref_mut() {
                    g.truncate(pos0 + 1 + j);
                }
                break 'outer;
            }
        }
        last = *emitted.last().expect("at least the bonus token");
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    Ok((stats, spec))
}
