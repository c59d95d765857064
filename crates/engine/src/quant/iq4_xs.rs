//! IQ4_XS: 256-element super-block of 8 sub-blocks of 32, 4-bit indices into IQ4_NL's
//! non-linear table, 6-bit sub-block scales, one f16 super-block scale.
//!
//! Block layout (136 bytes, ggml `block_iq4_xs`):
//!
//! | offset | bytes | field                                                        |
//! |--------|-------|--------------------------------------------------------------|
//! | 0      | 2     | `d`: f16 super-block scale                                   |
//! | 2      | 2     | `scales_h`: u16, bits `2j..2j+2` = bits 4..6 of scale `j`    |
//! | 4      | 4     | `scales_l: [u8; 4]`: low 4 bits of scale `j` in nibble `j % 2` of byte `j / 2` |
//! | 8      | 128   | `qs`: sub-block `j` at `16 j`, IQ4_NL's nibble order          |
//!
//! `x = (d * (ls_j - 32)) * KVALUES[q]` in f32 (ggml's `dl * kvalues_iq4nl[...]`; exact).

use super::f16_at;
use super::iq4_nl::KVALUES;

/// Elements per block.
pub const QK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 136;

/// The 8 sub-block scales `ls - 32` (-32..32) of a block.
#[inline(always)]
pub fn scales(block: &[u8]) -> [i32; 8] {
    scales_of(&block[2..8])
}

/// [`scales`] from the 6 scale bytes (`scales_h`, then `scales_l`).
#[inline(always)]
pub fn scales_of(s: &[u8]) -> [i32; 8] {
    let h = u16::from_le_bytes([s[0], s[1]]);
    std::array::from_fn(|j| {
        let lo = (s[2 + j / 2] >> (4 * (j % 2))) & 0x0f;
        let hi = ((h >> (2 * j)) & 3) as u8;
        i32::from(lo | (hi << 4)) - 32
    })
}

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let sc = scales(block);
    for (j, y) in out.chunks_exact_mut(32).enumerate() {
        let dl = d * sc[j] as f32;
        let qs = &block[8 + 16 * j..24 + 16 * j];
        for (l, &q) in qs.iter().enumerate() {
            y[l] = dl * f32::from(KVALUES[usize::from(q & 0x0f)]);
            y[l + 16] = dl * f32::from(KVALUES[usize::from(q >> 4)]);
        }
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}
