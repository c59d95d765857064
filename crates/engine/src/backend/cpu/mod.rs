//! CPU backend. Threads split output rows (or attention heads) only, never a reduction, so
//! results are identical for any thread count and any number of token rows.

mod attention;
mod contention;
mod float_dot;
pub mod kernels;
pub mod pool;
mod softmax_exp;

/// `s[j] = exp(s[j] - max)` for `max` at least every `s[j]`: the attention softmax's
/// exponential, the same bits on every kernel path and machine (no libm).
pub(crate) fn exp_sub_max(s: &mut [f32], max: f32) {
    softmax_exp::exp_sub_max(s, max)
}

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::{AttnSeg, Backend, ComputePath, OpCounts};
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

/// Whether CPU backends made from now on may use fewer threads while other processes keep
/// the CPUs busy (default: yes; docs/KERNELS.md V22). The results are the same bits either
/// way; tests that compare 1 thread against 2 turn it off.
pub fn set_contention_guard(enabled: bool) {
    contention::set_default(enabled);
}

pub struct CpuBackend {
    path: ComputePath,
    pool: std::sync::Arc<pool::Pool>,
    counts: [AtomicU64; OPS.len()],
    /// Quantized-activation buffers reused by every matmul (no allocation per call).
    acts: std::sync::Mutex<kernels::QuantizedActs>,
    /// Index in `ATTN_PATHS` of the attention path (benchmarks and tests; default `Auto`).
    attn_path: AtomicU8,
    /// Tasks per (row, KV head) of the grouped attention paths; 0: as few as possible.
    attn_parts: AtomicUsize,
    /// Token rows per task of the grouped attention paths; 0: chosen from the shape.
    attn_rows: AtomicUsize,
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
        let pool = pool::Pool::new(threads)?;
        Ok(CpuBackend {
            path,
            pool: std::sync::Arc::new(pool),
            counts: Default::default(),
            acts: Default::default(),
            attn_path: AtomicU8::new(0),
            attn_parts: AtomicUsize::new(0),
            attn_rows: AtomicUsize::new(0),
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
            attn_path: AtomicU8::new(self.attn_path.load(Ordering::Relaxed)),
            attn_parts: AtomicUsize::new(self.attn_parts.load(Ordering::Relaxed)),
            attn_rows: AtomicUsize::new(self.attn_rows.load(Ordering::Relaxed)),
        }
    }

    /// Selects the attention implementation (benchmarks, tests; every path gives the same
    /// bits). A path this CPU does not support runs as [`AttnPath::Portable`].
    pub fn set_attention_path(&self, p: AttnPath) {
        let i = ATTN_PATHS.iter().position(|x| *x == p).unwrap_or(0);
        self.attn_path.store(i as u8, Ordering::Relaxed);
    }

    /// Tasks per (row, KV head) of the grouped attention paths, clamped to `1..=group`
    /// (0: as few as possible). Benchmarks and tests.
    #[doc(hidden)]
    pub fn set_attention_parts(&self, parts: usize) {
        self.attn_parts.store(parts, Ordering::Relaxed);
    }

    /// Token rows per task of the grouped attention paths (at least 1, at most what fits
    /// `MAX_QUERIES`; 0: chosen from the shape and the thread count). Benchmarks and tests.
    #[doc(hidden)]
    pub fn set_attention_rows(&self, rows: usize) {
        self.attn_rows.store(rows, Ordering::Relaxed);
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

/// The implementations of [`Backend::attention`] on the CPU. Every one gives the bits of
/// [`AttnPath::Portable`]; the choice exists for benchmarks and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnPath {
    /// The fastest one this CPU supports (the default).
    Auto,
    /// `Attend::run`, one task per (row, head): the reference.
    Portable,
    /// `Attend::run` compiled with AVX2, one task per (row, head) (V8).
    Avx2Build,
    /// Hand-written AVX2, the heads of a GQA group in one task (V12).
    Avx2,
    /// Hand-written AVX2 + AVX-512, the heads of a GQA group in one task (V12).
    Avx512,
}

const ATTN_PATHS: [AttnPath; 5] = [
    AttnPath::Auto,
    AttnPath::Portable,
    AttnPath::Avx2Build,
    AttnPath::Avx2,
    AttnPath::Avx512,
];

impl AttnPath {
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                AttnPath::Auto | AttnPath::Portable => true,
                AttnPath::Avx2Build | AttnPath::Avx2 => has!("avx2"),
                AttnPath::Avx512 => has!("avx2") && has!("avx512f") && has!("avx512dq"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        matches!(self, AttnPath::Auto | AttnPath::Portable)
    }

    /// The concrete path `self` runs as on this CPU.
    fn resolve(self) -> AttnPath {
        match self {
            AttnPath::Auto => [AttnPath::Avx512, AttnPath::Avx2]
                .into_iter()
                .find(|p| p.supported())
                .unwrap_or(AttnPath::Portable),
            p if p.supported() => p,
            _ => AttnPath::Portable,
        }
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
        softmax_exp::exp_sub_max(scores, max);
        let mut sum = 0f32;
        for &s in scores.iter() {
            sum += s;
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
    lane_tree(&acc)
}

/// The fixed tree over 8 lane sums, shared by every dot-product order:
/// `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`.
#[inline(always)]
pub fn lane_tree(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// The matmul order: [`dot_f32`]'s lanes and tree, but each lane accumulates with a fused
/// multiply-add (`acc = fma(a, b, acc)`, one rounding). Every matrix-vector product of the
/// f32 reference path and of float weights uses it (the SIMD versions are in float_dot.rs);
/// norms and attention keep [`dot_f32`].
#[inline(always)]
pub fn dot_f32_fused(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    for (i, (&x, &y)) in a[..n].iter().zip(&b[..n]).enumerate() {
        acc[i % 8] = x.mul_add(y, acc[i % 8]);
    }
    lane_tree(&acc)
}

/// The bytes of an f32 row, as float_dot.rs reads F32 weight rows (little-endian).
fn f32_bytes(row: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialized bytes, u8 has alignment 1, and the length is exact.
    unsafe { std::slice::from_raw_parts(row.as_ptr() as *const u8, std::mem::size_of_val(row)) }
}

/// Rows `rows` of `t` dequantized into `out`, one after another.
fn dequant_rows(t: &HostTensor, rows: std::ops::Range<usize>, out: &mut Vec<f32>) {
    let n_in = t.row_len();
    out.resize(rows.len() * n_in, 0.0);
    for (r, dst) in rows.zip(out.chunks_exact_mut(n_in)) {
        dequant_row(t, r, dst);
    }
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
                const ROWS_PER_TASK: usize = 16;
                assert!(out.len() >= n_rows * n_out && x.len() >= n_rows * n_in);
                let dst = SyncPtr(out.as_mut_ptr());
                let x = &x[..n_rows * n_in];
                let ty = h.ggml_type();
                let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
                // Several token rows: laid out in pairs once, for all tasks (float_dot.rs).
                let paired = float_dot::PairedRows::new(x, n_in, n_rows);
                self.pool.run(n_out.div_ceil(ROWS_PER_TASK), &|c| {
                    let rows = c * ROWS_PER_TASK..((c + 1) * ROWS_PER_TASK).min(n_out);
                    // [rows, n_rows], written into out's columns `rows` at the end.
                    let mut mine = vec![0f32; rows.len() * n_rows];
                    // Float rows straight from the file; other types dequantized to f32 rows.
                    let mut deq = Vec::new();
                    let (kind, w_rows): (GgmlType, Vec<&[u8]>) = if float {
                        (ty, rows.clone().map(|o| h.row(o)).collect())
                    } else {
                        dequant_rows(h, rows.clone(), &mut deq);
                        let w_rows = deq.chunks_exact(n_in).map(f32_bytes).collect();
                        (GgmlType::F32, w_rows)
                    };
                    if let Some(paired) = &paired {
                        float_dot::row_dots_paired(kind, &w_rows, x, paired, &mut mine);
                    } else if !float_dot::row_dots(kind, &w_rows, x, n_in, n_rows, &mut mine) {
                        // No SIMD kernel here: the scalar order over f32 rows.
                        if float {
                            dequant_rows(h, rows.clone(), &mut deq);
                        }
                        for (i, w) in deq.chunks_exact(n_in).enumerate() {
                            for t in 0..n_rows {
                                mine[i * n_rows + t] =
                                    dot_f32_fused(w, &x[t * n_in..(t + 1) * n_in]);
                            }
                        }
                    }
                    for t in 0..n_rows {
                        for (i, o) in rows.clone().enumerate() {
                            // SAFETY: task `c` alone writes columns `rows` of out; `o < n_out`
                            // and `t < n_rows`, and out holds n_rows * n_out values.
                            unsafe { *dst.at(t * n_out + o) = mine[i * n_rows + t] };
                        }
                    }
                });
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

    fn gather_rows(&self, src: &Vec<f32>, width: usize, rows: &[usize], dst: &mut Vec<f32>) {
        self.count("gather_rows");
        for (i, &r) in rows.iter().enumerate() {
            dst[i * width..(i + 1) * width].copy_from_slice(&src[r * width..(r + 1) * width]);
        }
    }

    fn rope(
        &self,
        rope: &RopeTable,
        set: RopeSet,
        x: &mut Vec<f32>,
        row0: usize,
        n_rows: usize,
        width: usize,
        head_dim: usize,
        pos0: usize,
    ) {
        self.count("rope");
        for t in 0..n_rows {
            let r = row0 + t;
            rope.apply_row(set, pos0 + t, &mut x[r * width..(r + 1) * width], head_dim);
        }
    }

    fn kv_write(
        &self,
        cache: &mut Vec<f32>,
        src: &Vec<f32>,
        row0: usize,
        width: usize,
        pos0: usize,
        n_rows: usize,
    ) {
        self.count("kv_write");
        cache[pos0 * width..(pos0 + n_rows) * width]
            .copy_from_slice(&src[row0 * width..(row0 + n_rows) * width]);
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        segs: &[AttnSeg<'_, Vec<f32>>],
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        out: &mut Vec<f32>,
    ) {
        self.count("attention");
        let group = n_head / n_head_kv;
        let kv_width = n_head_kv * head_dim;
        let row_stride = n_head * head_dim;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let end = segs.iter().map(|g| g.row0 + g.n_rows).max().unwrap_or(0);
        assert!(out.len() >= end * row_stride && q.len() >= end * row_stride);
        let dst = SyncPtr(out.as_mut_ptr());
        let path = ATTN_PATHS[self.attn_path.load(Ordering::Relaxed) as usize].resolve();
        if let Some(kernel) = attention::kernel(path) {
            // A task is a run of consecutive rows of one segment and the heads of one part of a
            // GQA group (the whole group unless it has more than `MAX_HEADS` heads): they share
            // the KV head's rows, each K and V row read once for all of them (V14). The
            // segments' tasks go to the pool together.
            let min_parts = group.div_ceil(attention::MAX_HEADS);
            let parts = match self.attn_parts.load(Ordering::Relaxed) {
                0 => min_parts,
                p => p.clamp(min_parts, group),
            };
            let max_heads = group.div_ceil(parts);
            let max_rows = (attention::MAX_QUERIES / max_heads).max(1);
            let per_chunk = n_head_kv * parts;
            // (segment, its row chunks, the first task index of the segment).
            let mut plan = Vec::with_capacity(segs.len());
            let mut n_tasks = 0;
            for (i, g) in segs.iter().enumerate() {
                let rows = match self.attn_rows.load(Ordering::Relaxed) {
                    // All rows in one task when that leaves at least 2 tasks per thread, else
                    // split the rows so that it does (3 groups on 2 threads would not balance).
                    0 => {
                        let chunks = (2 * self.pool.threads())
                            .div_ceil(per_chunk)
                            .clamp(1, g.n_rows.max(1));
                        g.n_rows.div_ceil(chunks)
                    }
                    r => r,
                }
                .clamp(1, max_rows);
                let chunks = g.n_rows.div_ceil(rows);
                plan.push((i, chunks, n_tasks));
                n_tasks += chunks * per_chunk;
            }
            self.pool.run(n_tasks, &|idx| {
                let at = plan.partition_point(|p| p.2 <= idx) - 1;
                let (i, chunks, first) = plan[at];
                let sg = &segs[i];
                let local = idx - first;
                let (c, r) = (local / per_chunk, local % per_chunk);
                // Rows t0..t1 of the segment (balanced chunks).
                let (t0, t1) = (c * sg.n_rows / chunks, (c + 1) * sg.n_rows / chunks);
                let (kvh, part) = (r / parts, r % parts);
                // Heads h0..h1 of each row, all in KV head `kvh`'s group.
                let h0 = kvh * group + part * group / parts;
                let h1 = kvh * group + (part + 1) * group / parts;
                let base = (sg.row0 + t0) * row_stride + h0 * head_dim;
                let len = (t1 - t0 - 1) * row_stride + (h1 - h0) * head_dim;
                let g = attention::Group {
                    q: &q[base..base + len],
                    nh: h1 - h0,
                    rows: t1 - t0,
                    row_stride,
                    k_cache: sg.k_cache,
                    v_cache: sg.v_cache,
                    off: kvh * head_dim,
                    kv_width,
                    head_dim,
                    scale,
                };
                // Keys 0..=pos in order for every (row, head), whatever T, the split, the other
                // segments and the thread.
                // SAFETY: `resolve` checked the path's CPU features; task `idx` alone writes
                // heads h0..h1 of rows t0..t1 of its segment in `out`, which are in bounds
                // (checked above).
                SCORES.with_borrow_mut(|s| unsafe { kernel(&g, sg.pos0 + t0, s, dst.at(base)) });
            });
            return;
        }
        // Portable: a task per (segment row, head).
        let mut firsts = Vec::with_capacity(segs.len());
        let mut n_tasks = 0;
        for g in segs {
            firsts.push(n_tasks);
            n_tasks += g.n_rows * n_head;
        }
        self.pool.run(n_tasks, &|idx| {
            let i = firsts.partition_point(|&f| f <= idx) - 1;
            let sg = &segs[i];
            let local = idx - firsts[i];
            let (t, h) = (local / n_head, local % n_head);
            let pos = sg.pos0 + t;
            let at = (sg.row0 + t) * row_stride + h * head_dim;
            let qh = &q[at..at + head_dim];
            // SAFETY: task `idx` alone writes `out[at..at + head_dim]`, which is in bounds
            // (checked above).
            let o = unsafe { std::slice::from_raw_parts_mut(dst.at(at), head_dim) };
            // Per-thread scores buffer, reused across calls (no allocation per (row, head));
            // keys 0..=pos in order, whatever T and the thread.
            SCORES.with_borrow_mut(|scores| {
                let a = Attend {
                    qh,
                    k_cache: sg.k_cache,
                    v_cache: sg.v_cache,
                    off: h / group * head_dim,
                    kv_width,
                    head_dim,
                    scale,
                };
                #[cfg(target_arch = "x86_64")]
                if path == AttnPath::Avx2Build {
                    // SAFETY: AVX2 is present (`resolve`).
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
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the SIMD cases are x86 only
mod attend_tests {
    use super::{Attend, AttnPath, CpuBackend};
    use crate::backend::{AttnSeg, Backend, ComputePath};

    const DIMS: [usize; 6] = [64, 96, 128, 20, 8, 7];
    const POSITIONS: [usize; 9] = [0, 1, 2, 3, 7, 8, 63, 299, 1000];

    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
        /// Mixed magnitudes: mostly small, some large (scores of hundreds, so that `max`
        /// matters and many `exp` underflow), some exact zeros of either sign.
        fn val(&mut self) -> f32 {
            let u = self.unit();
            match (self.0 >> 20) % 16 {
                0 => 0.0,
                1 => -0.0,
                2 | 3 => u * 60.0,
                _ => u * 4.0,
            }
        }
    }

    /// Panics at the first element whose bits differ from the portable result's.
    fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let differs = |i: &usize| got[*i].to_bits() != want[*i].to_bits();
        if let Some(i) = (0..got.len()).find(differs) {
            panic!(
                "{what}: element {i} is {:e} ({:#x}), portable gives {:e} ({:#x})",
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits()
            );
        }
    }

    /// The portable reference for heads `q` (contiguous) sharing KV head `g`.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: usize,
        w: usize,
        hd: usize,
        pos: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; q.len()];
        let mut s = Vec::new();
        for (qh, o) in q.chunks(hd).zip(out.chunks_mut(hd)) {
            let a = Attend {
                qh,
                k_cache: k,
                v_cache: v,
                off: g * hd,
                kv_width: w,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            a.run(&mut s, pos, o);
        }
        out
    }

    /// Every x86 attention path gives the bits of the portable `Attend::run`: the AVX2 build
    /// of it (V8), and the hand-written AVX2 and AVX-512 kernels (V12) for 1 to 7 heads per
    /// task (pairs and an odd head in the scores, several V register blocks), over head dims
    /// with and without an 8-lane tail and positions on both sides of the 8-key blocks.
    #[test]
    fn attend_avx2_equals_portable_bitwise() {
        #[cfg(target_arch = "x86_64")]
        {
            use super::attention::{kernel, Group};
            if !AttnPath::Avx2Build.supported() {
                eprintln!("no AVX2: nothing to compare");
                return;
            }
            // The grouped kernels this CPU can run.
            let kernels: Vec<_> = [AttnPath::Avx2, AttnPath::Avx512]
                .into_iter()
                .filter(|p| {
                    let ok = p.supported();
                    if !ok {
                        eprintln!("{p:?} is not supported: not tested on this CPU");
                    }
                    ok
                })
                .map(|p| (p, kernel(p).expect("a grouped path")))
                .collect();
            let mut rng = Rng(12345);
            let n = 1001;
            // Scratch reused across calls, as the per-thread buffer is (stale contents).
            let mut s = vec![f32::NAN; 5];
            for (case, &hd) in DIMS.iter().chain(&[256]).enumerate() {
                let kvh = [3, 2, 1][case % 3];
                let w = hd * kvh;
                let k: Vec<f32> = (0..n * w).map(|_| rng.val()).collect();
                let v: Vec<f32> = (0..n * w).map(|_| rng.val()).collect();
                let q: Vec<f32> = (0..7 * hd).map(|_| rng.val()).collect();
                let scale = 1.0 / (hd as f32).sqrt();
                for pos in POSITIONS {
                    for g in 0..kvh {
                        for nh in 1..=7 {
                            let qs = &q[..nh * hd];
                            let want = reference(qs, &k, &v, g, w, hd, pos);
                            let grp = Group {
                                q: qs,
                                nh,
                                rows: 1,
                                row_stride: nh * hd,
                                k_cache: &k,
                                v_cache: &v,
                                off: g * hd,
                                kv_width: w,
                                head_dim: hd,
                                scale,
                            };
                            let what = format!("hd {hd} pos {pos} kv head {g} heads {nh}");
                            if nh == 1 {
                                let a = Attend {
                                    qh: qs,
                                    k_cache: &k,
                                    v_cache: &v,
                                    off: g * hd,
                                    kv_width: w,
                                    head_dim: hd,
                                    scale,
                                };
                                let mut o = vec![0f32; hd];
                                // SAFETY: AVX2 checked above.
                                unsafe { a.run_avx2(&mut s, pos, &mut o) };
                                assert_same_bits(&o, &want, &format!("avx2 build, {what}"));
                            }
                            for (p, kernel) in &kernels {
                                let mut o = vec![f32::NAN; nh * hd];
                                // SAFETY: the path's features were checked above.
                                unsafe { kernel(&grp, pos, &mut s, o.as_mut_ptr()) };
                                assert_same_bits(&o, &want, &format!("{p:?}, {what}"));
                            }
                        }
                    }
                }
            }
        }
    }

    /// `CpuBackend::attention` gives the bits of the portable path on every path and task
    /// split (heads per task and rows per task), for T = 1 to 8 rows (each row at its own
    /// position, causal), with GQA.
    #[test]
    fn attention_paths_equal_portable_bitwise() {
        let b = CpuBackend::new(ComputePath::Fast, 2).unwrap();
        let mut rng = Rng(777);
        // (n_head, n_head_kv, head_dim): SmolLM2, Phi-4-mini, no GQA, odd sizes.
        let shapes = [(9, 3, 64), (24, 8, 128), (4, 4, 96), (6, 2, 20), (5, 1, 7)];
        for (n_head, n_kv, hd) in shapes {
            let w = n_kv * hd;
            let rows = 304;
            let k: Vec<f32> = (0..rows * w).map(|_| rng.val()).collect();
            let v: Vec<f32> = (0..rows * w).map(|_| rng.val()).collect();
            let q: Vec<f32> = (0..8 * n_head * hd).map(|_| rng.val()).collect();
            for pos0 in [0, 1, 5, 7, 64, 100, 296] {
                for t in [1, 2, 3, 4, 5, 8] {
                    // The reference: `Attend::run` per (row, head), keys 0..=pos0 + row.
                    let mut want = vec![f32::NAN; t * n_head * hd];
                    let mut s = Vec::new();
                    for (i, o) in want.chunks_exact_mut(hd).enumerate() {
                        let (row, h) = (i / n_head, i % n_head);
                        let a = Attend {
                            qh: &q[i * hd..(i + 1) * hd],
                            k_cache: &k,
                            v_cache: &v,
                            off: h / (n_head / n_kv) * hd,
                            kv_width: w,
                            head_dim: hd,
                            scale: 1.0 / (hd as f32).sqrt(),
                        };
                        a.run(&mut s, pos0 + row, o);
                    }
                    let run = |p: AttnPath, parts: usize, rows: usize| {
                        b.set_attention_path(p);
                        b.set_attention_parts(parts);
                        b.set_attention_rows(rows);
                        let mut out = vec![f32::NAN; t * n_head * hd];
                        let seg = AttnSeg {
                            row0: 0,
                            n_rows: t,
                            pos0,
                            k_cache: &k,
                            v_cache: &v,
                        };
                        b.attention(&q, &[seg], n_head, n_kv, hd, &mut out);
                        out
                    };
                    let portable = run(AttnPath::Portable, 0, 0);
                    assert_same_bits(&portable, &want, &format!("portable pos0 {pos0} T {t}"));
                    let group = n_head / n_kv;
                    for p in [
                        AttnPath::Auto,
                        AttnPath::Avx2Build,
                        AttnPath::Avx2,
                        AttnPath::Avx512,
                    ] {
                        for parts in 0..=group {
                            for r in [0, 1, 2, 3, t] {
                                let what = format!(
                                    "{p:?} x{parts} rows {r} {n_head}/{n_kv}x{hd} pos0 {pos0} T {t}"
                                );
                                assert_same_bits(&run(p, parts, r), &want, &what);
                            }
                        }
                    }
                }
            }
        }
        b.set_attention_rows(0);
    }

    /// Segments with their own caches in one call give each row the bits it gets alone.
    #[test]
    fn attention_segments_equal_separate_calls_bitwise() {
        let b = CpuBackend::new(ComputePath::Fast, 2).unwrap();
        let mut rng = Rng(4242);
        for (n_head, n_kv, hd) in [(9, 3, 64), (24, 8, 128), (5, 1, 7)] {
            let (w, qw) = (n_kv * hd, n_head * hd);
            // (n_rows, pos0) of each segment, cache of 200 rows each.
            let shape = [(1, 0), (3, 17), (1, 150), (8, 5), (2, 190)];
            let caches: Vec<(Vec<f32>, Vec<f32>)> = shape
                .iter()
                .map(|_| {
                    let k = (0..200 * w).map(|_| rng.val()).collect();
                    let v = (0..200 * w).map(|_| rng.val()).collect();
                    (k, v)
                })
                .collect();
            let total: usize = shape.iter().map(|s| s.0).sum();
            let q: Vec<f32> = (0..total * qw).map(|_| rng.val()).collect();
            let mut segs = Vec::new();
            let mut row0 = 0;
            for (&(n, pos0), (k, v)) in shape.iter().zip(&caches) {
                segs.push(AttnSeg {
                    row0,
                    n_rows: n,
                    pos0,
                    k_cache: k,
                    v_cache: v,
                });
                row0 += n;
            }
            for p in [AttnPath::Portable, AttnPath::Auto, AttnPath::Avx2] {
                b.set_attention_path(p);
                let mut together = vec![f32::NAN; total * qw];
                b.attention(&q, &segs, n_head, n_kv, hd, &mut together);
                for sg in &segs {
                    let one = AttnSeg { row0: 0, ..*sg };
                    let mut alone = vec![f32::NAN; sg.n_rows * qw];
                    let qs = q[sg.row0 * qw..(sg.row0 + sg.n_rows) * qw].to_vec();
                    b.attention(&qs, &[one], n_head, n_kv, hd, &mut alone);
                    let got = &together[sg.row0 * qw..(sg.row0 + sg.n_rows) * qw];
                    let what = format!("{p:?} {n_head}/{n_kv}x{hd} segment at row {}", sg.row0);
                    assert_same_bits(got, &alone, &what);
                }
            }
        }
        b.set_attention_path(AttnPath::Auto);
    }
}
