//! x86-64 kernels: AVX-512 VNNI (16 blocks per 512-bit register, `vpdpbusd`) and AVX2
//! (two 256-bit halves of 8 blocks, `vpmaddubsw` + `vpmaddwd`). Both reproduce the canonical
//! order of `scalar.rs` exactly: the integer parts are exact, and the f32 operations are the
//! same multiplies and adds on the same lanes (no FMA anywhere).
//!
//! `vpdpbusd` and `vpmaddubsw` multiply unsigned by signed bytes, so each format feeds them an
//! unsigned weight operand and corrects with the exact activation block sums:
//! - Q8_0 (VNNI): `w ^ 0x80 = w + 128` (u8), `isum = dp - 128 * xsum`;
//!   (AVX2): `|w|` times `sign(x, w)` (the `vpmaddubsw` pair sum of `w + 128` could saturate);
//! - Q4_0: `q` in 0..16, `isum = dp - 8 * xsum`;
//! - Q4_1, Q4_K: `q` in 0..16, `isum = dp` (the min term uses `xsum` in f32);
//! - Q6_K: `q` in 0..64, per 16-element half `dp - 32 * xsum_half`, then the i8 scales;
//! - Q3_K: `q + 4` in 0..8, per half `dp - 4 * xsum_half`, then the 6-bit scales (`sc - 32`);
//! - Q2_K: `q` in 0..4, per half `dp`, then the 4-bit scales; the min term is the exact
//!   `m_lo * xsum_lo + m_hi * xsum_hi`.

#![allow(clippy::needless_range_loop)] // lanes and rows index several arrays at once

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::pack::{
    f16_at, k4_scales_mins, k4_unpack, quant_base, Q2K_TILE_HDR, Q2K_TILE_SB, Q2K_TILE_SUB,
    Q3K_TILE_HDR, Q3K_TILE_SB, Q3K_TILE_SUB, Q4K_TILE_SB, Q5K_TILE_SB, Q5K_TILE_SUB, Q6K_TILE_SB,
    Q6K_TILE_SUB,
};
use super::{QuantizedActs, WeightFormat, GROUP, QK};

/// Pointers to the rows `t0..t0+NT` of the activations.
struct Xp<const NT: usize> {
    q: [*const i8; NT],
    d: [*const f32; NT],
    s: [*const i32; NT],
    lo: [*const i32; NT],
    hi: [*const i32; NT],
}

#[inline(always)]
fn xp<const NT: usize>(x: &QuantizedActs, t0: usize) -> Xp<NT> {
    let r = |t: usize| x.row(t0 + t);
    Xp {
        q: std::array::from_fn(|t| r(t).q.as_ptr()),
        d: std::array::from_fn(|t| r(t).d.as_ptr()),
        s: std::array::from_fn(|t| r(t).sum.as_ptr()),
        lo: std::array::from_fn(|t| r(t).sum_lo.as_ptr()),
        hi: std::array::from_fn(|t| r(t).sum_hi.as_ptr()),
    }
}

/// Calls rows kernel `$f::<NT>` (`$f::<NT, C>` with `; C`) for `$nt` activation rows.
macro_rules! dispatch_nt {
    ($f:ident $(; $c:expr)?, $w:expr, $nb:expr, $x:expr, $t0:expr, $nt:expr, $o:expr) => {
        match $nt {
            1 => $f::<1 $(, $c)?>($w, $nb, &xp::<1>($x, $t0), $o),
            2 => $f::<2 $(, $c)?>($w, $nb, &xp::<2>($x, $t0), $o),
            3 => $f::<3 $(, $c)?>($w, $nb, &xp::<3>($x, $t0), $o),
            _ => $f::<4 $(, $c)?>($w, $nb, &xp::<4>($x, $t0), $o),
        }
    };
}

/// Calls tile kernel `$f::<NT, MT>` (`$f::<NT, MT, C>` with `; C`) for `$nt` activation rows.
macro_rules! dispatch_tiles {
    ($f:ident $(; $c:expr)?, $mt:ident, $w:expr, $nb:expr, $x:expr, $t0:expr, $nt:expr, $out:expr, $stride:expr) => {
        match $nt {
            1 => $f::<1, $mt $(, $c)?>($w, $nb, &xp::<1>($x, $t0), $out, $stride),
            2 => $f::<2, $mt $(, $c)?>($w, $nb, &xp::<2>($x, $t0), $out, $stride),
            3 => $f::<3, $mt $(, $c)?>($w, $nb, &xp::<3>($x, $t0), $out, $stride),
            _ => $f::<4, $mt $(, $c)?>($w, $nb, &xp::<4>($x, $t0), $out, $stride),
        }
    };
}

/// Where a kernel writes: `*ptr.add(t * stride + r)` for row `r < rows` of the block and
/// activation row `t` of the tile; weight row `r` starts `r * row_bytes` after the first.
pub(super) struct Out {
    pub ptr: *mut f32,
    pub stride: usize,
    pub rows: usize,
    pub row_bytes: usize,
}

/// AVX-512 VNNI: output rows `o.rows` (weights from `w`) for activation rows `t0..t0+nt`.
///
/// # Safety
/// The `Avx512Vnni` path must be available; `w` points to `o.rows` packed rows of `fmt` of
/// `n_in` elements, `x` has at least `t0 + nt` rows of `n_in`, `o.ptr` is valid for the writes.
pub(super) unsafe fn rows_avx512(
    fmt: WeightFormat,
    w: *const u8,
    n_in: usize,
    x: &QuantizedActs,
    t0: usize,
    nt: usize,
    o: &Out,
) {
    let nb = n_in / QK;
    match fmt {
        WeightFormat::Q8_0 => dispatch_nt!(q8_0_512, w, nb, x, t0, nt, o),
        WeightFormat::Q4_0 => dispatch_nt!(q4_0_512; false, w, nb, x, t0, nt, o),
        WeightFormat::Q4_1 => dispatch_nt!(q4_1_512; false, w, nb, x, t0, nt, o),
        WeightFormat::Q5_0 => dispatch_nt!(q4_0_512; true, w, nb, x, t0, nt, o),
        WeightFormat::Q5_1 => dispatch_nt!(q4_1_512; true, w, nb, x, t0, nt, o),
        WeightFormat::Q4K => dispatch_nt!(k4_512; false, w, nb, x, t0, nt, o),
        WeightFormat::Q5K => dispatch_nt!(k4_512; true, w, nb, x, t0, nt, o),
        WeightFormat::Q6K => dispatch_nt!(q6k_512, w, nb, x, t0, nt, o),
        WeightFormat::Q3K => dispatch_nt!(q23k_512; true, w, nb, x, t0, nt, o),
        WeightFormat::Q2K => dispatch_nt!(q23k_512; false, w, nb, x, t0, nt, o),
        WeightFormat::IQ4NL => dispatch_nt!(iq4_512; false, w, nb, x, t0, nt, o),
        WeightFormat::IQ4XS => dispatch_nt!(iq4_512; true, w, nb, x, t0, nt, o),
    }
}

/// AVX2: as [`rows_avx512`].
///
/// # Safety
/// As [`rows_avx512`], for the `Avx2` path.
pub(super) unsafe fn rows_avx2(
    fmt: WeightFormat,
    w: *const u8,
    n_in: usize,
    x: &QuantizedActs,
    t0: usize,
    nt: usize,
    o: &Out,
) {
    let nb = n_in / QK;
    match fmt {
        WeightFormat::Q8_0 => dispatch_nt!(q8_0_256, w, nb, x, t0, nt, o),
        WeightFormat::Q4_0 => dispatch_nt!(q4_0_256; false, w, nb, x, t0, nt, o),
        WeightFormat::Q4_1 => dispatch_nt!(q4_1_256; false, w, nb, x, t0, nt, o),
        WeightFormat::Q5_0 => dispatch_nt!(q4_0_256; true, w, nb, x, t0, nt, o),
        WeightFormat::Q5_1 => dispatch_nt!(q4_1_256; true, w, nb, x, t0, nt, o),
        WeightFormat::Q4K => dispatch_nt!(k4_256; false, w, nb, x, t0, nt, o),
        WeightFormat::Q5K => dispatch_nt!(k4_256; true, w, nb, x, t0, nt, o),
        WeightFormat::Q6K => dispatch_nt!(q6k_256, w, nb, x, t0, nt, o),
        WeightFormat::Q3K => dispatch_nt!(q23k_256; true, w, nb, x, t0, nt, o),
        WeightFormat::Q2K => dispatch_nt!(q23k_256; false, w, nb, x, t0, nt, o),
        WeightFormat::IQ4NL => dispatch_nt!(iq4_256; false, w, nb, x, t0, nt, o),
        WeightFormat::IQ4XS => dispatch_nt!(iq4_256; true, w, nb, x, t0, nt, o),
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512
// ---------------------------------------------------------------------------------------------

/// The canonical reduction tree on `h8 = acc[0..8] + acc[8..16]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tree8(h8: __m256) -> f32 {
    let h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps::<1>(h8));
    let h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps::<1>(h2, h2)))
}

#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn tree16(acc: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(acc);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    tree8(_mm256_add_ps(lo, hi))
}

/// How far ahead of the group being multiplied the weights are prefetched (bytes; 0 = off).
/// The hardware prefetcher alone leaves the loads exposed (compute and memory time add up
/// instead of overlapping) on Intel cores; see docs/KERNELS.md. `usize::MAX`: not set, use
/// [`super::Tuning`]'s. Read once per kernel call.
pub(super) static PREFETCH_AHEAD: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A kernel call's software prefetch: distance in bytes (0: off) and target cache.
#[derive(Clone, Copy)]
struct Pf {
    ahead: usize,
    /// `prefetcht1` (into L2) rather than `prefetcht0` (into L1).
    l2: bool,
}

/// The prefetch of a rows-layout kernel call.
#[inline(always)]
fn prefetch_ahead() -> Pf {
    let ahead = match PREFETCH_AHEAD.load(Ordering::Relaxed) {
        usize::MAX => super::Tuning::get().prefetch_rows,
        b => b,
    };
    Pf { ahead, l2: false }
}

/// The prefetch of a tiled kernel call with `nt` activation rows (`k`: a K-quant).
#[inline(always)]
fn prefetch_ahead_tiles(nt: usize, k: bool) -> Pf {
    let t = super::Tuning::get();
    let ahead = match PREFETCH_AHEAD.load(Ordering::Relaxed) {
        usize::MAX if nt > 1 => t.prefetch_tiles_batch,
        usize::MAX if k => t.prefetch_ktiles,
        usize::MAX => t.prefetch_tiles,
        b => b,
    };
    Pf {
        ahead,
        l2: t.prefetch_l2,
    }
}

/// Prefetches the `len` bytes `pf.ahead` bytes after `p` (one hint per cache line).
#[inline(always)]
unsafe fn prefetch(p: *const u8, pf: Pf, len: usize) {
    if pf.ahead == 0 {
        return;
    }
    let start = p.wrapping_add(pf.ahead);
    let mut off = 0;
    while off < len {
        let a = start.wrapping_add(off) as *const i8;
        if pf.l2 {
            _mm_prefetch::<_MM_HINT_T1>(a);
        } else {
            _mm_prefetch::<_MM_HINT_T0>(a);
        }
        off += 64;
    }
}

#[inline(always)]
fn mask16(g: usize) -> __mmask16 {
    ((1u32 << g) - 1) as __mmask16
}

/// The 8 activation granules of group `b0` (with `g` blocks) of row `t`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn xgran(q: *const i8, b0: usize, g: usize, k: usize, m: __mmask16) -> __m512i {
    _mm512_maskz_loadu_epi32(m, q.add(b0 * QK + k * 4 * g) as *const i32)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn f16x16(p: *const u8, m: __mmask16) -> __m512 {
    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16))
}

/// Whether a short group of `g` blocks takes the compact path ([`fold_lanes`]).
#[inline(always)]
fn compact(g: usize) -> bool {
    g < GROUP && matches!(g, 2 | 4 | 8)
}

/// For a short group of `g` blocks (`g` in 2, 4, 8) the interleaved quants are contiguous:
/// 4-byte lane `L` of the group's bytes belongs to block `L % g`. Full-width `vpdpbusd` over
/// them leaves per-lane partial sums; this adds lanes `j, j+g, j+2g, ...` into lane `j` (exact
/// integer sums) and zeroes lanes `g..16`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn fold_lanes(v: __m512i, g: usize) -> __m512i {
    let a = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    if g == 8 {
        return _mm512_zextsi256_si512(a);
    }
    let b = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
    if g == 4 {
        return _mm512_zextsi128_si512(b);
    }
    // g == 2: lanes 0, 1 = b0 + b2, b1 + b3.
    let c = _mm_add_epi32(b, _mm_unpackhi_epi64(b, b));
    _mm512_zextsi128_si512(_mm_move_epi64(c))
}

/// [`nibble_dots512`] for a short group of `g` (2, 4, 8) blocks: the low nibbles of the
/// group's `16 g` nibble bytes pair with activation bytes `0..16 g`, the high nibbles with
/// `16 g..32 g`, so `g / 2` full-width `vpdpbusd` per row cover the group.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn nibble_dots_compact<const NT: usize>(
    qp: *const u8,
    x: &Xp<NT>,
    b0: usize,
    g: usize,
) -> [__m512i; NT] {
    let m0f = _mm512_set1_epi8(0x0f);
    let mut w = [_mm512_setzero_si512(); 4];
    let nc = match g {
        2 => {
            let n = _mm256_loadu_si256(qp as *const __m256i);
            let m = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(n, m);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(n), m);
            w[0] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            1
        }
        4 => {
            let n = _mm512_loadu_si512(qp as *const _);
            w[0] = _mm512_and_si512(n, m0f);
            w[1] = _mm512_and_si512(_mm512_srli_epi16::<4>(n), m0f);
            2
        }
        _ => {
            let n0 = _mm512_loadu_si512(qp as *const _);
            let n1 = _mm512_loadu_si512(qp.add(64) as *const _);
            w[0] = _mm512_and_si512(n0, m0f);
            w[1] = _mm512_and_si512(n1, m0f);
            w[2] = _mm512_and_si512(_mm512_srli_epi16::<4>(n0), m0f);
            w[3] = _mm512_and_si512(_mm512_srli_epi16::<4>(n1), m0f);
            4
        }
    };
    let mut out = [_mm512_setzero_si512(); NT];
    for t in 0..NT {
        let xq = x.q[t].add(b0 * QK);
        let mut acc = _mm512_setzero_si512();
        for c in 0..nc {
            acc = _mm512_dpbusd_epi32(acc, w[c], _mm512_loadu_si512(xq.add(64 * c) as *const _));
        }
        out[t] = fold_lanes(acc, g);
    }
    out
}

/// Q8_0 raw `sum((w + 128) * x)` per block for a short group of `g` (2, 4, 8) blocks: weight
/// and activation quants have the same interleaved layout, `g / 2` full-width `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn q8_dots_compact<const NT: usize>(
    qp: *const u8,
    x: &Xp<NT>,
    b0: usize,
    g: usize,
) -> [__m512i; NT] {
    let x80 = _mm512_set1_epi8(0x80u8 as i8);
    let nc = g / 2;
    let mut w = [_mm512_setzero_si512(); 4];
    for c in 0..nc {
        w[c] = _mm512_xor_si512(_mm512_loadu_si512(qp.add(64 * c) as *const _), x80);
    }
    let mut out = [_mm512_setzero_si512(); NT];
    for t in 0..NT {
        let xq = x.q[t].add(b0 * QK);
        let mut acc = _mm512_setzero_si512();
        for c in 0..nc {
            acc = _mm512_dpbusd_epi32(acc, w[c], _mm512_loadu_si512(xq.add(64 * c) as *const _));
        }
        out[t] = fold_lanes(acc, g);
    }
    out
}

macro_rules! finish512 {
    ($acc:ident, $o:ident, $r:ident, $nt:ident) => {
        for t in 0..$nt {
            *$o.ptr.add(t * $o.stride + $r) = tree16($acc[t]);
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn q8_0_512<const NT: usize>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let x80 = _mm512_set1_epi8(0x80u8 as i8);
        let mut acc = [_mm512_setzero_ps(); NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, 34 * g);
            let m = mask16(g);
            let dw = f16x16(wp, m);
            let qp = wp.add(2 * g);
            let isum: [__m512i; NT] = if compact(g) {
                q8_dots_compact(qp, x, b0, g)
            } else {
                let mut isum = [[_mm512_setzero_si512(); NT]; 2];
                for k in 0..8 {
                    let wq = _mm512_xor_si512(
                        _mm512_maskz_loadu_epi32(m, qp.add(k * 4 * g) as *const i32),
                        x80,
                    );
                    for t in 0..NT {
                        isum[k % 2][t] =
                            _mm512_dpbusd_epi32(isum[k % 2][t], wq, xgran(x.q[t], b0, g, k, m));
                    }
                }
                let mut r = [_mm512_setzero_si512(); NT];
                for t in 0..NT {
                    r[t] = _mm512_add_epi32(isum[0][t], isum[1][t]);
                }
                r
            };
            for t in 0..NT {
                let xs = _mm512_maskz_loadu_epi32(m, x.s[t].add(b0));
                let is = _mm512_sub_epi32(isum[t], _mm512_slli_epi32::<7>(xs));
                let dx = _mm512_maskz_loadu_ps(m, x.d[t].add(b0));
                let v = _mm512_mul_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(is));
                acc[t] = _mm512_add_ps(acc[t], v);
            }
            wp = wp.add(34 * g);
            b0 += g;
        }
        finish512!(acc, o, r, NT);
    }
}

/// The Q5_K fifth bits of nibble granule `p` from the high-bit granule `h` (see `pack.rs`),
/// at bit 4 of each byte: (elements `4p + e`, elements `16 + 4p + e`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q5_high512(h: __m512i, p: usize) -> (__m512i, __m512i) {
    let m10 = _mm512_set1_epi8(0x10);
    let (lo, hi) = match p {
        0 => (_mm512_slli_epi16::<4>(h), h),
        1 => (_mm512_slli_epi16::<3>(h), _mm512_srli_epi16::<1>(h)),
        2 => (_mm512_slli_epi16::<2>(h), _mm512_srli_epi16::<2>(h)),
        _ => (_mm512_slli_epi16::<1>(h), _mm512_srli_epi16::<3>(h)),
    };
    (_mm512_and_si512(lo, m10), _mm512_and_si512(hi, m10))
}

/// Integer dots of 4 nibble granules at `qp` (Q4_0 order) with the activations: raw
/// `sum(q * x)` per lane, `q` in 0..16; with `Q5`, the high-bit granule after them adds the
/// fifth bits (`q` in 0..32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn nibble_dots512<const NT: usize, const Q5: bool>(
    qp: *const u8,
    x: &Xp<NT>,
    b0: usize,
    g: usize,
    m: __mmask16,
) -> [__m512i; NT] {
    let m0f = _mm512_set1_epi8(0x0f);
    let h = if Q5 {
        _mm512_maskz_loadu_epi32(m, qp.add(16 * g) as *const i32)
    } else {
        _mm512_setzero_si512()
    };
    // Two chains per row (low and high nibbles) halve the vpdpbusd latency chain.
    let mut s0 = [_mm512_setzero_si512(); NT];
    let mut s1 = [_mm512_setzero_si512(); NT];
    for p in 0..4 {
        let v = _mm512_maskz_loadu_epi32(m, qp.add(p * 4 * g) as *const i32);
        let mut lo = _mm512_and_si512(v, m0f);
        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f);
        if Q5 {
            let (hl, hh) = q5_high512(h, p);
            lo = _mm512_or_si512(lo, hl);
            hi = _mm512_or_si512(hi, hh);
        }
        for t in 0..NT {
            s0[t] = _mm512_dpbusd_epi32(s0[t], lo, xgran(x.q[t], b0, g, p, m));
            s1[t] = _mm512_dpbusd_epi32(s1[t], hi, xgran(x.q[t], b0, g, p + 4, m));
        }
    }
    for t in 0..NT {
        s0[t] = _mm512_add_epi32(s0[t], s1[t]);
    }
    s0
}

/// Q4_0, or Q5_0 with `Q5` (22 bytes per block, quants offset by 16 instead of 8).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn q4_0_512<const NT: usize, const Q5: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let bb = if Q5 { 22 } else { 18 };
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [_mm512_setzero_ps(); NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, bb * g);
            let m = mask16(g);
            let dw = f16x16(wp, m);
            let isum = if !Q5 && compact(g) {
                nibble_dots_compact(wp.add(2 * g), x, b0, g)
            } else {
                nibble_dots512::<NT, Q5>(wp.add(2 * g), x, b0, g, m)
            };
            for t in 0..NT {
                let xs = _mm512_maskz_loadu_epi32(m, x.s[t].add(b0));
                let off = if Q5 {
                    _mm512_slli_epi32::<4>(xs)
                } else {
                    _mm512_slli_epi32::<3>(xs)
                };
                let is = _mm512_sub_epi32(isum[t], off);
                let dx = _mm512_maskz_loadu_ps(m, x.d[t].add(b0));
                let v = _mm512_mul_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(is));
                acc[t] = _mm512_add_ps(acc[t], v);
            }
            wp = wp.add(bb * g);
            b0 += g;
        }
        finish512!(acc, o, r, NT);
    }
}

/// Q4_1, or Q5_1 with `Q5` (24 bytes per block).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn q4_1_512<const NT: usize, const Q5: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let bb = if Q5 { 24 } else { 20 };
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [_mm512_setzero_ps(); NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, bb * g);
            let m = mask16(g);
            let dw = f16x16(wp, m);
            let mw = f16x16(wp.add(2 * g), m);
            let isum = if !Q5 && compact(g) {
                nibble_dots_compact(wp.add(4 * g), x, b0, g)
            } else {
                nibble_dots512::<NT, Q5>(wp.add(4 * g), x, b0, g, m)
            };
            for t in 0..NT {
                let xs = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, x.s[t].add(b0)));
                let dx = _mm512_maskz_loadu_ps(m, x.d[t].add(b0));
                let v = _mm512_add_ps(
                    _mm512_mul_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[t])),
                    _mm512_mul_ps(_mm512_mul_ps(mw, dx), xs),
                );
                acc[t] = _mm512_add_ps(acc[t], v);
            }
            wp = wp.add(bb * g);
            b0 += g;
        }
        finish512!(acc, o, r, NT);
    }
}

/// Four f16 (the bits of a `u64`, low first) widened to f32 in lanes 0..4 (F16C: exact, as
/// `f16_at`).
#[inline(always)]
unsafe fn f16x4(bits: u64) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

/// Lanes 0..8 from lane `i` of `v`, lanes 8..16 from lane `j` (one permute, no scalar
/// conversion: the per-super-block scales of a group).
#[inline(always)]
unsafe fn spread2(v: __m128, i: i32, j: i32) -> __m512 {
    let idx = _mm512_set_epi32(j, j, j, j, j, j, j, j, i, i, i, i, i, i, i, i);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// The f16 `d` of each of a group's `s` (1 or 2) super-blocks at `p`, spread over lanes 0..8 and
/// 8..16 (`0.0` for a missing second one).
#[inline(always)]
unsafe fn f16_per_superblock(p: *const u8, s: usize) -> __m512 {
    let bits = if s == 2 {
        std::ptr::read_unaligned(p as *const u32) as u64
    } else {
        std::ptr::read_unaligned(p as *const u16) as u64
    };
    spread2(f16x4(bits), 0, 1)
}

/// Q4_K scales and mins of one super-block (its 12 packed bytes at `p`), as two `u64` of 8
/// 6-bit values ([`k4_scales_mins`] without slices).
#[inline(always)]
unsafe fn k4_scales_mins_u64(p: *const u8) -> (u64, u64) {
    let u = |i: usize| u32::from_le(std::ptr::read_unaligned(p.add(i) as *const u32));
    k4_unpack(u(0), u(4), u(8))
}

/// Q4_K per-lane `(d * sc, dmin * m)` for a group of `s` (1 or 2) super-blocks. Everything in
/// vector registers: this ran as a separate, scalar-heavy function that took ~30% of q4_k_m
/// decode on Zen 4 (V19).
#[inline(always)]
unsafe fn q4k_params512(wp: *const u8, s: usize) -> (__m512, __m512) {
    // Header: d[s], dmin[s] (f16), then s x 12 packed scale bytes.
    let (dd, (sc0, m0), (sc1, m1)) = if s == 2 {
        (
            f16x4(std::ptr::read_unaligned(wp as *const u64)),
            k4_scales_mins_u64(wp.add(8)),
            k4_scales_mins_u64(wp.add(20)),
        )
    } else {
        let d = std::ptr::read_unaligned(wp as *const u16) as u64;
        let dm = std::ptr::read_unaligned(wp.add(2) as *const u16) as u64;
        (f16x4(d | dm << 32), k4_scales_mins_u64(wp.add(4)), (0, 0))
    };
    // Lanes of `dd`: d0, d1, dmin0, dmin1 (d1 = dmin1 = 0 for one super-block).
    // A nested fn, not a closure: a closure would not inherit the caller's target features.
    #[inline(always)]
    unsafe fn v(a: u64, b: u64) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi64x(b as i64, a as i64)))
    }
    (
        _mm512_mul_ps(spread2(dd, 0, 1), v(sc0, sc1)),
        _mm512_mul_ps(spread2(dd, 2, 3), v(m0, m1)),
    )
}

/// Q4_K, or Q5_K with `Q5` (the same header and float update; 176 bytes per super-block).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn k4_512<const NT: usize, const Q5: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let sb_bytes = if Q5 { 176 } else { 144 };
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [_mm512_setzero_ps(); NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, sb_bytes * (g / 8));
            let s = g / 8;
            let m = mask16(g);
            let (a, bm) = q4k_params512(wp, s);
            let isum = nibble_dots512::<NT, Q5>(wp.add(16 * s), x, b0, g, m);
            for t in 0..NT {
                let xs = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, x.s[t].add(b0)));
                let dx = _mm512_maskz_loadu_ps(m, x.d[t].add(b0));
                let v = _mm512_sub_ps(
                    _mm512_mul_ps(_mm512_mul_ps(a, dx), _mm512_cvtepi32_ps(isum[t])),
                    _mm512_mul_ps(_mm512_mul_ps(bm, dx), xs),
                );
                acc[t] = _mm512_add_ps(acc[t], v);
            }
            wp = wp.add(sb_bytes * s);
            b0 += g;
        }
        finish512!(acc, o, r, NT);
    }
}

/// `((h >> 2s) & 3) << 4` per byte, as `(shifted h) & 0x30`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q6_high512(h: __m512i, s: usize) -> __m512i {
    let m30 = _mm512_set1_epi8(0x30);
    let v = match s {
        0 => _mm512_slli_epi16::<4>(h),
        1 => _mm512_slli_epi16::<2>(h),
        2 => h,
        _ => _mm512_srli_epi16::<2>(h),
    };
    _mm512_and_si512(v, m30)
}

/// The 6-bit Q6_K quants of a block's 8 granules from its 4 low-nibble granules `n` and its 2
/// high-bit granules `h0` (elements 0..16) and `h1` (16..32): granule `p` pairs with
/// activation granule `p` (rows and tiles alike).
#[inline(always)]
unsafe fn q6_quants512(n: [__m512i; 4], h0: __m512i, h1: __m512i) -> [__m512i; 8] {
    let m0f = _mm512_set1_epi8(0x0f);
    let mut q = [_mm512_setzero_si512(); 8];
    for p in 0..4 {
        q[p] = _mm512_or_si512(_mm512_and_si512(n[p], m0f), q6_high512(h0, p));
        q[p + 4] = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(n[p]), m0f),
            q6_high512(h1, p),
        );
    }
    q
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn q6k_512<const NT: usize>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [_mm512_setzero_ps(); NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, 210 * (g / 8));
            let s = g / 8;
            let m = mask16(g);
            let dv = f16_per_superblock(wp, s);
            let sc_lo = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, wp.add(2 * s) as *const i8));
            let sc_hi =
                _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, wp.add(2 * s + g) as *const i8));
            let ql = wp.add(2 * s + 2 * g);
            let qh = ql.add(16 * g);
            let h0 = _mm512_maskz_loadu_epi32(m, qh as *const i32);
            let h1 = _mm512_maskz_loadu_epi32(m, qh.add(4 * g) as *const i32);
            // A loop, not `array::from_fn`: a closure would not inherit the target features.
            let mut n = [_mm512_setzero_si512(); 4];
            for p in 0..4 {
                n[p] = _mm512_maskz_loadu_epi32(m, ql.add(p * 4 * g) as *const i32);
            }
            let q = q6_quants512(n, h0, h1);
            for t in 0..NT {
                let mut lo = _mm512_setzero_si512();
                let mut hi = _mm512_setzero_si512();
                for k in 0..4 {
                    lo = _mm512_dpbusd_epi32(lo, q[k], xgran(x.q[t], b0, g, k, m));
                    hi = _mm512_dpbusd_epi32(hi, q[k + 4], xgran(x.q[t], b0, g, k + 4, m));
                }
                let xlo = _mm512_maskz_loadu_epi32(m, x.lo[t].add(b0));
                let xhi = _mm512_maskz_loadu_epi32(m, x.hi[t].add(b0));
                lo = _mm512_sub_epi32(lo, _mm512_slli_epi32::<5>(xlo));
                hi = _mm512_sub_epi32(hi, _mm512_slli_epi32::<5>(xhi));
                let is =
                    _mm512_add_epi32(_mm512_mullo_epi32(sc_lo, lo), _mm512_mullo_epi32(sc_hi, hi));
                let dx = _mm512_maskz_loadu_ps(m, x.d[t].add(b0));
                let v = _mm512_mul_ps(_mm512_mul_ps(dv, dx), _mm512_cvtepi32_ps(is));
                acc[t] = _mm512_add_ps(acc[t], v);
            }
            wp = wp.add(210 * s);
            b0 += g;
        }
        finish512!(acc, o, r, NT);
    }
}

/// Bits `2m..2m+2` of each byte of `c` at bits 0..2: the quants of activation granule
/// `4c + m` in crumb granule `c` (Q3_K, Q2_K).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn crumb512(c: __m512i, m: usize) -> __m512i {
    let v = match m {
        0 => c,
        1 => _mm512_srli_epi16::<2>(c),
        2 => _mm512_srli_epi16::<4>(c),
        _ => _mm512_srli_epi16::<6>(c),
    };
    _mm512_and_si512(v, _mm512_set1_epi8(3))
}

/// Bit `k` of each byte of Q3_K's high-bit granule `h`, moved to bit 2.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q3_high512(h: __m512i, k: usize) -> __m512i {
    let v = match k {
        0 => _mm512_slli_epi16::<2>(h),
        1 => _mm512_slli_epi16::<1>(h),
        2 => h,
        3 => _mm512_srli_epi16::<1>(h),
        4 => _mm512_srli_epi16::<2>(h),
        5 => _mm512_srli_epi16::<3>(h),
        6 => _mm512_srli_epi16::<4>(h),
        _ => _mm512_srli_epi16::<5>(h),
    };
    _mm512_and_si512(v, _mm512_set1_epi8(4))
}

/// The unsigned quants of a block's 8 granules (granule `k` pairs with activation granule
/// `k`): Q3_K (`Q3`) `q + 4` in 0..8 from the two crumb granules `c` and the high-bit granule
/// `h`; Q2_K 0..4 from the crumbs alone.
#[inline(always)]
unsafe fn q23_quants512<const Q3: bool>(c: [__m512i; 2], h: __m512i) -> [__m512i; 8] {
    let mut q = [_mm512_setzero_si512(); 8];
    for k in 0..8 {
        q[k] = crumb512(c[k / 4], k % 4);
        if Q3 {
            q[k] = _mm512_or_si512(q[k], q3_high512(h, k));
        }
    }
    q
}

/// Per-lane Q3_K scales (`sc - 32`: elements 0..16, 16..32 of each block) of a group of `s`
/// super-blocks whose packed scale bytes (12 each) start at `p`.
#[inline(always)]
unsafe fn q3k_lane_scales(p: *const u8, s: usize) -> ([i32; GROUP], [i32; GROUP]) {
    let (mut lo, mut hi) = ([0i32; GROUP], [0i32; GROUP]);
    for sb in 0..s {
        let sc = crate::quant::q3_k::unpack_scales(std::slice::from_raw_parts(p.add(12 * sb), 12));
        for j in 0..8 {
            lo[8 * sb + j] = i32::from(sc[2 * j]);
            hi[8 * sb + j] = i32::from(sc[2 * j + 1]);
        }
    }
    (lo, hi)
}

/// Q3_K (`Q3`, 110 bytes per super-block) or Q2_K (84) rows: per block
/// `(d dx) (sc_lo dp_lo + sc_hi dp_hi)`, Q3_K with `dp - 4 xsum` per half, Q2_K minus
/// `(dmin dx) (m_lo xsum_lo + m_hi xsum_hi)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn q23k_512<const NT: usize, const Q3: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let sb_bytes = if Q3 { 110 } else { 84 };
    let m0f = _mm512_set1_epi32(0x0f);
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [_mm512_setzero_ps(); NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, sb_bytes * (g / 8));
            let s = g / 8;
            let m = mask16(g);
            let dv = f16_per_superblock(wp, s);
            let (sc_lo, sc_hi, mn_lo, mn_hi, dm, cr);
            if Q3 {
                let (lo, hi) = q3k_lane_scales(wp.add(2 * s), s);
                sc_lo = _mm512_loadu_si512(lo.as_ptr() as *const _);
                sc_hi = _mm512_loadu_si512(hi.as_ptr() as *const _);
                (mn_lo, mn_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                dm = _mm512_setzero_ps();
                cr = wp.add(quant_base(WeightFormat::Q3K, g));
            } else {
                let lo = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, wp.add(4 * s) as *const i8));
                let hi =
                    _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, wp.add(4 * s + g) as *const i8));
                sc_lo = _mm512_and_si512(lo, m0f);
                sc_hi = _mm512_and_si512(hi, m0f);
                mn_lo = _mm512_srli_epi32::<4>(lo);
                mn_hi = _mm512_srli_epi32::<4>(hi);
                dm = f16_per_superblock(wp.add(2 * s), s);
                cr = wp.add(quant_base(WeightFormat::Q2K, g));
            }
            let c = [
                _mm512_maskz_loadu_epi32(m, cr as *const i32),
                _mm512_maskz_loadu_epi32(m, cr.add(4 * g) as *const i32),
            ];
            let h = if Q3 {
                _mm512_maskz_loadu_epi32(m, cr.add(8 * g) as *const i32)
            } else {
                _mm512_setzero_si512()
            };
            let q = q23_quants512::<Q3>(c, h);
            for t in 0..NT {
                let mut lo = _mm512_setzero_si512();
                let mut hi = _mm512_setzero_si512();
                for k in 0..4 {
                    lo = _mm512_dpbusd_epi32(lo, q[k], xgran(x.q[t], b0, g, k, m));
                    hi = _mm512_dpbusd_epi32(hi, q[k + 4], xgran(x.q[t], b0, g, k + 4, m));
                }
                let xlo = _mm512_maskz_loadu_epi32(m, x.lo[t].add(b0));
                let xhi = _mm512_maskz_loadu_epi32(m, x.hi[t].add(b0));
                if Q3 {
                    lo = _mm512_sub_epi32(lo, _mm512_slli_epi32::<2>(xlo));
                    hi = _mm512_sub_epi32(hi, _mm512_slli_epi32::<2>(xhi));
                }
                let is =
                    _mm512_add_epi32(_mm512_mullo_epi32(sc_lo, lo), _mm512_mullo_epi32(sc_hi, hi));
                let dx = _mm512_maskz_loadu_ps(m, x.d[t].add(b0));
                let mut v = _mm512_mul_ps(_mm512_mul_ps(dv, dx), _mm512_cvtepi32_ps(is));
                if !Q3 {
                    let ms = _mm512_add_epi32(
                        _mm512_mullo_epi32(mn_lo, xlo),
                        _mm512_mullo_epi32(mn_hi, xhi),
                    );
                    v = _mm512_sub_ps(
                        v,
                        _mm512_mul_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(ms)),
                    );
                }
                acc[t] = _mm512_add_ps(acc[t], v);
            }
            wp = wp.add(sb_bytes * s);
            b0 += g;
        }
        finish512!(acc, o, r, NT);
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512, row tiles (`Layout::Tiles16`): lane `r` of every vector is output row `r` of the
// tile. The canonical lane accumulators `acc[b % 16]` of each row become 16 registers, and
// the reduction tree runs across registers, for 16 rows at once.
// ---------------------------------------------------------------------------------------------

/// Activation granule `k` (4 bytes of block `b`) of row `t`, broadcast to 16 lanes.
#[inline(always)]
unsafe fn xbcast(q: *const i8, nb: usize, b: usize, k: usize) -> __m512i {
    let g0 = b / GROUP * GROUP;
    let g = (nb - g0).min(GROUP);
    _mm512_set1_epi32(std::ptr::read_unaligned(
        q.add(g0 * QK + k * 4 * g + 4 * (b - g0)) as *const i32,
    ))
}

/// The canonical tree over 16 lane accumulators, lane-wise: 16 outputs.
#[inline(always)]
unsafe fn tree_tile(acc: &[__m512; GROUP]) -> __m512 {
    // Loops, not `array::from_fn`: a closure does not inherit the caller's target features,
    // so the intrinsics inside it would not inline.
    let mut h8 = [_mm512_setzero_ps(); 8];
    for i in 0..8 {
        h8[i] = _mm512_add_ps(acc[i], acc[i + 8]);
    }
    let mut h4 = [_mm512_setzero_ps(); 4];
    for i in 0..4 {
        h4[i] = _mm512_add_ps(h8[i], h8[i + 4]);
    }
    _mm512_add_ps(_mm512_add_ps(h4[0], h4[2]), _mm512_add_ps(h4[1], h4[3]))
}

/// Runs `$body` for `$j` = 0..16 with a literal lane index, while `$j < $g` (so `acc[$j]`
/// indexes registers, not memory).
macro_rules! lanes16 {
    ($j:ident < $g:expr, $body:block) => {
        lanes16!(@ $j, $g, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $j:ident, $g:expr, $body:block, $($n:literal)*) => {
        $( if $n < $g { let $j: usize = $n; $body } )*
    };
}

mod tiles256;
pub(super) use tiles256::tiles_avx2;

/// `MT` tiles (16 rows each) of a tiled block-32 format against `NT` activation rows.
/// `$rec`: record bytes; `$prep(rec)` loads a record's scales and weight granules once;
/// `$dots(prep, x_q, nb, b)` is the raw integer dot with one activation row; `$update` turns it
/// into the block's canonical float value.
macro_rules! tile512 {
    ($name:ident, $rec:expr, $prep:ident, $dots:ident, $update:path) => {
        /// `MT` tiles (16 rows each) in block lockstep against `NT` activation rows: `MT`
        /// concurrent weight streams, which the hardware prefetchers serve faster than one
        /// (V15). `out[m]` is output row 0 of tile `m` for activation row 0, activation rows
        /// `stride` apart.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
        unsafe fn $name<const NT: usize, const MT: usize>(
            w: [*const u8; MT],
            nb: usize,
            x: &Xp<NT>,
            out: [*mut f32; MT],
            stride: usize,
        ) {
            let pf = prefetch_ahead_tiles(NT, false);
            let mut acc = [[[_mm512_setzero_ps(); GROUP]; NT]; MT];
            let mut b0 = 0;
            while b0 < nb {
                let g = (nb - b0).min(GROUP);
                lanes16!(j < g, {
                    let b = b0 + j;
                    for m in 0..MT {
                        let rec = w[m].add(b * $rec);
                        prefetch(rec, pf, $rec);
                        let wv = $prep(rec);
                        for t in 0..NT {
                            let isum = $dots(&wv, x.q[t], nb, b);
                            let v = $update(&wv, isum, *x.d[t].add(b), *x.s[t].add(b));
                            acc[m][t][j] = _mm512_add_ps(acc[m][t][j], v);
                        }
                    }
                });
                b0 += g;
            }
            for m in 0..MT {
                for t in 0..NT {
                    _mm512_storeu_ps(out[m].add(t * stride), tree_tile(&acc[m][t]));
                }
            }
        }
    };
}

/// Q8_0 record: scales and the 8 weight granules (`q + 128`).
struct Q8Tile {
    d: __m512,
    q: [__m512i; 8],
}

#[inline(always)]
unsafe fn q8_tile_prep(rec: *const u8) -> Q8Tile {
    let mut q = [_mm512_setzero_si512(); 8];
    for k in 0..8 {
        q[k] = _mm512_loadu_si512(rec.add(32 + 64 * k) as *const _);
    }
    Q8Tile {
        d: _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)),
        q,
    }
}

#[inline(always)]
unsafe fn q8_tile_dots(w: &Q8Tile, q: *const i8, nb: usize, b: usize) -> __m512i {
    let mut s0 = _mm512_setzero_si512();
    let mut s1 = _mm512_setzero_si512();
    for k in 0..4 {
        s0 = _mm512_dpbusd_epi32(s0, w.q[k], xbcast(q, nb, b, k));
        s1 = _mm512_dpbusd_epi32(s1, w.q[k + 4], xbcast(q, nb, b, k + 4));
    }
    _mm512_add_epi32(s0, s1)
}

/// `(d * dx) * isum`, `isum = sum((q + 128) x) - 128 xsum`.
#[inline(always)]
unsafe fn q8_tile_update(w: &Q8Tile, dp: __m512i, dx: f32, xsum: i32) -> __m512 {
    let is = _mm512_sub_epi32(dp, _mm512_set1_epi32(xsum << 7));
    _mm512_mul_ps(
        _mm512_mul_ps(w.d, _mm512_set1_ps(dx)),
        _mm512_cvtepi32_ps(is),
    )
}

/// Q4_0 / Q4_1 record: scales (and mins) and the nibbles split into low and high halves.
struct Q4Tile {
    d: __m512,
    m: __m512,
    lo: [__m512i; 4],
    hi: [__m512i; 4],
}

#[inline(always)]
unsafe fn q4_tile_nibbles(p: *const u8) -> ([__m512i; 4], [__m512i; 4]) {
    let m0f = _mm512_set1_epi8(0x0f);
    let (mut lo, mut hi) = ([m0f; 4], [m0f; 4]);
    for k in 0..4 {
        let v = _mm512_loadu_si512(p.add(64 * k) as *const _);
        lo[k] = _mm512_and_si512(v, m0f);
        hi[k] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f);
    }
    (lo, hi)
}

#[inline(always)]
unsafe fn q4_0_tile_prep(rec: *const u8) -> Q4Tile {
    let (lo, hi) = q4_tile_nibbles(rec.add(32));
    Q4Tile {
        d: _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)),
        m: _mm512_setzero_ps(),
        lo,
        hi,
    }
}

#[inline(always)]
unsafe fn q4_1_tile_prep(rec: *const u8) -> Q4Tile {
    let (lo, hi) = q4_tile_nibbles(rec.add(64));
    Q4Tile {
        d: _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)),
        m: _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(32) as *const __m256i)),
        lo,
        hi,
    }
}

/// ORs the fifth bits of a 5-bit record (high-bit granule `h`, lane = row) into its nibbles.
#[inline(always)]
unsafe fn q5_merge512(lo: &mut [__m512i; 4], hi: &mut [__m512i; 4], h: __m512i) {
    for p in 0..4 {
        let (hl, hh) = q5_high512(h, p);
        lo[p] = _mm512_or_si512(lo[p], hl);
        hi[p] = _mm512_or_si512(hi[p], hh);
    }
}

/// A Q5_0 / Q5_1 record: the Q4_0 / Q4_1 record `w` with the high-bit granule that follows
/// it (at `rec + q4_rec`, `q4_rec` = the 4-bit record's size) merged in.
#[inline(always)]
unsafe fn q5_tile(mut w: Q4Tile, rec: *const u8, q4_rec: usize) -> Q4Tile {
    let h = _mm512_loadu_si512(rec.add(q4_rec) as *const _);
    q5_merge512(&mut w.lo, &mut w.hi, h);
    w
}

#[inline(always)]
unsafe fn q5_0_tile_prep(rec: *const u8) -> Q4Tile {
    q5_tile(q4_0_tile_prep(rec), rec, 288)
}

#[inline(always)]
unsafe fn q5_1_tile_prep(rec: *const u8) -> Q4Tile {
    q5_tile(q4_1_tile_prep(rec), rec, 320)
}

/// Raw `sum(q * x)`, `q` in 0..16 (0..32 for the 5-bit formats): low nibbles pair with
/// elements 0..16, high with 16..32.
#[inline(always)]
unsafe fn q4_tile_dots(w: &Q4Tile, q: *const i8, nb: usize, b: usize) -> __m512i {
    nibble_tile_dots(&w.lo, &w.hi, q, nb, b)
}

/// Raw `sum(q * x)` of a tile's block from its low (elements 0..16) and high (16..32) nibble
/// granules, lane = row.
#[inline(always)]
unsafe fn nibble_tile_dots(
    lo: &[__m512i; 4],
    hi: &[__m512i; 4],
    q: *const i8,
    nb: usize,
    b: usize,
) -> __m512i {
    let mut s0 = _mm512_setzero_si512();
    let mut s1 = _mm512_setzero_si512();
    for p in 0..4 {
        s0 = _mm512_dpbusd_epi32(s0, lo[p], xbcast(q, nb, b, p));
        s1 = _mm512_dpbusd_epi32(s1, hi[p], xbcast(q, nb, b, p + 4));
    }
    _mm512_add_epi32(s0, s1)
}

/// `(d * dx) * isum`, `isum = dp - 2^S xsum` (Q4_0: `S` = 3, Q5_0: 4).
#[inline(always)]
unsafe fn offset_tile_update<const S: u32>(w: &Q4Tile, dp: __m512i, dx: f32, xsum: i32) -> __m512 {
    let is = _mm512_sub_epi32(dp, _mm512_set1_epi32(xsum << S));
    _mm512_mul_ps(
        _mm512_mul_ps(w.d, _mm512_set1_ps(dx)),
        _mm512_cvtepi32_ps(is),
    )
}

/// `((d * dx) * isum) + ((m * dx) * xsum)`.
#[inline(always)]
unsafe fn q4_1_tile_update(w: &Q4Tile, dp: __m512i, dx: f32, xsum: i32) -> __m512 {
    let dxv = _mm512_set1_ps(dx);
    _mm512_add_ps(
        _mm512_mul_ps(_mm512_mul_ps(w.d, dxv), _mm512_cvtepi32_ps(dp)),
        _mm512_mul_ps(_mm512_mul_ps(w.m, dxv), _mm512_set1_ps(xsum as f32)),
    )
}

tile512!(
    q8_0_tile512,
    544,
    q8_tile_prep,
    q8_tile_dots,
    q8_tile_update
);
tile512!(
    q4_0_tile512,
    288,
    q4_0_tile_prep,
    q4_tile_dots,
    offset_tile_update::<3>
);
tile512!(
    q4_1_tile512,
    320,
    q4_1_tile_prep,
    q4_tile_dots,
    q4_1_tile_update
);
tile512!(
    q5_0_tile512,
    352,
    q5_0_tile_prep,
    q4_tile_dots,
    offset_tile_update::<4>
);
tile512!(
    q5_1_tile512,
    384,
    q5_1_tile_prep,
    q4_tile_dots,
    q4_1_tile_update
);

/// Shuffle control that moves byte `k` of every 32-bit lane to its low byte, zeroing the rest.
#[inline(always)]
unsafe fn byte_of_lanes(k: i32) -> __m512i {
    let z = 0x8080_8000u32 as i32;
    _mm512_set4_epi32(z | (12 + k), z | (8 + k), z | (4 + k), z | k)
}

/// Per-row `(d * sc, dmin * m)` of the 8 sub-blocks of a Q4_K tile super-block record (the
/// vector form of [`k4_unpack`], lane = row).
#[inline(always)]
unsafe fn q4k_tile_params(rec: *const u8, a: &mut [__m512; 8], bm: &mut [__m512; 8]) {
    let d = _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i));
    let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(32) as *const __m256i));
    let u0 = _mm512_loadu_si512(rec.add(64) as *const _);
    let u1 = _mm512_loadu_si512(rec.add(128) as *const _);
    let u2 = _mm512_loadu_si512(rec.add(192) as *const _);
    let m3f = _mm512_set1_epi32(0x3f3f_3f3f);
    let m0f = _mm512_set1_epi32(0x0f0f_0f0f);
    let m30 = _mm512_set1_epi32(0x3030_3030);
    let sc = [
        _mm512_and_si512(u0, m3f),
        _mm512_or_si512(
            _mm512_and_si512(u2, m0f),
            _mm512_and_si512(_mm512_srli_epi32::<2>(u0), m30),
        ),
    ];
    let mn = [
        _mm512_and_si512(u1, m3f),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi32::<4>(u2), m0f),
            _mm512_and_si512(_mm512_srli_epi32::<2>(u1), m30),
        ),
    ];
    for j in 0..8 {
        let sel = byte_of_lanes((j % 4) as i32);
        let s = _mm512_cvtepi32_ps(_mm512_shuffle_epi8(sc[j / 4], sel));
        let m = _mm512_cvtepi32_ps(_mm512_shuffle_epi8(mn[j / 4], sel));
        a[j] = _mm512_mul_ps(d, s);
        bm[j] = _mm512_mul_ps(dmin, m);
    }
}

/// Q4_K tiles (super-block records, see `pack.rs`) in block lockstep against `NT` activation
/// rows: per block `((d sc) dx) isum - ((dmin m) dx) xsum`, the rows kernel's values. With
/// `Q5`, Q5_K tiles: a high-bit granule follows each sub-block's nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn k4_tile512<const NT: usize, const MT: usize, const Q5: bool>(
    w: [*const u8; MT],
    nb: usize,
    x: &Xp<NT>,
    out: [*mut f32; MT],
    stride: usize,
) {
    let (rec, sub) = if Q5 {
        (Q5K_TILE_SB, Q5K_TILE_SUB)
    } else {
        (Q4K_TILE_SB, 256)
    };
    let pf = prefetch_ahead_tiles(NT, true);
    let mut acc = [[[_mm512_setzero_ps(); GROUP]; NT]; MT];
    let mut a = [[_mm512_setzero_ps(); 8]; MT];
    let mut bm = [[_mm512_setzero_ps(); 8]; MT];
    let mut b0 = 0;
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        lanes16!(j < g, {
            let b = b0 + j;
            for m in 0..MT {
                let sb = w[m].add(b / 8 * rec);
                if j.is_multiple_of(8) {
                    prefetch(sb, pf, 256);
                    q4k_tile_params(sb, &mut a[m], &mut bm[m]);
                }
                let nib = sb.add(256 + sub * (j % 8));
                prefetch(nib, pf, sub);
                let (mut lo, mut hi) = q4_tile_nibbles(nib);
                if Q5 {
                    q5_merge512(
                        &mut lo,
                        &mut hi,
                        _mm512_loadu_si512(nib.add(256) as *const _),
                    );
                }
                for t in 0..NT {
                    let isum = _mm512_cvtepi32_ps(nibble_tile_dots(&lo, &hi, x.q[t], nb, b));
                    let dx = _mm512_set1_ps(*x.d[t].add(b));
                    let xs = _mm512_set1_ps(*x.s[t].add(b) as f32);
                    let v = _mm512_sub_ps(
                        _mm512_mul_ps(_mm512_mul_ps(a[m][j % 8], dx), isum),
                        _mm512_mul_ps(_mm512_mul_ps(bm[m][j % 8], dx), xs),
                    );
                    acc[m][t][j] = _mm512_add_ps(acc[m][t][j], v);
                }
            }
        });
        b0 += g;
    }
    for m in 0..MT {
        for t in 0..NT {
            _mm512_storeu_ps(out[m].add(t * stride), tree_tile(&acc[m][t]));
        }
    }
}

/// Q6_K tiles in block lockstep against `NT` activation rows: per block
/// `(d dx) (sc_lo (dp_lo - 32 xsum_lo) + sc_hi (dp_hi - 32 xsum_hi))`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn q6k_tile512<const NT: usize, const MT: usize>(
    w: [*const u8; MT],
    nb: usize,
    x: &Xp<NT>,
    out: [*mut f32; MT],
    stride: usize,
) {
    let pf = prefetch_ahead_tiles(NT, true);
    let mut d = [_mm512_setzero_ps(); MT];
    let mut acc = [[[_mm512_setzero_ps(); GROUP]; NT]; MT];
    let mut b0 = 0;
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        lanes16!(j < g, {
            let b = b0 + j;
            let jj = j % 8;
            for m in 0..MT {
                let sb = w[m].add(b / 8 * Q6K_TILE_SB);
                if jj == 0 {
                    d[m] = _mm512_cvtph_ps(_mm256_loadu_si256(sb as *const __m256i));
                }
                let sub = sb.add(32 + Q6K_TILE_SUB * jj);
                prefetch(sub, pf, Q6K_TILE_SUB);
                let sc_lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(sub as *const _));
                let sc_hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(sub.add(16) as *const _));
                let nib = sub.add(32);
                let hb = sub.add(288);
                let h0 = _mm512_loadu_si512(hb as *const _);
                let h1 = _mm512_loadu_si512(hb.add(64) as *const _);
                let mut n = [_mm512_setzero_si512(); 4];
                for p in 0..4 {
                    n[p] = _mm512_loadu_si512(nib.add(64 * p) as *const _);
                }
                let q = q6_quants512(n, h0, h1);
                for t in 0..NT {
                    let mut lo = _mm512_setzero_si512();
                    let mut hi = _mm512_setzero_si512();
                    for k in 0..4 {
                        lo = _mm512_dpbusd_epi32(lo, q[k], xbcast(x.q[t], nb, b, k));
                        hi = _mm512_dpbusd_epi32(hi, q[k + 4], xbcast(x.q[t], nb, b, k + 4));
                    }
                    lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(*x.lo[t].add(b) << 5));
                    hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(*x.hi[t].add(b) << 5));
                    let is = _mm512_add_epi32(
                        _mm512_mullo_epi32(sc_lo, lo),
                        _mm512_mullo_epi32(sc_hi, hi),
                    );
                    let dx = _mm512_set1_ps(*x.d[t].add(b));
                    let v = _mm512_mul_ps(_mm512_mul_ps(d[m], dx), _mm512_cvtepi32_ps(is));
                    acc[m][t][j] = _mm512_add_ps(acc[m][t][j], v);
                }
            }
        });
        b0 += g;
    }
    for m in 0..MT {
        for t in 0..NT {
            _mm512_storeu_ps(out[m].add(t * stride), tree_tile(&acc[m][t]));
        }
    }
}

/// The 16 Q3_K scales of every row of a tile super-block (its three 64-byte scale sections
/// at `p`, ggml's 12-byte packing per row), biased (0..64): vector `v`, byte `e` of lane `r`
/// = scale `4v + e` of row `r` (the vector form of `q3_k::unpack_scales` before `- 32`).
#[inline(always)]
unsafe fn q3k_tile_scales512(p: *const u8) -> [__m512i; 4] {
    let u0 = _mm512_loadu_si512(p as *const _);
    let u1 = _mm512_loadu_si512(p.add(64) as *const _);
    let u2 = _mm512_loadu_si512(p.add(128) as *const _);
    let m0f = _mm512_set1_epi8(0x0f);
    let m30 = _mm512_set1_epi8(0x30);
    [
        _mm512_or_si512(
            _mm512_and_si512(u0, m0f),
            _mm512_and_si512(_mm512_slli_epi32::<4>(u2), m30),
        ),
        _mm512_or_si512(
            _mm512_and_si512(u1, m0f),
            _mm512_and_si512(_mm512_slli_epi32::<2>(u2), m30),
        ),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi32::<4>(u0), m0f),
            _mm512_and_si512(u2, m30),
        ),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi32::<4>(u1), m0f),
            _mm512_and_si512(_mm512_srli_epi32::<2>(u2), m30),
        ),
    ]
}

/// Q3_K (`Q3`) or Q2_K tiles in block lockstep against `NT` activation rows: the update of
/// [`q23k_512`], lane = row. The scales of a super-block are unpacked once, then each
/// sub-block takes its two 16-element scales (and Q2_K mins) from one 32-bit lane field.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn q23k_tile512<const NT: usize, const MT: usize, const Q3: bool>(
    w: [*const u8; MT],
    nb: usize,
    x: &Xp<NT>,
    out: [*mut f32; MT],
    stride: usize,
) {
    let (rec, hdr, sub) = if Q3 {
        (Q3K_TILE_SB, Q3K_TILE_HDR, Q3K_TILE_SUB)
    } else {
        (Q2K_TILE_SB, Q2K_TILE_HDR, Q2K_TILE_SUB)
    };
    let pf = prefetch_ahead_tiles(NT, true);
    let (m3f, m0f, c32) = (
        _mm512_set1_epi32(0x3f),
        _mm512_set1_epi32(0x0f),
        _mm512_set1_epi32(32),
    );
    let mut d = [_mm512_setzero_ps(); MT];
    let mut dmin = [_mm512_setzero_ps(); MT];
    let mut scv = [[_mm512_setzero_si512(); 4]; MT];
    let mut acc = [[[_mm512_setzero_ps(); GROUP]; NT]; MT];
    let mut b0 = 0;
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        lanes16!(j < g, {
            let b = b0 + j;
            let jj = j % 8;
            for m in 0..MT {
                let sb = w[m].add(b / 8 * rec);
                if jj == 0 {
                    prefetch(sb, pf, hdr);
                    d[m] = _mm512_cvtph_ps(_mm256_loadu_si256(sb as *const __m256i));
                    if Q3 {
                        scv[m] = q3k_tile_scales512(sb.add(32));
                    } else {
                        dmin[m] = _mm512_cvtph_ps(_mm256_loadu_si256(sb.add(32) as *const __m256i));
                        for k in 0..4 {
                            scv[m][k] = _mm512_loadu_si512(sb.add(64 + 64 * k) as *const _);
                        }
                    }
                }
                let sp = sb.add(hdr + sub * jj);
                prefetch(sp, pf, sub);
                let sv = if jj.is_multiple_of(2) {
                    scv[m][jj / 2]
                } else {
                    _mm512_srli_epi32::<16>(scv[m][jj / 2])
                };
                let (sc_lo, sc_hi, mn_lo, mn_hi);
                if Q3 {
                    sc_lo = _mm512_sub_epi32(_mm512_and_si512(sv, m3f), c32);
                    sc_hi =
                        _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32::<8>(sv), m3f), c32);
                    (mn_lo, mn_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                } else {
                    sc_lo = _mm512_and_si512(sv, m0f);
                    mn_lo = _mm512_and_si512(_mm512_srli_epi32::<4>(sv), m0f);
                    sc_hi = _mm512_and_si512(_mm512_srli_epi32::<8>(sv), m0f);
                    mn_hi = _mm512_and_si512(_mm512_srli_epi32::<12>(sv), m0f);
                }
                let c = [
                    _mm512_loadu_si512(sp as *const _),
                    _mm512_loadu_si512(sp.add(64) as *const _),
                ];
                let h = if Q3 {
                    _mm512_loadu_si512(sp.add(128) as *const _)
                } else {
                    _mm512_setzero_si512()
                };
                let q = q23_quants512::<Q3>(c, h);
                for t in 0..NT {
                    let mut lo = _mm512_setzero_si512();
                    let mut hi = _mm512_setzero_si512();
                    for k in 0..4 {
                        lo = _mm512_dpbusd_epi32(lo, q[k], xbcast(x.q[t], nb, b, k));
                        hi = _mm512_dpbusd_epi32(hi, q[k + 4], xbcast(x.q[t], nb, b, k + 4));
                    }
                    let (xl, xh) = (*x.lo[t].add(b), *x.hi[t].add(b));
                    if Q3 {
                        lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(xl << 2));
                        hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(xh << 2));
                    }
                    let is = _mm512_add_epi32(
                        _mm512_mullo_epi32(sc_lo, lo),
                        _mm512_mullo_epi32(sc_hi, hi),
                    );
                    let dx = _mm512_set1_ps(*x.d[t].add(b));
                    let mut v = _mm512_mul_ps(_mm512_mul_ps(d[m], dx), _mm512_cvtepi32_ps(is));
                    if !Q3 {
                        let ms = _mm512_add_epi32(
                            _mm512_mullo_epi32(mn_lo, _mm512_set1_epi32(xl)),
                            _mm512_mullo_epi32(mn_hi, _mm512_set1_epi32(xh)),
                        );
                        v = _mm512_sub_ps(
                            v,
                            _mm512_mul_ps(_mm512_mul_ps(dmin[m], dx), _mm512_cvtepi32_ps(ms)),
                        );
                    }
                    acc[m][t][j] = _mm512_add_ps(acc[m][t][j], v);
                }
            }
        });
        b0 += g;
    }
    for m in 0..MT {
        for t in 0..NT {
            _mm512_storeu_ps(out[m].add(t * stride), tree_tile(&acc[m][t]));
        }
    }
}

/// AVX-512 VNNI over `MT` tiles (`MT = 1`: one) read in block lockstep, for
/// activation rows `t0..t0+nt`; writes `out[m][t * stride + r]` for `r < 16`.
///
/// # Safety
/// The `Avx512Vnni` path must be available; each `w[m]` points to one tile of `fmt` with
/// `n_in` columns, `x` has at least `t0 + nt` rows, `out` is valid for the writes.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tiles_avx512<const MT: usize>(
    fmt: WeightFormat,
    w: [*const u8; MT],
    n_in: usize,
    x: &QuantizedActs,
    t0: usize,
    nt: usize,
    out: [*mut f32; MT],
    stride: usize,
) {
    let nb = n_in / QK;
    macro_rules! go {
        ($f:ident $(; $c:expr)?) => {
            dispatch_tiles!($f $(; $c)?, MT, w, nb, x, t0, nt, out, stride)
        };
    }
    match fmt {
        WeightFormat::Q8_0 => go!(q8_0_tile512),
        WeightFormat::Q4_0 => go!(q4_0_tile512),
        WeightFormat::Q4_1 => go!(q4_1_tile512),
        WeightFormat::Q5_0 => go!(q5_0_tile512),
        WeightFormat::Q5_1 => go!(q5_1_tile512),
        WeightFormat::Q4K => go!(k4_tile512; false),
        WeightFormat::Q5K => go!(k4_tile512; true),
        WeightFormat::Q6K => go!(q6k_tile512),
        WeightFormat::Q3K => go!(q23k_tile512; true),
        WeightFormat::Q2K => go!(q23k_tile512; false),
        WeightFormat::IQ4NL => go!(iq4_tile512; false),
        WeightFormat::IQ4XS => go!(iq4_tile512; true),
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2: a group is two halves of 8 lanes; half `h` covers lanes 8h..8h+8 (`n` of them valid).
// ---------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn lane_mask(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// 8 lanes of 4 bytes (masked to the first `n`).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ld8(p: *const u8, n: usize, mask: __m256i) -> __m256i {
    if n == 8 {
        _mm256_loadu_si256(p as *const __m256i)
    } else {
        _mm256_maskload_epi32(p as *const i32, mask)
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ld8ps(p: *const f32, n: usize, mask: __m256i) -> __m256 {
    if n == 8 {
        _mm256_loadu_ps(p)
    } else {
        _mm256_maskload_ps(p, mask)
    }
}

/// 8 f16 (the first `n`, zeros after) widened to f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16x8(p: *const u8, n: usize) -> __m256 {
    if n == 8 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    } else {
        let mut buf = [0u8; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), 2 * n);
        _mm256_cvtph_ps(_mm_loadu_si128(buf.as_ptr() as *const __m128i))
    }
}

/// Activation granule `k` of half `h` of the group at `b0` (with `g` blocks).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn xg8(
    q: *const i8,
    b0: usize,
    g: usize,
    k: usize,
    h: usize,
    n: usize,
    mk: __m256i,
) -> __m256i {
    ld8(q.add(b0 * QK + k * 4 * g + 32 * h) as *const u8, n, mk)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn madd1(v: __m256i) -> __m256i {
    _mm256_madd_epi16(v, _mm256_set1_epi16(1))
}

macro_rules! halves {
    ($g:ident, |$h:ident, $n:ident, $mk:ident| $body:block) => {
        for $h in 0..2 {
            let $n = $g.saturating_sub(8 * $h).min(8);
            if $n == 0 {
                break;
            }
            let $mk = lane_mask($n);
            $body
        }
    };
}

macro_rules! finish256 {
    ($acc:ident, $o:ident, $r:ident, $nt:ident) => {
        for t in 0..$nt {
            *$o.ptr.add(t * $o.stride + $r) = tree8(_mm256_add_ps($acc[t][0], $acc[t][1]));
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_256<const NT: usize>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, 34 * g);
            halves!(g, |h, n, mk| {
                let dw = f16x8(wp.add(16 * h), n);
                let qp = wp.add(2 * g + 32 * h);
                let mut isum = [_mm256_setzero_si256(); NT];
                for k in 0..8 {
                    let wq = ld8(qp.add(k * 4 * g), n, mk);
                    let aw = _mm256_abs_epi8(wq);
                    for t in 0..NT {
                        let xq = xg8(x.q[t], b0, g, k, h, n, mk);
                        let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, wq));
                        isum[t] = _mm256_add_epi32(isum[t], madd1(p));
                    }
                }
                for t in 0..NT {
                    let dx = ld8ps(x.d[t].add(b0 + 8 * h), n, mk);
                    let v = _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[t]));
                    acc[t][h] = _mm256_add_ps(acc[t][h], v);
                }
            });
            wp = wp.add(34 * g);
            b0 += g;
        }
        finish256!(acc, o, r, NT);
    }
}

/// The Q5_K fifth bits of nibble granule `p` from the high-bit granule `h`, at bit 4 of each
/// byte: (elements `4p + e`, elements `16 + 4p + e`).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q5_high256(h: __m256i, p: usize) -> (__m256i, __m256i) {
    let m10 = _mm256_set1_epi8(0x10);
    let (lo, hi) = match p {
        0 => (_mm256_slli_epi16::<4>(h), h),
        1 => (_mm256_slli_epi16::<3>(h), _mm256_srli_epi16::<1>(h)),
        2 => (_mm256_slli_epi16::<2>(h), _mm256_srli_epi16::<2>(h)),
        _ => (_mm256_slli_epi16::<1>(h), _mm256_srli_epi16::<3>(h)),
    };
    (_mm256_and_si256(lo, m10), _mm256_and_si256(hi, m10))
}

/// Raw `sum(q * x)` of 4 nibble granules (half `h`) with the activations. Each
/// `vpmaddubsw` pair is at most 2 * 15 * 127 = 3810, so 8 of them add up in i16 exactly.
/// With `Q5` (the high-bit granule after the nibbles adds the fifth bits) a pair is at most
/// 2 * 31 * 127 = 7874, so only 4 of them add up in i16 before widening.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibble_dots256<const NT: usize, const Q5: bool>(
    qp: *const u8,
    x: &Xp<NT>,
    b0: usize,
    g: usize,
    h: usize,
    n: usize,
    mk: __m256i,
) -> [__m256i; NT] {
    let m0f = _mm256_set1_epi8(0x0f);
    let hb = if Q5 {
        ld8(qp.add(16 * g + 32 * h), n, mk)
    } else {
        _mm256_setzero_si256()
    };
    let mut s16 = [[_mm256_setzero_si256(); 2]; NT];
    for p in 0..4 {
        let v = ld8(qp.add(p * 4 * g + 32 * h), n, mk);
        let mut lo = _mm256_and_si256(v, m0f);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f);
        if Q5 {
            let (hl, hh) = q5_high256(hb, p);
            lo = _mm256_or_si256(lo, hl);
            hi = _mm256_or_si256(hi, hh);
        }
        let c = if Q5 { p / 2 } else { 0 };
        for t in 0..NT {
            let a = _mm256_maddubs_epi16(lo, xg8(x.q[t], b0, g, p, h, n, mk));
            let b = _mm256_maddubs_epi16(hi, xg8(x.q[t], b0, g, p + 4, h, n, mk));
            s16[t][c] = _mm256_add_epi16(s16[t][c], _mm256_add_epi16(a, b));
        }
    }
    let mut out = [_mm256_setzero_si256(); NT];
    for t in 0..NT {
        out[t] = madd1(s16[t][0]);
        if Q5 {
            out[t] = _mm256_add_epi32(out[t], madd1(s16[t][1]));
        }
    }
    out
}

/// Q4_0, or Q5_0 with `Q5` (22 bytes per block, quants offset by 16).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_256<const NT: usize, const Q5: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let bb = if Q5 { 22 } else { 18 };
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, bb * g);
            halves!(g, |h, n, mk| {
                let dw = f16x8(wp.add(16 * h), n);
                let isum = nibble_dots256::<NT, Q5>(wp.add(2 * g), x, b0, g, h, n, mk);
                for t in 0..NT {
                    let xs = ld8(x.s[t].add(b0 + 8 * h) as *const u8, n, mk);
                    let off = if Q5 {
                        _mm256_slli_epi32::<4>(xs)
                    } else {
                        _mm256_slli_epi32::<3>(xs)
                    };
                    let is = _mm256_sub_epi32(isum[t], off);
                    let dx = ld8ps(x.d[t].add(b0 + 8 * h), n, mk);
                    let v = _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(is));
                    acc[t][h] = _mm256_add_ps(acc[t][h], v);
                }
            });
            wp = wp.add(bb * g);
            b0 += g;
        }
        finish256!(acc, o, r, NT);
    }
}

/// Q4_1, or Q5_1 with `Q5` (24 bytes per block).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_256<const NT: usize, const Q5: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let bb = if Q5 { 24 } else { 20 };
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, bb * g);
            halves!(g, |h, n, mk| {
                let dw = f16x8(wp.add(16 * h), n);
                let mw = f16x8(wp.add(2 * g + 16 * h), n);
                let isum = nibble_dots256::<NT, Q5>(wp.add(4 * g), x, b0, g, h, n, mk);
                for t in 0..NT {
                    let xs = _mm256_cvtepi32_ps(ld8(x.s[t].add(b0 + 8 * h) as *const u8, n, mk));
                    let dx = ld8ps(x.d[t].add(b0 + 8 * h), n, mk);
                    let v = _mm256_add_ps(
                        _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[t])),
                        _mm256_mul_ps(_mm256_mul_ps(mw, dx), xs),
                    );
                    acc[t][h] = _mm256_add_ps(acc[t][h], v);
                }
            });
            wp = wp.add(bb * g);
            b0 += g;
        }
        finish256!(acc, o, r, NT);
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn u8x8_ps(v: [u8; 8]) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(
        v,
    ))))
}

/// Q4_K, or Q5_K with `Q5` (176 bytes per super-block).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_256<const NT: usize, const Q5: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let sb_bytes = if Q5 { 176 } else { 144 };
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, sb_bytes * (g / 8));
            let s = g / 8;
            let hdr = std::slice::from_raw_parts(wp, 16 * s);
            // With K-quants each half is one whole super-block (n is always 8).
            halves!(g, |h, n, mk| {
                let (sc, mn) = k4_scales_mins(&hdr[4 * s + 12 * h..4 * s + 12 * h + 12]);
                let a = _mm256_mul_ps(_mm256_set1_ps(f16_at(hdr, 2 * h)), u8x8_ps(sc));
                let bm = _mm256_mul_ps(_mm256_set1_ps(f16_at(hdr, 2 * s + 2 * h)), u8x8_ps(mn));
                let isum = nibble_dots256::<NT, Q5>(wp.add(16 * s), x, b0, g, h, n, mk);
                for t in 0..NT {
                    let xs = _mm256_cvtepi32_ps(ld8(x.s[t].add(b0 + 8 * h) as *const u8, n, mk));
                    let dx = ld8ps(x.d[t].add(b0 + 8 * h), n, mk);
                    let v = _mm256_sub_ps(
                        _mm256_mul_ps(_mm256_mul_ps(a, dx), _mm256_cvtepi32_ps(isum[t])),
                        _mm256_mul_ps(_mm256_mul_ps(bm, dx), xs),
                    );
                    acc[t][h] = _mm256_add_ps(acc[t][h], v);
                }
            });
            wp = wp.add(sb_bytes * s);
            b0 += g;
        }
        finish256!(acc, o, r, NT);
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6_high256(h: __m256i, s: usize) -> __m256i {
    let m30 = _mm256_set1_epi8(0x30);
    let v = match s {
        0 => _mm256_slli_epi16::<4>(h),
        1 => _mm256_slli_epi16::<2>(h),
        2 => h,
        _ => _mm256_srli_epi16::<2>(h),
    };
    _mm256_and_si256(v, m30)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_256<const NT: usize>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let m0f = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, 210 * (g / 8));
            let s = g / 8;
            let hdr = std::slice::from_raw_parts(wp, 2 * s);
            halves!(g, |h, n, mk| {
                let dv = _mm256_set1_ps(f16_at(hdr, 2 * h));
                let sc_lo =
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(wp.add(2 * s + 8 * h) as *const __m128i));
                let sc_hi = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    wp.add(2 * s + g + 8 * h) as *const __m128i
                ));
                let ql = wp.add(2 * s + 2 * g + 32 * h);
                let qh = wp.add(2 * s + 18 * g + 32 * h);
                let h0 = ld8(qh, n, mk);
                let h1 = ld8(qh.add(4 * g), n, mk);
                let mut q = [_mm256_setzero_si256(); 8];
                for p in 0..4 {
                    let v = ld8(ql.add(p * 4 * g), n, mk);
                    q[p] = _mm256_or_si256(_mm256_and_si256(v, m0f), q6_high256(h0, p));
                    q[p + 4] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f),
                        q6_high256(h1, p),
                    );
                }
                for t in 0..NT {
                    let xq = |k: usize| xg8(x.q[t], b0, g, k, h, n, mk);
                    // Pairs of vpmaddubsw (each at most 2 * 63 * 127 = 16002) add exactly in i16.
                    let pair = |k: usize| {
                        madd1(_mm256_add_epi16(
                            _mm256_maddubs_epi16(q[k], xq(k)),
                            _mm256_maddubs_epi16(q[k + 1], xq(k + 1)),
                        ))
                    };
                    let mut lo = _mm256_add_epi32(pair(0), pair(2));
                    let mut hi = _mm256_add_epi32(pair(4), pair(6));
                    let xlo = ld8(x.lo[t].add(b0 + 8 * h) as *const u8, n, mk);
                    let xhi = ld8(x.hi[t].add(b0 + 8 * h) as *const u8, n, mk);
                    lo = _mm256_sub_epi32(lo, _mm256_slli_epi32::<5>(xlo));
                    hi = _mm256_sub_epi32(hi, _mm256_slli_epi32::<5>(xhi));
                    let is = _mm256_add_epi32(
                        _mm256_mullo_epi32(sc_lo, lo),
                        _mm256_mullo_epi32(sc_hi, hi),
                    );
                    let dx = ld8ps(x.d[t].add(b0 + 8 * h), n, mk);
                    let v = _mm256_mul_ps(_mm256_mul_ps(dv, dx), _mm256_cvtepi32_ps(is));
                    acc[t][h] = _mm256_add_ps(acc[t][h], v);
                }
            });
            wp = wp.add(210 * s);
            b0 += g;
        }
        finish256!(acc, o, r, NT);
    }
}

/// Bits `2m..2m+2` of each byte of `c` at bits 0..2 (as [`crumb512`]).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn crumb256(c: __m256i, m: usize) -> __m256i {
    let v = match m {
        0 => c,
        1 => _mm256_srli_epi16::<2>(c),
        2 => _mm256_srli_epi16::<4>(c),
        _ => _mm256_srli_epi16::<6>(c),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(3))
}

/// Bit `k` of each byte of `h` at bit 2 (as [`q3_high512`]).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q3_high256(h: __m256i, k: usize) -> __m256i {
    let v = match k {
        0 => _mm256_slli_epi16::<2>(h),
        1 => _mm256_slli_epi16::<1>(h),
        2 => h,
        3 => _mm256_srli_epi16::<1>(h),
        4 => _mm256_srli_epi16::<2>(h),
        5 => _mm256_srli_epi16::<3>(h),
        6 => _mm256_srli_epi16::<4>(h),
        _ => _mm256_srli_epi16::<5>(h),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(4))
}

/// [`q23_quants512`] on 8 lanes.
#[inline(always)]
unsafe fn q23_quants256<const Q3: bool>(c: [__m256i; 2], h: __m256i) -> [__m256i; 8] {
    let mut q = [_mm256_setzero_si256(); 8];
    for k in 0..8 {
        q[k] = crumb256(c[k / 4], k % 4);
        if Q3 {
            q[k] = _mm256_or_si256(q[k], q3_high256(h, k));
        }
    }
    q
}

/// `vpmaddubsw` of the 4 granules `k0..k0+4` of a half, added in i16 (exact for Q3_K and
/// Q2_K quants: at most 4 * 2 * 7 * 127 = 7112), then widened: `dp` of one 16-element half.
#[inline(always)]
unsafe fn dot4_256(q: &[__m256i; 8], xq: &[__m256i; 8], k0: usize) -> __m256i {
    let mut p = _mm256_maddubs_epi16(q[k0], xq[k0]);
    for k in k0 + 1..k0 + 4 {
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(q[k], xq[k]));
    }
    madd1(p)
}

/// Q3_K (`Q3`) or Q2_K rows, as [`q23k_512`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q23k_256<const NT: usize, const Q3: bool>(w: *const u8, nb: usize, x: &Xp<NT>, o: &Out) {
    let sb_bytes = if Q3 { 110 } else { 84 };
    let m0f = _mm256_set1_epi32(0x0f);
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            prefetch(wp, pf, sb_bytes * (g / 8));
            let s = g / 8;
            let hdr = std::slice::from_raw_parts(wp, 4 * s);
            // Each half is one whole super-block (n is always 8).
            halves!(g, |h, n, mk| {
                let dv = _mm256_set1_ps(f16_at(hdr, 2 * h));
                let (sc_lo, sc_hi, mn_lo, mn_hi, dm, cr);
                if Q3 {
                    let (lo, hi) = q3k_lane_scales(wp.add(2 * s + 12 * h), 1);
                    sc_lo = _mm256_loadu_si256(lo.as_ptr() as *const __m256i);
                    sc_hi = _mm256_loadu_si256(hi.as_ptr() as *const __m256i);
                    (mn_lo, mn_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    dm = _mm256_setzero_ps();
                    cr = wp.add(quant_base(WeightFormat::Q3K, g) + 32 * h);
                } else {
                    let lo =
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(wp.add(4 * s + 8 * h) as *const _));
                    let hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        wp.add(4 * s + g + 8 * h) as *const _
                    ));
                    sc_lo = _mm256_and_si256(lo, m0f);
                    sc_hi = _mm256_and_si256(hi, m0f);
                    mn_lo = _mm256_srli_epi32::<4>(lo);
                    mn_hi = _mm256_srli_epi32::<4>(hi);
                    dm = _mm256_set1_ps(f16_at(hdr, 2 * s + 2 * h));
                    cr = wp.add(quant_base(WeightFormat::Q2K, g) + 32 * h);
                }
                let c = [ld8(cr, n, mk), ld8(cr.add(4 * g), n, mk)];
                let hb = if Q3 {
                    ld8(cr.add(8 * g), n, mk)
                } else {
                    _mm256_setzero_si256()
                };
                let q = q23_quants256::<Q3>(c, hb);
                for t in 0..NT {
                    let mut xq = [_mm256_setzero_si256(); 8];
                    for k in 0..8 {
                        xq[k] = xg8(x.q[t], b0, g, k, h, n, mk);
                    }
                    let mut lo = dot4_256(&q, &xq, 0);
                    let mut hi = dot4_256(&q, &xq, 4);
                    let xlo = ld8(x.lo[t].add(b0 + 8 * h) as *const u8, n, mk);
                    let xhi = ld8(x.hi[t].add(b0 + 8 * h) as *const u8, n, mk);
                    if Q3 {
                        lo = _mm256_sub_epi32(lo, _mm256_slli_epi32::<2>(xlo));
                        hi = _mm256_sub_epi32(hi, _mm256_slli_epi32::<2>(xhi));
                    }
                    let is = _mm256_add_epi32(
                        _mm256_mullo_epi32(sc_lo, lo),
                        _mm256_mullo_epi32(sc_hi, hi),
                    );
                    let dx = ld8ps(x.d[t].add(b0 + 8 * h), n, mk);
                    let mut v = _mm256_mul_ps(_mm256_mul_ps(dv, dx), _mm256_cvtepi32_ps(is));
                    if !Q3 {
                        let ms = _mm256_add_epi32(
                            _mm256_mullo_epi32(mn_lo, xlo),
                            _mm256_mullo_epi32(mn_hi, xhi),
                        );
                        v = _mm256_sub_ps(
                            v,
                            _mm256_mul_ps(_mm256_mul_ps(dm, dx), _mm256_cvtepi32_ps(ms)),
                        );
                    }
                    acc[t][h] = _mm256_add_ps(acc[t][h], v);
                }
            });
            wp = wp.add(sb_bytes * s);
            b0 += g;
        }
        finish256!(acc, o, r, NT);
    }
}

/// `round_half_away` on 16 lanes, exactly as the scalar function: non-finite gives 0, clamp
/// to +-200, `i = trunc(v)`, `f = v - i` (exact), `i + (f >= 0.5) - (f <= -0.5)`, saturate.
#[inline(always)]
unsafe fn round_half_away16(v: __m512) -> __m128i {
    let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(
        _mm512_andnot_ps(_mm512_set1_ps(-0.0), v),
        _mm512_set1_ps(f32::INFINITY),
    );
    let v = _mm512_min_ps(
        _mm512_max_ps(v, _mm512_set1_ps(-200.0)),
        _mm512_set1_ps(200.0),
    );
    let i = _mm512_cvttps_epi32(v);
    let f = _mm512_sub_ps(v, _mm512_cvtepi32_ps(i));
    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(f, _mm512_set1_ps(0.5));
    let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(f, _mm512_set1_ps(-0.5));
    let i = _mm512_mask_add_epi32(i, up, i, _mm512_set1_epi32(1));
    let i = _mm512_mask_sub_epi32(i, down, i, _mm512_set1_epi32(1));
    _mm512_cvtsepi32_epi8(_mm512_maskz_mov_epi32(finite, i))
}

/// [`super::quantize_block_scalar`] on AVX-512: the same `(d, q)` bit for bit.
///
/// # Safety
/// AVX-512 F/BW/VL must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_block_avx512(xb: &[f32; QK]) -> (f32, [i8; QK]) {
    let a = _mm512_loadu_ps(xb.as_ptr());
    let b = _mm512_loadu_ps(xb.as_ptr().add(16));
    let sign = _mm512_set1_ps(-0.0);
    // max(|x|, acc) returns acc when |x| is NaN: NaN is ignored, as `f32::max` does.
    let m = _mm512_max_ps(
        _mm512_andnot_ps(sign, b),
        _mm512_max_ps(_mm512_andnot_ps(sign, a), _mm512_setzero_ps()),
    );
    let amax = _mm512_reduce_max_ps(m);
    let d = amax / 127.0;
    let mut q = [0i8; QK];
    if d != 0.0 {
        let dv = _mm512_set1_ps(d);
        let lo = round_half_away16(_mm512_div_ps(a, dv));
        let hi = round_half_away16(_mm512_div_ps(b, dv));
        _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, lo);
        _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut __m128i, hi);
    }
    (d, q)
}

/// `round_half_away` on 8 lanes (as [`round_half_away16`]), as i32 lanes in -200..=200.
#[inline(always)]
unsafe fn round_half_away8(v: __m256) -> __m256i {
    let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), v),
        _mm256_set1_ps(f32::INFINITY),
    );
    let v = _mm256_min_ps(
        _mm256_max_ps(v, _mm256_set1_ps(-200.0)),
        _mm256_set1_ps(200.0),
    );
    let i = _mm256_cvttps_epi32(v);
    let f = _mm256_sub_ps(v, _mm256_cvtepi32_ps(i));
    // Comparison masks are all ones (-1) where true.
    let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, _mm256_set1_ps(0.5)));
    let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, _mm256_set1_ps(-0.5)));
    let i = _mm256_add_epi32(_mm256_sub_epi32(i, up), down);
    _mm256_and_si256(i, _mm256_castps_si256(finite))
}

/// [`super::quantize_block_scalar`] on AVX2: the same `(d, q)` bit for bit.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_block_avx2(xb: &[f32; QK]) -> (f32, [i8; QK]) {
    let sign = _mm256_set1_ps(-0.0);
    let mut v = [_mm256_setzero_ps(); 4];
    for k in 0..4 {
        v[k] = _mm256_loadu_ps(xb.as_ptr().add(8 * k));
    }
    // max(|x|, acc) returns acc when |x| is NaN: NaN is ignored, as `f32::max` does.
    let mut m = _mm256_setzero_ps();
    for vk in v {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, vk), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
    let d = amax / 127.0;
    let mut q = [0i8; QK];
    if d != 0.0 {
        let dv = _mm256_set1_ps(d);
        let mut r = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            r[k] = round_half_away8(_mm256_div_ps(v[k], dv));
        }
        // Saturating packs work per 128-bit lane: dwords come out as
        // [r0a r1a r2a r3a r0b r1b r2b r3b] (a, b: the first and last 4 elements of each).
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(r[0], r[1]),
            _mm256_packs_epi32(r[2], r[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, p);
    }
    (d, q)
}

mod iq4;
use iq4::{iq4_256, iq4_512, iq4_tile512};
