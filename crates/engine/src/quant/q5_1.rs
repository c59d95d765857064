//! Q5_1: 32 elements per block, asymmetric 5-bit quants with an f16 scale and an f16 min.
//!
//! Block layout (24 bytes, ggml `block_q5_1`):
//!
//! | offset | bytes | field                                                        |
//! |--------|-------|--------------------------------------------------------------|
//! | 0      | 2     | `d`: f16 scale                                               |
//! | 2      | 2     | `m`: f16 min (offset)                                        |
//! | 4      | 4     | `qh`: u32 little endian, bit `j` = 5th bit of element `j`    |
//! | 8      | 16    | `qs: [u8; 16]`: low nibbles, element `j` = `qs[j] & 0xF`, element `j + 16` = `qs[j] >> 4` |
//!
//! `q[j] = low4 | bit_j(qh) << 4` (0..=31), `x[j] = (d * q[j]) + m` (gguf-py's order, ggml's
//! `x0*d + m`). The product is exact in f32, so only the sum rounds; an FMA gives the same bits.

use super::f16_at;

/// Elements per block.
pub const QK: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 24;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
    let qs = &block[8..24]; // [16]
    for (j, &q) in qs.iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        let q0 = u32::from(q & 0x0f) | h0;
        let q1 = u32::from(q >> 4) | h1;
        out[j] = d * q0 as f32 + m;
        out[j + 16] = d * q1 as f32 + m;
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
