//! TEMPORARY placeholder until the quant branch lands (F32/F16 only).
use crate::gguf::GgmlType;
#[derive(Debug)]
pub struct QuantError(pub String);
impl std::fmt::Display for QuantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for QuantError {}
pub fn can_dequantize(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16)
}
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            Ok(())
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
            Ok(())
        }
        t => Err(QuantError(format!("unsupported {t}"))),
    }
}
pub fn dequantize_tensor(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    let mut v = vec![0f32; n];
    dequantize_row(ty, src, &mut v)?;
    Ok(v)
}
