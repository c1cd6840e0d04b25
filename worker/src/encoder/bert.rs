//! A BERT-family transformer encoder on Burn, with weights from a Hugging Face safetensors file.
//!
//! Written with plain tensor operations rather than `burn::nn` modules: inference only, weights
//! come from a checkpoint (never initialised), and the forward pass reads like the BERT paper.
//! Linear weights are stored transposed (`[in, out]`) so a projection is one matmul.

use crate::nn::{MASKED, gelu};
use anyhow::{Context, Result, ensure};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;
use serde::Deserialize;
use std::path::Path;

/// The parts of a Hugging Face `config.json` a BERT encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a BERT config", path.display()))?;
        ensure!(
            config.num_attention_heads > 0
                && config
                    .hidden_size
                    .is_multiple_of(config.num_attention_heads),
            "{}: hidden_size {} is not a multiple of num_attention_heads {}",
            path.display(),
            config.hidden_size,
            config.num_attention_heads
        );
        ensure!(
            config.hidden_act == "gelu",
            "{}: hidden_act {:?} is not supported (only \"gelu\")",
            path.display(),
            config.hidden_act
        );
        Ok(config)
    }
}

struct Linear<B: Backend> {
    /// `[in, out]`
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Linear<B> {
    /// `[rows, in]` → `[rows, out]`
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.clone()) + self.bias.clone().unsqueeze::<2>()
    }
}

struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Normalises over the last dimension of `[rows, hidden]`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let variance = centered.clone().powf_scalar(2.0).mean_dim(1);
        let normed = centered / (variance + self.eps).sqrt();
        normed * self.gamma.clone().unsqueeze::<2>() + self.beta.clone().unsqueeze::<2>()
    }
}

struct Layer<B: Backend> {
    /// Query, key and value projections fused into one `[hidden, 3 * hidden]` matmul.
    qkv: Linear<B>,
    attention_out: Linear<B>,
    attention_norm: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    output_norm: LayerNorm<B>,
}

/// The encoder with its weights on one device.
pub struct Bert<B: Backend> {
    pub config: BertConfig,
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type: Tensor<B, 2>,
    embedding_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
    device: Device<B>,
}

/// Reads named tensors out of a safetensors file, accepting the `bert.` prefix some
/// checkpoints (e.g. `BertForMaskedLM` exports) put on every name.
struct Weights<'a, B: Backend> {
    tensors: SafeTensors<'a>,
    prefix: &'static str,
    device: &'a Device<B>,
    file: &'a Path,
}

impl<B: Backend> Weights<'_, B> {
    fn raw(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full)
            .with_context(|| format!("{}: no tensor {full}", self.file.display()))?;
        let values = crate::weights::view_to_f32(&view, &full, self.file)?;
        Ok((values, view.shape().to_vec()))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        let (values, shape) = self.raw(name)?;
        ensure!(
            shape == [len],
            "{}: {name} has shape {shape:?}, expected [{len}]",
            self.file.display()
        );
        Ok(Tensor::from_data(
            TensorData::new(values, [len]),
            self.device,
        ))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<B, 2>> {
        let (values, shape) = self.raw(name)?;
        ensure!(
            shape == [rows, cols],
            "{}: {name} has shape {shape:?}, expected [{rows}, {cols}]",
            self.file.display()
        );
        Ok(Tensor::from_data(
            TensorData::new(values, [rows, cols]),
            self.device,
        ))
    }

    fn linear(&self, name: &str, input: usize, output: usize) -> Result<Linear<B>> {
        Ok(Linear {
            // Hugging Face stores [out, in].
            weight: self
                .matrix(&format!("{name}.weight"), output, input)?
                .transpose(),
            bias: self.vector(&format!("{name}.bias"), output)?,
        })
    }

    fn norm(&self, name: &str, len: usize, eps: f64) -> Result<LayerNorm<B>> {
        Ok(LayerNorm {
            gamma: self.vector(&format!("{name}.weight"), len)?,
            beta: self.vector(&format!("{name}.bias"), len)?,
            eps,
        })
    }
}

impl<B: Backend> Bert<B> {
    /// Loads `config` and the weights in `weights` (a `.safetensors` file) onto `device`.
    pub fn load(config: BertConfig, weights: &Path, device: &Device<B>) -> Result<Self> {
        let bytes =
            std::fs::read(weights).with_context(|| format!("reading {}", weights.display()))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", weights.display()))?;
        let prefix = if tensors.tensor("embeddings.word_embeddings.weight").is_ok() {
            ""
        } else {
            "bert."
        };
        let w = Weights::<B> {
            tensors,
            prefix,
            device,
            file: weights,
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let [q, k, v] = ["query", "key", "value"]
                .map(|name| w.linear(&format!("{p}.attention.self.{name}"), h, h));
            let (q, k, v) = (q?, k?, v?);
            layers.push(Layer {
                qkv: Linear {
                    weight: Tensor::cat(vec![q.weight, k.weight, v.weight], 1),
                    bias: Tensor::cat(vec![q.bias, k.bias, v.bias], 0),
                },
                attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.linear(
                    &format!("{p}.intermediate.dense"),
                    h,
                    config.intermediate_size,
                )?,
                output: w.linear(&format!("{p}.output.dense"), config.intermediate_size, h)?,
                output_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            word: w.matrix("embeddings.word_embeddings.weight", config.vocab_size, h)?,
            position: w.matrix(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings,
                h,
            )?,
            token_type: w.matrix(
                "embeddings.token_type_embeddings.weight",
                config.type_vocab_size,
                h,
            )?,
            embedding_norm: w.norm("embeddings.LayerNorm", h, eps)?,
            layers,
            config,
            device: device.clone(),
        })
    }

    /// Hidden states `[batch, len, hidden]` for token ids `[batch, len]` (row-major) with
    /// `mask` (1 for tokens, 0 for padding). Token type 0 throughout (single sentences).
    pub fn forward(&self, ids: &[u32], mask: &[u8], batch: usize, len: usize) -> Tensor<B, 3> {
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head_dim = h / heads;
        let rows = batch * len;
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [rows]),
            &self.device,
        );
        let positions = self
            .position
            .clone()
            .slice([0..len, 0..h])
            .unsqueeze::<3>()
            .repeat_dim(0, batch)
            .reshape([rows, h]);
        let token_type = self.token_type.clone().slice([0..1, 0..h]);
        let embedded = self.word.clone().select(0, ids) + positions + token_type;
        let mut x = self.embedding_norm.forward(embedded);

        // Additive attention bias: 0 where a key is a token, a large negative where padding.
        let bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 0 { MASKED } else { 0.0 })
            .collect();
        let bias =
            Tensor::<B, 4>::from_data(TensorData::new(bias, [batch, 1, 1, len]), &self.device);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let on_host = crate::backend::is_plain_cpu::<B>();

        let split = |t: Tensor<B, 2>| t.reshape([batch, len, heads, head_dim]).swap_dims(1, 2);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(x.clone());
            let context = if on_host {
                let qkv = qkv.into_data().to_vec().expect("activations are f32");
                let context = attention_on_host(&qkv, mask, len, heads, scale as f32);
                Tensor::from_data(TensorData::new(context, [rows, h]), &self.device)
            } else {
                let q = split(qkv.clone().slice([0..rows, 0..h]));
                let k = split(qkv.clone().slice([0..rows, h..2 * h]));
                let v = split(qkv.slice([0..rows, 2 * h..3 * h]));
                let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias.clone();
                softmax(scores, 3)
                    .matmul(v)
                    .swap_dims(1, 2)
                    .reshape([rows, h])
            };
            let attended = layer
                .attention_norm
                .forward(layer.attention_out.forward(context) + x);
            let hidden = gelu(layer.intermediate.forward(attended.clone()));
            x = layer
                .output_norm
                .forward(layer.output.forward(hidden) + attended);
        }
        x.reshape([batch, len, h])
    }
}

/// Self-attention of every sequence on the host, for the plain CPU backend: reads queries, keys
/// and values straight from the fused projection `[rows, 3 * hidden]` (rows = sequences x `len`)
/// and writes the context in merged `[rows, hidden]` layout.
///
/// As Burn operations the heads are split and merged by strided copies and the scores are many
/// tiny matmuls, which cost more than the arithmetic (a few percent of the encoder's). Padding
/// keys are skipped, which is what their `MASKED` bias amounts to: its `exp` is exactly 0.
fn attention_on_host(qkv: &[f32], mask: &[u8], len: usize, heads: usize, scale: f32) -> Vec<f32> {
    use rayon::prelude::*;
    let width = qkv.len() / mask.len();
    let h = width / 3;
    let hd = h / heads;
    let mut out = vec![0f32; mask.len() * h];
    out.par_chunks_mut(len * h)
        .zip(qkv.par_chunks(len * width))
        .zip(mask.par_chunks(len))
        .for_each(|((out, qkv), mask)| {
            let mut keys: Vec<usize> = (0..len).filter(|&j| mask[j] != 0).collect();
            if keys.is_empty() {
                // All padding: every bias is equal, so every key counts alike.
                keys = (0..len).collect();
            }
            let mut weights = vec![0f32; keys.len()];
            for (query, out) in qkv.chunks_exact(width).zip(out.chunks_exact_mut(h)) {
                for head in 0..heads {
                    let q = &query[head * hd..(head + 1) * hd];
                    for (weight, &j) in weights.iter_mut().zip(&keys) {
                        let key = &qkv[j * width + h + head * hd..][..hd];
                        *weight = crate::nn::dot::<false>(q, key) * scale;
                    }
                    crate::nn::softmax_in_place(&mut weights);
                    let out = &mut out[head * hd..(head + 1) * hd];
                    for (&weight, &j) in weights.iter().zip(&keys) {
                        let value = &qkv[j * width + 2 * h + head * hd..][..hd];
                        for (out, &value) in out.iter_mut().zip(value) {
                            *out += weight * value;
                        }
                    }
                }
            }
        });
    out
}
