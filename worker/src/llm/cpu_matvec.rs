//! Decoding on the CPU reads every weight once per generated token, so its speed is the speed
//! of reading the weights. Dequantized to f32 they are 4 to 6 times larger than in the GGUF
//! file; these kernels multiply by the Q4_0, Q4_1 and Q8_0 blocks as stored, for the few rows
//! (one per sequence) of a decode step. Prefill and training keep Burn's f32 matmuls.
//!
//! The result equals the f32 path up to summation order: the blocks hold exactly the values
//! the f32 weights were dequantized from. Weights that have no blocks to keep (a projection with
//! a LoRA adapter merged in) are kept as f32 rows and go through the same tiles.

use super::quant::GgmlType;
use anyhow::{Result, ensure};
use rayon::prelude::*;

const BLOCK: usize = 32;

thread_local! {
    /// Each thread's dequantized tile; a fresh allocation per task would be zeroed every time.
    static TILE_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A `[out, in]` weight kept in its ggml block encoding, or as f32 rows.
pub struct QuantMatrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// Per block: the scale (and for Q4_1 the minimum), as f32.
    scales: Vec<f32>,
    mins: Vec<f32>,
    /// Per block: 16 bytes of nibbles (Q4) or 32 signed bytes (Q8).
    quants: Vec<u8>,
    /// The values themselves, row-major (`F32` only).
    floats: Vec<f32>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Q4_0,
    Q4_1,
    Q8_0,
    F32,
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
                Kind::F32 => unreachable!("f32 matrices come from `from_f32`"),
            }
        }
        Ok(Some(Self {
            kind,
            rows,
            cols,
            scales,
            mins,
            quants,
            floats: Vec::new(),
        }))
    }

    /// Wraps f32 `values` `[rows, cols]`; `None` when rows are not whole blocks.
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize) -> Option<Self> {
        assert_eq!(values.len(), rows * cols, "values are not [rows, cols]");
        cols.is_multiple_of(BLOCK).then(|| Self {
            kind: Kind::F32,
            rows,
            cols,
            scales: Vec::new(),
            mins: Vec::new(),
            quants: Vec::new(),
            floats: values,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x` `[n, cols]` times the transposed matrix: `[n, rows]`, all row-major.
    pub fn matmul_transposed(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.matmul_transposed_with(x, n, kernels::best())
    }

    fn matmul_transposed_with(&self, x: &[f32], n: usize, kernel: kernels::Tile) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "input is not [n, cols]");
        // Output in [rows, n] order so each task writes one contiguous chunk.
        const ROWS_PER_TASK: usize = 8 * kernels::TILE_ROWS;
        let mut transposed = vec![0f32; self.rows * n];
        transposed
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, out)| {
                TILE_BUFFER.with_borrow_mut(|weights| {
                    // Every kernel writes the rows it reads, so stale values never leak.
                    weights.resize(kernels::TILE_ROWS * self.cols, 0.0);
                    for (tile, out) in out.chunks_mut(kernels::TILE_ROWS * n).enumerate() {
                        let first = task * ROWS_PER_TASK + tile * kernels::TILE_ROWS;
                        kernel(self, first, x, weights, out);
                    }
                });
            });
        let mut out = vec![0f32; n * self.rows];
        for (row, values) in transposed.chunks_exact(n).enumerate() {
            for (i, &value) in values.iter().enumerate() {
                out[i * self.rows + row] = value;
            }
        }
        out
    }

    /// Rows `first..first + count` into `weights` (`TILE_ROWS` rows of `cols`); the rows of a
    /// short last tile are zero.
    fn dequantize_rows(&self, first: usize, count: usize, weights: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        let (filled, rest) = weights.split_at_mut(count * self.cols);
        for (b, chunk) in filled.chunks_exact_mut(BLOCK).enumerate() {
            chunk.copy_from_slice(&self.dequantize_block(first * blocks + b));
        }
        rest.fill(0.0);
    }

    /// The 32 weights of block `block`, computed exactly as `quant::dequantize` does.
    #[inline(always)]
    fn dequantize_block(&self, block: usize) -> [f32; BLOCK] {
        if self.kind == Kind::F32 {
            let mut w = [0f32; BLOCK];
            w.copy_from_slice(&self.floats[block * BLOCK..(block + 1) * BLOCK]);
            return w;
        }
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
            Kind::F32 => unreachable!("handled above"),
        }
        w
    }
}

/// The inner loops. A tile of `TILE_ROWS` weight rows is dequantized into a small f32 buffer
/// that stays in L1, then multiplied with every activation row, so the dequantization is paid
/// once per decode step however many sequences there are. AVX-512 has hand-written intrinsics;
/// elsewhere a portable version is compiled for AVX2 + FMA when the CPU has them.
mod kernels {
    use super::QuantMatrix;

    pub const TILE_ROWS: usize = 8;

    /// Dequantizes the tile that starts at weight row `first` into `weights` (`TILE_ROWS` rows
    /// of `cols`) and writes its dot products with every row of `x` into `out` `[tile rows,
    /// x rows]`; a short last tile has fewer real rows (`out.len() / x rows`).
    pub type Tile = fn(&QuantMatrix, usize, &[f32], &mut [f32], &mut [f32]);

    /// The fastest kernel this CPU runs.
    pub fn best() -> Tile {
        use std::sync::OnceLock;
        static BEST: OnceLock<Tile> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") {
                    return avx512::tile;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return portable_avx2;
                }
            }
            portable
        })
    }

    /// Without hardware FMA, `mul_add` would be a slow library call.
    pub fn portable(
        m: &QuantMatrix,
        first: usize,
        x: &[f32],
        weights: &mut [f32],
        out: &mut [f32],
    ) {
        portable_tile::<false, 8>(m, first, x, weights, out)
    }

    #[cfg(target_arch = "x86_64")]
    fn portable_avx2(
        m: &QuantMatrix,
        first: usize,
        x: &[f32],
        weights: &mut [f32],
        out: &mut [f32],
    ) {
        #[target_feature(enable = "avx2,fma")]
        fn compiled(
            m: &QuantMatrix,
            first: usize,
            x: &[f32],
            weights: &mut [f32],
            out: &mut [f32],
        ) {
            portable_tile::<true, 8>(m, first, x, weights, out)
        }
        // SAFETY: `best` hands this out only when the CPU has AVX2 and FMA.
        unsafe { compiled(m, first, x, weights, out) }
    }

    /// One activation row at a time against the whole tile, in `TILE_ROWS` accumulators of `L`
    /// lanes, so each activation vector loaded feeds `TILE_ROWS` multiply-adds.
    #[inline(always)]
    fn portable_tile<const FMA: bool, const L: usize>(
        m: &QuantMatrix,
        first: usize,
        x: &[f32],
        weights: &mut [f32],
        out: &mut [f32],
    ) {
        let cols = m.cols;
        let n = x.len() / cols;
        let rows = out.len() / n;
        m.dequantize_rows(first, rows, weights);
        let w: [&[[f32; L]]; TILE_ROWS] =
            std::array::from_fn(|r| weights[r * cols..(r + 1) * cols].as_chunks::<L>().0);
        for (i, x_row) in x.chunks_exact(cols).enumerate() {
            let mut acc = [[0f32; L]; TILE_ROWS];
            for (c, xv) in x_row.as_chunks::<L>().0.iter().enumerate() {
                for (acc, w) in acc.iter_mut().zip(&w) {
                    for l in 0..L {
                        acc[l] = if FMA {
                            w[c][l].mul_add(xv[l], acc[l])
                        } else {
                            w[c][l] * xv[l] + acc[l]
                        };
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                out[r * n + i] = sum_lanes(acc);
            }
        }
    }

    /// Pairwise sum of the lanes.
    #[inline(always)]
    fn sum_lanes<const L: usize>(lanes: &[f32; L]) -> f32 {
        let mut lanes = *lanes;
        let mut width = L;
        while width > 1 {
            width /= 2;
            for l in 0..width {
                lanes[l] += lanes[l + width];
            }
        }
        lanes[0]
    }

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use super::super::{BLOCK, Kind, QuantMatrix};
        use super::TILE_ROWS;
        use std::arch::x86_64::*;

        /// Activation rows per register tile: `TILE_ROWS * X` accumulators of 16 lanes (24 of
        /// the 32 registers), so 11 loads feed 24 multiply-adds.
        const X: usize = 3;

        pub fn tile(
            m: &QuantMatrix,
            first: usize,
            x: &[f32],
            weights: &mut [f32],
            out: &mut [f32],
        ) {
            // SAFETY: `best` hands this out only when the CPU has AVX-512F.
            unsafe { tile_avx512(m, first, x, weights, out) }
        }

        #[target_feature(enable = "avx512f")]
        fn tile_avx512(
            m: &QuantMatrix,
            first: usize,
            x: &[f32],
            weights: &mut [f32],
            out: &mut [f32],
        ) {
            let cols = m.cols;
            let n = x.len() / cols;
            let rows = out.len() / n;
            assert!(weights.len() == TILE_ROWS * cols && rows <= TILE_ROWS);
            dequantize(m, first, &mut weights[..rows * cols]);
            weights[rows * cols..].fill(0.0);
            let mut i = 0;
            while i + X <= n {
                dots::<X>(weights, cols, x, i, out);
                i += X;
            }
            match n - i {
                2 => dots::<2>(weights, cols, x, i, out),
                1 => dots::<1>(weights, cols, x, i, out),
                _ => {}
            }
        }

        /// Dot products of the tile with activation rows `first..first + R`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn dots<const R: usize>(
            weights: &[f32],
            cols: usize,
            x: &[f32],
            first: usize,
            out: &mut [f32],
        ) {
            let n = x.len() / cols;
            let rows = out.len() / n;
            assert!(weights.len() == TILE_ROWS * cols && (first + R) * cols <= x.len());
            assert!(cols.is_multiple_of(16));
            let (w, xs) = (weights.as_ptr(), x[first * cols..].as_ptr());
            let mut acc = [[_mm512_setzero_ps(); R]; TILE_ROWS];
            for c in (0..cols).step_by(16) {
                let mut xv = [_mm512_setzero_ps(); R];
                for (i, xv) in xv.iter_mut().enumerate() {
                    // SAFETY: row `first + i` of x has `cols` values (asserted above).
                    *xv = unsafe { _mm512_loadu_ps(xs.add(i * cols + c)) };
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: `weights` holds TILE_ROWS rows of `cols` (asserted above).
                    let wv = unsafe { _mm512_loadu_ps(w.add(r * cols + c)) };
                    for (acc, &xv) in acc.iter_mut().zip(&xv) {
                        *acc = _mm512_fmadd_ps(wv, xv, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                for (i, &acc) in acc.iter().enumerate() {
                    out[r * n + first + i] = _mm512_reduce_add_ps(acc);
                }
            }
        }

        /// The blocks of rows `first..` into `weights`, with the same operations as
        /// `quant::dequantize`, so the values are identical.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn dequantize(m: &QuantMatrix, first: usize, weights: &mut [f32]) {
            let start = first * (m.cols / BLOCK);
            if m.kind == Kind::F32 {
                let at = start * BLOCK;
                weights.copy_from_slice(&m.floats[at..at + weights.len()]);
                return;
            }
            let low_nibbles = _mm_set1_epi8(0x0F);
            for (block, dst) in (start..).zip(weights.chunks_exact_mut(BLOCK)) {
                let d = _mm512_set1_ps(m.scales[block]);
                let (low, high) = match m.kind {
                    Kind::Q8_0 => {
                        let q = &m.quants[block * 32..block * 32 + 32];
                        // SAFETY: `q` has 32 bytes; each load reads 16.
                        let (a, b) = unsafe {
                            (
                                _mm_loadu_si128(q.as_ptr().cast()),
                                _mm_loadu_si128(q[16..].as_ptr().cast()),
                            )
                        };
                        let a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a));
                        let b = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
                        (_mm512_mul_ps(a, d), _mm512_mul_ps(b, d))
                    }
                    kind => {
                        let q = &m.quants[block * 16..block * 16 + 16];
                        // SAFETY: `q` has 16 bytes.
                        let q = unsafe { _mm_loadu_si128(q.as_ptr().cast()) };
                        let a = _mm_and_si128(q, low_nibbles);
                        let b = _mm_and_si128(_mm_srli_epi16(q, 4), low_nibbles);
                        let a = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(a));
                        let b = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
                        if kind == Kind::Q4_1 {
                            let min = _mm512_set1_ps(m.mins[block]);
                            (
                                _mm512_add_ps(_mm512_mul_ps(a, d), min),
                                _mm512_add_ps(_mm512_mul_ps(b, d), min),
                            )
                        } else {
                            let eight = _mm512_set1_ps(8.0);
                            (
                                _mm512_mul_ps(_mm512_sub_ps(a, eight), d),
                                _mm512_mul_ps(_mm512_sub_ps(b, eight), d),
                            )
                        }
                    }
                };
                // SAFETY: `dst` has 32 values; each store writes 16.
                unsafe {
                    _mm512_storeu_ps(dst.as_mut_ptr(), low);
                    _mm512_storeu_ps(dst[16..].as_mut_ptr(), high);
                }
            }
        }
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
            let blocks = QuantMatrix::from_blocks(ggml_type, &data, rows, cols)
                .unwrap()
                .unwrap();
            // The same values as f32 rows, as a merged projection holds them.
            let floats = QuantMatrix::from_f32(weights.clone(), rows, cols).unwrap();
            for matrix in [blocks, floats] {
                for n in [1, 3, 6, 17] {
                    let x: Vec<f32> = (0..n * cols)
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                        .collect();
                    for (name, kernel) in [
                        ("best", kernels::best()),
                        ("portable", kernels::portable as kernels::Tile),
                    ] {
                        let got = matrix.matmul_transposed_with(&x, n, kernel);
                        for i in 0..n {
                            for row in 0..rows {
                                let expected: f32 = (0..cols)
                                    .map(|c| weights[row * cols + c] * x[i * cols + c])
                                    .sum();
                                let value = got[i * rows + row];
                                assert!(
                                    (value - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                                    "{name} {ggml_type:?} as {:?}, n={n} [{i}, {row}]: {value} vs \
                                     {expected}",
                                    matrix.kind
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(
            QuantMatrix::from_blocks(GgmlType::F32, &[0; 4], 1, 1)
                .unwrap()
                .is_none()
        );
        assert!(QuantMatrix::from_f32(vec![0.0; 20], 2, 10).is_none());
    }
}
