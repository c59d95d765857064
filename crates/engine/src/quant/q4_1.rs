//! Q4_1: 32 elements per block, asymmetric 4-bit quants with an f16 scale and an f16 min.
//!
//! Block layout (20 bytes, ggml `block_q4_1`):
//!
//! | offset | bytes | field                                                        |
//! |--------|-------|--------------------------------------------------------------|
//! | 0      | 2     | `d`: f16 scale                                               |
//! | 2      | 2     | `m`: f16 min (offset)                                        |
//! | 4      | 16    | `qs: [u8; 16]`: element `j` = `qs[j] & 0xF`, element `j + 16` = `qs[j] >> 4` |
//!
//! `x[j] = (d * q[j]) + m` as gguf-py computes it (ggml writes `x0*d + m`). The product is
//! exact in f32 (11-bit f16 mantissa times a 4-bit integer), so only the sum rounds, and a
//! C compiler contracting this into an FMA (GCC's default `-ffp-contract=fast`) gives the
//! same bits.

use super::f16_at;

/// Elements per block.
pub const QK: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 20;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..20]; // [16]
    let (lo, hi) = out.split_at_mut(QK / 2); // [16], [16]
    for ((&q, y0), y1) in qs.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
        *y0 = d * f32::from(q & 0x0f) + m;
        *y1 = d * f32::from(q >> 4) + m;
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
