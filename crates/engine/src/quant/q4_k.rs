//! Q4_K: 256-element super-block of 8 sub-blocks of 32 elements, 4-bit quants, 6-bit
//! sub-block scales and mins, f16 super-block scale and min.
//!
//! Block layout (144 bytes, ggml `block_q4_K`):
//!
//! | offset | bytes | field                                                    |
//! |--------|-------|----------------------------------------------------------|
//! | 0      | 2     | `d`: f16 super-block scale for the scales                |
//! | 2      | 2     | `dmin`: f16 super-block scale for the mins               |
//! | 4      | 12    | `scales: [u8; 12]`: 8 packed 6-bit scales + 8 mins ([`scale_min`]) |
//! | 16     | 128   | `qs: [u8; 128]`: 4-bit quants                            |
//!
//! Element `e = 64*c + 32*b + l` (`c` in 0..4, `b` in 0..2, `l` in 0..32) has quant
//! `q = (qs[32*c + l] >> 4*b) & 0xF` and belongs to sub-block `j = 2*c + b`.
//!
//! `x[e] = (d * sc[j]) * q - (dmin * m[j])` in f32 (gguf-py's order, ggml's `d1 * q - m1`).
//! All products are exact in f32 (at most 11 + 6 + 4 bits), so only the subtraction rounds
//! (an FMA would give the same bits).

use super::f16_at;

/// Elements per block.
pub const QK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 144;

/// ggml's `get_scale_min_k4`: 6-bit scale and min of sub-block `j` (0..8) from the 12-byte
/// packed field (shared by Q4_K and Q5_K).
///
/// Bytes 0..4: low 6 bits = scale j (j < 4), top 2 bits = bits 4..6 of scale j+4.
/// Bytes 4..8: low 6 bits = min j (j < 4), top 2 bits = bits 4..6 of min j+4.
/// Bytes 8..12: low nibble = bits 0..4 of scale j+4, high nibble = bits 0..4 of min j+4.
#[inline(always)]
pub fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16]; // [12]
    let qs = &block[16..144]; // [128] = [4][32]
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32]; // [32]
        for b in 0..2 {
            let (sc, m) = scale_min(2 * c + b, scales);
            let d1 = d * f32::from(sc);
            let m1 = dmin * f32::from(m);
            let base = 64 * c + 32 * b;
            let y = &mut out[base..base + 32]; // [32]
            for (y, &v) in y.iter_mut().zip(q) {
                *y = d1 * f32::from((v >> (4 * b)) & 0x0f) - m1;
            }
        }
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
