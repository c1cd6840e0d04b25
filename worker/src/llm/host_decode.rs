//! Decode steps on the CPU, on host buffers.
//!
//! A decode step feeds one position per sequence through the model: a few rows against every
//! weight. As Burn operations that is some 35 small tensor operations per layer, each with its
//! own allocation and dispatch, plus a KV cache copied whole to append one position. Here the
//! step runs on plain `Vec<f32>`s instead: projections are the quantized block kernels, keys
//! and values are written in place, and norms, rotary embeddings, attention and the MLP gate
//! are loops over the rows.
//!
//! [`HostDecoder::step`] computes what `Llama::step` computes, with the same operations in the
//! same order up to the summation order of dot products; the engine tests compare the two.

use super::config::{LlamaConfig, RopePairing};
use super::cpu_matvec::QuantMatrix;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

/// Rotary embedding frequencies and the dimension pairs they rotate; the one definition both
/// the tensor path (its cos/sin tables) and the host path read.
#[derive(Clone)]
pub(crate) struct RopePlan {
    /// Per pair, its angle per position.
    pub inv_freq: Vec<f32>,
    /// Per pair, the dimensions `(a, b)`; `b` is `a` rotated by +90 degrees.
    pub pairs: Vec<(usize, usize)>,
    pub head_dim: usize,
}

impl RopePlan {
    pub fn new(config: &LlamaConfig) -> Self {
        let hd = config.head_dim();
        let half = hd / 2;
        let inv_freq = (0..half)
            // Computed in f64 and rounded once, as PyTorch's f32 path nearly does.
            .map(|p| (1.0 / config.rope_theta.powf(2.0 * p as f64 / hd as f64)) as f32)
            .collect();
        let pairs = (0..half)
            .map(|p| match config.rope_pairing {
                RopePairing::Half => (p, p + half),
                RopePairing::Interleaved => (2 * p, 2 * p + 1),
            })
            .collect();
        Self {
            inv_freq,
            pairs,
            head_dim: hd,
        }
    }

    /// The angle of pair `p` at `position`.
    pub fn angle(&self, position: usize, p: usize) -> f32 {
        position as f32 * self.inv_freq[p]
    }

    /// Rotates `x` `[rows, heads, head_dim]` in place, row `r` at `positions[r]`, as
    /// `x * cos + (x @ rotation) * sin`.
    fn apply(&self, x: &mut [f32], positions: &[usize]) {
        let hd = self.head_dim;
        let width = x.len() / positions.len();
        for (row, &position) in x.chunks_exact_mut(width).zip(positions) {
            for (p, &(a, b)) in self.pairs.iter().enumerate() {
                let (sin, cos) = self.angle(position, p).sin_cos();
                for head in row.chunks_exact_mut(hd) {
                    let (xa, xb) = (head[a], head[b]);
                    head[a] = xa * cos + -xb * sin;
                    head[b] = xb * cos + xa * sin;
                }
            }
        }
    }
}

/// One layer's weights as the host step reads them.
pub(crate) struct HostLayer {
    pub attention_norm: Vec<f32>,
    pub q: Arc<QuantMatrix>,
    pub k: Arc<QuantMatrix>,
    pub v: Arc<QuantMatrix>,
    pub o: Arc<QuantMatrix>,
    pub mlp_norm: Vec<f32>,
    pub gate: Arc<QuantMatrix>,
    pub up: Arc<QuantMatrix>,
    pub down: Arc<QuantMatrix>,
}

/// The decoder layers of a model whose projections all have blocks for the CPU kernels.
pub(crate) struct HostDecoder {
    pub layers: Vec<HostLayer>,
    pub final_norm: Vec<f32>,
    pub rope: RopePlan,
    pub heads: usize,
    pub eps: f32,
}

impl HostDecoder {
    /// One position per row through every layer: `x` `[batch, hidden]` embeddings, row `r` at
    /// `positions[r]`, `bias` `[batch, seen + 1]` added to the attention scores, one cache per
    /// layer. Returns the final-normed hidden states `[batch, hidden]`.
    pub fn step(
        &self,
        mut x: Vec<f32>,
        positions: &[usize],
        bias: &[f32],
        caches: &mut [&mut HostKv],
    ) -> Vec<f32> {
        let batch = positions.len();
        let scale = 1.0 / (self.rope.head_dim as f32).sqrt();
        for (layer, kv) in self.layers.iter().zip(caches.iter_mut()) {
            let normed = rms_norm(&x, &layer.attention_norm, self.eps);
            let mut q = layer.q.matmul_transposed(&normed, batch);
            let mut k = layer.k.matmul_transposed(&normed, batch);
            let v = layer.v.matmul_transposed(&normed, batch);
            self.rope.apply(&mut q, positions);
            self.rope.apply(&mut k, positions);
            kv.push(&k, &v);
            let attended = kv.attend(&q, bias, self.heads, scale);
            add(&mut x, &layer.o.matmul_transposed(&attended, batch));

            let normed = rms_norm(&x, &layer.mlp_norm, self.eps);
            let mut gated = layer.gate.matmul_transposed(&normed, batch);
            let up = layer.up.matmul_transposed(&normed, batch);
            for (g, u) in gated.iter_mut().zip(&up) {
                // silu(g) * u, with silu as x * sigmoid(x).
                *g = *g * (1.0 / (1.0 + (-*g).exp())) * u;
            }
            add(&mut x, &layer.down.matmul_transposed(&gated, batch));
        }
        rms_norm(&x, &self.final_norm, self.eps)
    }
}

/// `x * 1/sqrt(mean(x^2) + eps) * weight` per row of `weight.len()` values.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(weight.len()) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / weight.len() as f32;
        let inverse = 1.0 / (mean_square + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * inverse * w));
    }
    out
}

fn add(x: &mut [f32], delta: &[f32]) {
    for (x, d) in x.iter_mut().zip(delta) {
        *x += d;
    }
}

/// Keys and values `[batch, kv_heads, capacity, head_dim]` row-major, the first `len`
/// positions filled: a decode step writes one position in place.
pub(crate) struct HostKv {
    keys: Vec<f32>,
    values: Vec<f32>,
    batch: usize,
    heads: usize,
    head_dim: usize,
    capacity: usize,
    pub len: usize,
}

impl HostKv {
    pub fn from_tensors<B: Backend>(k: Tensor<B, 4>, v: Tensor<B, 4>) -> Self {
        let [batch, heads, len, head_dim] = k.dims();
        let values_of = |t: Tensor<B, 4>| -> Vec<f32> {
            t.into_data().to_vec().expect("keys and values are f32")
        };
        let mut kv = Self {
            keys: Vec::new(),
            values: Vec::new(),
            batch,
            heads,
            head_dim,
            capacity: 0,
            len,
        };
        kv.keys = kv.with_capacity(&values_of(k), len, len + 64);
        kv.values = kv.with_capacity(&values_of(v), len, len + 64);
        kv.capacity = len + 64;
        kv
    }

    /// `data` `[batch, heads, len, head_dim]` copied into a buffer of `capacity` positions.
    fn with_capacity(&self, data: &[f32], len: usize, capacity: usize) -> Vec<f32> {
        let (stride, used) = (capacity * self.head_dim, len * self.head_dim);
        let mut out = vec![0f32; self.batch * self.heads * stride];
        if used > 0 {
            for (to, from) in out.chunks_exact_mut(stride).zip(data.chunks_exact(used)) {
                to[..used].copy_from_slice(from);
            }
        }
        out
    }

    pub fn to_tensors<B: Backend>(&self, device: &Device<B>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let shape = [self.batch, self.heads, self.len, self.head_dim];
        let tensor = |buffer: &[f32]| {
            Tensor::from_data(TensorData::new(self.compact(buffer), shape), device)
        };
        (tensor(&self.keys), tensor(&self.values))
    }

    /// Appends one position per row: `k` and `v` are `[batch, heads, head_dim]`.
    pub fn push(&mut self, k: &[f32], v: &[f32]) {
        if self.len == self.capacity {
            // Doubling keeps the copies amortized O(1) per step.
            let capacity = 2 * self.capacity.max(32);
            self.keys = self.with_capacity(&self.compact(&self.keys), self.len, capacity);
            self.values = self.with_capacity(&self.compact(&self.values), self.len, capacity);
            self.capacity = capacity;
        }
        let hd = self.head_dim;
        let at = self.len * hd;
        for (head, (k, v)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
            let start = head * self.capacity * hd + at;
            self.keys[start..start + hd].copy_from_slice(k);
            self.values[start..start + hd].copy_from_slice(v);
        }
        self.len += 1;
    }

    /// The filled positions of `buffer`, `[batch, heads, len, head_dim]`.
    fn compact(&self, buffer: &[f32]) -> Vec<f32> {
        let (stride, used) = (self.capacity * self.head_dim, self.len * self.head_dim);
        buffer
            .chunks_exact(stride)
            .flat_map(|head| &head[..used])
            .copied()
            .collect()
    }

    /// Scaled dot-product attention of one query position per row: `q` `[batch, q_heads,
    /// head_dim]`, `bias` `[batch, len]` added to the scores; returns `[batch, q_heads *
    /// head_dim]`. Query head `h` reads key-value head `h / (q_heads / heads)`, as the grouped
    /// attention of `Llama::step` does.
    pub fn attend(&self, q: &[f32], bias: &[f32], q_heads: usize, scale: f32) -> Vec<f32> {
        let width = q_heads * self.head_dim;
        let mut out = vec![0f32; self.batch * width];
        #[cfg(target_arch = "x86_64")]
        let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        out.par_chunks_mut(width)
            .zip(q.par_chunks(width))
            .enumerate()
            .for_each(|(row, (out, q))| {
                let bias = &bias[row * self.len..(row + 1) * self.len];
                #[cfg(target_arch = "x86_64")]
                if fma {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    return unsafe { self.attend_row_fma(row, q, bias, scale, out) };
                }
                self.attend_row::<false>(row, q, bias, scale, out)
            });
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn attend_row_fma(&self, row: usize, q: &[f32], bias: &[f32], scale: f32, out: &mut [f32]) {
        self.attend_row::<true>(row, q, bias, scale, out)
    }

    /// [`HostKv::attend`] for batch row `row`: `q` and `out` `[q_heads, head_dim]`.
    #[inline(always)]
    fn attend_row<const FMA: bool>(
        &self,
        row: usize,
        q: &[f32],
        bias: &[f32],
        scale: f32,
        out: &mut [f32],
    ) {
        let (hd, len) = (self.head_dim, self.len);
        let group = q.len() / hd / self.heads;
        let stride = self.capacity * hd;
        let mut scores = vec![0f32; len];
        for (head, (out, q)) in out.chunks_exact_mut(hd).zip(q.chunks_exact(hd)).enumerate() {
            let kv = (row * self.heads + head / group) * stride;
            let keys = &self.keys[kv..kv + len * hd];
            let values = &self.values[kv..kv + len * hd];
            for ((score, key), &bias) in scores.iter_mut().zip(keys.chunks_exact(hd)).zip(bias) {
                *score = crate::nn::dot::<FMA>(q, key) * scale + bias;
            }
            crate::nn::softmax_in_place(&mut scores);
            for (&weight, value) in scores.iter().zip(values.chunks_exact(hd)) {
                for (out, &value) in out.iter_mut().zip(value) {
                    *out = if FMA {
                        weight.mul_add(value, *out)
                    } else {
                        weight * value + *out
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, device};

    #[test]
    fn the_host_cache_grows_and_converts_back_to_tensors() {
        let (batch, heads, hd, prompt) = (2, 2, 8, 3);
        let value =
            |b: usize, h: usize, p: usize, d: usize| (((b * 7 + h) * 1000 + p) * 10 + d) as f32;
        let tensor = |len: usize, offset: f32| {
            let mut values = Vec::new();
            for b in 0..batch {
                for h in 0..heads {
                    for p in 0..len {
                        values.extend((0..hd).map(|d| value(b, h, p, d) + offset));
                    }
                }
            }
            Tensor::<Backend, 4>::from_data(
                TensorData::new(values, [batch, heads, len, hd]),
                &device(),
            )
        };
        let mut cache = HostKv::from_tensors(tensor(prompt, 0.0), tensor(prompt, 0.5));
        // Past the first capacity, so the buffers grow once.
        let total = cache.capacity + 5;
        for p in prompt..total {
            let step = |offset: f32| -> Vec<f32> {
                (0..batch)
                    .flat_map(|b| {
                        (0..heads)
                            .flat_map(move |h| (0..hd).map(move |d| value(b, h, p, d) + offset))
                    })
                    .collect()
            };
            cache.push(&step(0.0), &step(0.5));
        }
        assert_eq!(cache.len, total);
        let (k, v) = cache.to_tensors::<Backend>(&device());
        let read = |t: Tensor<Backend, 4>| t.into_data().to_vec::<f32>().unwrap();
        assert_eq!(read(k), read(tensor(total, 0.0)));
        assert_eq!(read(v), read(tensor(total, 0.5)));
    }
}
