//! Q4_0: 32 elements per block, symmetric 4-bit quants with one f16 scale.
//!
//! Block layout (18 bytes, ggml `block_q4_0`):
//!
//! | offset | bytes | field                                                        |
//! |--------|-------|--------------------------------------------------------------|
//! | 0      | 2     | `d`: f16 scale                                               |
//! | 2      | 16    | `qs: [u8; 16]`: element `j` = `qs[j] & 0xF`, element `j + 16` = `qs[j] >> 4` |
//!
//! `x[j] = d * (q[j] - 8)` in f32 (gguf-py `d * q`; ggml `x0*d`, the same product).

use super::f16_at;

/// Elements per block.
pub const QK: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let qs = &block[2..18]; // [16]
    let (lo, hi) = out.split_at_mut(QK / 2); // [16], [16]
    for ((&q, y0), y1) in qs.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
        *y0 = d * (i32::from(q & 0x0f) - 8) as f32;
        *y1 = d * (i32::from(q >> 4) - 8) as f32;
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_block() {
        let mut b = [0u8; BLOCK_BYTES];
        b[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2] = 0xf0; // element 0: 0 - 8, element 16: 15 - 8
        b[3] = 0x98; // element 1: 8 - 8, element 17: 9 - 8
        let mut y = [0.0f32; QK];
        dequantize_block(&b, &mut y);
        assert_eq!(
            (y[0], y[16], y[1], y[17], y[2]),
            (-4.0, 3.5, 0.0, 0.5, -4.0)
        );
    }
}
