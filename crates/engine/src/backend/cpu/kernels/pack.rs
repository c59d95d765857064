//! Packed weight layouts, built once at load time from GGUF bytes.
//!
//! Every format is stored row by row (`row_bytes` apart, rows independent). A row is a
//! sequence of groups of `g` = 16 blocks of 32 elements (the last group of a row may be
//! shorter: `nb % 16` blocks, a multiple of 8 for the K-quants). Within a group, lane `i` is
//! block `b0 + i`, and a "granule" section of `4g` bytes holds 4 bytes of each lane in lane
//! order (`granule[4i .. 4i+4]` belongs to lane `i`). The sections of a group, in order:
//!
//! | format | sections (S = g / 8 super-blocks) | bytes |
//! |--------|-----------------------------------|-------|
//! | Q8_0 | `d: [f16; g]`, then 8 granules: granule `k` = elements `4k..4k+4` (i8) | 34 g |
//! | Q4_0 | `d: [f16; g]`, then 4 nibble granules | 18 g |
//! | Q4_1 | `d: [f16; g]`, `m: [f16; g]`, then 4 nibble granules | 20 g |
//! | Q5_0 | `d: [f16; g]`, 4 nibble granules (low 4 bits), 1 high-bit granule | 22 g |
//! | Q5_1 | `d: [f16; g]`, `m: [f16; g]`, 4 nibble granules (low 4 bits), 1 high-bit granule | 24 g |
//! | Q4_K | `d: [f16; S]`, `dmin: [f16; S]`, `scales: [[u8; 12]; S]` (ggml's packed 6-bit), 4 nibble granules | 144 S |
//! | Q5_K | Q4_K's sections (nibbles = low 4 bits), then 1 high-bit granule | 176 S |
//! | Q6_K | `d: [f16; S]`, `sc_lo: [i8; g]`, `sc_hi: [i8; g]`, 4 nibble granules (low 4 bits), 2 high-bit granules | 210 S |
//! | Q3_K | `d: [f16; S]`, `scales: [[u8; 12]; S]` (ggml's packed 6-bit), 2 crumb granules (low 2 bits), 1 high-bit granule (bit 2) | 110 S |
//! | Q2_K | `d: [f16; S]`, `dmin: [f16; S]`, `sc_lo: [u8; g]`, `sc_hi: [u8; g]` (ggml's scale bytes: scale in the low nibble, min in the high), 2 crumb granules | 84 S |
//! | IQ4_NL | Q4_0's sections (the nibbles are table indices) | 18 g |
//! | IQ4_XS | `d: [f16; S]`, `scales: [[u8; 6]; S]` (ggml's `scales_h` and `scales_l`), 4 nibble granules (GGUF's nibble order, as Q4_0's) | 136 S |
//!
//! Nibble granule `p` (0..4): byte `e` of lane `i` holds element `4p + e` of the block in its
//! low nibble and element `16 + 4p + e` in its high nibble (Q4_0's own nibble order; Q4_K and
//! Q6_K sub-blocks are re-nibbled into it). Q6_K high-bit granule `r` (0..2): byte `e` of lane
//! `i`, bits `2s..2s+2` = bits 4..6 of element `16r + 4s + e`. Q6_K `sc_lo[i]` / `sc_hi[i]` are
//! the scales of elements 0..16 / 16..32 of block `i`. Q5_0 / Q5_1 / Q5_K high-bit granule:
//! byte `e` of lane `i`, bit `p` = bit 4 of element `4p + e` and bit `4 + p` = bit 4 of element
//! `16 + 4p + e` (`p` in 0..4), so nibble granule `p` finds its fifth bits at one shift of the
//! granule; Q3_K's high-bit granule is the same with bit 2 of each quant. Crumb granule `c`
//! (0..2, Q3_K and Q2_K): bits `2m..2m+2` of byte `e` of lane `i` = the low 2 bits of element
//! `16c + 4m + e`. Q3_K / Q2_K `sc_lo` / `sc_hi` belong to elements 0..16 / 16..32 of a block
//! (ggml's 16-element sub-blocks).
//!
//! **Row tiles** (`Layout::Tiles16`, every native format when `n_out % 16 == 0` and the
//! AVX-512 VNNI or AVX2 kernels run; AVX2 reads each 64-byte section as two halves of 8 rows):
//! rows `16 i .. 16 i + 16` form tile `i`, stored contiguously
//! (`16 * row_bytes` bytes). Inside a tile, block `b` of all 16 rows is one record; lane `r`
//! of every section is row `16 i + r`, so one `vpdpbusd` against a broadcast activation
//! granule advances 16 output rows at once and no horizontal sum is needed (the 16 lane
//! accumulators of the canonical order become 16 vector registers, lane = row):
//!
//! | format | record of block `b` (16 rows) | bytes |
//! |--------|-------------------------------|-------|
//! | Q8_0 | `d: [f16; 16]`, 8 granules of 64 bytes: granule `k` = elements `4k..4k+4` of each row, stored as `q + 128` (u8) | 544 |
//! | Q4_0 | `d: [f16; 16]`, 4 nibble granules of 64 bytes: granule `p` = GGUF quant bytes `4p..4p+4` of each row | 288 |
//! | Q4_1 | `d: [f16; 16]`, `m: [f16; 16]`, 4 nibble granules | 320 |
//! | Q5_0 | Q4_0's record, then 1 high-bit granule of 64 bytes | 352 |
//! | Q5_1 | Q4_1's record, then 1 high-bit granule of 64 bytes | 384 |
//! | IQ4_NL | Q4_0's record | 288 |
//!
//! The K-quants have one record per super-block `s` (256 elements, sub-blocks `j` = 0..8 are
//! blocks `8 s + j`):
//!
//! | format | record of super-block `s` (16 rows) | bytes |
//! |--------|-------------------------------------|-------|
//! | Q4_K | `d: [f16; 16]`, `dmin: [f16; 16]`, 3 scale sections of 64 bytes (section `k`, lane `r` = bytes `4k..4k+4` of row `r`'s 12 packed scale bytes), then per sub-block `j` 4 nibble granules (256 bytes) | 2304 |
//! | Q5_K | Q4_K's first 256 bytes, then per sub-block `j` (320 bytes): 4 nibble granules (low 4 bits), 1 high-bit granule (64 bytes) | 2816 |
//! | Q6_K | `d: [f16; 16]`, then per sub-block `j` (416 bytes): `sc_lo: [i8; 16]`, `sc_hi: [i8; 16]`, 4 nibble granules (low 4 bits, 256 bytes), 2 high-bit granules (128 bytes) | 3360 |
//! | Q3_K | `d: [f16; 16]`, 3 scale sections of 64 bytes (section `k`, lane `r` = bytes `4k..4k+4` of row `r`'s 12 packed scale bytes), then per sub-block `j` (192 bytes): 2 crumb granules, 1 high-bit granule | 1760 |
//! | Q2_K | `d: [f16; 16]`, `dmin: [f16; 16]`, 4 scale sections of 64 bytes (section `k`, lane `r` = bytes `4k..4k+4` of row `r`'s 16 scale bytes), then per sub-block `j` 2 crumb granules (128 bytes) | 1344 |
//! | IQ4_XS | `d: [f16; 16]`, `scales_h: [u16; 16]`, `scales_l: [[u8; 4]; 16]`, then per sub-block `j` 4 nibble granules (256 bytes; granule `p`, lane `r` = GGUF quant bytes `4p..4p+4` of the sub-block) | 2176 |
//!
//! K-quant nibble and high-bit granules are those of the rows layout with lane = row: nibble
//! granule `p` holds elements `4p + e` (low) and `16 + 4p + e` (high) of the sub-block; Q6_K
//! high-bit granule `h`, bits `2s..2s+2` of byte `e` = bits 4..6 of element `16h + 4s + e`.
//!
//! The packed matrix is exactly as large as the GGUF tensor (for the native formats; a
//! converted F32/F16/BF16/... tensor becomes Q8_0 at 34 bytes per 32 values): the
//! memory cost of the repack is one copy of the tensor, and the mmap'd original is then
//! only page cache that the kernel may drop.

#![allow(clippy::needless_range_loop)] // element, byte and lane indices are used together

use crate::gguf::GgmlType;
use crate::EngineError;

use super::{GROUP, QK};
pub(crate) use crate::quant::iq4_nl::KVALUES as IQ4_VALUES;

/// Formats the kernels multiply natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
    Q3K,
    Q2K,
    IQ4NL,
    IQ4XS,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 12] = [
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::Q4K,
        WeightFormat::Q5K,
        WeightFormat::Q6K,
        WeightFormat::Q3K,
        WeightFormat::Q2K,
        WeightFormat::IQ4NL,
        WeightFormat::IQ4XS,
    ];

    pub fn ggml_type(self) -> GgmlType {
        match self {
            WeightFormat::Q8_0 => GgmlType::Q8_0,
            WeightFormat::Q4_0 => GgmlType::Q4_0,
            WeightFormat::Q4_1 => GgmlType::Q4_1,
            WeightFormat::Q5_0 => GgmlType::Q5_0,
            WeightFormat::Q5_1 => GgmlType::Q5_1,
            WeightFormat::Q4K => GgmlType::Q4K,
            WeightFormat::Q5K => GgmlType::Q5K,
            WeightFormat::Q6K => GgmlType::Q6K,
            WeightFormat::Q3K => GgmlType::Q3K,
            WeightFormat::Q2K => GgmlType::Q2K,
            WeightFormat::IQ4NL => GgmlType::IQ4NL,
            WeightFormat::IQ4XS => GgmlType::IQ4XS,
        }
    }

    /// The native format of a GGUF type, if it has one (others are converted to Q8_0).
    pub fn native(t: GgmlType) -> Option<WeightFormat> {
        WeightFormat::ALL.into_iter().find(|f| f.ggml_type() == t)
    }

    /// `n_in` must be a multiple of this.
    pub fn row_multiple(self) -> usize {
        self.ggml_type().block_size()
    }

    /// Bytes of a group of `g` blocks of 32.
    #[inline(always)]
    pub(crate) fn group_bytes(self, g: usize) -> usize {
        match self {
            WeightFormat::Q8_0 => 34 * g,
            WeightFormat::Q4_0 => 18 * g,
            WeightFormat::Q4_1 => 20 * g,
            WeightFormat::Q5_0 => 22 * g,
            WeightFormat::Q5_1 => 24 * g,
            WeightFormat::Q4K => 144 * (g / 8),
            WeightFormat::Q5K => 176 * (g / 8),
            WeightFormat::Q6K => 210 * (g / 8),
            WeightFormat::Q3K => 110 * (g / 8),
            WeightFormat::Q2K => 84 * (g / 8),
            WeightFormat::IQ4NL => 18 * g,
            WeightFormat::IQ4XS => 136 * (g / 8),
        }
    }

    /// Whether the format is a K-quant (super-blocks of 256, one record per super-block in
    /// tiles).
    pub(crate) fn is_k(self) -> bool {
        matches!(
            self,
            WeightFormat::Q4K
                | WeightFormat::Q5K
                | WeightFormat::Q6K
                | WeightFormat::Q3K
                | WeightFormat::Q2K
                | WeightFormat::IQ4XS
        )
    }

    /// Bytes of a packed row of `n_in` elements (the same as the GGUF row).
    pub fn row_bytes(self, n_in: usize) -> usize {
        self.ggml_type().type_size() * n_in / self.row_multiple()
    }
}

/// How rows are arranged in a [`PackedMatrix`] (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Row by row, blocks interleaved in groups of 16 within a row.
    Rows,
    /// Tiles of 16 rows, one record of 16 rows per block.
    Tiles16,
}

/// Rows per tile of [`Layout::Tiles16`].
pub const TILE_ROWS: usize = 16;

impl Layout {
    /// Whether `fmt` can be stored as `self` with `n_out` rows.
    /// (Every native format has a tiled form; `fmt` is for formats that may not.)
    pub fn supports(self, _fmt: WeightFormat, n_out: usize) -> bool {
        match self {
            Layout::Rows => true,
            Layout::Tiles16 => n_out.is_multiple_of(TILE_ROWS),
        }
    }

    /// The layout the detected kernel path multiplies fastest: row tiles where the AVX-512
    /// or AVX2 kernels have them (`VERISPEC_LAYOUT=rows` forces rows, for comparisons).
    pub fn preferred(fmt: WeightFormat, n_out: usize) -> Layout {
        static ROWS_ONLY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let rows_only =
            *ROWS_ONLY.get_or_init(|| std::env::var("VERISPEC_LAYOUT").is_ok_and(|v| v == "rows"));
        if !rows_only
            && matches!(
                super::KernelPath::detect(),
                super::KernelPath::Avx512Vnni | super::KernelPath::Avx2
            )
            && Layout::Tiles16.supports(fmt, n_out)
        {
            Layout::Tiles16
        } else {
            Layout::Rows
        }
    }
}

/// A weight matrix `[n_out, n_in]` in the kernels' layout (see the module docs).
#[derive(Clone)]
pub struct PackedMatrix {
    format: WeightFormat,
    layout: Layout,
    source: GgmlType,
    n_out: usize,
    n_in: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedMatrix {:?} [{}, {}] from {}",
            self.format, self.n_out, self.n_in, self.source
        )
    }
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// ggml's `get_scale_min_k4` for all 8 sub-blocks at once: (scales, mins), 6 bits each.
#[inline(always)]
pub(crate) fn k4_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let u = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (sc, m) = k4_unpack(u(0), u(4), u(8));
    (sc.to_le_bytes(), m.to_le_bytes())
}

/// [`k4_scales_mins`] on the 12 packed bytes read as three little-endian `u32`: the 8 scales
/// and the 8 mins, one per byte of each `u64` (sub-block 0 lowest).
#[inline(always)]
pub(crate) fn k4_unpack(u0: u32, u1: u32, u2: u32) -> (u64, u64) {
    let sc_lo = u0 & 0x3f3f_3f3f;
    let m_lo = u1 & 0x3f3f_3f3f;
    let sc_hi = (u2 & 0x0f0f_0f0f) | ((u0 >> 2) & 0x3030_3030);
    let m_hi = ((u2 >> 4) & 0x0f0f_0f0f) | ((u1 >> 2) & 0x3030_3030);
    (
        (sc_hi as u64) << 32 | sc_lo as u64,
        (m_hi as u64) << 32 | m_lo as u64,
    )
}

impl PackedMatrix {
    /// Packs a GGUF tensor `[n_out, n_in]` (`n_in` = ne[0], contiguous) of type `ty`. Q8_0,
    /// Q4_0, Q4_1, Q4_K and Q6_K are kept in their own format; every other type is
    /// dequantized and re-quantized to Q8_0 (ggml's reference Q8_0 quantizer).
    pub fn from_ggml(
        ty: GgmlType,
        data: &[u8],
        n_out: usize,
        n_in: usize,
    ) -> Result<PackedMatrix, EngineError> {
        let fmt = WeightFormat::native(ty).unwrap_or(WeightFormat::Q8_0);
        PackedMatrix::from_ggml_layout(ty, data, n_out, n_in, Layout::preferred(fmt, n_out))
    }

    /// [`PackedMatrix::from_ggml`] with an explicit layout (an unsupported one falls back to
    /// [`Layout::Rows`]). Every kernel path multiplies every layout with the same bits.
    pub fn from_ggml_layout(
        ty: GgmlType,
        data: &[u8],
        n_out: usize,
        n_in: usize,
        layout: Layout,
    ) -> Result<PackedMatrix, EngineError> {
        let src_row = ty.row_bytes(n_in as u64).ok_or_else(|| {
            EngineError::Model(format!(
                "row length {n_in} is not a multiple of the {ty} block size"
            ))
        })? as usize;
        if data.len() < src_row * n_out {
            return Err(EngineError::Model(format!(
                "{ty} tensor [{n_out}, {n_in}] needs {} bytes, has {}",
                src_row * n_out,
                data.len()
            )));
        }
        let Some(format) = WeightFormat::native(ty) else {
            if !n_in.is_multiple_of(QK) {
                return Err(EngineError::Model(format!(
                    "row length {n_in} is not a multiple of {QK}: cannot convert {ty} to q8_0"
                )));
            }
            let mut row = vec![0f32; n_in];
            let mut q8 = vec![0u8; WeightFormat::Q8_0.row_bytes(n_in)];
            let mut m = PackedMatrix::empty(WeightFormat::Q8_0, layout, ty, n_out, n_in);
            for o in 0..n_out {
                decode_row_f32(ty, &data[o * src_row..(o + 1) * src_row], &mut row)?;
                quantize_row_q8_0(&row, &mut q8).map_err(|i| {
                    EngineError::Model(format!(
                        "{ty} tensor has a non-finite value at row {o}, column {i}"
                    ))
                })?;
                m.put_row(o, &q8);
            }
            return Ok(m);
        };
        let mut m = PackedMatrix::empty(format, layout, ty, n_out, n_in);
        for o in 0..n_out {
            m.put_row(o, &data[o * src_row..(o + 1) * src_row]);
        }
        Ok(m)
    }

    /// Stores GGUF row `o` (`format`'s own block bytes).
    fn put_row(&mut self, o: usize, src: &[u8]) {
        let rb = self.row_bytes;
        match self.layout {
            Layout::Rows => pack_row(self.format, src, &mut self.data[o * rb..(o + 1) * rb]),
            Layout::Tiles16 => {
                let (tile, r) = (o / TILE_ROWS, o % TILE_ROWS);
                let dst = &mut self.data[tile * TILE_ROWS * rb..(tile + 1) * TILE_ROWS * rb];
                tile_put_row(self.format, src, dst, r);
            }
        }
    }

    /// GGUF row `o` of a tiled matrix (`format`'s own block bytes) into `dst`.
    fn tiled_gguf_row(&self, o: usize, dst: &mut [u8]) {
        let (tile, r) = (o / TILE_ROWS, o % TILE_ROWS);
        tile_get_row(self.format, self.tile(tile), dst, r);
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The bytes of tile `i` ([`Layout::Tiles16`]).
    #[inline(always)]
    pub(crate) fn tile(&self, i: usize) -> &[u8] {
        let tb = TILE_ROWS * self.row_bytes;
        &self.data[i * tb..(i + 1) * tb]
    }

    /// Quantizes f32 weights `[n_out, n_in]` to Q8_0.
    pub fn from_f32(w: &[f32], n_out: usize, n_in: usize) -> Result<PackedMatrix, EngineError> {
        let bytes: &[u8] = &w[..n_out * n_in]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>();
        PackedMatrix::from_ggml(GgmlType::F32, bytes, n_out, n_in)
    }

    fn empty(
        format: WeightFormat,
        layout: Layout,
        source: GgmlType,
        n_out: usize,
        n_in: usize,
    ) -> PackedMatrix {
        let row_bytes = format.row_bytes(n_in);
        let layout = if layout.supports(format, n_out) {
            layout
        } else {
            Layout::Rows
        };
        PackedMatrix {
            format,
            layout,
            source,
            n_out,
            n_in,
            row_bytes,
            data: vec![0u8; row_bytes * n_out],
        }
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The GGUF type the matrix was built from.
    pub fn source_type(&self) -> GgmlType {
        self.source
    }

    pub fn n_out(&self) -> usize {
        self.n_out
    }

    pub fn n_in(&self) -> usize {
        self.n_in
    }

    /// Bytes held (the weight bytes one full matmul streams).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
    pub(crate) fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Row `o` of a [`Layout::Rows`] matrix.
    #[inline(always)]
    pub(crate) fn row(&self, o: usize) -> &[u8] {
        debug_assert_eq!(self.layout, Layout::Rows);
        &self.data[o * self.row_bytes..(o + 1) * self.row_bytes]
    }

    /// Row `o` in [`Layout::Rows`] form, copied into `buf` when the matrix is tiled.
    pub(crate) fn rows_form<'a>(&'a self, o: usize, buf: &'a mut Vec<u8>) -> &'a [u8] {
        match self.layout {
            Layout::Rows => self.row(o),
            Layout::Tiles16 => {
                let mut gguf = vec![0u8; self.row_bytes];
                self.tiled_gguf_row(o, &mut gguf);
                buf.resize(self.row_bytes, 0);
                pack_row(self.format, &gguf, buf);
                buf
            }
        }
    }

    /// Row `o` as f32 values (the format's own dequantization; equal to ggml's).
    pub fn dequantize_row(&self, o: usize, out: &mut [f32]) {
        if self.layout == Layout::Tiles16 {
            // Straight from the GGUF bytes (an embedding lookup per token takes this path).
            let mut gguf = vec![0u8; self.row_bytes];
            self.tiled_gguf_row(o, &mut gguf);
            crate::quant::dequantize_row(self.format.ggml_type(), &gguf, out)
                .expect("a tiled row has its format's row size");
            return;
        }
        let wrow = self.row(o);
        let nb = self.n_in / QK;
        let (mut b0, mut off) = (0, 0);
        while b0 < nb {
            let g = (nb - b0).min(GROUP);
            let wg = &wrow[off..off + self.format.group_bytes(g)];
            for i in 0..g {
                let y = &mut out[(b0 + i) * QK..(b0 + i + 1) * QK];
                lane_values(self.format, wg, g, i, y);
            }
            b0 += g;
            off += self.format.group_bytes(g);
        }
    }
}

/// Weight quants of lane `i` of a group as integers, centred where the format has an
/// offset: Q8_0 `q`, Q4_0 `q - 8`, Q4_1 / Q4_K `q` (0..16), Q5_0 `q - 16`, Q5_1 / Q5_K `q`
/// (0..32), Q6_K `q - 32`, Q3_K `q - 4`, Q2_K `q` (0..4), IQ4_NL / IQ4_XS the table value
/// of the index.
#[inline(always)]
pub(crate) fn lane_ints(fmt: WeightFormat, wg: &[u8], g: usize, i: usize, q: &mut [i32; QK]) {
    match fmt {
        WeightFormat::Q8_0 => {
            for (k, qk) in q.iter_mut().enumerate() {
                *qk = i32::from(wg[2 * g + (k / 4) * 4 * g + 4 * i + k % 4] as i8);
            }
        }
        WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q4K => {
            let base = match fmt {
                WeightFormat::Q4_0 => 2 * g,
                WeightFormat::Q4_1 => 4 * g,
                _ => 16 * (g / 8),
            };
            let off = if fmt == WeightFormat::Q4_0 { 8 } else { 0 };
            for j in 0..16 {
                let byte = wg[base + (j / 4) * 4 * g + 4 * i + j % 4];
                q[j] = i32::from(byte & 0x0f) - off;
                q[j + 16] = i32::from(byte >> 4) - off;
            }
        }
        WeightFormat::Q5_0 | WeightFormat::Q5_1 | WeightFormat::Q5K => {
            let (base, off) = match fmt {
                WeightFormat::Q5_0 => (2 * g, 16),
                WeightFormat::Q5_1 => (4 * g, 0),
                _ => (16 * (g / 8), 0),
            };
            for j in 0..16 {
                let (p, e) = (j / 4, j % 4);
                let byte = wg[base + p * 4 * g + 4 * i + e];
                let h = wg[base + 16 * g + 4 * i + e];
                q[j] = i32::from((byte & 0x0f) | ((h >> p) & 1) << 4) - off;
                q[j + 16] = i32::from((byte >> 4) | ((h >> (4 + p)) & 1) << 4) - off;
            }
        }
        WeightFormat::Q6K => {
            let s = g / 8;
            let ql = 2 * s + 2 * g;
            let qh = ql + 16 * g;
            for k in 0..QK {
                let j = k % 16;
                let nib = wg[ql + (j / 4) * 4 * g + 4 * i + j % 4];
                let lo = if k < 16 { nib & 0x0f } else { nib >> 4 };
                let (r, s2, e) = (k / 16, (k % 16) / 4, k % 4);
                let hi = (wg[qh + r * 4 * g + 4 * i + e] >> (2 * s2)) & 3;
                q[k] = i32::from(lo | (hi << 4)) - 32;
            }
        }
        WeightFormat::IQ4NL | WeightFormat::IQ4XS => {
            let base = quant_base(fmt, g);
            for j in 0..16 {
                let byte = wg[base + (j / 4) * 4 * g + 4 * i + j % 4];
                q[j] = i32::from(IQ4_VALUES[usize::from(byte & 0x0f)]);
                q[j + 16] = i32::from(IQ4_VALUES[usize::from(byte >> 4)]);
            }
        }
        WeightFormat::Q3K | WeightFormat::Q2K => {
            let cr = quant_base(fmt, g);
            for k in 0..QK {
                let (c, m, e) = (k / 16, (k % 16) / 4, k % 4);
                let low = (wg[cr + c * 4 * g + 4 * i + e] >> (2 * m)) & 3;
                q[k] = if fmt == WeightFormat::Q3K {
                    let h = (wg[cr + 8 * g + 4 * i + e] >> (k / 4)) & 1;
                    i32::from(low | (h << 2)) - 4
                } else {
                    i32::from(low)
                };
            }
        }
    }
}

/// Offset, in a rows-layout group of `g` blocks, of the first quant granule of the formats
/// whose headers differ only in size: Q3_K / Q2_K (crumb granules), IQ4_NL / IQ4_XS (nibble
/// granules).
#[inline(always)]
pub(crate) fn quant_base(fmt: WeightFormat, g: usize) -> usize {
    let s = g / 8;
    match fmt {
        WeightFormat::Q3K => 14 * s,
        WeightFormat::Q2K => 4 * s + 2 * g,
        WeightFormat::IQ4NL => 2 * g,
        WeightFormat::IQ4XS => 8 * s,
        _ => unreachable!("{fmt:?} has its own section layout"),
    }
}

/// Per-lane float parameters: (scale, min-or-0) as the kernels use them. Q4_K: (`d * sc`,
/// `dmin * m`); Q6_K, Q3_K: (`d`, 0) and Q2_K: (`d`, `dmin`), with the integer scales and
/// mins from [`lane_sub_scales`].
#[inline(always)]
pub(crate) fn lane_params(fmt: WeightFormat, wg: &[u8], g: usize, i: usize) -> (f32, f32) {
    match fmt {
        WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q5_0 => (f16_at(wg, 2 * i), 0.0),
        WeightFormat::Q4_1 | WeightFormat::Q5_1 => (f16_at(wg, 2 * i), f16_at(wg, 2 * g + 2 * i)),
        WeightFormat::Q4K | WeightFormat::Q5K => {
            let s = g / 8;
            let sb = i / 8;
            let d = f16_at(wg, 2 * sb);
            let dmin = f16_at(wg, 2 * s + 2 * sb);
            let (sc, m) = k4_scales_mins(&wg[4 * s + 12 * sb..4 * s + 12 * sb + 12]);
            (d * f32::from(sc[i % 8]), dmin * f32::from(m[i % 8]))
        }
        WeightFormat::Q6K | WeightFormat::Q3K => (f16_at(wg, 2 * (i / 8)), 0.0),
        WeightFormat::IQ4NL => (f16_at(wg, 2 * i), 0.0),
        WeightFormat::IQ4XS => {
            let (s, sb) = (g / 8, i / 8);
            let sc = crate::quant::iq4_xs::scales_of(&wg[2 * s + 6 * sb..2 * s + 6 * sb + 6]);
            (f16_at(wg, 2 * sb) * sc[i % 8] as f32, 0.0)
        }
        WeightFormat::Q2K => (
            f16_at(wg, 2 * (i / 8)),
            f16_at(wg, 2 * (g / 8) + 2 * (i / 8)),
        ),
    }
}

/// The integer scales of lane `i` of a Q6_K / Q3_K / Q2_K group (elements 0..16, elements
/// 16..32), and Q2_K's integer mins (0 for the others).
#[inline(always)]
pub(crate) fn lane_sub_scales(fmt: WeightFormat, wg: &[u8], g: usize, i: usize) -> [i32; 4] {
    let s = g / 8;
    match fmt {
        WeightFormat::Q3K => {
            let (sb, j) = (i / 8, i % 8);
            let sc = crate::quant::q3_k::unpack_scales(&wg[2 * s + 12 * sb..2 * s + 12 * sb + 12]);
            [i32::from(sc[2 * j]), i32::from(sc[2 * j + 1]), 0, 0]
        }
        WeightFormat::Q2K => {
            let (lo, hi) = (wg[4 * s + i], wg[4 * s + g + i]);
            [
                i32::from(lo & 0x0f),
                i32::from(hi & 0x0f),
                i32::from(lo >> 4),
                i32::from(hi >> 4),
            ]
        }
        _ => [
            i32::from(wg[2 * s + i] as i8),
            i32::from(wg[2 * s + g + i] as i8),
            0,
            0,
        ],
    }
}

/// Dequantized values of lane `i` of a group, with ggml's formulas and operation order.
fn lane_values(fmt: WeightFormat, wg: &[u8], g: usize, i: usize, y: &mut [f32]) {
    let mut q = [0i32; QK];
    lane_ints(fmt, wg, g, i, &mut q);
    let (a, m) = lane_params(fmt, wg, g, i);
    for (k, (yk, &qk)) in y.iter_mut().zip(q.iter()).enumerate() {
        let qf = qk as f32;
        *yk = match fmt {
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::IQ4NL => {
                qf * a
            }
            WeightFormat::IQ4XS => a * qf,
            WeightFormat::Q4_1 | WeightFormat::Q5_1 => qf * a + m,
            WeightFormat::Q4K | WeightFormat::Q5K => a * qf - m,
            WeightFormat::Q6K | WeightFormat::Q3K | WeightFormat::Q2K => {
                let sc = lane_sub_scales(fmt, wg, g, i);
                let h = k / 16;
                (a * sc[h] as f32) * qf - m * sc[2 + h] as f32
            }
        };
    }
}

/// Unpacked K-quant super-block: 256 integer quants (Q4_K 0..16, Q5_K 0..32, Q6_K 0..64).
fn unpack_q4k(b: &[u8], q: &mut [u8; 256]) {
    let qs = &b[16..144];
    for c in 0..4 {
        for l in 0..32 {
            let v = qs[32 * c + l];
            q[64 * c + l] = v & 0x0f;
            q[64 * c + 32 + l] = v >> 4;
        }
    }
}

fn unpack_q5k(b: &[u8], q: &mut [u8; 256]) {
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for c in 0..4 {
        for l in 0..32 {
            let v = qs[32 * c + l];
            q[64 * c + l] = (v & 0x0f) | ((qh[l] >> (2 * c)) & 1) << 4;
            q[64 * c + 32 + l] = (v >> 4) | ((qh[l] >> (2 * c + 1)) & 1) << 4;
        }
    }
}

/// The 32 quants (0..32) of a Q5_0 / Q5_1 block from its `qh` (4 bytes) and `qs` (16 bytes).
fn unpack_q5(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|k| {
        let nib = if k < 16 {
            qs[k] & 0x0f
        } else {
            qs[k - 16] >> 4
        };
        nib | (((h >> k) & 1) as u8) << 4
    })
}

/// The inverse of [`unpack_q5`]: `qh` (4 bytes) then `qs` (16 bytes) into `dst`.
fn repack_q5(q: &[u8; 32], dst: &mut [u8]) {
    let h = (0..32).fold(0u32, |h, k| h | u32::from(q[k] >> 4) << k);
    dst[0..4].copy_from_slice(&h.to_le_bytes());
    for j in 0..16 {
        dst[4 + j] = (q[j] & 0x0f) | (q[j + 16] & 0x0f) << 4;
    }
}

/// The inverse of [`unpack_q4k`] / [`unpack_q5k`]: 256 quants into the GGUF block `b`
/// (its header untouched).
fn repack_k(fmt: WeightFormat, q: &[u8; 256], b: &mut [u8]) {
    let qs0 = if fmt == WeightFormat::Q5K { 48 } else { 16 };
    if fmt == WeightFormat::Q5K {
        b[16..48].fill(0);
    }
    for c in 0..4 {
        for l in 0..32 {
            let (lo, hi) = (q[64 * c + l], q[64 * c + 32 + l]);
            b[qs0 + 32 * c + l] = (lo & 0x0f) | (hi & 0x0f) << 4;
            if fmt == WeightFormat::Q5K {
                b[16 + l] |= (lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1);
            }
        }
    }
}

fn unpack_q6k(b: &[u8], q: &mut [u8; 256]) {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    for h in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let low = (ql[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 0x0f;
                let high = (qh[32 * h + l] >> (2 * s)) & 3;
                q[128 * h + 32 * s + l] = low | (high << 4);
            }
        }
    }
}

/// Writes the 16 nibble bytes of one 32-element block (`q` = its 32 values, each < 16) into
/// lane `i` of the nibble granules at `dst[base..]`.
fn put_nibbles(dst: &mut [u8], base: usize, g: usize, i: usize, q: &[u8]) {
    for j in 0..16 {
        dst[base + (j / 4) * 4 * g + 4 * i + j % 4] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
    }
}

/// Writes bit `bit` of each of the 32 values `q` of one block (the fifth bit of Q5_0, Q5_1,
/// Q5_K: `bit` = 4; the third of Q3_K: 2) into lane `i` of the high-bit granule at
/// `dst[base..]`: bit `k` of byte `e` = bit `bit` of element `4k + e`.
fn put_high(dst: &mut [u8], base: usize, i: usize, q: &[u8], bit: u32) {
    for e in 0..4 {
        let mut byte = 0u8;
        for k in 0..8 {
            byte |= ((q[4 * k + e] >> bit) & 1) << k;
        }
        dst[base + 4 * i + e] = byte;
    }
}

/// The inverse of [`put_high`]: ORs the high bits of lane `i`'s block into `q`.
fn get_high(src: &[u8], base: usize, i: usize, q: &mut [u8], bit: u32) {
    for e in 0..4 {
        let byte = src[base + 4 * i + e];
        for k in 0..8 {
            q[4 * k + e] |= ((byte >> k) & 1) << bit;
        }
    }
}

/// Writes the low 2 bits of the 32 values `q` of one block into lane `i` of the two crumb
/// granules at `dst[base..]` (granule `c` at `base + 4 g c`): bits `2m..2m+2` of byte `e` =
/// element `16c + 4m + e`, so activation granule `4c + m` finds its quants one shift away.
fn put_crumbs(dst: &mut [u8], base: usize, g: usize, i: usize, q: &[u8]) {
    for c in 0..2 {
        for e in 0..4 {
            let mut byte = 0u8;
            for m in 0..4 {
                byte |= (q[16 * c + 4 * m + e] & 3) << (2 * m);
            }
            dst[base + c * 4 * g + 4 * i + e] = byte;
        }
    }
}

/// The inverse of [`put_crumbs`]: the low 2 bits of lane `i`'s 32 values into `q`.
fn get_crumbs(src: &[u8], base: usize, g: usize, i: usize, q: &mut [u8]) {
    for c in 0..2 {
        for e in 0..4 {
            let byte = src[base + c * 4 * g + 4 * i + e];
            for m in 0..4 {
                q[16 * c + 4 * m + e] = (byte >> (2 * m)) & 3;
            }
        }
    }
}

/// The 256 quants of a Q3_K (`q + 4`, 0..8, from `qs` and `hmask`) or Q2_K (0..4) GGUF
/// super-block, in element order.
fn unpack_q23k(fmt: WeightFormat, b: &[u8], q: &mut [u8; 256]) {
    let q3 = fmt == WeightFormat::Q3K;
    let qs = if q3 { &b[32..96] } else { &b[16..80] };
    for e in 0..256 {
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = (qs[32 * h + l] >> (2 * s)) & 3;
        q[e] = if q3 {
            low | ((b[l] >> (4 * h + s)) & 1) << 2
        } else {
            low
        };
    }
}

/// The inverse of [`unpack_q23k`]: 256 quants into the GGUF block `b` (its scales untouched).
fn repack_q23k(fmt: WeightFormat, q: &[u8; 256], b: &mut [u8]) {
    let q3 = fmt == WeightFormat::Q3K;
    let qs0 = if q3 {
        b[0..96].fill(0);
        32
    } else {
        b[16..80].fill(0);
        16
    };
    for e in 0..256 {
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        b[qs0 + 32 * h + l] |= (q[e] & 3) << (2 * s);
        if q3 {
            b[l] |= ((q[e] >> 2) & 1) << (4 * h + s);
        }
    }
}

/// Packs one GGUF row of `fmt` into `dst` (one packed row).
pub(crate) fn pack_row(fmt: WeightFormat, src: &[u8], dst: &mut [u8]) {
    let ts = fmt.ggml_type().type_size();
    let nb = match fmt {
        _ if fmt.is_k() => src.len() / ts * 8,
        _ => src.len() / ts,
    };
    let (mut b0, mut off) = (0, 0);
    while b0 < nb {
        let g = (nb - b0).min(GROUP);
        let gb = fmt.group_bytes(g);
        let wg = &mut dst[off..off + gb];
        match fmt {
            WeightFormat::Q8_0
            | WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1
            | WeightFormat::IQ4NL => {
                for i in 0..g {
                    let blk = &src[(b0 + i) * ts..(b0 + i + 1) * ts];
                    wg[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
                    match fmt {
                        WeightFormat::Q8_0 => {
                            for k in 0..QK {
                                wg[2 * g + (k / 4) * 4 * g + 4 * i + k % 4] = blk[2 + k];
                            }
                        }
                        // IQ4_NL's block is Q4_0's (its nibbles are table indices).
                        WeightFormat::Q4_0 | WeightFormat::IQ4NL => {
                            for j in 0..16 {
                                wg[2 * g + (j / 4) * 4 * g + 4 * i + j % 4] = blk[2 + j];
                            }
                        }
                        WeightFormat::Q4_1 => {
                            wg[2 * g + 2 * i..2 * g + 2 * i + 2].copy_from_slice(&blk[2..4]);
                            for j in 0..16 {
                                wg[4 * g + (j / 4) * 4 * g + 4 * i + j % 4] = blk[4 + j];
                            }
                        }
                        _ => {
                            // Q5_0: d, qh, qs; Q5_1: d, m, qh, qs.
                            let (h0, base) = if fmt == WeightFormat::Q5_1 {
                                wg[2 * g + 2 * i..2 * g + 2 * i + 2].copy_from_slice(&blk[2..4]);
                                (4, 4 * g)
                            } else {
                                (2, 2 * g)
                            };
                            let q = unpack_q5(&blk[h0..h0 + 4], &blk[h0 + 4..h0 + 20]);
                            put_nibbles(wg, base, g, i, &q);
                            put_high(wg, base + 16 * g, i, &q, 4);
                        }
                    }
                }
            }
            WeightFormat::Q4K | WeightFormat::Q5K => {
                let s = g / 8;
                let mut q = [0u8; 256];
                for sb in 0..s {
                    let blk = &src[(b0 / 8 + sb) * ts..(b0 / 8 + sb + 1) * ts];
                    wg[2 * sb..2 * sb + 2].copy_from_slice(&blk[0..2]);
                    wg[2 * s + 2 * sb..2 * s + 2 * sb + 2].copy_from_slice(&blk[2..4]);
                    wg[4 * s + 12 * sb..4 * s + 12 * sb + 12].copy_from_slice(&blk[4..16]);
                    if fmt == WeightFormat::Q5K {
                        unpack_q5k(blk, &mut q);
                    } else {
                        unpack_q4k(blk, &mut q);
                    }
                    for j in 0..8 {
                        let qb = &q[32 * j..32 * j + 32];
                        put_nibbles(wg, 16 * s, g, 8 * sb + j, qb);
                        if fmt == WeightFormat::Q5K {
                            put_high(wg, 16 * s + 16 * g, 8 * sb + j, qb, 4);
                        }
                    }
                }
            }
            WeightFormat::Q6K => {
                let s = g / 8;
                let ql = 2 * s + 2 * g;
                let qh = ql + 16 * g;
                let mut q = [0u8; 256];
                for sb in 0..s {
                    let blk = &src[(b0 / 8 + sb) * ts..(b0 / 8 + sb + 1) * ts];
                    wg[2 * sb..2 * sb + 2].copy_from_slice(&blk[208..210]);
                    unpack_q6k(blk, &mut q);
                    for j in 0..8 {
                        let i = 8 * sb + j;
                        wg[2 * s + i] = blk[192 + 2 * j];
                        wg[2 * s + g + i] = blk[192 + 2 * j + 1];
                        let qb = &q[32 * j..32 * j + 32];
                        put_nibbles(wg, ql, g, i, qb);
                        for r in 0..2 {
                            for e in 0..4 {
                                let mut byte = 0u8;
                                for s2 in 0..4 {
                                    byte |= (qb[16 * r + 4 * s2 + e] >> 4) << (2 * s2);
                                }
                                wg[qh + r * 4 * g + 4 * i + e] = byte;
                            }
                        }
                    }
                }
            }
            WeightFormat::IQ4XS => {
                let s = g / 8;
                for sb in 0..s {
                    let blk = &src[(b0 / 8 + sb) * ts..(b0 / 8 + sb + 1) * ts];
                    wg[2 * sb..2 * sb + 2].copy_from_slice(&blk[0..2]);
                    wg[2 * s + 6 * sb..2 * s + 6 * sb + 6].copy_from_slice(&blk[2..8]);
                    for j in 0..8 {
                        let i = 8 * sb + j;
                        for l in 0..16 {
                            wg[8 * s + (l / 4) * 4 * g + 4 * i + l % 4] = blk[8 + 16 * j + l];
                        }
                    }
                }
            }
            WeightFormat::Q3K | WeightFormat::Q2K => {
                let s = g / 8;
                let mut q = [0u8; 256];
                for sb in 0..s {
                    let blk = &src[(b0 / 8 + sb) * ts..(b0 / 8 + sb + 1) * ts];
                    unpack_q23k(fmt, blk, &mut q);
                    if fmt == WeightFormat::Q3K {
                        wg[2 * sb..2 * sb + 2].copy_from_slice(&blk[108..110]);
                        wg[2 * s + 12 * sb..2 * s + 12 * sb + 12].copy_from_slice(&blk[96..108]);
                    } else {
                        wg[2 * sb..2 * sb + 2].copy_from_slice(&blk[80..82]);
                        wg[2 * s + 2 * sb..2 * s + 2 * sb + 2].copy_from_slice(&blk[82..84]);
                    }
                    let cr = quant_base(fmt, g);
                    for j in 0..8 {
                        let i = 8 * sb + j;
                        let qb = &q[32 * j..32 * j + 32];
                        put_crumbs(wg, cr, g, i, qb);
                        if fmt == WeightFormat::Q3K {
                            put_high(wg, cr + 8 * g, i, qb, 2);
                        } else {
                            wg[4 * s + i] = blk[2 * j];
                            wg[4 * s + g + i] = blk[2 * j + 1];
                        }
                    }
                }
            }
        }
        b0 += g;
        off += gb;
    }
}

/// Bytes of one block record of a tile: (record, offset of the quant granules).
fn tile_record(fmt: WeightFormat) -> (usize, usize) {
    match fmt {
        WeightFormat::Q8_0 => (34 * TILE_ROWS, 32),
        WeightFormat::Q4_0 | WeightFormat::IQ4NL => (18 * TILE_ROWS, 32),
        WeightFormat::Q4_1 => (20 * TILE_ROWS, 64),
        WeightFormat::Q5_0 => (22 * TILE_ROWS, 32),
        WeightFormat::Q5_1 => (24 * TILE_ROWS, 64),
        _ => unreachable!("K-quant tiles have super-block records"),
    }
}

/// The inverse of [`put_nibbles`]: the 32 values of lane `i`'s block into `q`.
fn get_nibbles(src: &[u8], base: usize, g: usize, i: usize, q: &mut [u8]) {
    for j in 0..16 {
        let v = src[base + (j / 4) * 4 * g + 4 * i + j % 4];
        q[j] = v & 0x0f;
        q[j + 16] = v >> 4;
    }
}

/// Q4_K / Q5_K tile records: (GGUF block bytes, record bytes, sub-block bytes after the
/// 256-byte header).
fn k4_tile_sizes(fmt: WeightFormat) -> (usize, usize, usize) {
    if fmt == WeightFormat::Q5K {
        (176, Q5K_TILE_SB, Q5K_TILE_SUB)
    } else {
        (144, Q4K_TILE_SB, 256)
    }
}

/// Q4_K / Q5_K row `src` (GGUF super-blocks) as row `r` of a tile.
fn q4k_tile_put_row(fmt: WeightFormat, src: &[u8], dst: &mut [u8], r: usize) {
    let (ts, rec, sub) = k4_tile_sizes(fmt);
    let mut q = [0u8; 256];
    for (s, blk) in src.chunks_exact(ts).enumerate() {
        let d = &mut dst[s * rec..(s + 1) * rec];
        d[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
        d[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[2..4]);
        for k in 0..3 {
            d[64 + 64 * k + 4 * r..68 + 64 * k + 4 * r].copy_from_slice(&blk[4 + 4 * k..8 + 4 * k]);
        }
        if fmt == WeightFormat::Q5K {
            unpack_q5k(blk, &mut q);
        } else {
            unpack_q4k(blk, &mut q);
        }
        for j in 0..8 {
            // A tile's nibble granules are a group's with 16 lanes, lane = row.
            let qb = &q[32 * j..32 * j + 32];
            put_nibbles(d, 256 + sub * j, TILE_ROWS, r, qb);
            if fmt == WeightFormat::Q5K {
                put_high(d, 256 + sub * j + 256, r, qb, 4);
            }
        }
    }
}

/// Row `r` of a Q4_K / Q5_K tile back as GGUF super-blocks.
fn q4k_tile_get_row(fmt: WeightFormat, src: &[u8], dst: &mut [u8], r: usize) {
    let (ts, rec, sub) = k4_tile_sizes(fmt);
    for (s, blk) in dst.chunks_exact_mut(ts).enumerate() {
        let t = &src[s * rec..(s + 1) * rec];
        blk[0..2].copy_from_slice(&t[2 * r..2 * r + 2]);
        blk[2..4].copy_from_slice(&t[32 + 2 * r..34 + 2 * r]);
        for k in 0..3 {
            blk[4 + 4 * k..8 + 4 * k].copy_from_slice(&t[64 + 64 * k + 4 * r..68 + 64 * k + 4 * r]);
        }
        let mut q = [0u8; 256];
        for j in 0..8 {
            let qb = &mut q[32 * j..32 * j + 32];
            get_nibbles(t, 256 + sub * j, TILE_ROWS, r, qb);
            if fmt == WeightFormat::Q5K {
                get_high(t, 256 + sub * j + 256, r, qb, 4);
            }
        }
        repack_k(fmt, &q, blk);
    }
}

/// Q6_K row `src` (GGUF super-blocks) as row `r` of a tile.
fn q6k_tile_put_row(src: &[u8], dst: &mut [u8], r: usize) {
    let mut q = [0u8; 256];
    for (s, blk) in src.chunks_exact(210).enumerate() {
        let d = &mut dst[s * Q6K_TILE_SB..(s + 1) * Q6K_TILE_SB];
        d[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
        unpack_q6k(blk, &mut q);
        for j in 0..8 {
            d[32 + Q6K_TILE_SUB * j + r] = blk[192 + 2 * j];
            d[48 + Q6K_TILE_SUB * j + r] = blk[193 + 2 * j];
            let qb = &q[32 * j..32 * j + 32];
            put_nibbles(d, 64 + Q6K_TILE_SUB * j, TILE_ROWS, r, qb);
            for h in 0..2 {
                for e in 0..4 {
                    let mut byte = 0u8;
                    for s2 in 0..4 {
                        byte |= (qb[16 * h + 4 * s2 + e] >> 4) << (2 * s2);
                    }
                    d[320 + Q6K_TILE_SUB * j + 64 * h + 4 * r + e] = byte;
                }
            }
        }
    }
}

/// Row `r` of a Q6_K tile back as GGUF super-blocks.
fn q6k_tile_get_row(src: &[u8], dst: &mut [u8], r: usize) {
    for (s, blk) in dst.chunks_exact_mut(210).enumerate() {
        let t = &src[s * Q6K_TILE_SB..(s + 1) * Q6K_TILE_SB];
        blk[208..210].copy_from_slice(&t[2 * r..2 * r + 2]);
        let mut q = [0u8; 256];
        for j in 0..8 {
            blk[192 + 2 * j] = t[32 + Q6K_TILE_SUB * j + r];
            blk[193 + 2 * j] = t[48 + Q6K_TILE_SUB * j + r];
            get_nibbles(
                t,
                64 + Q6K_TILE_SUB * j,
                TILE_ROWS,
                r,
                &mut q[32 * j..32 * j + 32],
            );
            for h in 0..2 {
                for e in 0..4 {
                    let byte = t[320 + Q6K_TILE_SUB * j + 64 * h + 4 * r + e];
                    for s2 in 0..4 {
                        q[32 * j + 16 * h + 4 * s2 + e] |= ((byte >> (2 * s2)) & 3) << 4;
                    }
                }
            }
        }
        // The inverse of `unpack_q6k`.
        blk[..192].fill(0);
        for h in 0..2 {
            for s2 in 0..4 {
                for l in 0..32 {
                    let v = q[128 * h + 32 * s2 + l];
                    blk[64 * h + 32 * (s2 & 1) + l] |= (v & 0x0f) << (4 * (s2 >> 1));
                    blk[128 + 32 * h + l] |= (v >> 4) << (2 * s2);
                }
            }
        }
    }
}

/// Q3_K / Q2_K tile records: (GGUF block bytes, record bytes, header bytes, sub-block bytes,
/// offset of the scale bytes in the GGUF block and their count).
fn q23k_tile_sizes(fmt: WeightFormat) -> (usize, usize, usize, usize, usize, usize) {
    if fmt == WeightFormat::Q3K {
        (110, Q3K_TILE_SB, Q3K_TILE_HDR, Q3K_TILE_SUB, 96, 12)
    } else {
        (84, Q2K_TILE_SB, Q2K_TILE_HDR, Q2K_TILE_SUB, 0, 16)
    }
}

/// Q3_K / Q2_K row `src` (GGUF super-blocks) as row `r` of a tile.
fn q23k_tile_put_row(fmt: WeightFormat, src: &[u8], dst: &mut [u8], r: usize) {
    let (ts, rec, hdr, sub, sc0, nsc) = q23k_tile_sizes(fmt);
    let q3 = fmt == WeightFormat::Q3K;
    let mut q = [0u8; 256];
    for (s, blk) in src.chunks_exact(ts).enumerate() {
        let d = &mut dst[s * rec..(s + 1) * rec];
        let sec = if q3 {
            d[2 * r..2 * r + 2].copy_from_slice(&blk[108..110]);
            32
        } else {
            d[2 * r..2 * r + 2].copy_from_slice(&blk[80..82]);
            d[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[82..84]);
            64
        };
        for k in 0..nsc / 4 {
            d[sec + 64 * k + 4 * r..sec + 64 * k + 4 * r + 4]
                .copy_from_slice(&blk[sc0 + 4 * k..sc0 + 4 * k + 4]);
        }
        unpack_q23k(fmt, blk, &mut q);
        for j in 0..8 {
            let qb = &q[32 * j..32 * j + 32];
            put_crumbs(d, hdr + sub * j, TILE_ROWS, r, qb);
            if q3 {
                put_high(d, hdr + sub * j + 128, r, qb, 2);
            }
        }
    }
}

/// Row `r` of a Q3_K / Q2_K tile back as GGUF super-blocks.
fn q23k_tile_get_row(fmt: WeightFormat, src: &[u8], dst: &mut [u8], r: usize) {
    let (ts, rec, hdr, sub, sc0, nsc) = q23k_tile_sizes(fmt);
    let q3 = fmt == WeightFormat::Q3K;
    let mut q = [0u8; 256];
    for (s, blk) in dst.chunks_exact_mut(ts).enumerate() {
        let t = &src[s * rec..(s + 1) * rec];
        let sec = if q3 {
            blk[108..110].copy_from_slice(&t[2 * r..2 * r + 2]);
            32
        } else {
            blk[80..82].copy_from_slice(&t[2 * r..2 * r + 2]);
            blk[82..84].copy_from_slice(&t[32 + 2 * r..34 + 2 * r]);
            64
        };
        for k in 0..nsc / 4 {
            blk[sc0 + 4 * k..sc0 + 4 * k + 4]
                .copy_from_slice(&t[sec + 64 * k + 4 * r..sec + 64 * k + 4 * r + 4]);
        }
        for j in 0..8 {
            let qb = &mut q[32 * j..32 * j + 32];
            get_crumbs(t, hdr + sub * j, TILE_ROWS, r, qb);
            if q3 {
                get_high(t, hdr + sub * j + 128, r, qb, 2);
            }
        }
        repack_q23k(fmt, &q, blk);
    }
}

/// IQ4_XS row `src` (GGUF super-blocks) as row `r` of a tile.
fn iq4xs_tile_put_row(src: &[u8], dst: &mut [u8], r: usize) {
    for (s, blk) in src.chunks_exact(136).enumerate() {
        let d = &mut dst[s * IQ4XS_TILE_SB..(s + 1) * IQ4XS_TILE_SB];
        d[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
        d[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[2..4]);
        d[64 + 4 * r..68 + 4 * r].copy_from_slice(&blk[4..8]);
        for j in 0..8 {
            for p in 0..4 {
                let at = IQ4XS_TILE_HDR + 256 * j + 64 * p + 4 * r;
                d[at..at + 4].copy_from_slice(&blk[8 + 16 * j + 4 * p..12 + 16 * j + 4 * p]);
            }
        }
    }
}

/// Row `r` of an IQ4_XS tile back as GGUF super-blocks.
fn iq4xs_tile_get_row(src: &[u8], dst: &mut [u8], r: usize) {
    for (s, blk) in dst.chunks_exact_mut(136).enumerate() {
        let t = &src[s * IQ4XS_TILE_SB..(s + 1) * IQ4XS_TILE_SB];
        blk[0..2].copy_from_slice(&t[2 * r..2 * r + 2]);
        blk[2..4].copy_from_slice(&t[32 + 2 * r..34 + 2 * r]);
        blk[4..8].copy_from_slice(&t[64 + 4 * r..68 + 4 * r]);
        for j in 0..8 {
            for p in 0..4 {
                let at = IQ4XS_TILE_HDR + 256 * j + 64 * p + 4 * r;
                blk[8 + 16 * j + 4 * p..12 + 16 * j + 4 * p].copy_from_slice(&t[at..at + 4]);
            }
        }
    }
}

/// Bytes of one super-block record of an IQ4_XS tile.
pub(crate) const IQ4XS_TILE_SB: usize = 136 * TILE_ROWS;
/// Bytes of an IQ4_XS tile record's header: `d` (32), `scales_h` (32), `scales_l` (64).
pub(crate) const IQ4XS_TILE_HDR: usize = 128;

/// Bytes of one super-block record of a Q3_K tile.
pub(crate) const Q3K_TILE_SB: usize = 110 * TILE_ROWS;
/// Bytes of a Q3_K tile record's header: `d` (32) and three scale sections of 64.
pub(crate) const Q3K_TILE_HDR: usize = 224;
/// Bytes of one sub-block of a Q3_K tile record: 2 crumb granules and the high-bit granule.
pub(crate) const Q3K_TILE_SUB: usize = 192;
/// Bytes of one super-block record of a Q2_K tile.
pub(crate) const Q2K_TILE_SB: usize = 84 * TILE_ROWS;
/// Bytes of a Q2_K tile record's header: `d`, `dmin` (32 each) and four scale sections of 64.
pub(crate) const Q2K_TILE_HDR: usize = 320;
/// Bytes of one sub-block of a Q2_K tile record: 2 crumb granules.
pub(crate) const Q2K_TILE_SUB: usize = 128;

/// Bytes of one super-block record of a Q4_K tile.
pub(crate) const Q4K_TILE_SB: usize = 144 * TILE_ROWS;
/// Bytes of one super-block record of a Q5_K tile.
pub(crate) const Q5K_TILE_SB: usize = 176 * TILE_ROWS;
/// Bytes of one sub-block of a Q5_K tile record (after its 256-byte header): 4 nibble
/// granules and the high-bit granule, read together.
pub(crate) const Q5K_TILE_SUB: usize = 320;
/// Bytes of one super-block record of a Q6_K tile.
pub(crate) const Q6K_TILE_SB: usize = 210 * TILE_ROWS;
/// Bytes of one sub-block of a Q6_K tile record (after its 32 bytes of `d`). The kernel reads
/// a record front to back: the scales, low bits and high bits of a sub-block sit together
/// (three separate sections of the record, read in turn, ran at half the bandwidth).
pub(crate) const Q6K_TILE_SUB: usize = 416;

/// Writes GGUF row `src` as row `r` of a tile (`dst` = the tile's bytes).
fn tile_put_row(fmt: WeightFormat, src: &[u8], dst: &mut [u8], r: usize) {
    match fmt {
        WeightFormat::Q4K | WeightFormat::Q5K => return q4k_tile_put_row(fmt, src, dst, r),
        WeightFormat::Q6K => return q6k_tile_put_row(src, dst, r),
        WeightFormat::Q3K | WeightFormat::Q2K => return q23k_tile_put_row(fmt, src, dst, r),
        WeightFormat::IQ4XS => return iq4xs_tile_put_row(src, dst, r),
        _ => {}
    }
    let ts = fmt.ggml_type().type_size();
    let (rec, q0) = tile_record(fmt);
    for (b, blk) in src.chunks_exact(ts).enumerate() {
        let d = &mut dst[b * rec..(b + 1) * rec];
        d[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
        match fmt {
            WeightFormat::Q8_0 => {
                for k in 0..8 {
                    for e in 0..4 {
                        d[q0 + 64 * k + 4 * r + e] = blk[2 + 4 * k + e] ^ 0x80;
                    }
                }
            }
            WeightFormat::Q4_0 | WeightFormat::IQ4NL => {
                for p in 0..4 {
                    d[q0 + 64 * p + 4 * r..q0 + 64 * p + 4 * r + 4]
                        .copy_from_slice(&blk[2 + 4 * p..6 + 4 * p]);
                }
            }
            WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                let h0 = if fmt == WeightFormat::Q5_1 {
                    d[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&blk[2..4]);
                    4
                } else {
                    2
                };
                let q = unpack_q5(&blk[h0..h0 + 4], &blk[h0 + 4..h0 + 20]);
                put_nibbles(d, q0, TILE_ROWS, r, &q);
                put_high(d, q0 + 256, r, &q, 4);
            }
            _ => {
                d[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&blk[2..4]);
                for p in 0..4 {
                    d[q0 + 64 * p + 4 * r..q0 + 64 * p + 4 * r + 4]
                        .copy_from_slice(&blk[4 + 4 * p..8 + 4 * p]);
                }
            }
        }
    }
}

/// Reads row `r` of a tile back as a GGUF row (the inverse of [`tile_put_row`]).
fn tile_get_row(fmt: WeightFormat, src: &[u8], dst: &mut [u8], r: usize) {
    match fmt {
        WeightFormat::Q4K | WeightFormat::Q5K => return q4k_tile_get_row(fmt, src, dst, r),
        WeightFormat::Q6K => return q6k_tile_get_row(src, dst, r),
        WeightFormat::Q3K | WeightFormat::Q2K => return q23k_tile_get_row(fmt, src, dst, r),
        WeightFormat::IQ4XS => return iq4xs_tile_get_row(src, dst, r),
        _ => {}
    }
    let ts = fmt.ggml_type().type_size();
    let (rec, q0) = tile_record(fmt);
    for (b, blk) in dst.chunks_exact_mut(ts).enumerate() {
        let s = &src[b * rec..(b + 1) * rec];
        blk[0..2].copy_from_slice(&s[2 * r..2 * r + 2]);
        match fmt {
            WeightFormat::Q8_0 => {
                for k in 0..8 {
                    for e in 0..4 {
                        blk[2 + 4 * k + e] = s[q0 + 64 * k + 4 * r + e] ^ 0x80;
                    }
                }
            }
            WeightFormat::Q4_0 | WeightFormat::IQ4NL => {
                for p in 0..4 {
                    blk[2 + 4 * p..6 + 4 * p]
                        .copy_from_slice(&s[q0 + 64 * p + 4 * r..q0 + 64 * p + 4 * r + 4]);
                }
            }
            WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                let h0 = if fmt == WeightFormat::Q5_1 {
                    blk[2..4].copy_from_slice(&s[32 + 2 * r..32 + 2 * r + 2]);
                    4
                } else {
                    2
                };
                let mut q = [0u8; 32];
                get_nibbles(s, q0, TILE_ROWS, r, &mut q);
                get_high(s, q0 + 256, r, &mut q, 4);
                repack_q5(&q, &mut blk[h0..h0 + 20]);
            }
            _ => {
                blk[2..4].copy_from_slice(&s[32 + 2 * r..32 + 2 * r + 2]);
                for p in 0..4 {
                    blk[4 + 4 * p..8 + 4 * p]
                        .copy_from_slice(&s[q0 + 64 * p + 4 * r..q0 + 64 * p + 4 * r + 4]);
                }
            }
        }
    }
}

/// Decodes a GGUF row of a non-native type to f32.
fn decode_row_f32(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), EngineError> {
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        _ => crate::quant::dequantize_row(ty, src, dst)
            .map_err(|e| EngineError::Model(format!("cannot convert {ty} weights to q8_0: {e}")))?,
    }
    Ok(())
}

/// ggml's reference Q8_0 quantizer (`quantize_row_q8_0_ref`): `d = amax / 127` stored as
/// f16, `q = round(x * (1 / d))`. Returns the index of the first non-finite value on error.
pub(crate) fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) -> Result<(), usize> {
    if let Some(i) = src.iter().position(|v| !v.is_finite()) {
        return Err(i);
    }
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let amax = x
            .iter()
            .fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        for (o, &v) in y[2..].iter_mut().zip(x) {
            let q = (v * id).round();
            *o = if q.is_finite() { q as i8 as u8 } else { 0 };
        }
    }
    Ok(())
}
