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
        self.matmul_transposed_with(x, n, kernels::rows_times)
    }

    fn matmul_transposed_with(&self, x: &[f32], n: usize, kernel: kernels::RowsTimes) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "input is not [n, cols]");
        let mut out = vec![0f32; n * self.rows];
        if out.is_empty() {
            return out;
        }
        // Task t computes weight rows [t * ROWS_PER_TASK, ..) for every input: one slice of
        // each output row.
        let tasks = self.rows.div_ceil(kernels::ROWS_PER_TASK);
        let mut parts: Vec<Vec<&mut [f32]>> = (0..tasks).map(|_| Vec::with_capacity(n)).collect();
        for out_row in out.chunks_mut(self.rows) {
            for (part, task) in out_row.chunks_mut(kernels::ROWS_PER_TASK).zip(&mut parts) {
                task.push(part);
            }
        }
        parts
            .into_par_iter()
            .enumerate()
            .for_each(|(task, mut outs)| {
                kernel(self, task * kernels::ROWS_PER_TASK, x, &mut outs);
            });
        out
    }

    /// Dequantizes whole rows from `first` on into `out` (a multiple of `cols` long).
    #[inline(always)]
    fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        let first_block = first * self.cols / BLOCK;
        for (b, chunk) in out.as_chunks_mut::<BLOCK>().0.iter_mut().enumerate() {
            *chunk = self.dequantize_block(first_block + b);
        }
    }

    /// The 32 weights of block `block`, computed exactly as `quant::dequantize` does. One loop
    /// per nibble half so that the compiler vectorizes them.
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
                let q: &[u8; 16] = self.quants[block * 16..block * 16 + 16]
                    .try_into()
                    .expect("16 bytes");
                let (low, high) = w.split_at_mut(16);
                for (w, &q) in low.iter_mut().zip(q) {
                    *w = (f32::from(q & 0xF) - 8.0) * d;
                }
                for (w, &q) in high.iter_mut().zip(q) {
                    *w = (f32::from(q >> 4) - 8.0) * d;
                }
            }
            Kind::Q4_1 => {
                let m = self.mins[block];
                let q: &[u8; 16] = self.quants[block * 16..block * 16 + 16]
                    .try_into()
                    .expect("16 bytes");
                let (low, high) = w.split_at_mut(16);
                for (w, &q) in low.iter_mut().zip(q) {
                    *w = f32::from(q & 0xF) * d + m;
                }
                for (w, &q) in high.iter_mut().zip(q) {
                    *w = f32::from(q >> 4) * d + m;
                }
            }
        }
        w
    }
}

/// The tiled inner loops, compiled for AVX2 + FMA when the CPU has them.
///
/// A decode step multiplies a few input rows (one per sequence) by every weight row. Taking
/// one weight row at a time and one dot product per input reads two vectors per FMA and
/// streams all inputs through L1 once per weight row, so it waits on loads. Instead a tile of
/// `TILE_ROWS` weight rows is dequantized into L1 once, and `TILE_ROWS x TILE_INPUTS` dot
/// products run together: each loaded weight vector serves `TILE_INPUTS` inputs and each input
/// vector `TILE_ROWS` weight rows.
mod kernels {
    use super::QuantMatrix;

    /// `rows_times` or one of its variants.
    pub type RowsTimes = fn(&QuantMatrix, usize, &[f32], &mut [&mut [f32]]);

    /// 6 x 2: twelve 8-lane accumulators plus one weight and two input vectors fit the 16 AVX2
    /// registers (4 x 3 needs all 16 and spills). Measured against 4x3, 3x4, 5x2, 4x2, 3x2, 2x6
    /// and 3x3 on the [1536, 576], [576, 1536] and [49152, 576] Q4_1 matrices of SmolLM2-135M at
    /// 16 inputs, 6 x 2 was fastest.
    const TILE_ROWS: usize = 6;
    const TILE_INPUTS: usize = 2;
    /// Weight rows per parallel task, whole tiles.
    pub const ROWS_PER_TASK: usize = 8 * TILE_ROWS;
    const LANES: usize = 8;

    /// Fills `outs[i][r]` with the dot product of input row `i` of `x` and weight row
    /// `first + r`, for the `outs[0].len()` rows of this task.
    #[inline(always)]
    fn rows_times_generic(
        m: &QuantMatrix,
        first: usize,
        x: &[f32],
        outs: &mut [&mut [f32]],
        tile_one: impl Fn(&[f32], usize, &[f32]) -> [[f32; 1]; TILE_ROWS],
        tile_pair: impl Fn(&[f32], usize, &[f32]) -> [[f32; TILE_INPUTS]; TILE_ROWS],
    ) {
        let cols = m.cols;
        let rows = outs.first().map_or(0, |out| out.len());
        let mut weights = vec![0f32; TILE_ROWS * cols];
        for tile_first in (0..rows).step_by(TILE_ROWS) {
            let tile_rows = TILE_ROWS.min(rows - tile_first);
            let (filled, rest) = weights.split_at_mut(tile_rows * cols);
            m.dequantize_rows(first + tile_first, filled);
            // A partial tile computes zero rows whose results are dropped.
            rest.fill(0.0);
            let mut input = 0;
            while input < outs.len() {
                let inputs = &x[input * cols..];
                let targets = &mut outs[input..];
                input += match targets.len() {
                    1 => store(tile_one(&weights, cols, inputs), targets, tile_first),
                    _ => store(tile_pair(&weights, cols, inputs), targets, tile_first),
                };
            }
        }
    }

    /// Writes a tile's dot products to columns `at..` of the first `C` rows of `outs`, as far as
    /// they reach; returns `C`.
    #[inline(always)]
    fn store<const C: usize>(
        dots: [[f32; C]; TILE_ROWS],
        outs: &mut [&mut [f32]],
        at: usize,
    ) -> usize {
        for (c, out) in outs[..C].iter_mut().enumerate() {
            for (slot, dots) in out[at..].iter_mut().zip(&dots) {
                *slot = dots[c];
            }
        }
        C
    }

    /// The dot products of the `TILE_ROWS` rows of `weights` with the `C` inputs at the start
    /// of `x`, each in an 8-lane accumulator.
    #[inline(always)]
    fn tile<const C: usize, const FMA: bool>(
        weights: &[f32],
        cols: usize,
        x: &[f32],
    ) -> [[f32; C]; TILE_ROWS] {
        let steps = cols / LANES;
        let (weights, _) = weights.as_chunks::<LANES>();
        let w: [&[[f32; LANES]]; TILE_ROWS] =
            std::array::from_fn(|r| &weights[r * steps..(r + 1) * steps]);
        let x: [&[[f32; LANES]]; C] =
            std::array::from_fn(|c| &x[c * cols..(c + 1) * cols].as_chunks::<LANES>().0[..steps]);
        let mut acc = [[[0f32; LANES]; C]; TILE_ROWS];
        for k in 0..steps {
            let xs: [[f32; LANES]; C] = std::array::from_fn(|c| x[c][k]);
            for r in 0..TILE_ROWS {
                let w = w[r][k];
                for c in 0..C {
                    for l in 0..LANES {
                        acc[r][c][l] = if FMA {
                            w[l].mul_add(xs[c][l], acc[r][c][l])
                        } else {
                            w[l] * xs[c][l] + acc[r][c][l]
                        };
                    }
                }
            }
        }
        acc.map(|row| row.map(|lanes| sum_lanes(&lanes)))
    }

    #[inline(always)]
    fn sum_lanes(v: &[f32; LANES]) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn rows_times_avx2(m: &QuantMatrix, first: usize, x: &[f32], outs: &mut [&mut [f32]]) {
        rows_times_generic(
            m,
            first,
            x,
            outs,
            |w, cols, x| tile_avx2::<1>(w, cols, x),
            |w, cols, x| tile_avx2::<TILE_INPUTS>(w, cols, x),
        )
    }

    /// A function of its own: inlined into the loop above, its accumulators spill.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn tile_avx2<const C: usize>(w: &[f32], cols: usize, x: &[f32]) -> [[f32; C]; TILE_ROWS] {
        tile::<C, true>(w, cols, x)
    }

    #[cfg(target_arch = "x86_64")]
    fn has_avx2() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    pub fn rows_times(m: &QuantMatrix, first: usize, x: &[f32], outs: &mut [&mut [f32]]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { rows_times_avx2(m, first, x, outs) };
        }
        rows_times_portable(m, first, x, outs)
    }

    /// Without hardware FMA, `mul_add` would be a slow library call.
    pub fn rows_times_portable(m: &QuantMatrix, first: usize, x: &[f32], outs: &mut [&mut [f32]]) {
        rows_times_generic(
            m,
            first,
            x,
            outs,
            tile::<1, false>,
            tile::<TILE_INPUTS, false>,
        )
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
            // 130 rows: a partial tile and a partial task; odd n: a tile of one input.
            for (n, kernel) in [
                (1, kernels::rows_times as kernels::RowsTimes),
                (3, kernels::rows_times),
                (16, kernels::rows_times),
                (3, kernels::rows_times_portable),
            ] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let got = matrix.matmul_transposed_with(&x, n, kernel);
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
