//! ggml tensor encodings and their dequantization to `f32`.
//!
//! Block layouts follow ggml's `ggml-common.h` and `ggml-quants.c` (`dequantize_row_*`): a
//! tensor is a run of fixed-size blocks, each holding scales plus packed integers for 32
//! (legacy quants) or 256 (K-quants) consecutive values.

use anyhow::{Result, bail, ensure};
use half::{bf16, f16};

/// The encodings slim can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

/// ggml's name for a type id, for error messages.
pub fn type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16..=23 => "IQ*",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        _ => return format!("unknown ({id})"),
    };
    name.to_string()
}

const QK: usize = 32;
const QK_K: usize = 256;

impl GgmlType {
    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            30 => Self::Bf16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            other => bail!(
                "tensor type {} is not supported (slim reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, \
                 Q4_K and Q6_K)",
                type_name(other)
            ),
        })
    }

    /// Values per block and bytes per block.
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (QK, 2 + QK / 2),
            Self::Q4_1 => (QK, 4 + QK / 2),
            Self::Q8_0 => (QK, 2 + QK),
            Self::Q4K => (QK_K, 4 + 12 + QK_K / 2),
            Self::Q6K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
        }
    }

    /// Bytes that `elements` values take.
    pub fn byte_size(self, elements: usize) -> Result<usize> {
        let (values, bytes) = self.block();
        ensure!(
            elements.is_multiple_of(values),
            "{elements} values are not a whole number of {values}-value blocks"
        );
        Ok(elements / values * bytes)
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Decodes `elements` values of type `ggml_type` from `data`.
pub fn dequantize(ggml_type: GgmlType, data: &[u8], elements: usize) -> Result<Vec<f32>> {
    let size = ggml_type.byte_size(elements)?;
    ensure!(
        data.len() == size,
        "{} bytes for {elements} values, expected {size}",
        data.len()
    );
    let (_, block_bytes) = ggml_type.block();
    let mut out = Vec::with_capacity(elements);
    match ggml_type {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|b| f16_at(b, 0))),
        GgmlType::Bf16 => out.extend(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q4_0 => {
            for block in data.chunks_exact(block_bytes) {
                let d = f16_at(block, 0);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xF) as f32 - 8.0) * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as f32 - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in data.chunks_exact(block_bytes) {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q8_0 => {
            for block in data.chunks_exact(block_bytes) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4K => {
            for block in data.chunks_exact(block_bytes) {
                dequantize_q4k(block, &mut out);
            }
        }
        GgmlType::Q6K => {
            for block in data.chunks_exact(block_bytes) {
                dequantize_q6k(block, &mut out);
            }
        }
    }
    Ok(out)
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block (`get_scale_min_k4`).
fn scale_min_k4(j: usize, scales: &[u8]) -> (f32, f32) {
    let (scale, min) = if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    };
    (scale as f32, min as f32)
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; eight sub-blocks of 32 values,
/// each with its own 6-bit scale and min.
fn dequantize_q4k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    let qs = &block[16..];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * s1, dmin * m1);
        let (d2, m2) = (d * s2, dmin * m2);
        out.extend(q.iter().map(|&b| d1 * (b & 0xF) as f32 - m1));
        out.extend(q.iter().map(|&b| d2 * (b >> 4) as f32 - m2));
    }
}

/// Q6_K: `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits), `scales: [i8; 16]`,
/// `d: f16`; sixteen sub-blocks of 16 values.
fn dequantize_q6k(block: &[u8], out: &mut Vec<f32>) {
    let (ql, rest) = block.split_at(QK_K / 2);
    let (qh, rest) = rest.split_at(QK_K / 4);
    let (scales, d) = rest.split_at(QK_K / 16);
    let d = f16_at(d, 0);
    for half in 0..2 {
        let ql = &ql[64 * half..];
        let qh = &qh[32 * half..];
        let sc = &scales[8 * half..];
        let mut values = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let scale = |k: usize| d * sc[is + k] as i8 as f32;
            values[l] = scale(0) * q1 as f32;
            values[l + 32] = scale(2) * q2 as f32;
            values[l + 64] = scale(4) * q3 as f32;
            values[l + 96] = scale(6) * q4 as f32;
        }
        out.extend_from_slice(&values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_blocks_decode_by_hand() {
        // Q8_0: scale 0.5, values -2, 4, 0...
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend([(-2i8) as u8, 4]);
        block.extend([0u8; 30]);
        let values = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
        assert_eq!(&values[..3], &[-1.0, 2.0, 0.0]);

        // Q4_1: d 2, m -1; first byte 0x31 holds value 0 (low nibble 1) and value 16 (high 3).
        let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend(f16::from_f32(-1.0).to_le_bytes());
        block.push(0x31);
        block.extend([0u8; 15]);
        let values = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        assert_eq!((values[0], values[16], values[1]), (1.0, 5.0, -1.0));

        // Q4_0: d 1; nibble 8 is zero, nibble 0 is -8.
        let mut block = f16::from_f32(1.0).to_le_bytes().to_vec();
        block.push(0x08);
        block.extend([0x88u8; 15]);
        let values = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
        assert_eq!((values[0], values[16], values[1]), (0.0, -8.0, 0.0));
    }

    #[test]
    fn sizes_and_unsupported_types_are_checked() {
        assert_eq!(GgmlType::Q4K.byte_size(256).unwrap(), 144);
        assert_eq!(GgmlType::Q6K.byte_size(512).unwrap(), 420);
        assert!(GgmlType::Q8_0.byte_size(33).is_err());
        let err = GgmlType::from_id(13).unwrap_err().to_string();
        assert!(err.contains("Q5_K"), "{err}");
        assert!(dequantize(GgmlType::F32, &[0; 7], 2).is_err());
    }
}
