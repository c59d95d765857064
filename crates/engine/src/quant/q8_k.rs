//! Q8_K: 256-element block of 8-bit quants with an f32 scale; ggml's intermediate format
//! for K-quant dot products (not normally stored in model files).
//!
//! Block layout (292 bytes, ggml `block_q8_K`):
//!
//! | offset | bytes | field                                                   |
//! |--------|-------|---------------------------------------------------------|
//! | 0      | 4     | `d`: f32 scale, little endian                           |
//! | 4      | 256   | `qs: [i8; 256]`: quants                                 |
//! | 260    | 32    | `bsums: [i16; 16]`: sums of each 16 quants (unused here)|
//!
//! `x[j] = d * q[j]`, as ggml's `dequantize_row_q8_K`. gguf-py has no Q8_K support, so this
//! format is covered by hand-made tests only.

/// Elements per block.
pub const QK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 292;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    let qs = &block[4..260]; // [256] i8
    for (y, &q) in out.iter_mut().zip(qs) {
        *y = d * f32::from(q as i8);
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
        b[0..4].copy_from_slice(&0.25f32.to_le_bytes());
        for (j, q) in b[4..260].iter_mut().enumerate() {
            *q = (j as u8).wrapping_sub(128);
        }
        b[260..].fill(0xff); // bsums are ignored
        let mut y = [0.0f32; QK];
        dequantize_block(&b, &mut y);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.25 * (j as i32 - 128) as f32);
        }
    }
}
