//! A small persistent thread pool for the CPU backend's parallel loops.
//!
//! `Pool::run(n, f)` calls `f(i)` once for every `i < n`, on the calling thread and the
//! pool's workers, and returns when all calls have returned. Which thread runs which index
//! never matters for the results: the kernels split output rows only.
//!
//! Why not rayon: a decode step is ~150 small parallel loops (5 per layer), 20-40 µs each on
//! SmolLM2. Rayon parks a worker after a few idle rounds and wakes it through a futex for the
//! next loop; that wake-up path (and its work-stealing deques) cost ~15% of SmolLM2 decode
//! (docs/KERNELS.md, V11). Here a job is one packed atomic word, workers spin for a short,
//! bounded time between jobs (so the loops of one token find them awake), then yield, then
//! sleep on a condition variable (so an idle engine and a busy neighbour cost nothing).
//!
//! Protocol. `word` packs `(epoch, next, n)`: publishing a job stores a new epoch with
//! `next = 0`; a thread claims index `next` with one `fetch_add`. A claim with `next < n`
//! belongs to a job that cannot complete before that index is done, so the job's closure
//! (stored before the word, read after the claim) is still alive. `done` counts finished
//! indices; the caller returns when `done == n`. A claim past `n` changes nothing.
//!
//! Concurrent callers (several sessions on one backend, or a nested loop inside a task) do
//! not wait for each other: a caller that finds the pool busy runs its loop on its own thread.
//!
//! When other processes keep the CPUs busy, a job may use fewer threads (`contention.rs`);
//! workers beyond the job's count park until they are wanted again.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::contention::{self, Guard};
use crate::EngineError;

const N_BITS: u32 = 20;
const N_MASK: u64 = (1 << N_BITS) - 1;
/// Indices per job: `next` may overshoot `n` by one claim per thread, which must not carry
/// into the epoch bits.
const MAX_N: usize = 1 << (N_BITS - 1);

fn pack(epoch: u64, next: u64, n: u64) -> u64 {
    (epoch << (2 * N_BITS)) | (next << N_BITS) | n
}

fn unpack(w: u64) -> (u64, u64, u64) {
    (w >> (2 * N_BITS), (w >> N_BITS) & N_MASK, w & N_MASK)
}

type Task<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    word: AtomicU64,
    done: AtomicUsize,
    /// The current job's closure, with its lifetime erased; see the module comment.
    task: UnsafeCell<Option<Task<'static>>>,
    /// Set while a caller owns the workers.
    busy: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    spin: Duration,
    /// Threads the current job may use: the caller and workers `1..active`. Raised under
    /// `lock` (with `parked` notified); read by a worker that sees a new job.
    active: AtomicUsize,
    parked: Condvar,
    /// Worker `i`'s thread id at index `i` (0 until it has started; index 0 unused).
    tids: Vec<AtomicI32>,
    guard: Mutex<Guard>,
}

// SAFETY: `task` is written only by the caller that holds `busy`, before it publishes the job
// with a release store of `word`, and read only by a thread that has claimed an unfinished
// index of that job (acquire), which keeps the job (and the closure) alive.
unsafe impl Sync for Shared {}

/// See the module documentation.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    threads: usize,
}

/// Default spin time of an idle worker before it sleeps (`VERISPEC_SPIN_US` overrides).
const DEFAULT_SPIN_US: u64 = 200;

impl Pool {
    /// A pool of `threads` threads in all: the caller of [`Pool::run`] and `threads - 1`
    /// workers.
    pub fn new(threads: usize) -> Result<Pool, EngineError> {
        Pool::build(threads, true)
    }

    /// A pool whose jobs always use every thread, however busy the machine (tests that
    /// compare thread counts).
    pub fn unguarded(threads: usize) -> Result<Pool, EngineError> {
        Pool::build(threads, false)
    }

    fn build(threads: usize, watch: bool) -> Result<Pool, EngineError> {
        let threads = threads.max(1);
        let spin_us = std::env::var("VERISPEC_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SPIN_US);
        let shared = Arc::new(Shared {
            word: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            task: UnsafeCell::new(None),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            spin: Duration::from_micros(spin_us),
            active: AtomicUsize::new(threads),
            parked: Condvar::new(),
            tids: (0..threads).map(|_| AtomicI32::new(0)).collect(),
            guard: Mutex::new(Guard::new(threads, watch)),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("verispec-cpu-{i}"))
                .spawn(move || {
                    s.tids[i].store(contention::current_tid(), Ordering::Release);
                    worker(&s, i, 0)
                })
                .map_err(|e| EngineError::Backend(format!("cannot start CPU threads: {e}")));
            match h {
                Ok(h) => workers.push(h),
                Err(e) => {
                    stop(&shared, &mut workers);
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            shared,
            workers,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How many threads the last parallel job could use (see `contention.rs`).
    pub fn active_threads(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Calls `f(i)` exactly once for each `i < n` and returns when all calls have returned.
    /// A panic in `f` on a worker aborts the process (it would otherwise leave the caller
    /// waiting forever); on the calling thread it propagates after the other indices finish.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if n == 0 {
            return;
        }
        if n == 1
            || self.workers.is_empty()
            || s.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            (0..n).for_each(f);
            return;
        }
        if self.set_active() == 1 {
            // Nothing to publish: release the workers first, so a panic in `f` cannot
            // leave the pool marked busy.
            s.busy.store(false, Ordering::Release);
            (0..n).for_each(f);
            return;
        }
        if n > MAX_N {
            // Coarser indices: job index j covers f's indices j*k .. (j+1)*k.
            let k = n.div_ceil(MAX_N);
            let g = move |j: usize| (j * k..((j + 1) * k).min(n)).for_each(f);
            self.publish_and_help(n.div_ceil(k), &g);
        } else {
            self.publish_and_help(n, f);
        }
        s.busy.store(false, Ordering::Release);
    }

    /// Asks the guard how many threads the next job may use and tells the workers.
    fn set_active(&self) -> usize {
        let s = &*self.shared;
        let active = s
            .guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .before_job(&s.tids);
        let old = s.active.load(Ordering::Relaxed);
        if active > old {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.active.store(active, Ordering::SeqCst);
            s.parked.notify_all();
        } else if active < old {
            s.active.store(active, Ordering::SeqCst);
        }
        active
    }

    fn publish_and_help(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        // SAFETY: we hold `busy`, and the previous job finished (`done == n` was observed),
        // so no thread reads `task` until the store of `word` below publishes the new job.
        // The lifetime is erased; the closure outlives the job because this function returns
        // only after `done == n`, and nobody reads `task` for a finished job.
        unsafe {
            *s.task.get() = Some(std::mem::transmute::<Task<'_>, Task<'static>>(f));
        }
        s.done.store(0, Ordering::Relaxed);
        let (epoch, _, _) = unpack(s.word.load(Ordering::Relaxed));
        s.word
            .store(pack(epoch.wrapping_add(1), 0, n as u64), Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // The caller works too; a panic here must still wait for the workers' claims.
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claim_all(s)));
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = caller {
            s.busy.store(false, Ordering::Release);
            std::panic::resume_unwind(p);
        }
    }
}

/// Claims and runs indices of the current job until none are left; returns how many ran.
fn claim_all(s: &Shared) -> usize {
    let mut ran = 0;
    loop {
        let (_, next, n) = unpack(s.word.fetch_add(1 << N_BITS, Ordering::AcqRel));
        if next >= n {
            return ran;
        }
        // SAFETY: index `next < n` is claimed and not done, so the job is live; see `Shared`.
        let f = unsafe { (*s.task.get()).expect("a published job has a task") };
        // Counts the index as done even if `f` panics, so the caller never waits forever.
        let _done = Done(&s.done);
        f(next as usize);
        ran += 1;
    }
}

struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A worker's loop. `seen` is the epoch at spawn time (0: no job can be published before
/// `Pool::new` returns); reading it from `word` inside the thread would race with the first
/// job and could skip it.
fn worker(s: &Shared, index: usize, mut seen: u64) {
    loop {
        // Wait for a new epoch: spin, then yield, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = unpack(s.word.load(Ordering::Acquire)).0;
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                std::hint::spin_loop();
                continue;
            }
            if start.elapsed() < s.spin {
                std::thread::yield_now();
                continue;
            }
            let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let e = unpack(s.word.load(Ordering::SeqCst)).0;
            if e == seen && !s.shutdown.load(Ordering::SeqCst) {
                let _g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if index >= s.active.load(Ordering::Acquire) {
            // Not wanted for this job: park until the pool uses this many threads again.
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            while index >= s.active.load(Ordering::SeqCst) && !s.shutdown.load(Ordering::SeqCst) {
                g = s.parked.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            continue;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claim_all(s)));
        if r.is_err() {
            eprintln!("verispec: a CPU worker panicked; aborting");
            std::process::abort();
        }
    }
}

fn stop(s: &Shared, workers: &mut Vec<std::thread::JoinHandle<()>>) {
    s.shutdown.store(true, Ordering::SeqCst);
    {
        let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
        s.parked.notify_all();
    }
    for h in workers.drain(..) {
        let _ = h.join();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        stop(&self.shared, &mut self.workers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            for n in [0usize, 1, 2, 3, 7, 64, 1000] {
                for _ in 0..20 {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    pool.run(n, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                }
            }
        }
    }

    #[test]
    fn more_indices_than_a_word_holds() {
        let pool = Pool::new(2).unwrap();
        let n = MAX_N * 2 + 3;
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        pool.run(n, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn concurrent_and_nested_callers_complete() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        pool.run(8, &|_| {
                            // A nested loop finds the pool busy and runs inline.
                            pool.run(4, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 8 * 4);
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = Pool::new(2).unwrap();
        let hits = AtomicUsize::new(0);
        for _ in 0..3 {
            // Longer than the spin time: the worker goes to sleep between jobs.
            std::thread::sleep(Duration::from_millis(5));
            pool.run(16, &|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 48);
    }

    #[test]
    fn sheds_a_thread_beside_busy_threads_and_stays_correct() {
        if !contention::available() {
            return;
        }
        let pool = Pool::new(2).unwrap();
        let stop = AtomicBool::new(false);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shed = std::thread::scope(|sc| {
            for _ in 0..cpus {
                sc.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let start = Instant::now();
            let mut shed = false;
            while start.elapsed() < Duration::from_secs(10) && !shed {
                let hits: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
                pool.run(64, &|i| {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                shed = pool.active_threads() == 1;
            }
            stop.store(true, Ordering::Relaxed);
            shed
        });
        assert!(
            shed,
            "{cpus} busy threads beside the pool; it kept both threads for 10 s"
        );
    }

    #[test]
    fn a_panic_on_the_caller_propagates_and_the_pool_recovers() {
        let pool = Pool::new(2).unwrap();
        let caller = std::thread::current().id();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|_| {
                std::thread::sleep(Duration::from_millis(2));
                if std::thread::current().id() == caller {
                    panic!("boom");
                }
            })
        }));
        assert!(
            r.is_err(),
            "the caller claims an index and its panic propagates"
        );
        let hits = AtomicUsize::new(0);
        pool.run(10, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 10);
    }
}
