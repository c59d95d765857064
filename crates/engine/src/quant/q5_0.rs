//! Q5_0: 32 elements per block, symmetric 5-bit quants with one f16 scale.
//!
//! Block layout (22 bytes, ggml `block_q5_0`):
//!
//! | offset | bytes | field                                                        |
//! |--------|-------|--------------------------------------------------------------|
//! | 0      | 2     | `d`: f16 scale                                               |
//! | 2      | 4     | `qh`: u32 little endian, bit `j` = 5th bit of element `j`    |
//! | 6      | 16    | `qs: [u8; 16]`: low nibbles, element `j` = `qs[j] & 0xF`, element `j + 16` = `qs[j] >> 4` |
//!
//! `q[j] = (low4 | bit_j(qh) << 4) - 16`, `x[j] = d * q[j]` (gguf-py `d * q`; ggml `x0*d`).

use super::f16_at;

/// Elements per block.
pub const QK: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 22;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let qs = &block[6..22]; // [16]
    for (j, &q) in qs.iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        let q0 = (u32::from(q & 0x0f) | h0) as i32 - 16;
        let q1 = (u32::from(q >> 4) | h1) as i32 - 16;
        out[j] = d * q0 as f32;
        out[j + 16] = d * q1 as f32;
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
