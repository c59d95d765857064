//! BF16: bfloat16, one element per "block".
//!
//! Layout (2 bytes): offset 0, `u16` little endian = the upper 16 bits of an f32.
//! Widening is `bits << 16`, exact for every pattern (NaN payloads included), as in ggml's
//! `ggml_compute_bf16_to_fp32` and gguf-py.

/// Elements per block.
pub const QK: usize = 1;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 2;

/// Exact bf16 → f32 widening of the bit pattern `h`.
#[inline(always)]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Dequantizes one element.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    out[0] = bf16_bits_to_f32(u16::from_le_bytes(*block));
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_half_bf16() {
        for h in 0..=u16::MAX {
            let theirs = half::bf16::from_bits(h).to_f32();
            let ours = bf16_bits_to_f32(h);
            if theirs.is_nan() {
                assert!(ours.is_nan());
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
        assert_eq!(bf16_bits_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_bits_to_f32(0x7f81).to_bits(), 0x7f81_0000);
    }
}
