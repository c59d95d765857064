//! AVX2 kernels for the 16-row tiles (`Layout::Tiles16`, see `pack.rs`), for x86 CPUs without
//! AVX-512 VNNI (AMD Zen 2/3, Intel client cores). The same records as the AVX-512 tiles; a
//! 16-row section is two 256-bit halves (rows 0..8 and 8..16), lane = row. Per block and half,
//! the integer dot comes from `vpmaddubsw` + `vpmaddwd` against a broadcast activation granule,
//! then the canonical float update of `mod.rs` (the same multiplies and adds as every other
//! path, no FMA); the 16 lane accumulators `acc[b % 16]` of each row are 16 registers per half
//! (they live on the stack: each is touched once per group of 16 blocks).
//!
//! Why tiles and not the rows layout on these CPUs: with rows, decode on the AMD Zen 4
//! development machine read Phi-4-mini q8_0 at 4.4 tok/s with AVX2 against 7.2 with the
//! AVX-512 tiles, and the AVX-512 kernels over rows were as slow (4.75): the layout, not the
//! instruction set, cost the difference (docs/KERNELS.md V23).
//!
//! `vpmaddubsw` multiplies unsigned by signed bytes and saturates its pair sums to i16, so:
//! - Q8_0 (stored `q + 128`): `q = w ^ 0x80`, then `|q|` times `sign(x, q)` (pairs at most
//!   2 * 128 * 127 = 32512);
//! - Q4_0 / Q4_1 / Q4_K nibbles (0..16): 8 products pairs add up in i16 exactly (at most
//!   8 * 2 * 15 * 127 = 30480); Q5_K 5-bit quants (0..32): 4 pairs (at most
//!   4 * 2 * 31 * 127 = 31496);
//! - Q6_K 6-bit quants (0..64): two pairs add up exactly (at most 2 * 2 * 63 * 127 = 32004);
//! - Q3_K (0..8) and Q2_K (0..4) quants: all four pairs of a 16-element half (at most
//!   4 * 2 * 7 * 127 = 7112).

use std::arch::x86_64::*;

use super::super::pack::{
    IQ4XS_TILE_HDR, IQ4XS_TILE_SB, Q2K_TILE_HDR, Q2K_TILE_SB, Q2K_TILE_SUB, Q3K_TILE_HDR,
    Q3K_TILE_SB, Q3K_TILE_SUB, Q4K_TILE_SB, Q5K_TILE_SB, Q5K_TILE_SUB, Q6K_TILE_SB, Q6K_TILE_SUB,
};
use super::super::{QuantizedActs, WeightFormat, GROUP, QK};
use super::iq4::{signed_dot, table_i8_256};
use super::{
    dot4_256, prefetch, prefetch_ahead_tiles, q23_quants256, q5_high256, q6_high256, xp, Xp,
};

/// The 8 activation granules (4 bytes each) of block `b` of one row, each broadcast to 8 lanes.
#[inline(always)]
unsafe fn xgranules(q: *const i8, nb: usize, b: usize) -> [__m256i; 8] {
    let g0 = b / GROUP * GROUP;
    let g = (nb - g0).min(GROUP);
    let p = q.add(g0 * QK + 4 * (b - g0));
    let mut xb = [_mm256_setzero_si256(); 8];
    for k in 0..8 {
        xb[k] = _mm256_set1_epi32(std::ptr::read_unaligned(p.add(k * 4 * g) as *const i32));
    }
    xb
}

/// The canonical tree over 16 lane accumulators, lane-wise: 8 outputs.
#[inline(always)]
unsafe fn tree_half(acc: &[__m256; GROUP]) -> __m256 {
    let mut h8 = [_mm256_setzero_ps(); 8];
    for i in 0..8 {
        h8[i] = _mm256_add_ps(acc[i], acc[i + 8]);
    }
    let mut h4 = [_mm256_setzero_ps(); 4];
    for i in 0..4 {
        h4[i] = _mm256_add_ps(h8[i], h8[i + 4]);
    }
    _mm256_add_ps(_mm256_add_ps(h4[0], h4[2]), _mm256_add_ps(h4[1], h4[3]))
}

/// Row `r` of tile `m` for activation row `t` goes to `out[m][t * stride + r]`.
#[inline(always)]
unsafe fn store<const NT: usize, const MT: usize>(
    acc: &[[[[__m256; GROUP]; 2]; NT]; MT],
    out: [*mut f32; MT],
    stride: usize,
) {
    for m in 0..MT {
        for t in 0..NT {
            for h in 0..2 {
                _mm256_storeu_ps(out[m].add(t * stride + 8 * h), tree_half(&acc[m][t][h]));
            }
        }
    }
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 8 f16 at `p` widened to f32.
#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

#[inline(always)]
unsafe fn madd1(v: __m256i) -> __m256i {
    _mm256_madd_epi16(v, _mm256_set1_epi16(1))
}

/// `MT` tiles of a tiled block-32 format against `NT` activation rows. `$rec`: record bytes;
/// `$prep(rec, h)` loads half `h` of a record's scales and granules; `$dots(&[prep; 2], xb)`
/// is the raw integer dot of both halves with one activation row's 8 broadcast granules of
/// the block; `$update` turns a half's dot into the block's canonical float value. Both
/// halves are prepared before the activation rows, so each broadcast granule serves 16 rows:
/// with several activation rows the kernel is compute-bound, and broadcasting per half made
/// Phi-4-mini q8_0 prefill 20% slower than the rows layout (V23).
macro_rules! tile256 {
    ($name:ident, $rec:expr, $prep:ident, $dots:path, $update:path) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const NT: usize, const MT: usize>(
            w: [*const u8; MT],
            nb: usize,
            x: &Xp<NT>,
            out: [*mut f32; MT],
            stride: usize,
        ) {
            let pf = prefetch_ahead_tiles(NT, false);
            let mut acc = [[[[_mm256_setzero_ps(); GROUP]; 2]; NT]; MT];
            let mut b0 = 0;
            while b0 < nb {
                let g = (nb - b0).min(GROUP);
                lanes16!(j < g, {
                    let b = b0 + j;
                    for m in 0..MT {
                        let rec = w[m].add(b * $rec);
                        prefetch(rec, pf, $rec);
                        let wv = [$prep(rec, 0), $prep(rec, 1)];
                        for t in 0..NT {
                            let isum = $dots(&wv, &xgranules(x.q[t], nb, b));
                            for h in 0..2 {
                                let v = $update(&wv[h], isum[h], *x.d[t].add(b), *x.s[t].add(b));
                                acc[m][t][h][j] = _mm256_add_ps(acc[m][t][h][j], v);
                            }
                        }
                    }
                });
                b0 += g;
            }
            store(&acc, out, stride);
        }
    };
}

/// Half of a Q8_0 record: scales, the signed quants and their absolute values.
struct Q8Half {
    d: __m256,
    q: [__m256i; 8],
    a: [__m256i; 8],
}

#[inline(always)]
unsafe fn q8_half(rec: *const u8, h: usize) -> Q8Half {
    let flip = _mm256_set1_epi8(-128);
    let mut q = [flip; 8];
    let mut a = [flip; 8];
    for k in 0..8 {
        q[k] = _mm256_xor_si256(ld(rec.add(32 + 64 * k + 32 * h)), flip);
        a[k] = _mm256_abs_epi8(q[k]);
    }
    Q8Half {
        d: f16x8(rec.add(16 * h)),
        q,
        a,
    }
}

/// Half of a Q4_0 / Q4_1 record: scales (and mins) and the nibbles split into low and high.
struct Q4Half {
    d: __m256,
    m: __m256,
    lo: [__m256i; 4],
    hi: [__m256i; 4],
}

/// The low and high nibbles of 4 granules of 64 bytes at `p`, half `h`.
#[inline(always)]
unsafe fn nibbles_half(p: *const u8, h: usize) -> ([__m256i; 4], [__m256i; 4]) {
    let m0f = _mm256_set1_epi8(0x0f);
    let (mut lo, mut hi) = ([m0f; 4], [m0f; 4]);
    for k in 0..4 {
        let v = ld(p.add(64 * k + 32 * h));
        lo[k] = _mm256_and_si256(v, m0f);
        hi[k] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f);
    }
    (lo, hi)
}

#[inline(always)]
unsafe fn q4_0_half(rec: *const u8, h: usize) -> Q4Half {
    let (lo, hi) = nibbles_half(rec.add(32), h);
    Q4Half {
        d: f16x8(rec.add(16 * h)),
        m: _mm256_setzero_ps(),
        lo,
        hi,
    }
}

#[inline(always)]
unsafe fn q4_1_half(rec: *const u8, h: usize) -> Q4Half {
    let (lo, hi) = nibbles_half(rec.add(64), h);
    Q4Half {
        d: f16x8(rec.add(16 * h)),
        m: f16x8(rec.add(32 + 16 * h)),
        lo,
        hi,
    }
}

/// Raw `sum(q * x)` of a block from its low (elements 0..16) and high (16..32) nibbles
/// (with `Q5`, 5-bit quants: the two partial sums widen to i32 before they add).
#[inline(always)]
unsafe fn nibble_half_dots<const Q5: bool>(
    lo: &[__m256i; 4],
    hi: &[__m256i; 4],
    xb: &[__m256i; 8],
) -> __m256i {
    let mut s = [_mm256_setzero_si256(); 2];
    for p in 0..4 {
        let a = _mm256_maddubs_epi16(lo[p], xb[p]);
        let c = _mm256_maddubs_epi16(hi[p], xb[p + 4]);
        s[p % 2] = _mm256_add_epi16(s[p % 2], _mm256_add_epi16(a, c));
    }
    if Q5 {
        _mm256_add_epi32(madd1(s[0]), madd1(s[1]))
    } else {
        madd1(_mm256_add_epi16(s[0], s[1]))
    }
}

/// [`nibble_half_dots`] of both halves of a Q4_0 / Q4_1 (`Q5`: Q5_0 / Q5_1) record.
#[inline(always)]
unsafe fn nibble_dots<const Q5: bool>(w: &[Q4Half; 2], xb: &[__m256i; 8]) -> [__m256i; 2] {
    [
        nibble_half_dots::<Q5>(&w[0].lo, &w[0].hi, xb),
        nibble_half_dots::<Q5>(&w[1].lo, &w[1].hi, xb),
    ]
}

/// ORs the fifth bits (half `h` of the high-bit granule at `p`) into a half's nibbles.
#[inline(always)]
unsafe fn q5_merge_half(lo: &mut [__m256i; 4], hi: &mut [__m256i; 4], p: *const u8, h: usize) {
    let hb = ld(p.add(32 * h));
    for k in 0..4 {
        let (hl, hh) = q5_high256(hb, k);
        lo[k] = _mm256_or_si256(lo[k], hl);
        hi[k] = _mm256_or_si256(hi[k], hh);
    }
}

/// Half `h` of a Q5_0 / Q5_1 record: the Q4_0 / Q4_1 half with the high-bit granule that
/// follows it (at `rec + q4_rec`, `q4_rec` = the 4-bit record's size) merged in.
#[inline(always)]
unsafe fn q5_half(mut w: Q4Half, rec: *const u8, q4_rec: usize, h: usize) -> Q4Half {
    q5_merge_half(&mut w.lo, &mut w.hi, rec.add(q4_rec), h);
    w
}

#[inline(always)]
unsafe fn q5_0_half(rec: *const u8, h: usize) -> Q4Half {
    q5_half(q4_0_half(rec, h), rec, 288, h)
}

#[inline(always)]
unsafe fn q5_1_half(rec: *const u8, h: usize) -> Q4Half {
    q5_half(q4_1_half(rec, h), rec, 320, h)
}

/// `(d * dx) * isum`, `isum = dp - 2^S xsum` (Q4_0: `S` = 3, Q5_0: 4).
#[inline(always)]
unsafe fn offset_half_update<const S: u32>(w: &Q4Half, dp: __m256i, dx: f32, xsum: i32) -> __m256 {
    let is = _mm256_sub_epi32(dp, _mm256_set1_epi32(xsum << S));
    _mm256_mul_ps(
        _mm256_mul_ps(w.d, _mm256_set1_ps(dx)),
        _mm256_cvtepi32_ps(is),
    )
}

/// `((d * dx) * isum) + ((m * dx) * xsum)`.
#[inline(always)]
unsafe fn q4_1_half_update(w: &Q4Half, dp: __m256i, dx: f32, xsum: i32) -> __m256 {
    let dxv = _mm256_set1_ps(dx);
    _mm256_add_ps(
        _mm256_mul_ps(_mm256_mul_ps(w.d, dxv), _mm256_cvtepi32_ps(dp)),
        _mm256_mul_ps(_mm256_mul_ps(w.m, dxv), _mm256_set1_ps(xsum as f32)),
    )
}

/// Raw `sum(q * x)` of both halves, interleaved granule by granule: four independent chains
/// instead of two (q8_0 prefill ~10% faster than one half after the other).
#[inline(always)]
unsafe fn q8_dots(w: &[Q8Half; 2], xb: &[__m256i; 8]) -> [__m256i; 2] {
    let mut s = [[_mm256_setzero_si256(); 2]; 2];
    for k in 0..8 {
        for h in 0..2 {
            let p = _mm256_maddubs_epi16(w[h].a[k], _mm256_sign_epi8(xb[k], w[h].q[k]));
            s[h][k / 4] = _mm256_add_epi32(s[h][k / 4], madd1(p));
        }
    }
    [
        _mm256_add_epi32(s[0][0], s[0][1]),
        _mm256_add_epi32(s[1][0], s[1][1]),
    ]
}

/// `(d * dx) * isum`.
#[inline(always)]
unsafe fn q8_update(w: &Q8Half, isum: __m256i, dx: f32, _xsum: i32) -> __m256 {
    _mm256_mul_ps(
        _mm256_mul_ps(w.d, _mm256_set1_ps(dx)),
        _mm256_cvtepi32_ps(isum),
    )
}

tile256!(q8_0_tile256, 544, q8_half, q8_dots, q8_update);
tile256!(
    q4_0_tile256,
    288,
    q4_0_half,
    nibble_dots::<false>,
    offset_half_update::<3>
);
tile256!(
    q4_1_tile256,
    320,
    q4_1_half,
    nibble_dots::<false>,
    q4_1_half_update
);
tile256!(
    q5_0_tile256,
    352,
    q5_0_half,
    nibble_dots::<true>,
    offset_half_update::<4>
);
tile256!(
    q5_1_tile256,
    384,
    q5_1_half,
    nibble_dots::<true>,
    q4_1_half_update
);

/// Shuffle control that moves byte `k` of every 32-bit lane to its low byte, zeroing the rest.
#[inline(always)]
unsafe fn byte_of_lanes(k: i32) -> __m256i {
    let z = 0x8080_8000u32 as i32;
    let (a, b, c, d) = (z | k, z | (4 + k), z | (8 + k), z | (12 + k));
    _mm256_setr_epi32(a, b, c, d, a, b, c, d)
}

/// Half `h` of the per-row `(d * sc, dmin * m)` of the 8 sub-blocks of a Q4_K tile
/// super-block record (the vector form of `k4_unpack`, lane = row).
#[inline(always)]
unsafe fn q4k_half_params(rec: *const u8, h: usize, a: &mut [__m256; 8], bm: &mut [__m256; 8]) {
    let d = f16x8(rec.add(16 * h));
    let dmin = f16x8(rec.add(32 + 16 * h));
    let u0 = ld(rec.add(64 + 32 * h));
    let u1 = ld(rec.add(128 + 32 * h));
    let u2 = ld(rec.add(192 + 32 * h));
    let m3f = _mm256_set1_epi32(0x3f3f_3f3f);
    let m0f = _mm256_set1_epi32(0x0f0f_0f0f);
    let m30 = _mm256_set1_epi32(0x3030_3030);
    let sc = [
        _mm256_and_si256(u0, m3f),
        _mm256_or_si256(
            _mm256_and_si256(u2, m0f),
            _mm256_and_si256(_mm256_srli_epi32::<2>(u0), m30),
        ),
    ];
    let mn = [
        _mm256_and_si256(u1, m3f),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<4>(u2), m0f),
            _mm256_and_si256(_mm256_srli_epi32::<2>(u1), m30),
        ),
    ];
    for j in 0..8 {
        let sel = byte_of_lanes((j % 4) as i32);
        let s = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(sc[j / 4], sel));
        let m = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(mn[j / 4], sel));
        a[j] = _mm256_mul_ps(d, s);
        bm[j] = _mm256_mul_ps(dmin, m);
    }
}

/// Q4_K tiles against `NT` activation rows: per block `((d sc) dx) isum - ((dmin m) dx) xsum`.
/// With `Q5`, Q5_K tiles: a high-bit granule follows each sub-block's nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_tile256<const NT: usize, const MT: usize, const Q5: bool>(
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
    let mut acc = [[[[_mm256_setzero_ps(); GROUP]; 2]; NT]; MT];
    let mut a = [[[_mm256_setzero_ps(); 8]; 2]; MT];
    let mut bm = [[[_mm256_setzero_ps(); 8]; 2]; MT];
    let mut b0 = 0;
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        lanes16!(j < g, {
            let b = b0 + j;
            for m in 0..MT {
                let sb = w[m].add(b / 8 * rec);
                if j.is_multiple_of(8) {
                    prefetch(sb, pf, 256);
                    for h in 0..2 {
                        q4k_half_params(sb, h, &mut a[m][h], &mut bm[m][h]);
                    }
                }
                let nib = sb.add(256 + sub * (j % 8));
                prefetch(nib, pf, sub);
                let mut halves = [nibbles_half(nib, 0), nibbles_half(nib, 1)];
                if Q5 {
                    for (h, (lo, hi)) in halves.iter_mut().enumerate() {
                        q5_merge_half(lo, hi, nib.add(256), h);
                    }
                }
                for t in 0..NT {
                    let xb = xgranules(x.q[t], nb, b);
                    for h in 0..2 {
                        let (lo, hi) = &halves[h];
                        let dp = nibble_half_dots::<Q5>(lo, hi, &xb);
                        let dx = _mm256_set1_ps(*x.d[t].add(b));
                        let xs = _mm256_set1_ps(*x.s[t].add(b) as f32);
                        let v = _mm256_sub_ps(
                            _mm256_mul_ps(
                                _mm256_mul_ps(a[m][h][j % 8], dx),
                                _mm256_cvtepi32_ps(dp),
                            ),
                            _mm256_mul_ps(_mm256_mul_ps(bm[m][h][j % 8], dx), xs),
                        );
                        acc[m][t][h][j] = _mm256_add_ps(acc[m][t][h][j], v);
                    }
                }
            }
        });
        b0 += g;
    }
    store(&acc, out, stride);
}

/// Half of a Q6_K sub-block record: the super-block scale, the 16-element scales and the
/// 6-bit quants of the 8 granules.
#[derive(Clone, Copy)]
struct Q6Half {
    d: __m256,
    sc_lo: __m256i,
    sc_hi: __m256i,
    q: [__m256i; 8],
}

/// Q6_K tiles against `NT` activation rows: per block
/// `(d dx) (sc_lo (dp_lo - 32 xsum_lo) + sc_hi (dp_hi - 32 xsum_hi))`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_tile256<const NT: usize, const MT: usize>(
    w: [*const u8; MT],
    nb: usize,
    x: &Xp<NT>,
    out: [*mut f32; MT],
    stride: usize,
) {
    let pf = prefetch_ahead_tiles(NT, true);
    let m0f = _mm256_set1_epi8(0x0f);
    let mut acc = [[[[_mm256_setzero_ps(); GROUP]; 2]; NT]; MT];
    let mut b0 = 0;
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        lanes16!(j < g, {
            let b = b0 + j;
            for m in 0..MT {
                let sb = w[m].add(b / 8 * Q6K_TILE_SB);
                let sub = sb.add(32 + Q6K_TILE_SUB * (j % 8));
                prefetch(sub, pf, Q6K_TILE_SUB);
                let mut hv = [Q6Half {
                    d: _mm256_setzero_ps(),
                    sc_lo: _mm256_setzero_si256(),
                    sc_hi: _mm256_setzero_si256(),
                    q: [m0f; 8],
                }; 2];
                for h in 0..2 {
                    let hw = &mut hv[h];
                    hw.d = f16x8(sb.add(16 * h));
                    hw.sc_lo = _mm256_cvtepi8_epi32(_mm_loadl_epi64(sub.add(8 * h) as *const _));
                    hw.sc_hi =
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(sub.add(16 + 8 * h) as *const _));
                    let h0 = ld(sub.add(288 + 32 * h));
                    let h1 = ld(sub.add(352 + 32 * h));
                    for p in 0..4 {
                        let v = ld(sub.add(32 + 64 * p + 32 * h));
                        hw.q[p] = _mm256_or_si256(_mm256_and_si256(v, m0f), q6_high256(h0, p));
                        hw.q[p + 4] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f),
                            q6_high256(h1, p),
                        );
                    }
                }
                for t in 0..NT {
                    let xb = xgranules(x.q[t], nb, b);
                    let xlo = _mm256_set1_epi32(*x.lo[t].add(b) << 5);
                    let xhi = _mm256_set1_epi32(*x.hi[t].add(b) << 5);
                    let dx = _mm256_set1_ps(*x.d[t].add(b));
                    for h in 0..2 {
                        let hw = &hv[h];
                        let mut s = [_mm256_setzero_si256(); 4];
                        for k in (0..8).step_by(2) {
                            s[k / 2] = madd1(_mm256_add_epi16(
                                _mm256_maddubs_epi16(hw.q[k], xb[k]),
                                _mm256_maddubs_epi16(hw.q[k + 1], xb[k + 1]),
                            ));
                        }
                        let lo = _mm256_sub_epi32(_mm256_add_epi32(s[0], s[1]), xlo);
                        let hi = _mm256_sub_epi32(_mm256_add_epi32(s[2], s[3]), xhi);
                        let is = _mm256_add_epi32(
                            _mm256_mullo_epi32(hw.sc_lo, lo),
                            _mm256_mullo_epi32(hw.sc_hi, hi),
                        );
                        let v = _mm256_mul_ps(_mm256_mul_ps(hw.d, dx), _mm256_cvtepi32_ps(is));
                        acc[m][t][h][j] = _mm256_add_ps(acc[m][t][h][j], v);
                    }
                }
            }
        });
        b0 += g;
    }
    store(&acc, out, stride);
}

/// [`super::q3k_tile_scales512`] on half `h` of a tile (its scale sections start at `p`).
#[inline(always)]
unsafe fn q3k_half_scales(p: *const u8, h: usize) -> [__m256i; 4] {
    let u0 = ld(p.add(32 * h));
    let u1 = ld(p.add(64 + 32 * h));
    let u2 = ld(p.add(128 + 32 * h));
    let m0f = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    [
        _mm256_or_si256(
            _mm256_and_si256(u0, m0f),
            _mm256_and_si256(_mm256_slli_epi32::<4>(u2), m30),
        ),
        _mm256_or_si256(
            _mm256_and_si256(u1, m0f),
            _mm256_and_si256(_mm256_slli_epi32::<2>(u2), m30),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<4>(u0), m0f),
            _mm256_and_si256(u2, m30),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<4>(u1), m0f),
            _mm256_and_si256(_mm256_srli_epi32::<2>(u2), m30),
        ),
    ]
}

/// Half of a Q3_K / Q2_K sub-block: the 16-element scales, Q2_K's mins and the quants of the
/// 8 granules.
#[derive(Clone, Copy)]
struct Q23Half {
    sc_lo: __m256i,
    sc_hi: __m256i,
    mn_lo: __m256i,
    mn_hi: __m256i,
    q: [__m256i; 8],
}

/// Q3_K (`Q3`) or Q2_K tiles against `NT` activation rows: the update of the rows kernel
/// `q23k_256`, lane = row.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q23k_tile256<const NT: usize, const MT: usize, const Q3: bool>(
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
        _mm256_set1_epi32(0x3f),
        _mm256_set1_epi32(0x0f),
        _mm256_set1_epi32(32),
    );
    let zero = _mm256_setzero_si256();
    let mut acc = [[[[_mm256_setzero_ps(); GROUP]; 2]; NT]; MT];
    let mut d = [[_mm256_setzero_ps(); 2]; MT];
    let mut dmin = [[_mm256_setzero_ps(); 2]; MT];
    let mut scv = [[[zero; 4]; 2]; MT];
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
                    for h in 0..2 {
                        d[m][h] = f16x8(sb.add(16 * h));
                        if Q3 {
                            scv[m][h] = q3k_half_scales(sb.add(32), h);
                        } else {
                            dmin[m][h] = f16x8(sb.add(32 + 16 * h));
                            for k in 0..4 {
                                scv[m][h][k] = ld(sb.add(64 + 64 * k + 32 * h));
                            }
                        }
                    }
                }
                let sp = sb.add(hdr + sub * jj);
                prefetch(sp, pf, sub);
                let mut hv = [Q23Half {
                    sc_lo: zero,
                    sc_hi: zero,
                    mn_lo: zero,
                    mn_hi: zero,
                    q: [zero; 8],
                }; 2];
                for h in 0..2 {
                    let hw = &mut hv[h];
                    let sv = if jj.is_multiple_of(2) {
                        scv[m][h][jj / 2]
                    } else {
                        _mm256_srli_epi32::<16>(scv[m][h][jj / 2])
                    };
                    if Q3 {
                        hw.sc_lo = _mm256_sub_epi32(_mm256_and_si256(sv, m3f), c32);
                        hw.sc_hi = _mm256_sub_epi32(
                            _mm256_and_si256(_mm256_srli_epi32::<8>(sv), m3f),
                            c32,
                        );
                    } else {
                        hw.sc_lo = _mm256_and_si256(sv, m0f);
                        hw.mn_lo = _mm256_and_si256(_mm256_srli_epi32::<4>(sv), m0f);
                        hw.sc_hi = _mm256_and_si256(_mm256_srli_epi32::<8>(sv), m0f);
                        hw.mn_hi = _mm256_and_si256(_mm256_srli_epi32::<12>(sv), m0f);
                    }
                    let c = [ld(sp.add(32 * h)), ld(sp.add(64 + 32 * h))];
                    let hb = if Q3 { ld(sp.add(128 + 32 * h)) } else { zero };
                    hw.q = q23_quants256::<Q3>(c, hb);
                }
                for t in 0..NT {
                    let xb = xgranules(x.q[t], nb, b);
                    let (xl, xh) = (*x.lo[t].add(b), *x.hi[t].add(b));
                    let dx = _mm256_set1_ps(*x.d[t].add(b));
                    for h in 0..2 {
                        let hw = &hv[h];
                        let mut lo = dot4_256(&hw.q, &xb, 0);
                        let mut hi = dot4_256(&hw.q, &xb, 4);
                        if Q3 {
                            lo = _mm256_sub_epi32(lo, _mm256_set1_epi32(xl << 2));
                            hi = _mm256_sub_epi32(hi, _mm256_set1_epi32(xh << 2));
                        }
                        let is = _mm256_add_epi32(
                            _mm256_mullo_epi32(hw.sc_lo, lo),
                            _mm256_mullo_epi32(hw.sc_hi, hi),
                        );
                        let mut v =
                            _mm256_mul_ps(_mm256_mul_ps(d[m][h], dx), _mm256_cvtepi32_ps(is));
                        if !Q3 {
                            let ms = _mm256_add_epi32(
                                _mm256_mullo_epi32(hw.mn_lo, _mm256_set1_epi32(xl)),
                                _mm256_mullo_epi32(hw.mn_hi, _mm256_set1_epi32(xh)),
                            );
                            v = _mm256_sub_ps(
                                v,
                                _mm256_mul_ps(
                                    _mm256_mul_ps(dmin[m][h], dx),
                                    _mm256_cvtepi32_ps(ms),
                                ),
                            );
                        }
                        acc[m][t][h][j] = _mm256_add_ps(acc[m][t][h][j], v);
                    }
                }
            }
        });
        b0 += g;
    }
    store(&acc, out, stride);
}

/// IQ4_NL / IQ4_XS (`XS`) tiles, AVX2: `vpshufb` gives the signed table values `w`, then
/// `vpmaddubsw(|w|, sign(x, w))` per granule (see `iq4.rs`); per block `(s dx) isum`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_tile256<const NT: usize, const MT: usize, const XS: bool>(
    w: [*const u8; MT],
    nb: usize,
    x: &Xp<NT>,
    out: [*mut f32; MT],
    stride: usize,
) {
    let tbl = table_i8_256();
    let m0f = _mm256_set1_epi8(0x0f);
    let pf = prefetch_ahead_tiles(NT, XS);
    let mut a = [[[_mm256_setzero_ps(); 8]; 2]; MT];
    let mut acc = [[[[_mm256_setzero_ps(); GROUP]; 2]; NT]; MT];
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
                        for h in 0..2 {
                            let d = f16x8(sb.add(16 * h));
                            let sh = _mm256_cvtepu16_epi32(_mm_loadu_si128(
                                sb.add(32 + 16 * h) as *const __m128i
                            ));
                            let sl = ld(sb.add(64 + 32 * h));
                            for k in 0..8 {
                                let c4 = _mm_cvtsi32_si128(4 * k as i32);
                                let c2 = _mm_cvtsi32_si128(2 * k as i32);
                                let lo = _mm256_and_si256(
                                    _mm256_srl_epi32(sl, c4),
                                    _mm256_set1_epi32(15),
                                );
                                let hi = _mm256_and_si256(
                                    _mm256_srl_epi32(sh, c2),
                                    _mm256_set1_epi32(3),
                                );
                                let ls = _mm256_or_si256(lo, _mm256_slli_epi32::<4>(hi));
                                let sc = _mm256_sub_epi32(ls, _mm256_set1_epi32(32));
                                a[m][h][k] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc));
                            }
                        }
                    }
                    (
                        [a[m][0][j % 8], a[m][1][j % 8]],
                        sb.add(IQ4XS_TILE_HDR + 256 * (j % 8)),
                    )
                } else {
                    let rec = w[m].add(b * 288);
                    ([f16x8(rec), f16x8(rec.add(16))], rec.add(32))
                };
                prefetch(nib, pf, 256);
                let mut q = [[m0f; 8]; 2];
                let mut qa = [[m0f; 8]; 2];
                for h in 0..2 {
                    for p in 0..4 {
                        let v = ld(nib.add(64 * p + 32 * h));
                        q[h][p] = _mm256_shuffle_epi8(tbl, _mm256_and_si256(v, m0f));
                        q[h][p + 4] = _mm256_shuffle_epi8(
                            tbl,
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f),
                        );
                    }
                    for k in 0..8 {
                        qa[h][k] = _mm256_abs_epi8(q[h][k]);
                    }
                }
                for t in 0..NT {
                    let xb = xgranules(x.q[t], nb, b);
                    let dx = _mm256_set1_ps(*x.d[t].add(b));
                    for h in 0..2 {
                        let mut is = signed_dot(qa[h][0], q[h][0], xb[0]);
                        for k in 1..8 {
                            is = _mm256_add_epi32(is, signed_dot(qa[h][k], q[h][k], xb[k]));
                        }
                        let v = _mm256_mul_ps(_mm256_mul_ps(sv[h], dx), _mm256_cvtepi32_ps(is));
                        acc[m][t][h][j] = _mm256_add_ps(acc[m][t][h][j], v);
                    }
                }
            }
        });
        b0 += g;
    }
    store(&acc, out, stride);
}

/// AVX2 over `MT` tiles read in block lockstep, for activation rows `t0..t0+nt`; writes
/// `out[m][t * stride + r]` for `r < 16`.
///
/// # Safety
/// The `Avx2` path must be available; each `w[m]` points to one tile of `fmt` with `n_in`
/// columns, `x` has at least `t0 + nt` rows, `out` is valid for the writes.
#[allow(clippy::too_many_arguments)]
pub(in super::super) unsafe fn tiles_avx2<const MT: usize>(
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
        WeightFormat::Q8_0 => go!(q8_0_tile256),
        WeightFormat::Q4_0 => go!(q4_0_tile256),
        WeightFormat::Q4_1 => go!(q4_1_tile256),
        WeightFormat::Q5_0 => go!(q5_0_tile256),
        WeightFormat::Q5_1 => go!(q5_1_tile256),
        WeightFormat::Q4K => go!(k4_tile256; false),
        WeightFormat::Q5K => go!(k4_tile256; true),
        WeightFormat::Q6K => go!(q6k_tile256),
        WeightFormat::Q3K => go!(q23k_tile256; true),
        WeightFormat::Q2K => go!(q23k_tile256; false),
        WeightFormat::IQ4NL => go!(iq4_tile256; false),
        WeightFormat::IQ4XS => go!(iq4_tile256; true),
    }
}
