//! x86 kernels for IQ4_NL (blocks of 32, one f16 scale) and IQ4_XS (super-blocks of 256,
//! 6-bit sub-block scales), whose 4-bit quants index ggml's non-linear table
//! (`kvalues_iq4nl`, values -127..113). Each generic kernel takes `XS` (IQ4_XS) or not.
//!
//! The canonical value of a block is `(s * dx) * isum` with `isum = sum(table[q] * x)` (exact)
//! and `s` = IQ4_NL's `d` or IQ4_XS's `d * (ls - 32)` (exact in f32), as Q8_0's.
//! - AVX-512 VNNI: `vpshufb` maps each nibble to `table + 128` (unsigned, 1..241), and
//!   `isum = dp - 128 * xsum`.
//! - AVX2: `vpshufb` maps each nibble to the signed value `w`; `vpmaddubsw(|w|, sign(x, w))`
//!   (pairs at most 2 * 127 * 127, widened per granule), as the Q8_0 kernels.

use std::arch::x86_64::*;

use super::super::pack::{f16_at, quant_base, IQ4XS_TILE_HDR, IQ4XS_TILE_SB, IQ4_VALUES};
use super::super::{WeightFormat, GROUP};
use super::{
    f16x16, f16x8, lane_mask, ld8, ld8ps, mask16, prefetch, prefetch_ahead, prefetch_ahead_tiles,
    tree16, tree8, tree_tile, xbcast, xg8, xgran, Out, Xp,
};
use crate::quant::iq4_xs::scales_of;

/// The format a kernel's `XS` switch selects.
const fn fmt<const XS: bool>() -> WeightFormat {
    if XS {
        WeightFormat::IQ4XS
    } else {
        WeightFormat::IQ4NL
    }
}

/// The table as unsigned bytes (`value + 128`) in every 128-bit lane.
#[inline(always)]
unsafe fn table_u8_512() -> __m512i {
    let t: [u8; 16] = std::array::from_fn(|i| (IQ4_VALUES[i] as i16 + 128) as u8);
    _mm512_broadcast_i32x4(_mm_loadu_si128(t.as_ptr() as *const __m128i))
}

/// The table as signed bytes in both 128-bit lanes.
#[inline(always)]
pub(super) unsafe fn table_i8_256() -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_VALUES.as_ptr() as *const __m128i))
}

/// Per-lane IQ4_XS scales `d * (ls - 32)` of the blocks of a rows-layout group (`s`
/// super-blocks: `d` at `wp`, the 6 scale bytes of each at `wp + 2 s + 6 sb`).
#[inline(always)]
unsafe fn xs_lane_scales(wp: *const u8, s: usize) -> [f32; GROUP] {
    let hdr = std::slice::from_raw_parts(wp, 8 * s);
    let mut a = [0f32; GROUP];
    for sb in 0..s {
        let sc = scales_of(&hdr[2 * s + 6 * sb..2 * s + 6 * sb + 6]);
        let d = f16_at(hdr, 2 * sb);
        for j in 0..8 {
            a[8 * sb + j] = d * sc[j] as f32;
        }
    }
    a
}

/// IQ4_NL / IQ4_XS (`XS`) rows, AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
pub(super) unsafe fn iq4_512<const NT: usize, const XS: bool>(
    w: *const u8,
    nb: usize,
    x: &Xp<NT>,
    o: &Out,
) {
    let tbl = table_u8_512();
    let m0f = _mm512_set1_epi8(0x0f);
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [_mm512_setzero_ps(); NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            let gb = fmt::<XS>().group_bytes(g);
            prefetch(wp, pf, gb);
            let m = mask16(g);
            let qp = wp.add(quant_base(fmt::<XS>(), g));
            let sv = if XS {
                let a = xs_lane_scales(wp, g / 8);
                _mm512_maskz_loadu_ps(m, a.as_ptr())
            } else {
                f16x16(wp, m)
            };
            let mut s0 = [_mm512_setzero_si512(); NT];
            let mut s1 = [_mm512_setzero_si512(); NT];
            for p in 0..4 {
                let v = _mm512_maskz_loadu_epi32(m, qp.add(p * 4 * g) as *const i32);
                let lo = _mm512_shuffle_epi8(tbl, _mm512_and_si512(v, m0f));
                let hi = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f));
                for t in 0..NT {
                    s0[t] = _mm512_dpbusd_epi32(s0[t], lo, xgran(x.q[t], b0, g, p, m));
                    s1[t] = _mm512_dpbusd_epi32(s1[t], hi, xgran(x.q[t], b0, g, p + 4, m));
                }
            }
            for t in 0..NT {
                let xs = _mm512_maskz_loadu_epi32(m, x.s[t].add(b0));
                let is =
                    _mm512_sub_epi32(_mm512_add_epi32(s0[t], s1[t]), _mm512_slli_epi32::<7>(xs));
                let dx = _mm512_maskz_loadu_ps(m, x.d[t].add(b0));
                let v = _mm512_mul_ps(_mm512_mul_ps(sv, dx), _mm512_cvtepi32_ps(is));
                acc[t] = _mm512_add_ps(acc[t], v);
            }
            wp = wp.add(gb);
            b0 += g;
        }
        for t in 0..NT {
            *o.ptr.add(t * o.stride + r) = tree16(acc[t]);
        }
    }
}

/// `sum(w * x)` per 4-byte lane of signed weights `w` (`wa` = `|w|`) and activations `x`
/// (AVX2), widened to i32.
#[inline(always)]
pub(super) unsafe fn signed_dot(wa: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(
        _mm256_maddubs_epi16(wa, _mm256_sign_epi8(x, w)),
        _mm256_set1_epi16(1),
    )
}

/// IQ4_NL / IQ4_XS (`XS`) rows, AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn iq4_256<const NT: usize, const XS: bool>(
    w: *const u8,
    nb: usize,
    x: &Xp<NT>,
    o: &Out,
) {
    let tbl = table_i8_256();
    let m0f = _mm256_set1_epi8(0x0f);
    for r in 0..o.rows {
        let w = w.add(r * o.row_bytes);
        let pf = prefetch_ahead();
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        let (mut b0, mut wp) = (0, w);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            let gb = fmt::<XS>().group_bytes(g);
            prefetch(wp, pf, gb);
            let a = if XS {
                xs_lane_scales(wp, g / 8)
            } else {
                [0f32; GROUP]
            };
            let qp = wp.add(quant_base(fmt::<XS>(), g));
            for h in 0..2 {
                let n = g.saturating_sub(8 * h).min(8);
                if n == 0 {
                    break;
                }
                let mk = lane_mask(n);
                let sv = if XS {
                    _mm256_loadu_ps(a.as_ptr().add(8 * h))
                } else {
                    f16x8(wp.add(16 * h), n)
                };
                let mut isum = [_mm256_setzero_si256(); NT];
                for p in 0..4 {
                    let v = ld8(qp.add(p * 4 * g + 32 * h), n, mk);
                    let lo = _mm256_shuffle_epi8(tbl, _mm256_and_si256(v, m0f));
                    let hi =
                        _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f));
                    let (la, ha) = (_mm256_abs_epi8(lo), _mm256_abs_epi8(hi));
                    for t in 0..NT {
                        let d0 = signed_dot(la, lo, xg8(x.q[t], b0, g, p, h, n, mk));
                        let d1 = signed_dot(ha, hi, xg8(x.q[t], b0, g, p + 4, h, n, mk));
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(d0, d1));
                    }
                }
                for t in 0..NT {
                    let dx = ld8ps(x.d[t].add(b0 + 8 * h), n, mk);
                    let v = _mm256_mul_ps(_mm256_mul_ps(sv, dx), _mm256_cvtepi32_ps(isum[t]));
                    acc[t][h] = _mm256_add_ps(acc[t][h], v);
                }
            }
            wp = wp.add(gb);
            b0 += g;
        }
        for t in 0..NT {
            *o.ptr.add(t * o.stride + r) = tree8(_mm256_add_ps(acc[t][0], acc[t][1]));
        }
    }
}

/// IQ4_NL / IQ4_XS (`XS`) tiles, AVX-512 VNNI, in block lockstep against `NT` activation
/// rows (lane = row).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
pub(super) unsafe fn iq4_tile512<const NT: usize, const MT: usize, const XS: bool>(
    w: [*const u8; MT],
    nb: usize,
    x: &Xp<NT>,
    out: [*mut f32; MT],
    stride: usize,
) {
    let tbl = table_u8_512();
    let m0f = _mm512_set1_epi8(0x0f);
    let pf = prefetch_ahead_tiles(NT, XS);
    let mut a = [[_mm512_setzero_ps(); 8]; MT];
    let mut acc = [[[_mm512_setzero_ps(); GROUP]; NT]; MT];
    let mut b0 = 0;
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        lanes16!(j < g, {
            let b = b0 + j;
            for m in 0..MT {
                let (sv, nib) = if XS {
                    let sb = w[m].add(b / 8 * IQ4XS_TILE_SB);
                    if j.is_multiple_of(8) {
                        prefetch(sb, pf, IQ4XS_TILE_HDR);
                        let d = _mm512_cvtph_ps(_mm256_loadu_si256(sb as *const __m256i));
                        let sh = _mm512_cvtepu16_epi32(_mm256_loadu_si256(sb.add(32) as *const _));
                        let sl = _mm512_loadu_si512(sb.add(64) as *const _);
                        for k in 0..8 {
                            let c4 = _mm_cvtsi32_si128(4 * k as i32);
                            let c2 = _mm_cvtsi32_si128(2 * k as i32);
                            let lo =
                                _mm512_and_si512(_mm512_srl_epi32(sl, c4), _mm512_set1_epi32(15));
                            let hi =
                                _mm512_and_si512(_mm512_srl_epi32(sh, c2), _mm512_set1_epi32(3));
                            let ls = _mm512_or_si512(lo, _mm512_slli_epi32::<4>(hi));
                            let sc = _mm512_sub_epi32(ls, _mm512_set1_epi32(32));
                            a[m][k] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
                        }
                    }
                    (a[m][j % 8], sb.add(IQ4XS_TILE_HDR + 256 * (j % 8)))
                } else {
                    let rec = w[m].add(b * 288);
                    (
                        _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)),
                        rec.add(32),
                    )
                };
                prefetch(nib, pf, 256);
                let mut lo = [m0f; 4];
                let mut hi = [m0f; 4];
                for p in 0..4 {
                    let v = _mm512_loadu_si512(nib.add(64 * p) as *const _);
                    lo[p] = _mm512_shuffle_epi8(tbl, _mm512_and_si512(v, m0f));
                    hi[p] =
                        _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f));
                }
                for t in 0..NT {
                    let mut s0 = _mm512_setzero_si512();
                    let mut s1 = _mm512_setzero_si512();
                    for p in 0..4 {
                        s0 = _mm512_dpbusd_epi32(s0, lo[p], xbcast(x.q[t], nb, b, p));
                        s1 = _mm512_dpbusd_epi32(s1, hi[p], xbcast(x.q[t], nb, b, p + 4));
                    }
                    let is = _mm512_sub_epi32(
                        _mm512_add_epi32(s0, s1),
                        _mm512_set1_epi32(*x.s[t].add(b) << 7),
                    );
                    let dx = _mm512_set1_ps(*x.d[t].add(b));
                    let v = _mm512_mul_ps(_mm512_mul_ps(sv, dx), _mm512_cvtepi32_ps(is));
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
