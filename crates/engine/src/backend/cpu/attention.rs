//! Grouped attention kernels (hand-written x86): the queries of one task are (token row, head)
//! pairs, a run of consecutive rows times the heads that share a KV head (a GQA group, or part
//! of one); row `r` sees keys `0..=pos + r` (V14). For every query the bits are those of the
//! portable `Attend::run`: the same operations on the same operands in the same order; only
//! independent operations (other keys, other queries, other lanes) are interleaved.
//!
//! Per head, keys `j = 0..=pos` (the canonical order, docs/KERNELS.md "V12"):
//! 1. `s_j = dot_f32(q, k_j) * scale`: 8 lane accumulators over 8-float chunks (tail element
//!    `i` goes to lane `i % 8`), multiply then add (never FMA), then the tree
//!    `((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7))`. Here one `__m256` holds the 8 lanes of one
//!    (key, head) and 8 keys run interleaved (8 independent add chains); a transpose-add tree
//!    reduces the 8 keys at once with the same pairings. With AVX-512 a `__m512` holds two
//!    heads of one key (the K chunk is loaded once, broadcast to both halves).
//! 2. `max` of the scores (its value; the sign of a zero maximum cannot change `s_j - max`),
//!    then `p_j = exp_neg(s_j - max)` (`softmax_exp.rs`, SIMD lanes with the scalar bits) and
//!    `sum += p_j` in key order.
//! 3. `o[d] = sum_j p_j * v_j[d]` in key order for every `d` (lane-wise, so the vector width
//!    does not matter), then `o[d] *= 1 / sum`. The accumulators of up to 4 heads stay in
//!    registers over all keys (AVX-512), or over a block of keys (AVX2: between blocks they go
//!    through `o`; an f32 store and load are exact).
//!
//! A tail chunk (`head_dim % 8 != 0`) is loaded with a mask: masked lanes read `+0.0`, so the
//! dot lanes they touch get `acc + (+0 * +0) = acc` (an accumulator that starts at `+0` is
//! never `-0`), and masked V lanes are never stored.
//!
//! Software prefetch (K rows `PREFETCH_K` keys ahead, V rows `PREFETCH_V` ahead) helps at
//! long context: a cache row is `n_head_kv * head_dim` floats, so every key of a KV head is a
//! separate short run of cache lines (a separate page for Phi-4-mini), which the hardware
//! prefetchers follow poorly.

use super::AttnPath;

/// Most heads per task (a larger GQA group is split into several tasks).
pub(super) const MAX_HEADS: usize = 16;

/// Most (row, head) queries per task: `rows * nh <= MAX_QUERIES`.
pub(super) const MAX_QUERIES: usize = 32;

/// The inputs of one task: `rows` consecutive token rows (row `r` at position `pos + r`) times
/// `nh` query heads, sharing the KV head at offset `off` of the cache rows. Query `(r, h)` is
/// `q[r * row_stride + h * head_dim..][..head_dim]` (the heads of a row are contiguous).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
pub(super) struct Group<'a> {
    pub q: &'a [f32],
    pub nh: usize,
    pub rows: usize,
    pub row_stride: usize,
    pub k_cache: &'a [f32],
    pub v_cache: &'a [f32],
    pub off: usize,
    pub kv_width: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// A kernel: attention of `g`'s queries, row `r` at position `pos + r` (keys `0..=pos + r`);
/// the output of query `(r, h)` goes to `o[r * g.row_stride + h * g.head_dim..][..head_dim]`;
/// `scores` is scratch. Only those floats of `o` are written.
///
/// # Safety
/// The CPU has the features of the path the kernel was returned for; `o` is valid for writes
/// of those floats and nothing else accesses them during the call.
pub(super) type Kernel = unsafe fn(g: &Group, pos: usize, scores: &mut Vec<f32>, o: *mut f32);

/// The grouped kernel of `path`, if it has one (`Avx2`, `Avx512` on x86-64). Call it only
/// when `path.supported()`.
pub(super) fn kernel(path: AttnPath) -> Option<Kernel> {
    match path {
        #[cfg(target_arch = "x86_64")]
        AttnPath::Avx2 => Some(x86::attend_avx2),
        #[cfg(target_arch = "x86_64")]
        AttnPath::Avx512 => Some(x86::attend_avx512),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Group, MAX_QUERIES};
    use std::arch::x86_64::*;

    /// Keys per block of the AVX2 V pass when several heads share it (the block's V rows stay in
    /// L1 from one head to the next).
    const KEY_BLOCK: usize = 64;

    /// Prefetch distances, in keys.
    const PREFETCH_K: usize = 32;
    const PREFETCH_V: usize = 16;

    /// Prefetches the cache lines of `p[..n]` (`n > 0`; any address, prefetches never fault).
    #[inline(always)]
    unsafe fn prefetch(p: *const f32, n: usize) {
        let mut i = 0;
        while i < n {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i).cast());
            i += 16;
        }
        // The last line, for a row that does not start on a line boundary.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(n - 1).cast());
    }

    /// Mask of the first `r` lanes (`r <= 8`).
    #[inline(always)]
    unsafe fn lane_mask(r: usize) -> __m256i {
        const IDX: [i32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(r as i32),
            _mm256_loadu_si256(IDX.as_ptr().cast()),
        )
    }

    /// `((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7))`, the tree of `dot_f32`.
    #[inline(always)]
    unsafe fn reduce1(a: __m256) -> f32 {
        let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        // [b0+b1, b2+b3, ..]
        let c = _mm_hadd_ps(b, b);
        _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
    }

    /// Lane `i` of the result is `reduce1(a[i])`, for 8 accumulators at once (same pairings).
    #[inline(always)]
    unsafe fn reduce8(a: &[__m256; 8]) -> __m256 {
        // [x0+x4, x1+x5, x2+x6, x3+x7, y0+y4, y1+y5, y2+y6, y3+y7]
        #[inline(always)]
        unsafe fn halves(x: __m256, y: __m256) -> __m256 {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(x, y),
                _mm256_permute2f128_ps::<0x31>(x, y),
            )
        }
        let x04 = halves(a[0], a[4]);
        let x15 = halves(a[1], a[5]);
        let x26 = halves(a[2], a[6]);
        let x37 = halves(a[3], a[7]);
        // Keys [0, 0, 1, 1, 4, 4, 5, 5] as (a0+a4)+(a1+a5) and (a2+a6)+(a3+a7).
        let y = _mm256_hadd_ps(x04, x15);
        // Keys [2, 2, 3, 3, 6, 6, 7, 7].
        let z = _mm256_hadd_ps(x26, x37);
        // Keys [0, 1, 2, 3, 4, 5, 6, 7].
        _mm256_hadd_ps(y, z)
    }

    /// Scores (unscaled) of 8 consecutive keys (rows `k`, `k + w`, .., `k + 7w`) for query `q`.
    #[inline(always)]
    unsafe fn dot8(
        q: *const f32,
        k: *const f32,
        w: usize,
        nc: usize,
        tail: Option<__m256i>,
    ) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let r: [*const f32; 8] = std::array::from_fn(|i| k.add(i * w));
        for c in 0..nc {
            let qv = _mm256_loadu_ps(q.add(8 * c));
            for i in 0..8 {
                acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(qv, _mm256_loadu_ps(r[i].add(8 * c))));
            }
        }
        if let Some(m) = tail {
            let qv = _mm256_maskload_ps(q.add(8 * nc), m);
            for i in 0..8 {
                let kv = _mm256_maskload_ps(r[i].add(8 * nc), m);
                acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(qv, kv));
            }
        }
        reduce8(&acc)
    }

    /// [`dot8`] for two queries `qa`, `qb` at once: one 512-bit accumulator per key holds the 8
    /// lanes of `qa` (low half) and of `qb` (high half); the tree is [`reduce8`]'s on both halves.
    /// Returns the 8 scores of `qa` (low half) and of `qb` (high half).
    #[inline(always)]
    unsafe fn dot8x2(
        qa: *const f32,
        qb: *const f32,
        k: *const f32,
        w: usize,
        nc: usize,
        tail: Option<__m256i>,
    ) -> __m512 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let r: [*const f32; 8] = std::array::from_fn(|i| k.add(i * w));
        for c in 0..nc {
            let qv = _mm512_insertf32x8::<1>(
                _mm512_castps256_ps512(_mm256_loadu_ps(qa.add(8 * c))),
                _mm256_loadu_ps(qb.add(8 * c)),
            );
            for i in 0..8 {
                let kv = _mm512_broadcast_f32x8(_mm256_loadu_ps(r[i].add(8 * c)));
                acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(qv, kv));
            }
        }
        if let Some(m) = tail {
            let qv = _mm512_insertf32x8::<1>(
                _mm512_castps256_ps512(_mm256_maskload_ps(qa.add(8 * nc), m)),
                _mm256_maskload_ps(qb.add(8 * nc), m),
            );
            for i in 0..8 {
                let kv = _mm512_broadcast_f32x8(_mm256_maskload_ps(r[i].add(8 * nc), m));
                acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(qv, kv));
            }
        }
        // 128-bit lanes of acc[i]: [a.lo, a.hi, b.lo, b.hi] (query a / b, accumulator lanes 0-3 /
        // 4-7). halves(x, y) = [xa.lo + xa.hi, xb.lo + xb.hi, ya.lo + ya.hi, yb.lo + yb.hi].
        #[inline(always)]
        unsafe fn halves(x: __m512, y: __m512) -> __m512 {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        }
        // Per 128-bit lane: [x0 + x1, x2 + x3, y0 + y1, y2 + y3] (`hadd`).
        #[inline(always)]
        unsafe fn hadd(x: __m512, y: __m512) -> __m512 {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(x, y),
                _mm512_shuffle_ps::<0b11_01_11_01>(x, y),
            )
        }
        // 128-bit lanes [(a, k0), (b, k0), (a, k4), (b, k4)], and so on.
        let x04 = halves(acc[0], acc[4]);
        let x15 = halves(acc[1], acc[5]);
        let x26 = halves(acc[2], acc[6]);
        let x37 = halves(acc[3], acc[7]);
        // 128-bit lanes: a [k0, k1, k2, k3], b [k0 .. k3], a [k4 .. k7], b [k4 .. k7].
        let f = hadd(hadd(x04, x15), hadd(x26, x37));
        _mm512_shuffle_f32x4::<0b11_01_10_00>(f, f)
    }

    /// Score (unscaled) of one key.
    #[inline(always)]
    unsafe fn dot1(q: *const f32, k: *const f32, nc: usize, tail: Option<__m256i>) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for c in 0..nc {
            let kv = _mm256_loadu_ps(k.add(8 * c));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q.add(8 * c)), kv));
        }
        if let Some(m) = tail {
            let qv = _mm256_maskload_ps(q.add(8 * nc), m);
            let kv = _mm256_maskload_ps(k.add(8 * nc), m);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(qv, kv));
        }
        reduce1(acc)
    }

    /// The maximum of `x` as a value (NaNs are skipped, as `f32::max` does; `-inf` if none).
    #[inline(always)]
    unsafe fn max_of(x: &[f32]) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        // `max_ps(a, b)` returns `b` when either is NaN: the running maximum is never NaN.
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j + 8 <= n {
            m = _mm256_max_ps(_mm256_loadu_ps(p.add(j)), m);
            j += 8;
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_max_ss(h, _mm_movehdup_ps(h));
        let mut r = _mm_cvtss_f32(h);
        for &y in &x[j..] {
            r = r.max(y);
        }
        r
    }

    /// The queries of `g`, query `i = r * nh + h` being (row `r`, head `h`): their offsets in
    /// `g.q` and in the output (`nq` of them) and key counts `pos + 1 + r`.
    #[inline(always)]
    fn queries(g: &Group, pos: usize) -> (usize, [usize; MAX_QUERIES], [usize; MAX_QUERIES]) {
        let (hd, nh, rows) = (g.head_dim, g.nh, g.rows);
        let nq = nh * rows;
        assert!(hd > 0 && nh > 0 && rows > 0 && nq <= MAX_QUERIES);
        assert!(nh * hd <= g.row_stride || rows == 1);
        assert!(g.q.len() >= (rows - 1) * g.row_stride + nh * hd);
        let mut at = [0; MAX_QUERIES];
        let mut ns = [0; MAX_QUERIES];
        let mut i = 0;
        for r in 0..rows {
            for h in 0..nh {
                at[i] = r * g.row_stride + h * hd;
                ns[i] = pos + 1 + r;
                i += 1;
            }
        }
        (nq, at, ns)
    }

    /// Phases 1 and 2 for every query of `g` (see [`queries`]): `scores` gets one row of `p_j`
    /// per query (query `i` at `i * stride`, keys below its count); returns `stride` and
    /// `1 / sum` per query. Scores are computed for keys `0..pos + rows` for every query (the
    /// ones past a query's count are not used). With `AVX512`, queries go in pairs through
    /// [`dot8x2`].
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn softmax_rows<const AVX512: bool>(
        g: &Group,
        pos: usize,
        scores: &mut Vec<f32>,
    ) -> (usize, [f32; MAX_QUERIES]) {
        let (hd, w, off) = (g.head_dim, g.kv_width, g.off);
        let (nq, at, ns) = queries(g, pos);
        let qp: [*const f32; MAX_QUERIES] =
            std::array::from_fn(|i| g.q.as_ptr().wrapping_add(at[i]));
        let n = pos + g.rows;
        assert!(off + hd <= w && g.k_cache.len() >= n * w && g.v_cache.len() >= n * w);
        let (nc, rem) = (hd / 8, hd % 8);
        let tail = (rem > 0).then(|| lane_mask(rem));
        // One score row per query (every element below `n` is written before it is read).
        let stride = n.next_multiple_of(8);
        if scores.len() < nq * stride {
            scores.resize(nq * stride, 0.0);
        }
        let s = scores.as_mut_ptr();
        let k = g.k_cache.as_ptr().add(off);

        // 1. Scores, 8 keys at a time (a block's K rows stay in L1 from one head to the next).
        let mut j = 0;
        while j + 8 <= n {
            for i in j + PREFETCH_K..(j + PREFETCH_K + 8).min(n) {
                prefetch(k.add(i * w), hd);
            }
            let mut h = 0;
            if AVX512 {
                let scale = _mm512_set1_ps(g.scale);
                while h + 2 <= nq {
                    let (qa, qb) = (qp[h], qp[h + 1]);
                    let d = _mm512_mul_ps(dot8x2(qa, qb, k.add(j * w), w, nc, tail), scale);
                    _mm256_storeu_ps(s.add(h * stride + j), _mm512_castps512_ps256(d));
                    _mm256_storeu_ps(s.add((h + 1) * stride + j), _mm512_extractf32x8_ps::<1>(d));
                    h += 2;
                }
            }
            let scale = _mm256_set1_ps(g.scale);
            for h in h..nq {
                let d = _mm256_mul_ps(dot8(qp[h], k.add(j * w), w, nc, tail), scale);
                _mm256_storeu_ps(s.add(h * stride + j), d);
            }
            j += 8;
        }
        for j in j..n {
            for h in 0..nq {
                *s.add(h * stride + j) = dot1(qp[h], k.add(j * w), nc, tail) * g.scale;
            }
        }

        // 2. Softmax weights, per query in key order.
        let mut inv = [0f32; MAX_QUERIES];
        for (h, inv) in inv[..nq].iter_mut().enumerate() {
            let sh = std::slice::from_raw_parts_mut(s.add(h * stride), ns[h]);
            let max = max_of(sh);
            super::super::softmax_exp::exp_sub_max(sh, max);
            let mut sum = 0f32;
            for &x in sh.iter() {
                sum += x;
            }
            *inv = 1.0 / sum;
        }
        (stride, inv)
    }

    /// `o[..8 * NC] (+)= sum_j p[j] * v_j` over `n` keys (rows `v`, `v + w`, ..) in order; the
    /// accumulators start at `+0` when `first`, else at `o`; the result is stored times `inv`
    /// when given. The last chunk has the lanes of `mask` when `MASKED`. Rows up to `n_pf` may be
    /// prefetched.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn v_block<const NC: usize, const MASKED: bool>(
        p: *const f32,
        n: usize,
        v: *const f32,
        w: usize,
        o: *mut f32,
        mask: __m256i,
        first: bool,
        inv: Option<f32>,
        n_pf: usize,
    ) {
        let mut acc = [_mm256_setzero_ps(); NC];
        if !first {
            for (c, a) in acc.iter_mut().enumerate() {
                *a = if MASKED && c == NC - 1 {
                    _mm256_maskload_ps(o.add(8 * c), mask)
                } else {
                    _mm256_loadu_ps(o.add(8 * c))
                };
            }
        }
        let mut row = v;
        for j in 0..n {
            if j + PREFETCH_V < n_pf {
                prefetch(row.wrapping_add(PREFETCH_V * w), 8 * NC);
            }
            let pj = _mm256_set1_ps(*p.add(j));
            for (c, a) in acc.iter_mut().enumerate() {
                let x = if MASKED && c == NC - 1 {
                    _mm256_maskload_ps(row.add(8 * c), mask)
                } else {
                    _mm256_loadu_ps(row.add(8 * c))
                };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(pj, x));
            }
            row = row.add(w);
        }
        if let Some(inv) = inv {
            let iv = _mm256_set1_ps(inv);
            for a in acc.iter_mut() {
                *a = _mm256_mul_ps(*a, iv);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            if MASKED && c == NC - 1 {
                _mm256_maskstore_ps(o.add(8 * c), mask, *a);
            } else {
                _mm256_storeu_ps(o.add(8 * c), *a);
            }
        }
    }

    /// Attention of `g.q`'s heads for one row at position `pos`, with AVX2. `o` gets the heads'
    /// outputs (`q.len()` floats); `scores` is scratch.
    ///
    /// # Safety
    /// AVX2 is available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn attend_avx2(g: &Group, pos: usize, scores: &mut Vec<f32>, o: *mut f32) {
        let (stride, inv) = softmax_rows::<false>(g, pos, scores);
        let (hd, w) = (g.head_dim, g.kv_width);
        let (nq, at, ns) = queries(g, pos);
        let n = pos + g.rows;
        let s = scores.as_ptr();
        let v = g.v_cache.as_ptr().add(g.off);
        let oq: [*mut f32; MAX_QUERIES] = std::array::from_fn(|i| o.wrapping_add(at[i]));
        let (nc, rem) = (hd / 8, hd % 8);
        let mask = lane_mask(rem);

        // 3. Chunks in balanced blocks of at most 8 registers; with several heads, keys in blocks
        // so that a block's V rows are reused from L1.
        let total = nc + usize::from(rem > 0);
        let per = total.div_ceil(total.div_ceil(8));
        let kb = if nq == 1 { n } else { KEY_BLOCK };
        let mut j0 = 0;
        while j0 < n {
            for h in 0..nq {
                if j0 >= ns[h] {
                    continue;
                }
                let m = kb.min(ns[h] - j0);
                let last = j0 + m == ns[h];
                let mut c0 = 0;
                while c0 < total {
                    let cn = per.min(total - c0);
                    let masked = rem > 0 && c0 + cn == total;
                    let (p, vb, ob) = (
                        s.add(h * stride + j0),
                        v.add(j0 * w + 8 * c0),
                        oq[h].add(8 * c0),
                    );
                    let inv = last.then_some(inv[h]);
                    // The first query's pass prefetches for the others.
                    let n_pf = if h == 0 { ns[0] - j0 } else { 0 };
                    macro_rules! go {
                        ($($c:literal)*) => {
                            match (cn, masked) {
                                $(
                                    ($c, false) => v_block::<$c, false>(
                                        p, m, vb, w, ob, mask, j0 == 0, inv, n_pf,
                                    ),
                                    ($c, true) => v_block::<$c, true>(
                                        p, m, vb, w, ob, mask, j0 == 0, inv, n_pf,
                                    ),
                                )*
                                _ => unreachable!("chunk count {cn}"),
                            }
                        };
                    }
                    go!(1 2 3 4 5 6 7 8);
                    c0 += cn;
                }
            }
            j0 += kb;
        }
    }

    /// `o_h[..16 * NC] = inv_h * sum_j p_h[j] * v_j` for `NH` queries at once, query `h` over
    /// keys `j < n[h]` (rows `v`, `v + w`, ..) in order, 16 lanes per register; `mask` selects
    /// the lanes of the last chunk. Keys below the smallest count are shared by all queries
    /// (one V load); the few after it go, still in key order, to the queries that have them.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn v_heads512<const NH: usize, const NC: usize>(
        p: [*const f32; NH],
        n: [usize; NH],
        v: *const f32,
        w: usize,
        o: [*mut f32; NH],
        mask: __mmask16,
        inv: [f32; NH],
    ) {
        let mut acc = [[_mm512_setzero_ps(); NC]; NH];
        let n_min = n.iter().copied().min().unwrap_or(0);
        let n_max = n.iter().copied().max().unwrap_or(0);
        let mut row = v;
        for j in 0..n_min {
            if j + PREFETCH_V < n_max {
                prefetch(row.wrapping_add(PREFETCH_V * w), 16 * NC);
            }
            let mut pj = [_mm512_setzero_ps(); NH];
            for h in 0..NH {
                pj[h] = _mm512_set1_ps(*p[h].add(j));
            }
            for c in 0..NC {
                let x = if c == NC - 1 {
                    _mm512_maskz_loadu_ps(mask, row.add(16 * c))
                } else {
                    _mm512_loadu_ps(row.add(16 * c))
                };
                for h in 0..NH {
                    acc[h][c] = _mm512_add_ps(acc[h][c], _mm512_mul_ps(pj[h], x));
                }
            }
            row = row.add(w);
        }
        for j in n_min..n_max {
            for c in 0..NC {
                let x = if c == NC - 1 {
                    _mm512_maskz_loadu_ps(mask, row.add(16 * c))
                } else {
                    _mm512_loadu_ps(row.add(16 * c))
                };
                for h in 0..NH {
                    if j < n[h] {
                        let pj = _mm512_set1_ps(*p[h].add(j));
                        acc[h][c] = _mm512_add_ps(acc[h][c], _mm512_mul_ps(pj, x));
                    }
                }
            }
            row = row.add(w);
        }
        for h in 0..NH {
            let iv = _mm512_set1_ps(inv[h]);
            for c in 0..NC {
                let r = _mm512_mul_ps(acc[h][c], iv);
                if c == NC - 1 {
                    _mm512_mask_storeu_ps(o[h].add(16 * c), mask, r);
                } else {
                    _mm512_storeu_ps(o[h].add(16 * c), r);
                }
            }
        }
    }

    /// [`attend_avx2`] with AVX-512: two heads per 512-bit register in the scores, and up to 4
    /// heads sharing each V load in the weighted sum.
    ///
    /// # Safety
    /// AVX2, AVX-512F and AVX-512DQ are available.
    #[target_feature(enable = "avx2,avx512f,avx512dq")]
    pub(super) unsafe fn attend_avx512(g: &Group, pos: usize, scores: &mut Vec<f32>, o: *mut f32) {
        let (stride, inv) = softmax_rows::<true>(g, pos, scores);
        let hd = g.head_dim;
        let w = g.kv_width;
        let (nh, at, ns) = queries(g, pos);
        let s = scores.as_ptr();
        let v = g.v_cache.as_ptr().add(g.off);
        let oq: [*mut f32; MAX_QUERIES] = std::array::from_fn(|i| o.wrapping_add(at[i]));
        // 16-lane chunks per head; the last one has `hd - 16 * (total - 1)` lanes.
        let total = hd.div_ceil(16);
        let full: __mmask16 = 0xffff;
        let tail_mask: __mmask16 = full >> (16 * total - hd);
        let mut h0 = 0;
        while h0 < nh {
            // Up to 4 queries per pass (6 when they fit whole: head_dim <= 64), and chunks per
            // pass such that queries x chunks <= 24 accumulators (in balanced blocks).
            let hn = (nh - h0).min(if total <= 4 { 6 } else { 4 });
            let per = total.div_ceil(total.div_ceil((24 / hn).min(8)));
            let mut c0 = 0;
            while c0 < total {
                let cn = per.min(total - c0);
                let mask = if c0 + cn == total { tail_mask } else { full };
                let vb = v.add(16 * c0);
                macro_rules! go {
                    ($h:literal, $($c:literal)*) => {
                        match cn {
                            $($c => v_heads512::<$h, $c>(
                                std::array::from_fn(|i| s.add((h0 + i) * stride)),
                                std::array::from_fn(|i| ns[h0 + i]),
                                vb,
                                w,
                                std::array::from_fn(|i| oq[h0 + i].add(16 * c0)),
                                mask,
                                std::array::from_fn(|i| inv[h0 + i]),
                            ),)*
                            _ => unreachable!("chunk count {cn}"),
                        }
                    };
                }
                match hn {
                    1 => go!(1, 1 2 3 4 5 6 7 8),
                    2 => go!(2, 1 2 3 4 5 6 7 8),
                    3 => go!(3, 1 2 3 4 5 6 7 8),
                    4 => go!(4, 1 2 3 4 5 6),
                    5 => go!(5, 1 2 3 4),
                    _ => go!(6, 1 2 3 4),
                }
                c0 += cn;
            }
            h0 += hn;
        }
    }
}
