//! Q2_K: 256-element super-block of 16 sub-blocks of 16 elements, 2-bit quants, 4-bit
//! sub-block scales and mins, f16 super-block scale and min.
//!
//! Block layout (84 bytes, ggml `block_q2_K`):
//!
//! | offset | bytes | field                                                              |
//! |--------|-------|--------------------------------------------------------------------|
//! | 0      | 16    | `scales: [u8; 16]`: sub-block `s`: scale `scales[s] & 0xF`, min `scales[s] >> 4` |
//! | 16     | 64    | `qs: [u8; 64]`: 2-bit quants (see below)                           |
//! | 80     | 2     | `d`: f16 super-block scale for the scales                          |
//! | 82     | 2     | `dmin`: f16 super-block scale for the mins                         |
//!
//! Element `e = 128*h + 32*s + l` (`h` in 0..2, `s` in 0..4, `l` in 0..32) has quant
//! `q = (qs[32*h + l] >> 2*s) & 3` and belongs to sub-block `e / 16`.
//!
//! `x[e] = dl * q - ml` with `dl = d * (sc & 0xF)` and `ml = dmin * (sc >> 4)` in f32:
//! gguf-py's order and ggml's as written. All products are exact in f32 (at most
//! 11 + 4 + 2 bits), so only the subtraction rounds (an FMA would give the same bits).

use super::f16_at;

/// Elements per block.
pub const QK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 84;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let scales = &block[0..16]; // [16]
    let qs = &block[16..80]; // [64] = [2 halves][32]
    let d = f16_at(block, 80);
    let dmin = f16_at(block, 82);
    for h in 0..2 {
        let q = &qs[32 * h..32 * h + 32]; // [32]
        for s in 0..4 {
            let shift = 2 * s;
            for part in 0..2 {
                let sc = scales[8 * h + 2 * s + part];
                let dl = d * f32::from(sc & 0x0f);
                let ml = dmin * f32::from(sc >> 4);
                let base = 128 * h + 32 * s + 16 * part;
                let y = &mut out[base..base + 16]; // [16]
                for (l, y) in y.iter_mut().enumerate() {
                    let v = (q[16 * part + l] >> shift) & 3;
                    *y = dl * f32::from(v) - ml;
                }
            }
        }
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
