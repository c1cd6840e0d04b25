//! GRU4Rec (Hidasi et al., ICLR 2016) as RecBole builds it for sequential recommendation: item
//! vectors, dropout, a GRU, and a dense layer back to the item vector width.
//!
//! The GRU cell is written here rather than taken from `burn::nn::Gru`: the input projection
//! of all positions is one matrix product instead of three per step, and padded (leading)
//! positions leave the state at zero, so a user's encoding does not depend on its batch.

use super::data::SeqBatch;
use crate::nn::{Dropout, linear_rows};
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, tanh};
use serde::{Deserialize, Serialize};

/// GRU4Rec's hyper-parameters (the item vector width is the model's `hidden`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gru4RecConfig {
    /// Width of the GRU state.
    pub state: usize,
    /// Dropout on the item vectors.
    pub dropout: f64,
}

impl Default for Gru4RecConfig {
    fn default() -> Self {
        Self {
            state: 64,
            dropout: 0.2,
        }
    }
}

#[derive(Module, Debug)]
pub struct Gru4Rec<B: Backend> {
    /// Input to the reset, update and candidate pre-activations, `[hidden, 3 * state]`.
    input: Linear<B>,
    /// State to the same three, `[state, 3 * state]`.
    recurrent: Linear<B>,
    /// State back to the item vector width.
    dense: Linear<B>,
    dropout: Dropout,
    state: usize,
}

impl<B: Backend> Gru4Rec<B> {
    pub(crate) fn new(config: &Gru4RecConfig, hidden: usize, device: &B::Device) -> Self {
        let xavier = Initializer::XavierUniform { gain: 1.0 };
        Self {
            input: LinearConfig::new(hidden, 3 * config.state)
                .with_initializer(xavier.clone())
                .init(device),
            recurrent: LinearConfig::new(config.state, 3 * config.state)
                .with_initializer(xavier)
                .init(device),
            dense: LinearConfig::new(config.state, hidden).init(device),
            dropout: Dropout::new(config.dropout),
            state: config.state,
        }
    }

    /// Hidden states `[batch, len, hidden]` from item vectors `[batch, len, hidden]`.
    pub fn forward(&self, items: Tensor<B, 3>, input: &SeqBatch<B>) -> Tensor<B, 3> {
        let [batch, len, _] = items.dims();
        let s = self.state;
        let gates_in = linear_rows(&self.input, self.dropout.forward(items));
        let keep = input.padding.clone().bool_not().float();
        let mut h = Tensor::<B, 2>::zeros([batch, s], &gates_in.device());
        let mut states = Vec::with_capacity(len);
        for t in 0..len {
            let x = gates_in
                .clone()
                .slice([0..batch, t..t + 1, 0..3 * s])
                .reshape([batch, 3 * s]);
            let r_h = self.recurrent.forward(h.clone());
            let part = |m: Tensor<B, 2>, i: usize| m.slice([0..batch, i * s..(i + 1) * s]);
            let reset = sigmoid(part(x.clone(), 0) + part(r_h.clone(), 0));
            let update = sigmoid(part(x.clone(), 1) + part(r_h.clone(), 1));
            let candidate = tanh(part(x, 2) + reset * part(r_h, 2));
            // h' = (1 - z) * n + z * h, applied only where position t holds an item.
            let step = (candidate - h.clone()) * update.neg().add_scalar(1.0);
            let m = keep.clone().slice([0..batch, t..t + 1]);
            h = h + step * m;
            states.push(h.clone());
        }
        linear_rows(&self.dense, Tensor::stack::<3>(states, 1))
    }
}
