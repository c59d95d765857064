//! F16: IEEE 754 binary16, one element per "block".
//!
//! Layout (2 bytes): offset 0, `u16` little endian = the f16 bit pattern
//! (1 sign bit, 5 exponent bits with bias 15, 10 mantissa bits).
//!
//! The widening to f32 is exact and done with integer operations. NaN payloads are kept
//! (the 10 mantissa bits move to the top of the f32 mantissa; a signalling NaN stays
//! signalling), which is what numpy does and so what gguf-py produces. ggml's C conversion
//! (F16C `vcvtph2ps`, or the portable bit-trick path that multiplies by a power of two)
//! quiets signalling NaNs instead: the two differ only in the quiet bit of NaNs, never for a
//! number. This same conversion is used for every f16 scale in the block formats.

/// Elements per block.
pub const QK: usize = 1;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 2;

/// Exact f16 → f32 widening of the bit pattern `h`, NaN payload preserved.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x03ff);
    let bits = match exp {
        0 => {
            // zero or subnormal: man * 2^-24, exact in f32 (man < 2^10).
            (man as f32 * (1.0 / 16_777_216.0)).to_bits()
        }
        0x1f => 0x7f80_0000 | (man << 13), // inf / NaN (payload kept)
        _ => ((exp + 112) << 23) | (man << 13), // rebias 15 -> 127
    };
    f32::from_bits(sign | bits)
}

/// Dequantizes one element.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    out[0] = f16_bits_to_f32(u16::from_le_bytes(*block));
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_half_for_all_non_nan_patterns() {
        for h in 0..=u16::MAX {
            let ours = f16_bits_to_f32(h);
            let theirs = half::f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
                // payload and sign preserved bit for bit
                assert_eq!(
                    ours.to_bits(),
                    (u32::from(h & 0x8000) << 16) | 0x7f80_0000 | (u32::from(h & 0x3ff) << 13)
                );
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(f16_bits_to_f32(0x3c00), 1.0);
        assert_eq!(f16_bits_to_f32(0xc000), -2.0);
        assert_eq!(f16_bits_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_bits_to_f32(0x0001), 2.0f32.powi(-24));
        assert_eq!(f16_bits_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_bits_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_bits_to_f32(0x7c01).to_bits(), 0x7f80_2000); // signalling NaN kept
    }
}
