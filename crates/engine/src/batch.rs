//! Several sequences in one pass (continuous batching).
//!
//! A batch thread owns shard runners with one KV slot per sequence. Sessions made by
//! `Engine::batched_sessions` send it their forward calls; it merges the calls that are pending
//! into passes of at most `MAX_BLOCK_ROWS` rows, fewest remaining rows first (decode steps and
//! verify blocks before prompt chunks, which fill the rest of the pass), and answers each call
//! when its last rows have run.
//!
//! This changes no bits. Every op but attention works row by row with a reduction order that
//! does not depend on the other rows of the pass, and attention reads only the row's own slot.
//! So a sequence's logits are the same whether it runs alone or beside others, and however its
//! prompt is split into chunks; tests/batch.rs checks this with `to_bits()`.
//!
//! Decoding is bandwidth-bound: one pass streams every weight once, whatever its row count. A
//! pass with one row from each of N sequences costs little more than a single step, which is
//! where the throughput of parallel requests comes from.
//!
//! While a session is marked busy (`Session::busy`), the thread waits up to `GATHER_WAIT` for
//! its next call before running a pass without it, so sequences that decode together stay in
//! step.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::rope::{RopeSet, RopeTable};
use crate::model::{run_pipeline, LogitRows, SeqRows, ShardRunner, MAX_BLOCK_ROWS};
use crate::EngineError;

/// Most sequences one batch thread holds.
pub const MAX_SLOTS: usize = MAX_BLOCK_ROWS;
/// How long a pass waits for the next call of a busy session.
pub const GATHER_WAIT: Duration = Duration::from_millis(5);
/// A call with at most this many rows left is a step (decode, or a verify block), not a prompt.
pub const STEP_ROWS: usize = 8;
/// Prompt rows a pass takes while steps share it (`VERISPEC_PREFILL_ROWS` overrides): a long
/// prompt then slows the others' steps by a pass of this many extra rows, not of a whole
/// `MAX_BLOCK_ROWS` block. Alone, a prompt takes whole blocks.
pub const PREFILL_ROWS_BESIDE_STEPS: usize = 16;

/// The sessions' side of a batch thread.
pub struct Shared {
    tx: Sender<Msg>,
    busy: Arc<Vec<AtomicBool>>,
    counters: Arc<Counters>,
}

/// What the batch thread has run so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct BatchStats {
    pub passes: u64,
    /// Rows over all passes.
    pub rows: u64,
    /// Sequences over all passes (a pass with rows of 3 sequences counts 3).
    pub seqs: u64,
    /// The most sequences one pass held.
    pub max_seqs: u64,
    /// Seconds spent in passes (the rest of the thread's time is waiting for calls).
    pub pass_s: f64,
}

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    rows: AtomicU64,
    seqs: AtomicU64,
    max_seqs: AtomicU64,
    pass_ns: AtomicU64,
}

enum Msg {
    Run(Job),
    /// A session stopped being busy: the thread may not need to wait any more.
    Wake,
}

/// A forward call: `ids` at positions [pos0, pos0 + ids.len()) of slot `slot`.
struct Job {
    slot: usize,
    ids: Vec<u32>,
    pos0: usize,
    set: RopeSet,
    rows: LogitRows,
    /// Rows already run.
    done: usize,
    logits: Vec<f32>,
    reply: Sender<Result<Vec<f32>, EngineError>>,
}

fn stopped() -> EngineError {
    EngineError::Backend("the batch thread has stopped".into())
}

impl Shared {
    /// Run `ids` on `slot` from `pos0` (rolling the slot back to `pos0` first) and return the
    /// logits of `rows`, as `ShardRunner::forward` would.
    pub fn run(
        &self,
        slot: usize,
        ids: Vec<u32>,
        pos0: usize,
        set: RopeSet,
        rows: LogitRows,
    ) -> Result<Vec<f32>, EngineError> {
        let (reply, answer) = channel();
        let job = Job {
            slot,
            ids,
            pos0,
            set,
            rows,
            done: 0,
            logits: Vec::new(),
            reply,
        };
        self.tx.send(Msg::Run(job)).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    pub fn stats(&self) -> BatchStats {
        let c = &self.counters;
        BatchStats {
            passes: c.passes.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            seqs: c.seqs.load(Ordering::Relaxed),
            max_seqs: c.max_seqs.load(Ordering::Relaxed),
            pass_s: c.pass_ns.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }

    /// How many slots are marked busy.
    pub fn busy_slots(&self) -> usize {
        self.busy
            .iter()
            .filter(|b| b.load(Ordering::Relaxed))
            .count()
    }

    /// Mark `slot` busy until the guard drops.
    pub fn enter(self: &Arc<Self>, slot: usize) -> BusyGuard {
        self.busy[slot].store(true, Ordering::Release);
        BusyGuard {
            shared: self.clone(),
            slot,
        }
    }
}

pub struct BusyGuard {
    shared: Arc<Shared>,
    slot: usize,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.shared.busy[self.slot].store(false, Ordering::Release);
        let _ = self.shared.tx.send(Msg::Wake);
    }
}

/// Start a batch thread over `runners` (a pipeline whose runners all have the same slots).
pub fn spawn(
    runners: Vec<Box<dyn ShardRunner>>,
    rope: Arc<RopeTable>,
    n_vocab: usize,
) -> Result<Arc<Shared>, EngineError> {
    let n_slots = runners.first().map_or(0, |r| r.n_slots());
    if n_slots == 0 || runners.iter().any(|r| r.n_slots() != n_slots) {
        return Err(EngineError::Model(
            "the shards of a batch must all hold the same slots".into(),
        ));
    }
    let (tx, rx) = channel();
    let busy: Arc<Vec<AtomicBool>> =
        Arc::new((0..n_slots).map(|_| AtomicBool::new(false)).collect());
    let counters = Arc::new(Counters::default());
    let thread = Batcher {
        runners,
        rope,
        n_vocab,
        busy: busy.clone(),
        counters: counters.clone(),
        jobs: Vec::new(),
        prefill_rows: std::env::var("VERISPEC_PREFILL_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PREFILL_ROWS_BESIDE_STEPS)
            .clamp(1, MAX_BLOCK_ROWS),
    };
    std::thread::Builder::new()
        .name("verispec-batch".into())
        .spawn(move || thread.serve(rx))
        .map_err(|e| EngineError::Backend(format!("cannot start the batch thread: {e}")))?;
    Ok(Arc::new(Shared { tx, busy, counters }))
}

struct Batcher {
    runners: Vec<Box<dyn ShardRunner>>,
    rope: Arc<RopeTable>,
    n_vocab: usize,
    busy: Arc<Vec<AtomicBool>>,
    counters: Arc<Counters>,
    jobs: Vec<Job>,
    /// `PREFILL_ROWS_BESIDE_STEPS` or its override.
    prefill_rows: usize,
}

impl Batcher {
    /// Serve calls until every session is gone.
    fn serve(mut self, rx: Receiver<Msg>) {
        loop {
            if self.jobs.is_empty() {
                match rx.recv() {
                    Ok(m) => self.take(m),
                    Err(_) => return,
                }
            }
            let deadline = Instant::now() + GATHER_WAIT;
            while !self.gathered() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(m) => self.take(m),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            while let Ok(m) = rx.try_recv() {
                self.take(m);
            }
            if !self.jobs.is_empty() {
                self.pass();
            }
        }
    }

    fn take(&mut self, m: Msg) {
        if let Msg::Run(job) = m {
            self.jobs.push(job);
        }
    }

    /// Every busy slot has a call pending.
    fn gathered(&self) -> bool {
        self.busy
            .iter()
            .enumerate()
            .all(|(slot, b)| !b.load(Ordering::Acquire) || self.jobs.iter().any(|j| j.slot == slot))
    }

    /// One pass over the pending calls' next rows.
    fn pass(&mut self) {
        self.jobs.sort_by_key(|j| (j.ids.len() - j.done, j.slot));
        let remaining: Vec<usize> = self.jobs.iter().map(|j| j.ids.len() - j.done).collect();
        let takes = plan(&remaining, self.prefill_rows);
        let mut seqs = Vec::new();
        let mut ids = Vec::new();
        for (j, &take) in self.jobs.iter().zip(&takes) {
            let last = j.done + take == j.ids.len();
            seqs.push(SeqRows {
                slot: j.slot,
                pos0: j.pos0 + j.done,
                n_rows: take,
                set: j.set,
                logits: match j.rows {
                    LogitRows::Last if !last => LogitRows::None,
                    r => r,
                },
            });
            ids.extend_from_slice(&j.ids[j.done..j.done + take]);
        }
        let c = &self.counters;
        c.passes.fetch_add(1, Ordering::Relaxed);
        c.rows.fetch_add(ids.len() as u64, Ordering::Relaxed);
        c.seqs.fetch_add(seqs.len() as u64, Ordering::Relaxed);
        c.max_seqs.fetch_max(seqs.len() as u64, Ordering::Relaxed);
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.forward_rows(ids, &seqs)))
            .unwrap_or_else(|_| Err(EngineError::Backend("a batched pass panicked".into())));
        self.counters
            .pass_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let ran: Vec<Job> = self.jobs.drain(..seqs.len()).collect();
        let v = self.n_vocab;
        match result {
            Ok(logits) => {
                let mut off = 0;
                for (mut j, q) in ran.into_iter().zip(&seqs) {
                    let n = match q.logits {
                        LogitRows::None => 0,
                        LogitRows::Last => 1,
                        LogitRows::All => q.n_rows,
                    };
                    j.logits.extend_from_slice(&logits[off..off + n * v]);
                    off += n * v;
                    j.done += q.n_rows;
                    if j.done == j.ids.len() {
                        let _ = j.reply.send(Ok(std::mem::take(&mut j.logits)));
                    } else {
                        self.jobs.push(j);
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let mut e = Some(e);
                for j in ran {
                    let err = e
                        .take()
                        .unwrap_or_else(|| EngineError::Backend(msg.clone()));
                    let _ = j.reply.send(Err(err));
                }
            }
        }
    }

    fn forward_rows(&mut self, ids: Vec<u32>, seqs: &[SeqRows]) -> Result<Vec<f32>, EngineError> {
        let rope = &self.rope;
        run_pipeline(&mut self.runners, ids, |r, act| {
            r.forward_batch(act, seqs, rope)
        })
    }
}

/// Rows each pending call runs in the next pass, for calls sorted by rows left (`remaining`,
/// ascending): a prefix of them, at most `MAX_BLOCK_ROWS` rows in all. Steps (at most
/// `STEP_ROWS` left) run whole; prompts share what is left, at most `prefill_rows` of it while
/// a step is in the pass.
fn plan(remaining: &[usize], prefill_rows: usize) -> Vec<usize> {
    let steps = remaining.iter().any(|&r| r <= STEP_ROWS);
    let mut prompt_left = if steps { prefill_rows } else { MAX_BLOCK_ROWS };
    let mut left = MAX_BLOCK_ROWS;
    let mut takes = Vec::new();
    for &r in remaining {
        let budget = if r <= STEP_ROWS {
            left
        } else {
            left.min(prompt_left)
        };
        if budget == 0 {
            break;
        }
        let take = r.min(budget);
        if r > STEP_ROWS {
            prompt_left -= take;
        }
        left -= take;
        takes.push(take);
    }
    takes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_take_steps_whole_and_cap_prompts_beside_them() {
        // A prompt alone takes whole blocks.
        assert_eq!(plan(&[1000], 16), vec![64]);
        assert_eq!(plan(&[40, 1000], 16), vec![40, 24]);
        // Beside steps, prompts share `prefill_rows`.
        assert_eq!(plan(&[1, 4, 1000], 16), vec![1, 4, 16]);
        assert_eq!(plan(&[1, 10, 1000], 16), vec![1, 10, 6]);
        assert_eq!(plan(&[1, 12, 30], 16), vec![1, 12, 4]);
        // Steps always fit before prompts; the pass never exceeds a block.
        let many = vec![1; 70];
        assert_eq!(plan(&many, 16).len(), MAX_BLOCK_ROWS);
        assert_eq!(plan(&[8, 8, 8, 8, 8, 8, 8, 8, 500], 16), vec![8; 8]);
        assert_eq!(plan(&[3, 500], 64), vec![3, 61]);
    }
}
