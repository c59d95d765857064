//! Q6_K: 256-element super-block of 16 sub-blocks of 16 elements, 6-bit quants (4 low bits
//! plus 2 high bits), signed 8-bit sub-block scales, one f16 super-block scale.
//!
//! Block layout (210 bytes, ggml `block_q6_K`):
//!
//! | offset | bytes | field                                              |
//! |--------|-------|----------------------------------------------------|
//! | 0      | 128   | `ql: [u8; 128]`: low 4 bits                        |
//! | 128    | 64    | `qh: [u8; 64]`: high 2 bits                        |
//! | 192    | 16    | `scales: [i8; 16]`: sub-block scales               |
//! | 208    | 2     | `d`: f16 super-block scale                         |
//!
//! Element `e = 128*h + 32*s + l` (`h` in 0..2, `s` in 0..4, `l` in 0..32):
//! `low = (ql[64*h + 32*(s & 1) + l] >> 4*(s >> 1)) & 0xF`,
//! `high = (qh[32*h + l] >> 2*s) & 3`, `q = (low | high << 4) - 32` in -32..=31;
//! sub-block `e / 16`.
//!
//! `x[e] = (d * scale) * q` in f32 (gguf-py `(d * scales) * q`; ggml `d * sc[is] * q1`,
//! left to right, the same). Both products are exact (at most 11 + 7 + 5 = 23 bits), so
//! `d * (scale * q)` would give the same bits too.

use super::f16_at;

/// Elements per block.
pub const QK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 210;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let ql = &block[0..128]; // [2][64]
    let qh = &block[128..192]; // [2][32]
    let scales = &block[192..208]; // [16] i8
    let d = f16_at(block, 208);
    for h in 0..2 {
        let qh = &qh[32 * h..32 * h + 32]; // [32]
        for s in 0..4 {
            let ql = &ql[64 * h + 32 * (s & 1)..64 * h + 32 * (s & 1) + 32]; // [32]
            let lshift = 4 * (s >> 1);
            let hshift = 2 * s;
            for part in 0..2 {
                let dl = d * f32::from(scales[8 * h + 2 * s + part] as i8);
                let base = 128 * h + 32 * s + 16 * part;
                let y = &mut out[base..base + 16]; // [16]
                for (l, y) in y.iter_mut().enumerate() {
                    let i = 16 * part + l;
                    let v = ((ql[i] >> lshift) & 0x0f) | (((qh[i] >> hshift) & 3) << 4);
                    *y = dl * f32::from(v as i8 - 32);
                }
            }
        }
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
