//! Q5_K: 256-element super-block of 8 sub-blocks of 32 elements, 5-bit quants (4 low bits
//! plus a high-bit plane), 6-bit sub-block scales and mins, f16 super-block scale and min.
//!
//! Block layout (176 bytes, ggml `block_q5_K`):
//!
//! | offset | bytes | field                                                    |
//! |--------|-------|----------------------------------------------------------|
//! | 0      | 2     | `d`: f16 super-block scale for the scales                |
//! | 2      | 2     | `dmin`: f16 super-block scale for the mins               |
//! | 4      | 12    | `scales: [u8; 12]`: packed as in Q4_K ([`super::q4_k::scale_min`]) |
//! | 16     | 32    | `qh: [u8; 32]`: high bits                                |
//! | 48     | 128   | `qs: [u8; 128]`: low 4 bits                              |
//!
//! Element `e = 64*c + 32*b + l` (`c` in 0..4, `b` in 0..2, `l` in 0..32):
//! `q = ((qs[32*c + l] >> 4*b) & 0xF) | ((qh[l] >> (2*c + b)) & 1) << 4` (bit `e / 32` of
//! `qh[l]`), sub-block `j = 2*c + b`.
//!
//! `x[e] = (d * sc[j]) * q - (dmin * m[j])` in f32 (gguf-py's order, ggml's as written).
//! All products are exact in f32 (at most 11 + 6 + 5 bits), so only the subtraction rounds.

use super::f16_at;
use super::q4_k::scale_min;

/// Elements per block.
pub const QK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 176;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16]; // [12]
    let qh = &block[16..48]; // [32]
    let qs = &block[48..176]; // [128] = [4][32]
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32]; // [32]
        for b in 0..2 {
            let j = 2 * c + b;
            let (sc, m) = scale_min(j, scales);
            let d1 = d * f32::from(sc);
            let m1 = dmin * f32::from(m);
            let base = 64 * c + 32 * b;
            let y = &mut out[base..base + 32]; // [32]
            for ((y, &lo), &hi) in y.iter_mut().zip(q).zip(qh) {
                let v = ((lo >> (4 * b)) & 0x0f) | (((hi >> j) & 1) << 4);
                *y = d1 * f32::from(v) - m1;
            }
        }
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
