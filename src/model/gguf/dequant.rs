//! GGML tensor types and their dequantization to f32.
//!
//! Each block type is decoded exactly as ggml's reference `dequantize_row_*` (and gguf-py's numpy
//! port) does: the scale products are single f32 multiplies and adds in the same order, never fused,
//! so the values agree bit for bit with what llama.cpp computes before its own matmuls.

use half::{bf16, f16};

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;

/// The tensor types this importer decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    pub const SUPPORTED: &'static str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

    /// The type with ggml's id `id`; otherwise ggml's name for it (or "unknown") as the error.
    pub fn from_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => return Err(unsupported_name(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
            Self::Q5_0 => 2 + 4 + 16,
            Self::Q5_1 => 2 + 2 + 4 + 16,
            Self::Q8_0 => 2 + 32,
            Self::Q4_K => 2 + 2 + 12 + QK_K / 2,
            Self::Q5_K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            Self::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Bytes of `n` elements, `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        (n % bs == 0).then(|| n / bs * self.block_bytes() as u64)
    }
}

/// ggml's names for the types we do not decode, so that the error says what the file holds.
fn unsupported_name(id: u32) -> String {
    let name = match id {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("unknown type id {id}"),
    };
    format!("{name} (type id {id})")
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decodes `bytes` (a whole number of blocks of `ty`) into `out`, one f32 per element.
///
/// Panics when the lengths disagree; the reader checks them against the tensor's shape first.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    assert_eq!(bytes.len() / bb * bs, out.len(), "{} data does not hold {} elements", ty.name(), out.len());
    assert_eq!(bytes.len() % bb, 0);
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
    }
}

// The 32-element blocks store element j in the low nibble of qs[j] and element j + 16 in its
// high nibble; the 5-bit types keep the fifth bit of element i in bit i of a little-endian u32.

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

fn fifth_bits(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = fifth_bits(&b[2..6]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (lo as i32 - 16) as f32;
        y[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = fifth_bits(&b[4..8]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * lo as f32 + m;
        y[j + 16] = d * hi as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        y[j] = q as i8 as f32 * d;
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K / Q5_K super-block, packed into 12 bytes.
fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..16 + QK_K / 2]);
    // 64 elements per step: 32 low nibbles (sub-block 2i) then 32 high nibbles (sub-block 2i + 1).
    for i in 0..QK_K / 64 {
        let q = &qs[32 * i..32 * (i + 1)];
        for (half, shift) in [(0, 0), (1, 4)] {
            let (sc, m) = k_scale_min(scales, 2 * i + half);
            let (dl, ml) = (d * sc as f32, dmin * m as f32);
            for (l, &byte) in q.iter().enumerate() {
                y[64 * i + 32 * half + l] = dl * ((byte >> shift) & 0x0F) as f32 - ml;
            }
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..16 + QK_K / 8], &b[16 + QK_K / 8..16 + QK_K / 8 + QK_K / 2]);
    for i in 0..QK_K / 64 {
        let q = &qs[32 * i..32 * (i + 1)];
        for (half, shift) in [(0, 0), (1, 4)] {
            let sub = 2 * i + half;
            let (sc, m) = k_scale_min(scales, sub);
            let (dl, ml) = (d * sc as f32, dmin * m as f32);
            for (l, &byte) in q.iter().enumerate() {
                let v = ((byte >> shift) & 0x0F) | (((qh[l] >> sub) & 1) << 4);
                y[64 * i + 32 * half + l] = dl * v as f32 - ml;
            }
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh) = (&b[..QK_K / 2], &b[QK_K / 2..QK_K / 2 + QK_K / 4]);
    let scales = &b[QK_K / 2 + QK_K / 4..QK_K / 2 + QK_K / 4 + QK_K / 16];
    let d = f16_at(b, QK_K / 2 + QK_K / 4 + QK_K / 16);
    // Two halves of 128 elements; within one, element 32 * k + l takes nibble k / 2 of ql and
    // bits 2k..2k+2 of qh, and every 16 elements share a signed 8-bit scale.
    for n in 0..2 {
        let (ql, qh, y) = (&ql[64 * n..], &qh[32 * n..], &mut y[128 * n..]);
        for l in 0..32 {
            let q = [
                (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, &q) in q.iter().enumerate() {
                let idx = 32 * k + l;
                let scale = scales[8 * n + idx / 16] as i8 as f32;
                y[idx] = (d * scale) * (q as i32 - 32) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn block_sizes_match_ggml() {
        for (ty, bytes) in [
            (GgmlType::Q4_0, 18),
            (GgmlType::Q4_1, 20),
            (GgmlType::Q5_0, 22),
            (GgmlType::Q5_1, 24),
            (GgmlType::Q8_0, 34),
            (GgmlType::Q4_K, 144),
            (GgmlType::Q5_K, 176),
            (GgmlType::Q6_K, 210),
        ] {
            assert_eq!(ty.block_bytes(), bytes, "{}", ty.name());
        }
        assert_eq!(GgmlType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(GgmlType::Q4_0.bytes_for(48), None);
    }

    #[test]
    fn q4_0_and_q8_0_decode_hand_made_blocks() {
        // d = 0.5; element j = low nibble of qs[j], element j + 16 = its high nibble, offset 8.
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_0, &block, &mut y);
        assert_eq!(y[0], -4.0);
        assert_eq!(y[15], 3.5);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[31], -4.0);

        let mut block = f16_bytes(0.25).to_vec();
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        dequantize(GgmlType::Q8_0, &block, &mut y);
        assert_eq!(y[0], -4.0);
        assert_eq!(y[31], 3.75);
    }

    #[test]
    fn unsupported_types_are_named() {
        assert_eq!(GgmlType::from_id(16).unwrap_err(), "IQ2_XXS (type id 16)");
        assert_eq!(GgmlType::from_id(1000).unwrap_err(), "unknown type id 1000");
        assert_eq!(GgmlType::from_id(30).unwrap(), GgmlType::BF16);
    }
}
