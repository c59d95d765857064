//! Q3_K: 256-element super-block of 16 sub-blocks of 16 elements, 3-bit quants (2 low bits
//! plus a high-bit mask), signed 6-bit sub-block scales, one f16 super-block scale.
//!
//! Block layout (110 bytes, ggml `block_q3_K`):
//!
//! | offset | bytes | field                                                      |
//! |--------|-------|------------------------------------------------------------|
//! | 0      | 32    | `hmask: [u8; 32]`: high bit of each quant                  |
//! | 32     | 64    | `qs: [u8; 64]`: low 2 bits of each quant                   |
//! | 96     | 12    | `scales: [u8; 12]`: 16 packed 6-bit scales (see below)     |
//! | 108    | 2     | `d`: f16 super-block scale                                 |
//!
//! Element `e = 128*h + 32*s + l` (`h` in 0..2, `s` in 0..4, `l` in 0..32):
//! `low = (qs[32*h + l] >> 2*s) & 3`, `hbit = (hmask[l] >> (4*h + s)) & 1` (bit `e / 32`),
//! `q = low - (hbit ? 0 : 4)` in -4..=3; sub-block `e / 16`.
//!
//! 6-bit scale `j` (0..16): low 4 bits `scales[j] & 0xF` for `j < 8`, `scales[j-8] >> 4`
//! otherwise; high 2 bits `(scales[8 + j%4] >> 2*(j/4)) & 3`; the scale is that value - 32.
//!
//! `x[e] = (d * (scale - 32)) * q` in f32 (gguf-py and ggml both compute
//! `dl = d * (scale - 32)` first); both products are exact in f32.

use super::f16_at;

/// Elements per block.
pub const QK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 110;

/// The 16 signed sub-block scales (already minus 32) of a Q3_K `scales` field.
#[inline(always)]
pub fn unpack_scales(sc: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { sc[j] & 0x0f } else { sc[j - 8] >> 4 };
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let hmask = &block[0..32]; // [32]
    let qs = &block[32..96]; // [64] = [2 halves][32]
    let scales = unpack_scales(&block[96..108]); // [16]
    let d = f16_at(block, 108);
    for h in 0..2 {
        let q = &qs[32 * h..32 * h + 32]; // [32]
        for s in 0..4 {
            let shift = 2 * s;
            let hbit = 4 * h + s;
            for part in 0..2 {
                let dl = d * f32::from(scales[8 * h + 2 * s + part]);
                let base = 128 * h + 32 * s + 16 * part;
                let y = &mut out[base..base + 16]; // [16]
                for (l, y) in y.iter_mut().enumerate() {
                    let idx = 16 * part + l;
                    let low = ((q[idx] >> shift) & 3) as i8;
                    let high = if (hmask[idx] >> hbit) & 1 != 0 { 0 } else { 4 };
                    *y = dl * f32::from(low - high);
                }
            }
        }
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_unpacking_matches_ggml_kmask_form() {
        // ggml unpacks with 32-bit words and kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f.
        let mut seed = 0x1234_5678u32;
        for _ in 0..200 {
            let mut sc = [0u8; 12];
            for b in sc.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (seed >> 24) as u8;
            }
            let w = |i: usize| {
                u32::from_le_bytes([sc[4 * i], sc[4 * i + 1], sc[4 * i + 2], sc[4 * i + 3]])
            };
            let (a0, a1, tmp) = (w(0), w(1), w(2));
            let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let aux = [
                (a0 & k2) | ((tmp & k1) << 4),
                (a1 & k2) | (((tmp >> 2) & k1) << 4),
                ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
                ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
            ];
            let ggml: Vec<i8> = aux
                .iter()
                .flat_map(|a| a.to_le_bytes())
                .map(|b| b as i8 - 32)
                .collect();
            assert_eq!(unpack_scales(&sc).to_vec(), ggml);
        }
    }
}
