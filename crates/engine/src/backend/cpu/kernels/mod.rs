//! Batch-invariant integer matmul kernels for the CPU fast path.
//!
//! `out[t][o] = dot(W[o], x[t])` with `W` a [`PackedMatrix`] (`[n_out, n_in]`, Q8_0 or a native
//! 4/6-bit format) and `x` a [`QuantizedActs`] (`[T, n_in]` activations quantized to int8 per
//! 32-element block).
//!
//! # The canonical order (what makes T-token verification exact)
//!
//! Every kernel path (scalar, AVX2, AVX-512 VNNI, NEON) computes each output element `(t, o)`
//! with exactly this sequence of f32 operations, so results are bit-identical across paths,
//! across the number of token rows `T` in a call, across which rows share a pass, and across
//! thread counts (threads split output rows `o` only):
//!
//! 1. For each 32-element block `b` of the row, an **exact** integer dot `isum_b` of the weight
//!    quants and the activation quants (plus, per format, the exact activation block sums
//!    `xsum_b`). Integer arithmetic is associative, so how a path computes it does not matter.
//! 2. 16 f32 accumulators `acc[0..16]`, all `+0.0`. Block `b` updates lane `b % 16` only:
//!    `acc[b % 16] = acc[b % 16] + v_b`, blocks in increasing order, with `v_b` (no FMA):
//!    - Q8_0, Q4_0, Q5_0: `v = (dw * dx) * isum`
//!    - Q4_1, Q5_1: `v = ((dw * dx) * isum) + ((mw * dx) * xsum)`
//!    - Q4_K, Q5_K: `v = ((a * dx) * isum) - ((bm * dx) * xsum)`, `a = d * sc_j`, `bm = dmin * m_j`
//!    - Q6_K:       `v = (d * dx) * isum`, `isum = sc_lo * isum_lo + sc_hi * isum_hi` (16-element halves)
//!
//!    `dw`, `mw`, `d`, `dmin` are the f16 weight scales widened to f32 (exact), `dx` the f32
//!    activation scale, and `isum`/`xsum` are converted with `as f32` (round to nearest even,
//!    exact here since |isum| < 2^24).
//! 3. A fixed tree: `h8[i] = acc[i] + acc[i+8]`, `h4[i] = h8[i] + h8[i+4]`,
//!    `h2[i] = h4[i] + h4[i+2]`, `out = h2[0] + h2[1]`.
//!
//! A lane that a short tail group does not cover is never updated; a SIMD path adds `±0.0` to
//! it instead, which is the same thing because an accumulator that starts at `+0.0` can never
//! become `-0.0`.
//!
//! # Layouts
//!
//! Blocks are processed in groups of [`GROUP`] = 16 consecutive blocks of one row (the last
//! group of a row may be shorter). Inside a group, weight quants and activation quants are
//! stored **interleaved by 4-byte granules**: granule `k` holds 4 consecutive bytes of each of
//! the group's blocks, one after the other, so one 512-bit `vpdpbusd` multiplies 4 elements of
//! 16 different blocks and accumulates 16 per-block sums in its 16 lanes: no horizontal
//! reductions at all. See [`PackedMatrix`] for the byte layout of each format; the packed
//! matrix has exactly the size of the GGUF tensor (it is a permutation of its bytes, plus the
//! K-quant nibble re-ordering).

mod pack;
mod scalar;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

pub use super::pool::Pool;
pub use pack::{Layout, PackedMatrix, WeightFormat, TILE_ROWS};

/// Elements per activation block (and per Q8_0/Q4_0/Q4_1 weight block, per K-quant sub-block).
pub const QK: usize = 32;
/// Blocks per interleave group (one 512-bit register of 16 x 4 bytes per granule).
pub const GROUP: usize = 16;
/// Activation rows handled per pass over a weight row; more rows re-read the weight row from L1.
pub const TILE: usize = 4;
/// Which CPU family the kernels' speed knobs ([`Tuning`]) were chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    Intel,
    Amd,
    Other,
}

impl CpuVendor {
    /// From the CPUID vendor string (`Other` off x86).
    pub fn detect() -> CpuVendor {
        #[cfg(target_arch = "x86_64")]
        {
            let r = std::arch::x86_64::__cpuid(0);
            let mut v = [0u8; 12];
            v[..4].copy_from_slice(&r.ebx.to_le_bytes());
            v[4..8].copy_from_slice(&r.edx.to_le_bytes());
            v[8..].copy_from_slice(&r.ecx.to_le_bytes());
            match &v {
                b"GenuineIntel" => return CpuVendor::Intel,
                b"AuthenticAMD" => return CpuVendor::Amd,
                _ => {}
            }
        }
        CpuVendor::Other
    }

    pub fn name(self) -> &'static str {
        match self {
            CpuVendor::Intel => "intel",
            CpuVendor::Amd => "amd",
            CpuVendor::Other => "other",
        }
    }
}

/// The kernels' speed knobs. None of them changes a single bit of any result (every layout,
/// stream count and prefetch distance runs the canonical order); they only decide how the
/// weights are walked, which the hardware prefetchers of Intel and AMD cores reward
/// differently (docs/KERNELS.md: the knobs table, and V19).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    pub vendor: CpuVendor,
    /// Software-prefetch distance of the x86 tiled kernels, in bytes of weights (0: off).
    pub prefetch_tiles: usize,
    /// The same for the K-quant (Q4_K, Q6_K) tiled kernels, which do more work per weight
    /// byte than Q8_0 / Q4 tiles.
    pub prefetch_ktiles: usize,
    /// The same for tiled kernel calls with several activation rows (verify and prefill
    /// passes), which do several times the arithmetic per weight byte.
    pub prefetch_tiles_batch: usize,
    /// Whether the tiled kernels prefetch into L2 (`prefetcht1`) rather than L1.
    pub prefetch_l2: bool,
    /// Software-prefetch distance (into L1) of the rows-layout kernels: every format without
    /// AVX-512 VNNI, and matrices whose row count is not a multiple of 16.
    pub prefetch_rows: usize,
    /// Tiles a tiled matmul reads in lockstep (1, 2, 3, 4 or 8).
    pub multi_tiles: usize,
    /// Weight streams of a rows-layout matmul with one activation row (1..=8).
    pub row_streams: usize,
}

impl Tuning {
    /// The measured defaults of a CPU family.
    /// - Intel (Sapphire Rapids, the first development machine): prefetching 2 KiB ahead and
    ///   four tiles in lockstep gave +8-13% decode (V15).
    /// - AMD (Zen 4, a later development machine): its prefetchers stream tiled weights
    ///   alone (prefetching cost Phi-4-mini q8_0 decode a quarter of its speed) and serve one
    ///   stream per thread best (lockstep tiles slowed verify and prefill passes; four row
    ///   streams cost q4_k_m decode a third), while the rows kernels still gain from
    ///   prefetching (V19). Prefetching 8 KiB ahead into L2 (not L1) helps the tiled kernels
    ///   that do more work per byte: K-quant tiles (q4_k_m decode +10-20%) and any tiles with
    ///   several activation rows (T=4 verify 1.8-2.1x a step -> 1.2-1.5x), but not Q8_0 decode
    ///   (V20).
    pub fn defaults(vendor: CpuVendor) -> Tuning {
        match vendor {
            CpuVendor::Amd => Tuning {
                vendor,
                prefetch_tiles: 0,
                prefetch_ktiles: 8192,
                prefetch_tiles_batch: 8192,
                prefetch_l2: true,
                prefetch_rows: 2048,
                multi_tiles: 1,
                row_streams: 1,
            },
            CpuVendor::Intel | CpuVendor::Other => Tuning {
                vendor,
                prefetch_tiles: 2048,
                prefetch_ktiles: 2048,
                prefetch_tiles_batch: 2048,
                prefetch_l2: false,
                prefetch_rows: 2048,
                multi_tiles: 4,
                row_streams: 4,
            },
        }
    }

    /// This machine's tuning, decided once: the vendor's defaults, each overridden by its
    /// environment variable when that holds a valid value (`VERISPEC_PREFETCH` bytes for every
    /// kernel, then `VERISPEC_PREFETCH_K` for K-quant tiles with one activation row and
    /// `VERISPEC_PREFETCH_BATCH` for tiled calls with several,
    /// `VERISPEC_PREFETCH_L2` 0 or 1,
    /// `VERISPEC_MULTI_TILES` one of 1, 2, 3, 4, 8, `VERISPEC_ROW_STREAMS` 1..=8).
    pub fn get() -> Tuning {
        static T: OnceLock<Tuning> = OnceLock::new();
        *T.get_or_init(|| {
            let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
            let bytes = |k: &str| var(k).filter(|&b| b <= 1 << 20);
            let mut t = Tuning::defaults(CpuVendor::detect());
            if let Some(b) = bytes("VERISPEC_PREFETCH") {
                t.prefetch_tiles = b;
                t.prefetch_ktiles = b;
                t.prefetch_tiles_batch = b;
                t.prefetch_rows = b;
            }
            if let Some(b) = bytes("VERISPEC_PREFETCH_K") {
                t.prefetch_ktiles = b;
            }
            if let Some(b) = bytes("VERISPEC_PREFETCH_BATCH") {
                t.prefetch_tiles_batch = b;
            }
            if let Some(b) = var("VERISPEC_PREFETCH_L2").filter(|&b| b <= 1) {
                t.prefetch_l2 = b == 1;
            }
            if let Some(n) = var("VERISPEC_MULTI_TILES").filter(|n| [1, 2, 3, 4, 8].contains(n)) {
                t.multi_tiles = n;
            }
            if let Some(n) = var("VERISPEC_ROW_STREAMS").filter(|n| (1..=MAX_STREAMS).contains(n)) {
                t.row_streams = n;
            }
            t
        })
    }

    /// One line for reports: `amd: prefetch 0/8192/8192 L2, rows 2048, tiles 1, streams 1`
    /// (prefetch: Q8_0 / Q4 tiles and K-quant tiles with one activation row, any tiles with
    /// several, and their target cache; rows-layout kernels).
    pub fn describe(&self) -> String {
        format!(
            "{}: prefetch {}/{}/{} {}, rows {}, tiles {}, streams {}",
            self.vendor.name(),
            self.prefetch_tiles,
            self.prefetch_ktiles,
            self.prefetch_tiles_batch,
            if self.prefetch_l2 { "L2" } else { "L1" },
            self.prefetch_rows,
            self.multi_tiles,
            self.row_streams
        )
    }
}

/// Sets the software-prefetch distance of every x86 kernel (bytes ahead of the
/// weights being multiplied; 0 disables), overriding [`Tuning::get`]'s. A knob for
/// benchmarks; results do not depend on it.
/// `usize::MAX` restores the tuning's own distances.
pub fn set_prefetch_distance(bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    x86::PREFETCH_AHEAD.store(bytes, std::sync::atomic::Ordering::Relaxed);
    let _ = bytes;
}

/// Output rows per kernel call (amortizes the call; their weights stay in L1 across tiles).
pub const ROW_BLOCK: usize = 8;

/// Byte offset, inside a row of interleaved activation (or 8-bit weight) quants, of element
/// `k` (0..32) of block `b`, for a row of `nb` blocks.
#[inline(always)]
pub(crate) fn interleaved_offset(nb: usize, b: usize, k: usize) -> usize {
    let g0 = b / GROUP * GROUP;
    let g = (nb - g0).min(GROUP);
    g0 * QK + (k / 4) * 4 * g + 4 * (b - g0) + k % 4
}

/// `v.round() as i8` (half away from zero, saturating) without a libm call; non-finite
/// `v` gives 0 (as before: never UB). Exact: `v - trunc(v)` is exact for |v| < 2^23.
#[inline(always)]
fn round_half_away(v: f32) -> i8 {
    if !v.is_finite() {
        return 0;
    }
    // Beyond +-200 the result saturates anyway; clamping keeps `i + 1` far from overflow.
    let v = v.clamp(-200.0, 200.0);
    let i = v as i32; // truncation toward zero
    let f = v - i as f32;
    let r = if f >= 0.5 {
        i + 1
    } else if f <= -0.5 {
        i - 1
    } else {
        i
    };
    r.clamp(-128, 127) as i8 // as `f32 as i8` saturates
}

/// One activation block: `d = amax / 127`, `q = round_half_away(x / d)` (all zero if
/// `d == 0`). NaN elements are ignored by the max and quantize to 0.
fn quantize_block_scalar(xb: &[f32; QK]) -> (f32, [i8; QK]) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let mut q = [0i8; QK];
    if d != 0.0 {
        for (qk, &v) in q.iter_mut().zip(xb) {
            *qk = round_half_away(v / d);
        }
    }
    (d, q)
}

/// [`quantize_block_scalar`], with AVX-512 or AVX2 when `simd` is that (available) path and
/// the scalar code otherwise. The bits are the same: the max is exact in any order, the
/// division is IEEE, and the rounding takes the same exact steps.
#[inline]
fn quantize_block(xb: &[f32; QK], simd: KernelPath) -> (f32, [i8; QK]) {
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: AVX-512 F/BW/VL are part of the Avx512Vnni path's features.
        KernelPath::Avx512Vnni => return unsafe { x86::quantize_block_avx512(xb) },
        // SAFETY: the Avx2 path was detected.
        KernelPath::Avx2 => return unsafe { x86::quantize_block_avx2(xb) },
        _ => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    quantize_block_scalar(xb)
}

/// Activations `[n_rows, n_in]` quantized per row to int8 blocks of 32 with one f32 scale per
/// block: `d = amax / 127`, `q = round(x / d)` (half away from zero); an all-zero block has
/// `d = 0`. Each row depends only on its own values. Quants are stored group-interleaved
/// (see the module docs); the exact block sums are kept for the formats with an offset or
/// a min term.
#[derive(Default, Clone)]
pub struct QuantizedActs {
    n_rows: usize,
    n_in: usize,
    /// [n_rows][q_stride], group-interleaved; 64-byte aligned rows.
    q: AlignedI8,
    q_stride: usize,
    /// [n_rows][nb] block scales.
    d: Vec<f32>,
    /// [n_rows][nb] sum of the 32 quants of each block.
    sum: Vec<i32>,
    /// [n_rows][nb] sum of the first 16 quants of each block (Q6_K's 16-element scales).
    sum_lo: Vec<i32>,
    /// [n_rows][nb] sum of the last 16 quants of each block.
    sum_hi: Vec<i32>,
}

impl QuantizedActs {
    /// Quantizes `x` (`[n_rows, n_in]`, row-major). `n_in` must be a multiple of 32
    /// (of 256 to be used with K-quant weights).
    pub fn quantize(x: &[f32], n_rows: usize, n_in: usize) -> QuantizedActs {
        let mut a = QuantizedActs::default();
        a.quantize_into(x, n_rows, n_in);
        a
    }

    /// Like [`QuantizedActs::quantize`], reusing this value's buffers.
    pub fn quantize_into(&mut self, x: &[f32], n_rows: usize, n_in: usize) {
        assert!(
            n_in.is_multiple_of(QK) && n_in > 0,
            "n_in {n_in} is not a multiple of {QK}"
        );
        assert!(x.len() >= n_rows * n_in, "x is shorter than n_rows * n_in");
        let nb = n_in / QK;
        let simd = KernelPath::detect();
        self.n_rows = n_rows;
        self.n_in = n_in;
        self.q_stride = n_in.next_multiple_of(64);
        self.q.resize(n_rows * self.q_stride);
        self.d.clear();
        self.d.resize(n_rows * nb, 0.0);
        for v in [&mut self.sum, &mut self.sum_lo, &mut self.sum_hi] {
            v.clear();
            v.resize(n_rows * nb, 0);
        }
        for t in 0..n_rows {
            let xr = &x[t * n_in..(t + 1) * n_in];
            let qs = self.q_stride;
            let qr = &mut self.q.as_mut_slice()[t * qs..t * qs + n_in];
            for b in 0..nb {
                let xb: &[f32; QK] = xr[b * QK..(b + 1) * QK].try_into().expect("QK slice");
                let (d, q) = quantize_block(xb, simd);
                // Granule k (4 bytes) of block b goes to interleaved_offset(nb, b, 4k).
                let g0 = b / GROUP * GROUP;
                let g = (nb - g0).min(GROUP);
                let base = g0 * QK + 4 * (b - g0);
                for k in 0..QK / 4 {
                    qr[base + k * 4 * g..base + k * 4 * g + 4]
                        .copy_from_slice(&q[4 * k..4 * k + 4]);
                }
                let lo: i32 = q[..16].iter().map(|&v| v as i32).sum();
                let hi: i32 = q[16..].iter().map(|&v| v as i32).sum();
                let i = t * nb + b;
                self.d[i] = d;
                self.sum[i] = lo + hi;
                self.sum_lo[i] = lo;
                self.sum_hi[i] = hi;
            }
        }
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub fn n_in(&self) -> usize {
        self.n_in
    }

    /// The dequantized row `t` (`q * d`), for tests and diagnostics.
    pub fn dequantize_row(&self, t: usize, out: &mut [f32]) {
        let nb = self.n_in / QK;
        for b in 0..nb {
            let d = self.d[t * nb + b];
            for k in 0..QK {
                out[b * QK + k] =
                    f32::from(self.q.as_slice()[t * self.q_stride + interleaved_offset(nb, b, k)])
                        * d;
            }
        }
    }

    /// Row views for the kernels.
    #[inline(always)]
    fn row(&self, t: usize) -> ActRow<'_> {
        let nb = self.n_in / QK;
        ActRow {
            q: &self.q.as_slice()[t * self.q_stride..t * self.q_stride + self.n_in],
            d: &self.d[t * nb..(t + 1) * nb],
            sum: &self.sum[t * nb..(t + 1) * nb],
            sum_lo: &self.sum_lo[t * nb..(t + 1) * nb],
            sum_hi: &self.sum_hi[t * nb..(t + 1) * nb],
        }
    }
}

/// Zeroed i8 storage whose start is 64-byte aligned (full-line SIMD loads).
#[derive(Default, Clone)]
struct AlignedI8 {
    buf: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

impl AlignedI8 {
    /// Sets the length to `n`, all zeros.
    fn resize(&mut self, n: usize) {
        self.buf.clear();
        self.buf.resize(n.div_ceil(64), Line([0; 64]));
        self.len = n;
    }
    fn as_slice(&self) -> &[i8] {
        // SAFETY: `buf` holds at least `len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const i8, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [i8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut i8, self.len) }
    }
}

/// One quantized activation row.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
pub(crate) struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub sum: &'a [i32],
    pub sum_lo: &'a [i32],
    pub sum_hi: &'a [i32],
}

/// An implementation of the kernels. All give bit-identical results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable Rust; the definition the others are tested against.
    Scalar,
    /// x86-64 AVX2 + F16C (`vpmaddubsw` / `vpmaddwd`), 256-bit.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (`vpdpbusd`), 512-bit.
    Avx512Vnni,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDot,
}

impl KernelPath {
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512vnni",
            KernelPath::NeonDot => "neon-dot",
        }
    }

    /// Whether this machine can run the path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "aarch64")]
            KernelPath::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every path this machine can run, slowest first.
    pub fn available() -> Vec<KernelPath> {
        [
            KernelPath::Scalar,
            KernelPath::NeonDot,
            KernelPath::Avx2,
            KernelPath::Avx512Vnni,
        ]
        .into_iter()
        .filter(|p| p.is_available())
        .collect()
    }

    /// The fastest available path (detected once). `VERISPEC_KERNEL=scalar|avx2|avx512vnni|
    /// neon-dot` forces one (if available), for debugging and benchmarks.
    pub fn detect() -> KernelPath {
        static BEST: OnceLock<KernelPath> = OnceLock::new();
        *BEST.get_or_init(|| {
            let avail = KernelPath::available();
            if let Ok(want) = std::env::var("VERISPEC_KERNEL") {
                if let Some(p) = avail.iter().find(|p| p.name() == want) {
                    return *p;
                }
            }
            *avail.last().unwrap_or(&KernelPath::Scalar)
        })
    }
}

/// Raw output pointer shared by threads that write disjoint columns of `out`.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own output rows `o`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

fn check_shapes(w: &PackedMatrix, x: &QuantizedActs, n_rows: usize, out: &[f32]) {
    assert_eq!(
        w.n_in(),
        x.n_in(),
        "matrix has {} columns, activations {}",
        w.n_in(),
        x.n_in()
    );
    assert!(
        n_rows <= x.n_rows(),
        "n_rows {n_rows} > quantized rows {}",
        x.n_rows()
    );
    assert!(
        out.len() >= n_rows * w.n_out(),
        "out holds {} values, needs {}",
        out.len(),
        n_rows * w.n_out()
    );
}

/// Computes output rows `rows` of `out` (`[n_rows, n_out]`) with `path`.
///
/// # Safety
/// `path` must be available; `out` must point to `n_rows * n_out` writable floats, and no
/// other thread may write the columns in `rows` concurrently.
unsafe fn run_rows(
    path: KernelPath,
    w: &PackedMatrix,
    x: &QuantizedActs,
    n_rows: usize,
    rows: Range<usize>,
    out: OutPtr,
) {
    let n_out = w.n_out();
    if w.layout() == Layout::Tiles16 {
        return run_tiles(path, w, x, n_rows, rows, out);
    }
    // Blocks of up to ROW_BLOCK output rows, every activation tile against each block: the
    // block's weights are read from memory once and from L1 for the following tiles. For one
    // activation row (decode) the range is instead cut into `streams` parts visited
    // round-robin, one row of each in turn, so that several weight streams are in flight: the
    // hardware prefetchers serve four streams faster than one (V15).
    // With one stream, whole blocks of rows per kernel call (fewer calls, same order).
    let (streams, block) = match (n_rows, row_streams()) {
        (1, s) if s > 1 => (s, 1),
        _ => (1, ROW_BLOCK),
    };
    let n = rows.end - rows.start;
    let streams = streams.min(n).max(1);
    let part = n.div_ceil(streams).next_multiple_of(block);
    let mut next = [0usize; MAX_STREAMS];
    for (k, o) in next[..streams].iter_mut().enumerate() {
        *o = rows.start + k * part;
    }
    loop {
        let mut any = false;
        for (k, o0r) in next[..streams].iter_mut().enumerate() {
            let end = (rows.start + (k + 1) * part).min(rows.end);
            if *o0r >= end {
                continue;
            }
            any = true;
            let o0 = *o0r;
            let nr = (end - o0).min(block);
            let mut t0 = 0;
            while t0 < n_rows {
                let nt = (n_rows - t0).min(TILE);
                #[cfg(target_arch = "x86_64")]
                let o = x86::Out {
                    ptr: out.0.add(t0 * n_out + o0),
                    stride: n_out,
                    rows: nr,
                    row_bytes: w.row_bytes(),
                };
                match path {
                    #[cfg(target_arch = "x86_64")]
                    KernelPath::Avx2 => {
                        x86::rows_avx2(w.format(), w.row(o0).as_ptr(), w.n_in(), x, t0, nt, &o)
                    }
                    #[cfg(target_arch = "x86_64")]
                    KernelPath::Avx512Vnni => {
                        x86::rows_avx512(w.format(), w.row(o0).as_ptr(), w.n_in(), x, t0, nt, &o)
                    }
                    _ => {
                        for r in o0..o0 + nr {
                            let mut res = [0f32; TILE];
                            #[cfg(target_arch = "aarch64")]
                            if path == KernelPath::NeonDot {
                                neon::row_neon(w.format(), w.row(r), w.n_in(), x, t0, nt, &mut res);
                            } else {
                                scalar::row(w.format(), w.row(r), w.n_in(), x, t0, nt, &mut res);
                            }
                            #[cfg(not(target_arch = "aarch64"))]
                            scalar::row(w.format(), w.row(r), w.n_in(), x, t0, nt, &mut res);
                            for (i, &v) in res[..nt].iter().enumerate() {
                                *out.0.add((t0 + i) * n_out + r) = v;
                            }
                        }
                    }
                }
                t0 += nt;
            }
            *o0r += nr;
        }
        if !any {
            break;
        }
    }
}

const MAX_STREAMS: usize = 8;

/// Weight streams of a rows-layout matmul with one activation row ([`Tuning`]).
fn row_streams() -> usize {
    Tuning::get().row_streams
}

/// [`run_rows`] for a [`Layout::Tiles16`] matrix; `rows` must start and end on tile
/// boundaries (every task split uses multiples of 16 rows).
unsafe fn run_tiles(
    path: KernelPath,
    w: &PackedMatrix,
    x: &QuantizedActs,
    n_rows: usize,
    rows: Range<usize>,
    out: OutPtr,
) {
    assert!(
        rows.start.is_multiple_of(TILE_ROWS) && rows.end.is_multiple_of(TILE_ROWS),
        "row range {rows:?} is not made of whole tiles"
    );
    let n_out = w.n_out();
    let (first, last) = (rows.start / TILE_ROWS, rows.end / TILE_ROWS);
    #[cfg(target_arch = "x86_64")]
    if matches!(path, KernelPath::Avx512Vnni | KernelPath::Avx2) {
        // Several rows of activations make a small matrix compute-bound: there the extra
        // accumulator traffic of the lockstep costs more than the streams give (SmolLM2 T=4
        // verify pass 6.2-6.8 ms with 4 tiles, 5.9-6.3 ms with 1). Large matrices stay
        // bandwidth-bound at T=4 (Phi-4-mini prefill +8% with 4 tiles).
        let mt = if n_rows == 1 || w.bytes() >= MULTI_TILE_MIN_BYTES {
            multi_tiles()
        } else {
            1
        };
        let mut first = first;
        while first < last {
            let g = if last - first >= mt { mt } else { 1 };
            match g {
                2 => tile_group::<2>(path, w, x, n_rows, first, out),
                3 => tile_group::<3>(path, w, x, n_rows, first, out),
                4 => tile_group::<4>(path, w, x, n_rows, first, out),
                8 => tile_group::<8>(path, w, x, n_rows, first, out),
                _ => tile_group::<1>(path, w, x, n_rows, first, out),
            }
            first += g;
        }
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    // Other paths read the tiles' rows back in the rows layout (the same values, so the same
    // bits; slow, used only when a path is forced).
    let mut buf = Vec::new();
    for r in first * TILE_ROWS..last * TILE_ROWS {
        let wrow = w.rows_form(r, &mut buf);
        for t in 0..n_rows {
            *out.0.add(t * n_out + r) = scalar::row_dot(w.format(), wrow, w.n_in(), x.row(t));
        }
    }
}

/// Tiles `first..first + MT` against all `n_rows` activation rows, `TILE` rows per call.
///
/// # Safety
/// As [`run_tiles`] on the AVX-512 VNNI or AVX2 path, for those tiles.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_group<const MT: usize>(
    path: KernelPath,
    w: &PackedMatrix,
    x: &QuantizedActs,
    n_rows: usize,
    first: usize,
    out: OutPtr,
) {
    let n_out = w.n_out();
    let mut t0 = 0;
    while t0 < n_rows {
        let nt = (n_rows - t0).min(TILE);
        let tiles = std::array::from_fn(|m| w.tile(first + m).as_ptr());
        let outs = std::array::from_fn(|m| out.0.add(t0 * n_out + (first + m) * TILE_ROWS));
        if path == KernelPath::Avx2 {
            x86::tiles_avx2::<MT>(w.format(), tiles, w.n_in(), x, t0, nt, outs, n_out);
        } else {
            x86::tiles_avx512::<MT>(w.format(), tiles, w.n_in(), x, t0, nt, outs, n_out);
        }
        t0 += nt;
    }
}

/// Matrices at least this large read several tiles in lockstep for any number of rows.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
const MULTI_TILE_MIN_BYTES: usize = 4 << 20;

/// How many tiles a tiled matmul reads in lockstep ([`Tuning`]): several concurrent weight
/// streams per thread gave +8-13% decode on the first development machine (V15).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
fn multi_tiles() -> usize {
    match MULTI_TILES.load(Ordering::Relaxed) {
        0 => Tuning::get().multi_tiles,
        n => n,
    }
}

/// [`set_multi_tiles`]'s value; 0: not set.
static MULTI_TILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets how many tiles a tiled matmul reads in lockstep (1, 2, 3, 4 or 8; 0 restores
/// [`Tuning::get`]'s), for benchmarks and for tests that cover every lockstep width whatever
/// the machine's default. Results do not depend on it.
pub fn set_multi_tiles(n: usize) {
    if [0, 1, 2, 3, 4, 8].contains(&n) {
        MULTI_TILES.store(n, Ordering::Relaxed);
    }
}

/// `out[t][o] = dot(w[o], x[t])` for `t < n_rows`, on this thread, with the detected path.
/// `out` is `[n_rows, n_out]` row-major.
pub fn matmul(w: &PackedMatrix, x: &QuantizedActs, n_rows: usize, out: &mut [f32]) {
    matmul_with(KernelPath::detect(), w, x, n_rows, out)
}

/// [`matmul`] with an explicit path (panics if this machine cannot run it).
pub fn matmul_with(
    path: KernelPath,
    w: &PackedMatrix,
    x: &QuantizedActs,
    n_rows: usize,
    out: &mut [f32],
) {
    check_shapes(w, x, n_rows, out);
    assert!(
        path.is_available(),
        "kernel path {} is not available",
        path.name()
    );
    // SAFETY: shapes checked, path available, `out` exclusively borrowed.
    unsafe { run_rows(path, w, x, n_rows, 0..w.n_out(), OutPtr(out.as_mut_ptr())) }
}

/// Parallel tasks per thread of a matmul (default 4; `VERISPEC_TASKS_PER_THREAD`, read once,
/// is a tuning knob: results never depend on it).
fn tasks_per_thread() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("VERISPEC_TASKS_PER_THREAD")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(4)
    })
}

/// Output rows per parallel task for `threads` workers: several tasks per thread so a busy
/// core does not hold the others back, a multiple of 16 rows.
pub fn rows_per_task(n_out: usize, threads: usize) -> usize {
    let tasks = threads.max(1) * tasks_per_thread();
    n_out.div_ceil(tasks).next_multiple_of(16).max(16)
}

/// [`matmul`] with output rows split across the threads of `pool`. Bit-identical to
/// [`matmul`] for any number of threads (only output rows are split).
pub fn matmul_pool(
    pool: &Pool,
    w: &PackedMatrix,
    x: &QuantizedActs,
    n_rows: usize,
    out: &mut [f32],
) {
    let chunk = rows_per_task(w.n_out(), pool.threads());
    matmul_par(KernelPath::detect(), w, x, n_rows, out, chunk, |n, f| {
        pool.run(n, f)
    })
}

/// Several matrices with the same `n_in` against the same activations (Q/K/V, gate/up), in one
/// parallel dispatch: `outs[i] = ws[i] x`. Every output row is computed by the same kernel call
/// sequence as in [`matmul`], so the results are bit-identical to separate calls.
pub fn matmul_pool_multi(
    pool: &Pool,
    ws: &[&PackedMatrix],
    x: &QuantizedActs,
    n_rows: usize,
    outs: &mut [&mut [f32]],
) {
    assert_eq!(ws.len(), outs.len(), "one output per matrix");
    let path = KernelPath::detect();
    assert!(path.is_available());
    for (w, out) in ws.iter().zip(outs.iter()) {
        check_shapes(w, x, n_rows, out);
    }
    let total: usize = ws.iter().map(|w| w.n_out()).sum();
    let chunk = rows_per_task(total, pool.threads());
    // (matrix, row range) tasks; every output row belongs to exactly one task.
    let mut tasks: Vec<(usize, Range<usize>)> = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let mut r = 0;
        while r < w.n_out() {
            let e = (r + chunk).min(w.n_out());
            tasks.push((i, r..e));
            r = e;
        }
    }
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let run = |k: usize| {
        let (i, rows) = tasks[k].clone();
        // SAFETY: tasks cover disjoint row ranges of each output, each run once; `outs` is
        // borrowed mutably for the whole call.
        unsafe { run_rows(path, ws[i], x, n_rows, rows, ptrs[i]) }
    };
    pool.run(tasks.len(), &run);
}

/// The generic threaded entry point: output rows are cut into chunks of `rows_per_chunk`,
/// and `par(n_chunks, f)` must call `f(i)` exactly once for every `i < n_chunks`, on any
/// threads, in any order, returning when all calls have returned.
pub fn matmul_par<P>(
    path: KernelPath,
    w: &PackedMatrix,
    x: &QuantizedActs,
    n_rows: usize,
    out: &mut [f32],
    rows_per_chunk: usize,
    par: P,
) where
    P: FnOnce(usize, &(dyn Fn(usize) + Sync)),
{
    check_shapes(w, x, n_rows, out);
    assert!(
        path.is_available(),
        "kernel path {} is not available",
        path.name()
    );
    let n_out = w.n_out();
    let chunk = rows_per_chunk.max(1);
    let n_chunks = n_out.div_ceil(chunk);
    let ptr = OutPtr(out.as_mut_ptr());
    // Each chunk is claimed once, so a `par` that repeats an index cannot race on `out`.
    let claimed: Vec<AtomicBool> = (0..n_chunks).map(|_| AtomicBool::new(false)).collect();
    let task = |i: usize| {
        assert!(
            i < n_chunks,
            "chunk index {i} out of range ({n_chunks} chunks)"
        );
        if claimed[i].swap(true, Ordering::AcqRel) {
            panic!("matmul_par: chunk {i} was run twice");
        }
        let rows = i * chunk..((i + 1) * chunk).min(n_out);
        // SAFETY: chunks are disjoint row ranges claimed once; `out` is borrowed mutably for
        // the whole call and `par` returns only when every task is done.
        unsafe { run_rows(path, w, x, n_rows, rows, ptr) }
    };
    par(n_chunks, &task);
    assert!(
        claimed.iter().all(|c| c.load(Ordering::Acquire)),
        "matmul_par: some chunks were not run"
    );
}
