//! The portable kernel: the definition of the canonical order (see the module docs of
//! `kernels`) that every SIMD path reproduces bit for bit.

use super::pack::{lane_ints, lane_params, lane_sub_scales};
use super::{ActRow, QuantizedActs, WeightFormat, GROUP, QK, TILE};

/// `res[t] = dot(wrow, x[t0 + t])` for `t < nt`.
pub(super) fn row(
    fmt: WeightFormat,
    wrow: &[u8],
    n_in: usize,
    x: &QuantizedActs,
    t0: usize,
    nt: usize,
    res: &mut [f32; TILE],
) {
    for (t, r) in res.iter_mut().enumerate().take(nt) {
        *r = row_dot(fmt, wrow, n_in, x.row(t0 + t));
    }
}

/// The fixed reduction tree over the 16 lane accumulators.
#[inline(always)]
pub(crate) fn reduce16(acc: &[f32; GROUP]) -> f32 {
    let mut h8 = [0f32; 8];
    for i in 0..8 {
        h8[i] = acc[i] + acc[i + 8];
    }
    let mut h4 = [0f32; 4];
    for i in 0..4 {
        h4[i] = h8[i] + h8[i + 4];
    }
    let h2 = [h4[0] + h4[2], h4[1] + h4[3]];
    h2[0] + h2[1]
}

/// The exact integer that multiplies a block's min term: the activation block sum for
/// Q4_1 / Q5_1 / Q4_K / Q5_K, `m_lo * xsum_lo + m_hi * xsum_hi` for Q2_K (its 16-element
/// mins), 0 for the rest.
#[inline(always)]
pub(crate) fn block_msum(
    fmt: WeightFormat,
    wg: &[u8],
    g: usize,
    i: usize,
    a: &ActRow,
    b: usize,
) -> i32 {
    match fmt {
        WeightFormat::Q2K => {
            let sc = lane_sub_scales(fmt, wg, g, i);
            sc[2] * a.sum_lo[b] + sc[3] * a.sum_hi[b]
        }
        _ => a.sum[b],
    }
}

/// Float update of one block (lane `i` of group `wg`), given its exact integer parts
/// (`msum` from [`block_msum`]). `isum` for Q6_K / Q3_K / Q2_K is already scaled by the
/// 16-element integer scales.
#[inline(always)]
pub(crate) fn block_value(
    fmt: WeightFormat,
    wg: &[u8],
    g: usize,
    i: usize,
    isum: i32,
    msum: i32,
    dx: f32,
) -> f32 {
    let (s, m) = lane_params(fmt, wg, g, i);
    let isum = isum as f32;
    match fmt {
        WeightFormat::Q8_0
        | WeightFormat::Q4_0
        | WeightFormat::Q5_0
        | WeightFormat::Q6K
        | WeightFormat::Q3K
        | WeightFormat::IQ4NL
        | WeightFormat::IQ4XS => (s * dx) * isum,
        WeightFormat::Q4_1 | WeightFormat::Q5_1 => ((s * dx) * isum) + ((m * dx) * (msum as f32)),
        WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q2K => {
            ((s * dx) * isum) - ((m * dx) * (msum as f32))
        }
    }
}

/// Exact integer dot of lane `i` of a weight group with the matching activation block
/// (`xg` = the group's interleaved activation quants). Q6_K, Q3_K, Q2_K:
/// `sc_lo * lo + sc_hi * hi` over the block's 16-element halves.
#[inline(always)]
pub(crate) fn block_isum(
    fmt: WeightFormat,
    wg: &[u8],
    xg: &[i8],
    g: usize,
    i: usize,
    wq: &mut [i32; QK],
) -> i32 {
    lane_ints(fmt, wg, g, i, wq);
    let xk = |k: usize| i32::from(xg[(k / 4) * 4 * g + 4 * i + k % 4]);
    if matches!(
        fmt,
        WeightFormat::Q6K | WeightFormat::Q3K | WeightFormat::Q2K
    ) {
        let lo: i32 = (0..16).map(|k| wq[k] * xk(k)).sum();
        let hi: i32 = (16..32).map(|k| wq[k] * xk(k)).sum();
        let sc = lane_sub_scales(fmt, wg, g, i);
        sc[0] * lo + sc[1] * hi
    } else {
        (0..QK).map(|k| wq[k] * xk(k)).sum()
    }
}

/// One output element in the canonical order.
pub(crate) fn row_dot(fmt: WeightFormat, wrow: &[u8], n_in: usize, a: ActRow<'_>) -> f32 {
    let nb = n_in / QK;
    let mut acc = [0f32; GROUP];
    let mut wq = [0i32; QK];
    let (mut b0, mut off) = (0, 0);
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        let gb = fmt.group_bytes(g);
        let wg = &wrow[off..off + gb];
        let xg = &a.q[b0 * QK..(b0 + g) * QK];
        for (i, acc) in acc.iter_mut().enumerate().take(g) {
            let b = b0 + i;
            let isum = block_isum(fmt, wg, xg, g, i, &mut wq);
            let msum = block_msum(fmt, wg, g, i, &a, b);
            let v = block_value(fmt, wg, g, i, isum, msum, a.d[b]);
            *acc += v;
        }
        b0 += g;
        off += gb;
    }
    reduce16(&acc)
}
