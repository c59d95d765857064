//! How many of the pool's threads a job may use when other processes want the same CPUs.
//!
//! A decode step is ~150 parallel loops, each ending when its last index finishes. When a
//! CPU-busy neighbour shares the cores, the scheduler preempts one of our threads for a time
//! slice (milliseconds) and every loop that thread holds an index of waits for it: on the
//! 2-vCPU Intel VM, 2 threads beside one busy process decoded at 0.67-0.72x of 1 thread on
//! an idle machine in some rounds, while 1 thread beside it kept 0.81-1.20x (V22).
//!
//! The guard watches the share of our threads' runnable time spent waiting for a CPU (the
//! run-queue delay in `/proc/self/task/<tid>/schedstat`, which only other runnable threads
//! cause). Over windows of at least [`WINDOW`] and [`MIN_RUNNABLE`] of runnable time: after
//! two windows in a row above [`HIGH`], the pool uses one thread fewer, and tries one more
//! after a backoff that doubles while the contention lasts ([`BACKOFF_START`] ..
//! [`BACKOFF_MAX`]). Which
//! thread runs which index never changes the bits (the pool's contract), so this changes
//! speed only. Where schedstat cannot be read (not Linux, no /proc), every job uses every
//! thread. `VERISPEC_POOL_GUARD=0` turns the guard off; `VERISPEC_POOL_TRACE=1` prints each
//! window's figures to stderr.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Shortest window between two decisions.
pub const WINDOW: Duration = Duration::from_millis(25);
/// Least runnable time (on a CPU or waiting for one, summed over the threads) a window
/// needs before it decides anything; idle windows are extended.
pub const MIN_RUNNABLE: Duration = Duration::from_millis(10);
/// Share of runnable time spent waiting for a CPU above which the pool sheds a thread.
pub const HIGH: f64 = 0.10;
pub const BACKOFF_START: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_millis(3200);

/// Cumulative (on-CPU, run-queue wait) nanoseconds of one thread.
fn schedstat(tid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut it = text.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

static DEFAULT_ON: AtomicBool = AtomicBool::new(true);

/// Whether pools made from now on watch for contention (default: yes). Tests that compare
/// 1 thread against 2 turn it off, so that their "2 threads" really run on two threads when
/// other tests keep the CPUs busy.
pub fn set_default(enabled: bool) {
    DEFAULT_ON.store(enabled, Ordering::Relaxed);
}

/// Whether this system exposes the counters the guard needs.
pub fn available() -> bool {
    schedstat(current_tid()).is_some()
}

/// The calling thread's id for [`schedstat`], or 0 where there is none.
pub fn current_tid() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

struct Window {
    start: Instant,
    /// Thread id and its counters at the window's start, for every thread the jobs of this
    /// window may use (the caller first).
    base: Vec<(i32, (u64, u64))>,
}

pub struct Guard {
    threads: usize,
    active: usize,
    enabled: bool,
    trace: bool,
    window: Option<Window>,
    /// While `active < threads`: when to try one thread more.
    probe_at: Option<Instant>,
    /// Whether `active` was raised by a probe that no window has confirmed yet.
    probing: bool,
    /// Whether the last window was over [`HIGH`]: it takes two in a row to shed a thread,
    /// since a single window on an idle machine reached 31-36% now and then (a page fault
    /// storm or a kernel thread, not a neighbour that stays).
    contended_before: bool,
    backoff: Duration,
}

impl Guard {
    /// `watch`: whether this pool may shed threads at all (see also [`set_default`] and
    /// `VERISPEC_POOL_GUARD`).
    pub fn new(threads: usize, watch: bool) -> Guard {
        let off = std::env::var("VERISPEC_POOL_GUARD").is_ok_and(|v| v == "0");
        Guard {
            threads,
            active: threads,
            enabled: watch
                && threads > 1
                && !off
                && DEFAULT_ON.load(Ordering::Relaxed)
                && available(),
            trace: std::env::var("VERISPEC_POOL_TRACE").is_ok_and(|v| v == "1"),
            window: None,
            probe_at: None,
            probing: false,
            contended_before: false,
            backoff: BACKOFF_START,
        }
    }

    /// Called by the thread that owns the workers before each parallel job; `tids[i]` is
    /// worker `i`'s thread id (index 0 unused). Returns how many threads the job may use:
    /// the caller and workers `1..active`.
    pub fn before_job(&mut self, tids: &[AtomicI32]) -> usize {
        if !self.enabled {
            return self.threads;
        }
        let now = Instant::now();
        match &self.window {
            None => self.open(now, current_tid(), tids),
            Some(w) if now.duration_since(w.start) >= WINDOW => {
                self.close(now, current_tid(), tids)
            }
            Some(_) => {}
        }
        self.active
    }

    fn open(&mut self, now: Instant, caller: i32, tids: &[AtomicI32]) {
        let workers = tids.iter().take(self.active).skip(1);
        let ids: Vec<i32> = std::iter::once(caller)
            .chain(workers.map(|t| t.load(Ordering::Acquire)))
            .collect();
        if ids.contains(&0) {
            // A worker has not started yet.
            return;
        }
        let base: Option<Vec<_>> = ids.into_iter().map(|t| Some((t, schedstat(t)?))).collect();
        match base {
            Some(base) => self.window = Some(Window { start: now, base }),
            // A worker's counters cannot be read: use every thread from now on.
            None => {
                self.enabled = false;
                self.active = self.threads;
            }
        }
    }

    fn close(&mut self, now: Instant, caller: i32, tids: &[AtomicI32]) {
        let Some(w) = self.window.take() else { return };
        let (mut on_cpu, mut waiting) = (0u64, 0u64);
        for &(t, (c0, q0)) in &w.base {
            let Some((c, q)) = schedstat(t) else {
                // A caller thread that has exited: start again.
                self.open(now, caller, tids);
                return;
            };
            on_cpu += c.saturating_sub(c0);
            waiting += q.saturating_sub(q0);
        }
        let runnable = on_cpu + waiting;
        if runnable < MIN_RUNNABLE.as_nanos() as u64 {
            self.window = Some(w);
            return;
        }
        let share = waiting as f64 / runnable as f64;
        let before = self.active;
        self.decide(share, now);
        if self.trace {
            eprintln!(
                "verispec pool: {:.1} ms runnable, {:.1}% waiting for a CPU, threads {} -> {}",
                runnable as f64 / 1e6,
                share * 100.0,
                before,
                self.active
            );
        }
        self.open(now, caller, tids);
    }

    /// One window's verdict: `share` of its runnable time waited for a CPU.
    fn decide(&mut self, share: f64, now: Instant) {
        let before = self.active;
        let contended = share > HIGH;
        if contended && self.contended_before && self.active > 1 {
            self.active -= 1;
            self.backoff = if self.probing {
                (self.backoff * 2).min(BACKOFF_MAX)
            } else {
                BACKOFF_START
            };
            self.probe_at = Some(now + self.backoff);
            self.probing = false;
        } else if self.active < self.threads && self.probe_at.is_some_and(|t| now >= t) {
            self.active += 1;
            self.probe_at = (self.active < self.threads).then(|| now + self.backoff);
            self.probing = true;
        } else if !contended && self.probing {
            self.probing = false;
            self.backoff = BACKOFF_START;
        }
        // Two windows in a row at one thread count.
        self.contended_before = contended && self.active == before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `decide` does not read the counters, so the guard need not be enabled.
    fn guard(threads: usize) -> Guard {
        Guard::new(threads, false)
    }

    #[test]
    fn sheds_after_two_contended_windows_and_probes_back() {
        let mut g = guard(2);
        let t0 = Instant::now();
        g.decide(0.5, t0);
        assert_eq!(g.active, 2, "one window is not enough");
        g.decide(0.02, t0 + WINDOW);
        g.decide(0.5, t0 + WINDOW * 2);
        assert_eq!(g.active, 2, "the two windows must be in a row");
        g.decide(0.5, t0 + WINDOW * 3);
        assert_eq!(g.active, 1);
        // Alone, the caller waits for nothing; the probe comes after the backoff.
        let shed = t0 + WINDOW * 3;
        g.decide(0.0, shed + BACKOFF_START / 2);
        assert_eq!(g.active, 1);
        g.decide(0.0, shed + BACKOFF_START);
        assert_eq!(g.active, 2);
        // The neighbour is gone: the probe holds and the backoff starts over.
        g.decide(0.01, shed + BACKOFF_START + WINDOW);
        g.decide(0.01, shed + BACKOFF_START + WINDOW * 2);
        assert_eq!((g.active, g.backoff), (2, BACKOFF_START));
    }

    #[test]
    fn failed_probes_double_the_backoff_up_to_its_cap() {
        let mut g = guard(2);
        let mut now = Instant::now();
        g.decide(0.5, now);
        g.decide(0.5, now);
        assert_eq!(g.active, 1);
        let mut expect = BACKOFF_START;
        for _ in 0..8 {
            now += g.backoff;
            g.decide(0.0, now);
            assert_eq!(g.active, 2, "probe due");
            g.decide(0.5, now);
            g.decide(0.5, now);
            assert_eq!(g.active, 1, "the probe fails");
            expect = (expect * 2).min(BACKOFF_MAX);
            assert_eq!(g.backoff, expect);
        }
        assert_eq!(g.backoff, BACKOFF_MAX);
    }

    #[test]
    fn sheds_one_thread_at_a_time_and_never_below_one() {
        let mut g = guard(4);
        let now = Instant::now();
        for want in [3, 2, 1, 1] {
            g.decide(0.9, now);
            g.decide(0.9, now);
            assert_eq!(g.active, want);
        }
    }
}
