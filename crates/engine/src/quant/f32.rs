//! F32: IEEE 754 binary32, one element per "block".
//!
//! Layout (4 bytes): offset 0, `u32` little endian = the f32 bit pattern.
//! Dequantization is a bit-exact copy (NaN payloads included).

/// Elements per block.
pub const QK: usize = 1;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 4;

/// Dequantizes one element.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    out[0] = f32::from_bits(u32::from_le_bytes(*block));
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_bits() {
        for bits in [
            0u32,
            0x8000_0000,
            0x3f80_0000,
            0x7f80_0001,
            0xffc0_1234,
            0x0000_0001,
        ] {
            let mut y = [0.0f32];
            dequantize_block(&bits.to_le_bytes(), &mut y);
            assert_eq!(y[0].to_bits(), bits);
        }
    }
}
