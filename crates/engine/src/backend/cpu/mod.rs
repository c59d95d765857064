//! CPU backend. Threads split output rows (or attention heads) only, never a reduction, so
//! results are identical for any thread count and any number of token rows.

pub mod kernels;
pub mod pool;

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, ComputePath, OpCounts};
use crate::gguf::GgmlType;
use crate::model::rope::{RopeSet, RopeTable};
use crate::model::weights::HostTensor;
use crate::quant;
use crate::EngineError;

const OPS: [&str; 11] = [
    "embed",
    "rms_norm",
    "matmul",
    "copy_cols",
    "rope",
    "kv_write",
    "attention",
    "swiglu",
    "add",
    "upload",
    "download",
];

pub struct CpuBackend {
    path: ComputePath,
    pool: std::sync::Arc<pool::Pool>,
    counts: [AtomicU64; OPS.len()],
    /// Quantized-activation buffers reused by every matmul (no allocation per call).
    acts: std::sync::Mutex<kernels::QuantizedActs>,
}

/// A weight matrix `[n_out, n_in]`.
pub enum CpuMatrix {
    /// Rows dequantized on the fly from the mapped file (reference path).
    Reference(HostTensor),
    /// Repacked int8 / native k-quant blocks for the batch-invariant kernels (fast path).
    Packed(kernels::PackedMatrix),
}

pub struct CpuVector(pub Vec<f32>);

impl CpuBackend {
    pub fn new(path: ComputePath, threads: usize) -> Result<CpuBackend, EngineError> {
        // Tuning knob for benchmarks (results never depend on it).
        if let Some(b) = std::env::var("VERISPEC_PREFETCH")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            kernels::set_prefetch_distance(b);
        }
        let pool = pool::Pool::new(threads)?;
        Ok(CpuBackend {
            path,
            pool: std::sync::Arc::new(pool),
            counts: Default::default(),
            acts: Default::default(),
        })
    }

    /// A backend on the same threads with its own op counters (one per shard, so residency
    /// is reported per shard).
    pub fn sibling(&self) -> CpuBackend {
        CpuBackend {
            path: self.path,
            pool: self.pool.clone(),
            counts: Default::default(),
            acts: Default::default(),
        }
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs `f` with the backend's reusable activation buffers, or with fresh ones when they
    /// are in use (another session's pass on the same backend). Never blocks.
    fn with_acts<R>(&self, f: impl FnOnce(&mut kernels::QuantizedActs) -> R) -> R {
        match self.acts.try_lock() {
            Ok(mut a) => f(&mut a),
            Err(std::sync::TryLockError::Poisoned(e)) => f(&mut e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => f(&mut kernels::QuantizedActs::default()),
        }
    }

    fn count(&self, op: &'static str) {
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A raw output pointer shared by the tasks of one parallel loop, each writing its own part.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only where tasks write disjoint elements and the loop outlives none of them.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// # Safety
    /// `i` is in bounds of the allocation the pointer came from.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

thread_local! {
    /// Attention scores of one (row, head), reused by each worker thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One (row, head) of causal attention: keys `0..=pos` in order, whatever `T` and the thread.
struct Attend<'a> {
    qh: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    /// Offset of the KV head inside a cache row.
    off: usize,
    kv_width: usize,
    head_dim: usize,
    scale: f32,
}

impl Attend<'_> {
    /// The same scalar code compiled with AVX2 enabled: the compiler may use wider vectors for
    /// the lane-wise loops of `dot_f32` and the V accumulation, never FMA (Rust does not
    /// contract `a * b + c`), so the bits are those of [`Attend::run`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, scores: &mut Vec<f32>, pos: usize, o: &mut [f32]) {
        self.run(scores, pos, o)
    }

    #[inline(always)]
    fn run(&self, scores: &mut Vec<f32>, pos: usize, o: &mut [f32]) {
        let (hd, w, off) = (self.head_dim, self.kv_width, self.off);
        scores.clear();
        scores.resize(pos + 1, 0.0);
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let k = &self.k_cache[j * w + off..][..hd];
            *s = dot_f32(self.qh, k) * self.scale;
            max = max.max(*s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let v = &self.v_cache[j * w + off..][..hd];
            for (od, &vd) in o.iter_mut().zip(v) {
                *od += p * vd;
            }
        }
        let inv = 1.0 / sum;
        for od in o.iter_mut() {
            *od *= inv;
        }
    }
}

/// Fixed-order f32 dot product: 8 interleaved partial sums, then a fixed tree.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for i in chunks * 8..n {
        acc[i % 8] += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

fn dequant_row(t: &HostTensor, r: usize, out: &mut [f32]) {
    // Shapes and byte counts were validated when the file was parsed.
    quant::dequantize_row(t.ggml_type(), t.row(r), out)
        .expect("tensor row size was validated at load");
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Matrix = CpuMatrix;
    type Vector = CpuVector;

    fn device_name(&self) -> String {
        "cpu".into()
    }

    fn path(&self) -> ComputePath {
        self.path
    }

    fn alloc(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }

    fn upload(&self, src: &[f32], dst: &mut Vec<f32>) {
        self.count("upload");
        dst[..src.len()].copy_from_slice(src);
    }

    fn download(&self, src: &Vec<f32>, offset: usize, dst: &mut [f32]) {
        self.count("download");
        dst.copy_from_slice(&src[offset..offset + dst.len()]);
    }

    fn load_matrix(&self, t: &HostTensor) -> Result<CpuMatrix, EngineError> {
        if t.info.shape.len() != 2 {
            return Err(EngineError::Model(format!(
                "{} should be a matrix, has shape {:?}",
                t.name(),
                t.info.shape
            )));
        }
        if !quant::can_dequantize(t.ggml_type()) {
            return Err(EngineError::Model(format!(
                "{}: tensor type {} is not supported",
                t.name(),
                t.ggml_type()
            )));
        }
        let float = matches!(
            t.ggml_type(),
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
        );
        match self.path {
            // Float weights keep float precision on the fast path too: the f32 kernel is
            // batch-invariant, and float models are test fixtures, not deployment formats.
            // `export --type q8_0` converts them to the int8 path.
            ComputePath::Reference => Ok(CpuMatrix::Reference(t.clone())),
            ComputePath::Fast if float => Ok(CpuMatrix::Reference(t.clone())),
            ComputePath::Fast => {
                let packed = kernels::PackedMatrix::from_ggml(
                    t.ggml_type(),
                    t.data(),
                    t.n_rows(),
                    t.row_len(),
                )
                .map_err(|e| EngineError::Model(format!("{}: {e}", t.name())))?;
                // The packed copy replaces the mapped bytes: let the kernel drop those pages
                // from our resident set (they stay in the page cache).
                t.file.release(&t.info);
                Ok(CpuMatrix::Packed(packed))
            }
        }
    }

    fn load_vector(&self, t: &HostTensor) -> Result<CpuVector, EngineError> {
        let v = quant::dequantize_tensor(t.ggml_type(), t.data(), t.info.n_elements() as usize)
            .map_err(|e| EngineError::Model(format!("{}: {e}", t.name())))?;
        Ok(CpuVector(v))
    }

    fn matrix_dims(&self, m: &CpuMatrix) -> (usize, usize) {
        match m {
            CpuMatrix::Reference(t) => (t.n_rows(), t.row_len()),
            CpuMatrix::Packed(p) => (p.n_out(), p.n_in()),
        }
    }

    fn embed(&self, table: &CpuMatrix, ids: &[u32], out: &mut Vec<f32>) -> Result<(), EngineError> {
        self.count("embed");
        let (n_vocab, n_embd) = self.matrix_dims(table);
        for (t, &id) in ids.iter().enumerate() {
            if id as usize >= n_vocab {
                return Err(EngineError::BadInput(format!(
                    "token id {id} is out of range (vocabulary has {n_vocab} entries)"
                )));
            }
            let dst = &mut out[t * n_embd..(t + 1) * n_embd];
            match table {
                CpuMatrix::Reference(h) => dequant_row(h, id as usize, dst),
                CpuMatrix::Packed(p) => p.dequantize_row(id as usize, dst),
            }
        }
        Ok(())
    }

    fn rms_norm(&self, x: &Vec<f32>, w: &CpuVector, eps: f32, n_rows: usize, out: &mut Vec<f32>) {
        self.count("rms_norm");
        let n = w.0.len();
        for t in 0..n_rows {
            let row = &x[t * n..(t + 1) * n];
            let ss = dot_f32(row, row);
            let scale = 1.0 / (ss / n as f32 + eps).sqrt();
            for ((o, &v), &g) in out[t * n..(t + 1) * n].iter_mut().zip(row).zip(&w.0) {
                *o = (v * scale) * g;
            }
        }
    }

    fn matmul(&self, m: &CpuMatrix, x: &Vec<f32>, n_rows: usize, out: &mut Vec<f32>) {
        self.count("matmul");
        let (n_out, n_in) = self.matrix_dims(m);
        match m {
            CpuMatrix::Reference(h) => {
                // [n_out, n_rows], transposed into out afterwards.
                let mut tmp = vec![0f32; n_out * n_rows];
                const ROWS_PER_TASK: usize = 16;
                let dst = SyncPtr(tmp.as_mut_ptr());
                self.pool.run(n_out.div_ceil(ROWS_PER_TASK), &|c| {
                    let mut w = vec![0f32; n_in];
                    for o in c * ROWS_PER_TASK..((c + 1) * ROWS_PER_TASK).min(n_out) {
                        dequant_row(h, o, &mut w);
                        for t in 0..n_rows {
                            let v = dot_f32(&w, &x[t * n_in..(t + 1) * n_in]);
                            // SAFETY: task `c` alone writes rows `c * 16 ..` of `tmp`.
                            unsafe { *dst.at(o * n_rows + t) = v };
                        }
                    }
                });
                for o in 0..n_out {
                    for t in 0..n_rows {
                        out[t * n_out + o] = tmp[o * n_rows + t];
                    }
                }
            }
            CpuMatrix::Packed(p) => {
                // Activations are quantized per row (int8 per 32-block, f32 scale), so a row's
                // result never depends on the other rows.
                self.with_acts(|acts| {
                    acts.quantize_into(&x[..n_rows * n_in], n_rows, n_in);
                    kernels::matmul_pool(&self.pool, p, acts, n_rows, &mut out[..n_rows * n_out]);
                });
            }
        }
    }

    fn matmul_multi(
        &self,
        ms: &[&CpuMatrix],
        x: &Vec<f32>,
        n_rows: usize,
        outs: &mut [&mut Vec<f32>],
    ) {
        assert_eq!(ms.len(), outs.len());
        let packed: Option<Vec<&kernels::PackedMatrix>> = ms
            .iter()
            .map(|m| match m {
                CpuMatrix::Packed(p) => Some(p),
                CpuMatrix::Reference(_) => None,
            })
            .collect();
        let n_in = packed
            .as_ref()
            .and_then(|p| p.first())
            .map(|p| p.n_in())
            .unwrap_or(0);
        match packed {
            // One quantization of the shared input, one parallel dispatch for all matrices;
            // each output row is computed exactly as `matmul` computes it.
            Some(ps) if ps.iter().all(|p| p.n_in() == n_in) && !ps.is_empty() => {
                for _ in &ps {
                    self.count("matmul");
                }
                let mut dst: Vec<&mut [f32]> = outs
                    .iter_mut()
                    .zip(&ps)
                    .map(|(o, p)| &mut o[..n_rows * p.n_out()])
                    .collect();
                self.with_acts(|acts| {
                    acts.quantize_into(&x[..n_rows * n_in], n_rows, n_in);
                    kernels::matmul_pool_multi(&self.pool, &ps, acts, n_rows, &mut dst);
                });
            }
            _ => {
                for (m, out) in ms.iter().zip(outs.iter_mut()) {
                    self.matmul(m, x, n_rows, out);
                }
            }
        }
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    fn copy_cols(
        &self,
        src: &Vec<f32>,
        src_width: usize,
        col: usize,
        width: usize,
        n_rows: usize,
        dst: &mut Vec<f32>,
    ) {
        self.count("copy_cols");
        for t in 0..n_rows {
            dst[t * width..(t + 1) * width]
                .copy_from_slice(&src[t * src_width + col..t * src_width + col + width]);
        }
    }

    fn rope(
        &self,
        rope: &RopeTable,
        set: RopeSet,
        x: &mut Vec<f32>,
        n_rows: usize,
        width: usize,
        head_dim: usize,
        pos0: usize,
    ) {
        self.count("rope");
        for t in 0..n_rows {
            rope.apply_row(set, pos0 + t, &mut x[t * width..(t + 1) * width], head_dim);
        }
    }

    fn kv_write(
        &self,
        cache: &mut Vec<f32>,
        src: &Vec<f32>,
        width: usize,
        pos0: usize,
        n_rows: usize,
    ) {
        self.count("kv_write");
        cache[pos0 * width..(pos0 + n_rows) * width].copy_from_slice(&src[..n_rows * width]);
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        pos0: usize,
        n_rows: usize,
        out: &mut Vec<f32>,
    ) {
        self.count("attention");
        let group = n_head / n_head_kv;
        let kv_width = n_head_kv * head_dim;
        let scale = 1.0 / (head_dim as f32).sqrt();
        assert!(out.len() >= n_rows * n_head * head_dim);
        let dst = SyncPtr(out.as_mut_ptr());
        self.pool.run(n_rows * n_head, &|idx| {
            let (t, h) = (idx / n_head, idx % n_head);
            let g = h / group;
            let pos = pos0 + t;
            let qh = &q[idx * head_dim..(idx + 1) * head_dim];
            // SAFETY: task `idx` alone writes `out[idx * head_dim ..][..head_dim]`, which is in
            // bounds (`out` holds `n_rows * n_head * head_dim` floats).
            let o = unsafe { std::slice::from_raw_parts_mut(dst.at(idx * head_dim), head_dim) };
            // Per-thread scores buffer, reused across calls (no allocation per (row, head));
            // keys 0..=pos in order, whatever T and the thread.
            SCORES.with_borrow_mut(|scores| {
                let a = Attend {
                    qh,
                    k_cache,
                    v_cache,
                    off: g * head_dim,
                    kv_width,
                    head_dim,
                    scale,
                };
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 is present.
                    return unsafe { a.run_avx2(scores, pos, o) };
                }
                a.run(scores, pos, o)
            })
        });
    }

    fn swiglu(&self, gate: &Vec<f32>, up: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        self.count("swiglu");
        for ((o, &g), &u) in out[..n].iter_mut().zip(&gate[..n]).zip(&up[..n]) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>, n: usize) {
        self.count("add");
        for (a, &b) in x[..n].iter_mut().zip(&y[..n]) {
            *a += b;
        }
    }

    fn op_counts(&self) -> OpCounts {
        OPS.iter()
            .zip(&self.counts)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    fn reset_op_counts(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod attend_tests {
    use super::Attend;

    /// The AVX2 build of the attention loop gives the bits of the portable one.
    #[test]
    fn attend_avx2_equals_portable_bitwise() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut seed = 12345u64;
            let mut rnd = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            };
            for &(hd, kvh) in &[(64usize, 3usize), (96, 8), (128, 2), (20, 1)] {
                let w = hd * kvh;
                let n = 300;
                let k: Vec<f32> = (0..n * w).map(|_| rnd()).collect();
                let v: Vec<f32> = (0..n * w).map(|_| rnd()).collect();
                let q: Vec<f32> = (0..hd).map(|_| rnd()).collect();
                for pos in [0, 1, 7, 63, 299] {
                    for g in 0..kvh {
                        let a = Attend {
                            qh: &q,
                            k_cache: &k,
                            v_cache: &v,
                            off: g * hd,
                            kv_width: w,
                            head_dim: hd,
                            scale: 1.0 / (hd as f32).sqrt(),
                        };
                        let (mut s1, mut s2) = (Vec::new(), Vec::new());
                        let (mut o1, mut o2) = (vec![0f32; hd], vec![0f32; hd]);
                        a.run(&mut s1, pos, &mut o1);
                        // SAFETY: AVX2 checked above.
                        unsafe { a.run_avx2(&mut s2, pos, &mut o2) };
                        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&o1), bits(&o2), "hd {hd} pos {pos} g {g}");
                    }
                }
            }
        }
    }
}
