//! aarch64 NEON kernel with the dot-product extension (`sdot`, signed x signed bytes, 4
//! products per i32 lane): one 128-bit register covers 4 lanes (blocks) of a granule, so the
//! group interleave gives per-block sums without horizontal reductions, as on x86.
//!
//! Kept simple on purpose (it cannot be run or even compiled on the x86 development
//! machine): the exact integer parts come from `sdot`, and the f32 update of every block is
//! the scalar path's own `block_value` + `reduce16`, so the results are the canonical ones
//! by construction. `sdot` is emitted with inline assembly because its intrinsic
//! (`vdotq_s32`) is not stable in Rust 1.95.

#![allow(clippy::needless_range_loop)] // lanes and rows index several arrays at once

use std::arch::aarch64::*;

use super::pack::{lane_sub_scales, quant_base};
use super::scalar::{block_msum, block_value, reduce16};
use super::{QuantizedActs, WeightFormat, GROUP, QK, TILE};

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    std::arch::asm!(
        ".arch_extension dotprod",
        "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
        inout(vreg) acc,
        in(vreg) a,
        in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// 16 bytes at `p`, of which only the first `n` are valid (zeros after).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn ld16(p: *const u8, n: usize) -> uint8x16_t {
    if n >= 16 {
        vld1q_u8(p)
    } else {
        let mut buf = [0u8; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        vld1q_u8(buf.as_ptr())
    }
}

/// Signed weight quants of granule `k` (0..8) for lanes `4c..4c+4` of a group, centred like
/// `lane_ints`: Q8_0 `q`, Q4_0 `q - 8`, Q5_0 `q - 16`, Q4_1 / Q4_K / Q5_1 / Q5_K / Q2_K `q`,
/// Q6_K `q - 32`, Q3_K `q - 4`, IQ4_NL / IQ4_XS the table value of the index.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn weight_granule(
    fmt: WeightFormat,
    wg: *const u8,
    g: usize,
    c: usize,
    k: usize,
) -> int8x16_t {
    let n = 4 * g - 16 * c; // valid bytes from the chunk start within one granule
    let nib = |base: usize| {
        let v = ld16(wg.add(base + (k % 4) * 4 * g + 16 * c), n);
        if k < 4 {
            vandq_u8(v, vdupq_n_u8(0x0f))
        } else {
            vshrq_n_u8::<4>(v)
        }
    };
    match fmt {
        WeightFormat::Q8_0 => vreinterpretq_s8_u8(ld16(wg.add(2 * g + k * 4 * g + 16 * c), n)),
        WeightFormat::Q4_0 => vsubq_s8(vreinterpretq_s8_u8(nib(2 * g)), vdupq_n_s8(8)),
        WeightFormat::Q4_1 => vreinterpretq_s8_u8(nib(4 * g)),
        WeightFormat::Q4K => vreinterpretq_s8_u8(nib(16 * (g / 8))),
        WeightFormat::Q5_0 | WeightFormat::Q5_1 | WeightFormat::Q5K => {
            let base = match fmt {
                WeightFormat::Q5_0 => 2 * g,
                WeightFormat::Q5_1 => 4 * g,
                _ => 16 * (g / 8),
            };
            // Fifth bits: bit `k % 4` of the high-bit granule for elements 0..16, bit
            // `4 + k % 4` for 16..32, moved to bit 4.
            let h = ld16(wg.add(base + 16 * g + 16 * c), n);
            let shift = vdupq_n_s8(4 - (k as i8));
            let high = vandq_u8(vshlq_u8(h, shift), vdupq_n_u8(0x10));
            let q = vreinterpretq_s8_u8(vorrq_u8(nib(base), high));
            if fmt == WeightFormat::Q5_0 {
                vsubq_s8(q, vdupq_n_s8(16))
            } else {
                q
            }
        }
        WeightFormat::Q6K => {
            let s = g / 8;
            let low = nib(2 * s + 2 * g);
            let h = ld16(wg.add(2 * s + 18 * g + (k / 4) * 4 * g + 16 * c), n);
            let shift = vdupq_n_s8(-(2 * (k % 4) as i8));
            let high = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(h, shift), vdupq_n_u8(3)));
            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), vdupq_n_s8(32))
        }
        WeightFormat::IQ4NL | WeightFormat::IQ4XS => {
            let tbl = vld1q_s8(super::pack::IQ4_VALUES.as_ptr());
            vqtbl1q_s8(tbl, nib(quant_base(fmt, g)))
        }
        WeightFormat::Q3K | WeightFormat::Q2K => {
            let cr = quant_base(fmt, g);
            // Crumb granule `k / 4`, bits `2 (k % 4)..`; Q3_K's third bit is bit `k` of its
            // high-bit granule.
            let v = ld16(wg.add(cr + (k / 4) * 4 * g + 16 * c), n);
            let low = vandq_u8(vshlq_u8(v, vdupq_n_s8(-(2 * (k % 4) as i8))), vdupq_n_u8(3));
            if fmt == WeightFormat::Q3K {
                let h = ld16(wg.add(cr + 8 * g + 16 * c), n);
                let high = vandq_u8(vshlq_u8(h, vdupq_n_s8(2 - k as i8)), vdupq_n_u8(4));
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), vdupq_n_s8(4))
            } else {
                vreinterpretq_s8_u8(low)
            }
        }
    }
}

/// `res[t] = dot(wrow, x[t0 + t])` for `t < nt`.
///
/// # Safety
/// The `NeonDot` path must be available; `wrow` is one packed row of `fmt` of `n_in` elements
/// and `x` has at least `t0 + nt` rows of `n_in`.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn row_neon(
    fmt: WeightFormat,
    wrow: &[u8],
    n_in: usize,
    x: &QuantizedActs,
    t0: usize,
    nt: usize,
    res: &mut [f32; TILE],
) {
    let nb = n_in / QK;
    let mut acc = [[0f32; GROUP]; TILE];
    let (mut b0, mut off) = (0, 0);
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        let gb = fmt.group_bytes(g);
        let wg = &wrow[off..off + gb];
        for c in 0..g.div_ceil(4) {
            let mut wq = [vdupq_n_s8(0); 8];
            for (k, w) in wq.iter_mut().enumerate() {
                *w = weight_granule(fmt, wg.as_ptr(), g, c, k);
            }
            for t in 0..nt {
                let a = x.row(t0 + t);
                let xq = a.q.as_ptr().add(b0 * QK) as *const u8;
                let n = 4 * g - 16 * c;
                let mut lo = vdupq_n_s32(0);
                let mut hi = vdupq_n_s32(0);
                for k in 0..4 {
                    let xk = vreinterpretq_s8_u8(ld16(xq.add(k * 4 * g + 16 * c), n));
                    lo = sdot(lo, wq[k], xk);
                    let xk = vreinterpretq_s8_u8(ld16(xq.add((k + 4) * 4 * g + 16 * c), n));
                    hi = sdot(hi, wq[k + 4], xk);
                }
                let (mut l4, mut h4) = ([0i32; 4], [0i32; 4]);
                vst1q_s32(l4.as_mut_ptr(), lo);
                vst1q_s32(h4.as_mut_ptr(), hi);
                for j in 0..4 {
                    let i = 4 * c + j;
                    if i >= g {
                        break;
                    }
                    let isum = if matches!(
                        fmt,
                        WeightFormat::Q6K | WeightFormat::Q3K | WeightFormat::Q2K
                    ) {
                        let sc = lane_sub_scales(fmt, wg, g, i);
                        sc[0] * l4[j] + sc[1] * h4[j]
                    } else {
                        l4[j] + h4[j]
                    };
                    let b = b0 + i;
                    let msum = block_msum(fmt, wg, g, i, &a, b);
                    let v = block_value(fmt, wg, g, i, isum, msum, a.d[b]);
                    acc[t][i] += v;
                }
            }
        }
        b0 += g;
        off += gb;
    }
    for t in 0..nt {
        res[t] = reduce16(&acc[t]);
    }
}
