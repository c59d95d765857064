//! Block formats: one file per format with the block layout, scalar dequant and quant.
