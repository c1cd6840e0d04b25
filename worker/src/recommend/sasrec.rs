//! SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.
//!
//! Laid out like the widely used PyTorch port (pmixer/SASRec.pytorch): item vectors scaled by
//! `sqrt(hidden)` plus learned absolute positions, embedding dropout, then `blocks` blocks of
//! `q = LN(x); x = q + MHA(q, x, x); x = FFN(LN(x)) + LN(x)`, padded positions zeroed after
//! every block, and a final layer norm. Unlike that port, attention also masks padded keys,
//! so a user's encoding does not depend on how much padding its batch has.

use super::data::SeqBatch;
use crate::nn::{Dropout, MASKED, linear_rows};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Bool, TensorData};
use serde::{Deserialize, Serialize};

/// SASRec's hyper-parameters (the item vector width is the model's `hidden`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SasRecConfig {
    /// Self-attention blocks.
    pub blocks: usize,
    /// Attention heads (must divide `hidden`).
    pub heads: usize,
    /// Dropout on embeddings, attention weights and the feed-forward layers.
    pub dropout: f64,
}

impl Default for SasRecConfig {
    fn default() -> Self {
        Self {
            blocks: 2,
            heads: 1,
            dropout: 0.2,
        }
    }
}

/// Multi-head attention with dropout on the attention weights (as `torch.nn.MultiheadAttention`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    output: Linear<B>,
    dropout: Dropout,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    fn new(hidden: usize, heads: usize, dropout: f64, device: &B::Device) -> Self {
        let linear = || {
            LinearConfig::new(hidden, hidden)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device)
        };
        Self {
            query: linear(),
            key: linear(),
            value: linear(),
            output: linear(),
            dropout: Dropout::new(dropout),
            heads,
        }
    }

    /// `queries` attend to `keys` (also the values); `bias` `[batch, len, len]` is added to
    /// the attention scores (a large negative number where attention is forbidden).
    fn forward(
        &self,
        queries: Tensor<B, 3>,
        keys: Tensor<B, 3>,
        bias: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [batch, len, hidden] = queries.dims();
        let heads = self.heads;
        let d_head = hidden / heads;
        // One head (SASRec's default) needs no split: a plain reshape keeps the data contiguous
        // where swapping axes would make every later op copy it.
        let split = |x: Tensor<B, 3>| match heads {
            1 => x.reshape([batch, 1, len, d_head]),
            _ => x.reshape([batch, len, heads, d_head]).swap_dims(1, 2),
        };
        // Scaling the queries costs `len x d_head` per row, the scores `len x len`.
        let q = split(linear_rows(&self.query, queries).mul_scalar(1.0 / (d_head as f32).sqrt()));
        let k = split(linear_rows(&self.key, keys.clone()));
        let v = split(linear_rows(&self.value, keys));
        let scores = q.matmul(k.swap_dims(2, 3)) + bias.unsqueeze_dim::<4>(1);
        let weights = self.dropout.forward(softmax(scores, 3));
        let context = weights.matmul(v);
        let context = match heads {
            1 => context.reshape([batch, len, hidden]),
            _ => context.swap_dims(1, 2).reshape([batch, len, hidden]),
        };
        linear_rows(&self.output, context)
    }
}

/// One self-attention block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    attention_norm: LayerNorm<B>,
    attention: Attention<B>,
    forward_norm: LayerNorm<B>,
    ffn_in: Linear<B>,
    ffn_out: Linear<B>,
    dropout: Dropout,
}

impl<B: Backend> Block<B> {
    fn new(hidden: usize, config: &SasRecConfig, device: &B::Device) -> Self {
        let norm = || LayerNormConfig::new(hidden).with_epsilon(1e-8).init(device);
        let linear = || LinearConfig::new(hidden, hidden).init(device);
        Self {
            attention_norm: norm(),
            attention: Attention::new(hidden, config.heads, config.dropout, device),
            forward_norm: norm(),
            ffn_in: linear(),
            ffn_out: linear(),
            dropout: Dropout::new(config.dropout),
        }
    }

    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = self.attention_norm.forward(x.clone());
        let x = q.clone() + self.attention.forward(q, x, bias);
        let x = self.forward_norm.forward(x);
        let h = relu(self.dropout.forward(linear_rows(&self.ffn_in, x.clone())));
        x + self.dropout.forward(linear_rows(&self.ffn_out, h))
    }
}

/// The SASRec sequence encoder (item vectors come from the caller).
#[derive(Module, Debug)]
pub struct SasRec<B: Backend> {
    positions: Embedding<B>,
    dropout: Dropout,
    blocks: Vec<Block<B>>,
    last_norm: LayerNorm<B>,
    hidden: usize,
}

impl<B: Backend> SasRec<B> {
    /// `config.heads` must divide `hidden` (checked by [`super::Recommender::new`]).
    pub(crate) fn new(
        config: &SasRecConfig,
        hidden: usize,
        max_len: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            positions: EmbeddingConfig::new(max_len, hidden)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            dropout: Dropout::new(config.dropout),
            blocks: (0..config.blocks)
                .map(|_| Block::new(hidden, config, device))
                .collect(),
            last_norm: LayerNormConfig::new(hidden).with_epsilon(1e-8).init(device),
            hidden,
        }
    }

    /// Hidden states `[batch, len, hidden]` from item vectors `[batch, len, hidden]`.
    ///
    /// `prefix` `[batch, hidden]`, when given, is one more token in front of the sequence
    /// (after its padding in effect: padded keys are masked), visible to every position and
    /// without a position embedding; its own output is dropped. SLIM's ID-agnostic model puts
    /// the user's rationale vector there.
    pub fn forward(
        &self,
        items: Tensor<B, 3>,
        input: &SeqBatch<B>,
        prefix: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 3> {
        let [batch, len, hidden] = items.dims();
        let device = items.device();
        let mut padding = input.padding.clone();
        let mut keep = padding.clone().bool_not().float().unsqueeze_dim::<3>(2);
        let x = items.mul_scalar((self.hidden as f32).sqrt())
            + self.positions.forward(input.positions.clone());
        let mut x = self.dropout.forward(x) * keep.clone();
        let offset = usize::from(prefix.is_some());
        if let Some(prefix) = prefix {
            let prefix = self.dropout.forward(prefix).unsqueeze_dim::<3>(1);
            x = Tensor::cat(vec![prefix, x], 1);
            let never = Tensor::<B, 2, Bool>::from_data(
                TensorData::new(vec![false; batch], [batch, 1]),
                &device,
            );
            padding = Tensor::cat(vec![never, padding], 1);
            keep = Tensor::cat(vec![Tensor::ones([batch, 1, 1], &device), keep], 1);
        }
        let total = len + offset;
        let bias = attention_bias(padding, total, &device);
        for block in &self.blocks {
            x = block.forward(x, bias.clone()) * keep.clone();
        }
        self.last_norm
            .forward(x)
            .slice([0..batch, offset..total, 0..hidden])
    }
}

/// Added to attention scores: a large negative number where a query may not look (later keys,
/// padded keys), 0 elsewhere; `[batch, len, len]` from `padding` `[batch, len]`. Built once
/// per forward pass and shared by every block.
fn attention_bias<B: Backend>(
    padding: Tensor<B, 2, Bool>,
    len: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    // Built on the host: as a broadcast sum of a causal and a padding tensor it cost the CPU
    // backend a strided walk per element, more than all the rest of the attention scores.
    let padded: Vec<bool> = padding.into_data().to_vec().expect("a bool padding mask");
    let batch = padded.len() / len;
    let mut bias = vec![0.0f32; batch * len * len];
    for (b, rows) in bias.chunks_mut(len * len).enumerate() {
        let keys = &padded[b * len..(b + 1) * len];
        for (query, row) in rows.chunks_mut(len).enumerate() {
            for (key, value) in row.iter_mut().enumerate() {
                if key > query || keys[key] {
                    *value = MASKED;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [batch, len, len]), device)
}
