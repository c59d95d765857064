//! IQ4_NL: 32 elements per block, 4-bit indices into a fixed non-linear table of int8 values,
//! one f16 scale.
//!
//! Block layout (18 bytes, ggml `block_iq4_nl`):
//!
//! | offset | bytes | field                                                        |
//! |--------|-------|--------------------------------------------------------------|
//! | 0      | 2     | `d`: f16 scale                                               |
//! | 2      | 16    | `qs: [u8; 16]`: element `j` = `qs[j] & 0xF`, element `j + 16` = `qs[j] >> 4` (Q4_0's order) |
//!
//! `x[j] = d * KVALUES[q[j]]` in f32 (ggml's `d * kvalues_iq4nl[...]`; the product is exact:
//! 11 + 7 significant bits).

use super::f16_at;

/// Elements per block.
pub const QK: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;

/// ggml's `kvalues_iq4nl`: the value of each 4-bit index.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let (lo, hi) = out.split_at_mut(QK / 2); // [16], [16]
    for ((&q, y0), y1) in block[2..18].iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
        *y0 = d * f32::from(KVALUES[usize::from(q & 0x0f)]);
        *y1 = d * f32::from(KVALUES[usize::from(q >> 4)]);
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
