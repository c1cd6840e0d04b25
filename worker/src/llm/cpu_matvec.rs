//! Decoding on the CPU reads every weight once per generated token, so its speed is the speed
//! of reading the weights. Dequantized to f32 they are 4 to 6 times larger than in the GGUF
//! file; these kernels multiply by the Q4_0, Q4_1 and Q8_0 blocks as stored, for the few rows
//! (one per sequence) of a decode step. Prefill and training keep Burn's f32 matmuls.
//!
//! The result equals the f32 path up to summation order: the blocks hold exactly the values
//! the f32 weights were dequantized from.

use super::quant::GgmlType;
use anyhow::{Result, ensure};
use rayon::prelude::*;

const BLOCK: usize = 32;

/// A `[out, in]` weight kept in its ggml block encoding.
pub struct QuantMatrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// Per block: the scale (and for Q4_1 the minimum), as f32.
    scales: Vec<f32>,
    mins: Vec<f32>,
    /// Per block: 16 bytes of nibbles (Q4) or 32 signed bytes (Q8).
    quants: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QuantMatrix {
    /// Wraps a tensor's raw blocks; `None` for encodings these kernels do not read.
    pub fn from_blocks(
        ggml_type: GgmlType,
        data: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Option<Self>> {
        let kind = match ggml_type {
            GgmlType::Q4_0 => Kind::Q4_0,
            GgmlType::Q4_1 => Kind::Q4_1,
            GgmlType::Q8_0 => Kind::Q8_0,
            _ => return Ok(None),
        };
        ensure!(
            cols.is_multiple_of(BLOCK),
            "rows of {cols} values are not whole blocks"
        );
        let blocks = rows * cols / BLOCK;
        ensure!(
            data.len() == ggml_type.byte_size(rows * cols)?,
            "{} bytes for a [{rows}, {cols}] {ggml_type:?} matrix",
            data.len()
        );
        let block_bytes = data.len() / blocks;
        let f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        let mut scales = Vec::with_capacity(blocks);
        let mut mins = Vec::new();
        let mut quants = Vec::with_capacity(blocks * if kind == Kind::Q8_0 { 32 } else { 16 });
        for block in data.chunks_exact(block_bytes) {
            scales.push(f16(block, 0));
            match kind {
                Kind::Q4_0 => quants.extend_from_slice(&block[2..18]),
                Kind::Q4_1 => {
                    mins.push(f16(block, 2));
                    quants.extend_from_slice(&block[4..20]);
                }
                Kind::Q8_0 => quants.extend_from_slice(&block[2..34]),
            }
        }
        Ok(Some(Self {
            kind,
            rows,
            cols,
            scales,
            mins,
            quants,
        }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x` `[n, cols]` times the transposed matrix: `[n, rows]`, all row-major.
    pub fn matmul_transposed(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "input is not [n, cols]");
        // Output in [rows, n] order so each task writes one contiguous chunk.
        const ROWS_PER_TASK: usize = 64;
        let mut transposed = vec![0f32; self.rows * n];
        transposed
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, out)| {
                let mut weights = vec![0f32; self.cols];
                for (local, out_row) in out.chunks_exact_mut(n).enumerate() {
                    let row = task * ROWS_PER_TASK + local;
                    kernels::row_dots(self, row, x, &mut weights, out_row);
                }
            });
        let mut out = vec![0f32; n * self.rows];
        for row in 0..self.rows {
            for i in 0..n {
                out[i * self.rows + row] = transposed[row * n + i];
            }
        }
        out
    }

    /// The 32 weights of block `block`, computed exactly as `quant::dequantize` does.
    #[inline(always)]
    fn dequantize_block(&self, block: usize) -> [f32; BLOCK] {
        let d = self.scales[block];
        let mut w = [0f32; BLOCK];
        match self.kind {
            Kind::Q8_0 => {
                let q = &self.quants[block * 32..block * 32 + 32];
                for (w, &q) in w.iter_mut().zip(q) {
                    *w = f32::from(q as i8) * d;
                }
            }
            Kind::Q4_0 => {
                let q = &self.quants[block * 16..block * 16 + 16];
                for (i, &q) in q.iter().enumerate() {
                    w[i] = (f32::from(q & 0xF) - 8.0) * d;
                    w[i + 16] = (f32::from(q >> 4) - 8.0) * d;
                }
            }
            Kind::Q4_1 => {
                let m = self.mins[block];
                let q = &self.quants[block * 16..block * 16 + 16];
                for (i, &q) in q.iter().enumerate() {
                    w[i] = f32::from(q & 0xF) * d + m;
                    w[i + 16] = f32::from(q >> 4) * d + m;
                }
            }
        }
        w
    }
}

/// The inner loop, compiled for AVX2 + FMA when the CPU has them.
mod kernels {
    use super::{BLOCK, QuantMatrix};

    /// Dot products of weight row `row` with each of the `out.len()` rows of `x`: the row is
    /// dequantized once into `weights`, then each dot product runs in four eight-lane
    /// accumulators that stay in registers.
    #[inline(always)]
    fn row_dots_generic<const FMA: bool>(
        m: &QuantMatrix,
        row: usize,
        x: &[f32],
        weights: &mut [f32],
        out: &mut [f32],
    ) {
        let blocks = m.cols / BLOCK;
        for (b, chunk) in weights.chunks_exact_mut(BLOCK).enumerate() {
            chunk.copy_from_slice(&m.dequantize_block(row * blocks + b));
        }
        for (i, slot) in out.iter_mut().enumerate() {
            let x_row = &x[i * m.cols..(i + 1) * m.cols];
            let mut acc = [[0f32; 8]; 4];
            for (w, xb) in weights.chunks_exact(BLOCK).zip(x_row.chunks_exact(BLOCK)) {
                for (c, lanes) in acc.iter_mut().enumerate() {
                    for (l, lane) in lanes.iter_mut().enumerate() {
                        let (a, b) = (w[c * 8 + l], xb[c * 8 + l]);
                        *lane = if FMA {
                            a.mul_add(b, *lane)
                        } else {
                            a * b + *lane
                        };
                    }
                }
            }
            *slot = reduce(&acc);
        }
    }

    /// Sums the accumulators lane-wise, then the eight lanes. Kept out of line so the loop
    /// above keeps its accumulators in registers.
    #[inline(never)]
    fn reduce(acc: &[[f32; 8]; 4]) -> f32 {
        let mut lanes = [0f32; 8];
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
        }
        (lanes[0] + lanes[4])
            + (lanes[1] + lanes[5])
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_dots_avx2(m: &QuantMatrix, row: usize, x: &[f32], weights: &mut [f32], out: &mut [f32]) {
        row_dots_generic::<true>(m, row, x, weights, out)
    }

    #[cfg(target_arch = "x86_64")]
    fn has_avx2() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    pub fn row_dots(m: &QuantMatrix, row: usize, x: &[f32], weights: &mut [f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { row_dots_avx2(m, row, x, weights, out) };
        }
        // Without hardware FMA, `mul_add` would be a slow library call.
        row_dots_generic::<false>(m, row, x, weights, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::quant::dequantize;
    use rand::{Rng, SeedableRng};

    fn random_blocks(ggml_type: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let blocks = rows * cols / BLOCK;
        let block_bytes = ggml_type.byte_size(rows * cols).unwrap() / blocks;
        let mut data = Vec::new();
        for _ in 0..blocks {
            let mut block: Vec<u8> = (0..block_bytes).map(|_| rng.random()).collect();
            let scale = half::f16::from_f32(rng.random::<f32>() * 0.1).to_le_bytes();
            block[..2].copy_from_slice(&scale);
            if ggml_type == GgmlType::Q4_1 {
                let min = half::f16::from_f32(rng.random::<f32>() - 0.5).to_le_bytes();
                block[2..4].copy_from_slice(&min);
            }
            data.extend(block);
        }
        data
    }

    #[test]
    fn block_products_equal_dequantized_matmuls() {
        let (rows, cols) = (130, 96);
        for ggml_type in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let data = random_blocks(ggml_type, rows, cols, 7);
            let weights = dequantize(ggml_type, &data, rows * cols).unwrap();
            let matrix = QuantMatrix::from_blocks(ggml_type, &data, rows, cols)
                .unwrap()
                .unwrap();
            for n in [1, 3] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let got = matrix.matmul_transposed(&x, n);
                for i in 0..n {
                    for row in 0..rows {
                        let expected: f32 = (0..cols)
                            .map(|c| weights[row * cols + c] * x[i * cols + c])
                            .sum();
                        let value = got[i * rows + row];
                        assert!(
                            (value - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                            "{ggml_type:?} n={n} [{i}, {row}]: {value} vs {expected}"
                        );
                    }
                }
            }
        }
        assert!(
            QuantMatrix::from_blocks(GgmlType::F32, &[0; 4], 1, 1)
                .unwrap()
                .is_none()
        );
    }
}
