//! A recommender: item vectors ([`ItemEncoder`]) plus a sequence backbone; the score of item
//! `i` for a user is `<s_u, z_i>`, the user's state at the last position dotted with the
//! item's vector.
//!
//! SLIM's variants slot in without changing the training loop: an item representation variant
//! in [`ItemEncoder`], and a user-side fusion of the rationale vector applied to the
//! backbone's states in [`Recommender::states`].

use super::data::{SeqBatch, TrainBatch};
use super::gru4rec::{Gru4Rec, Gru4RecConfig};
use super::item::{ItemEncoder, ItemRepresentation, TextTable};
use super::sasrec::{SasRec, SasRecConfig};
use anyhow::{Result, ensure};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Int;
use burn::tensor::activation::log_sigmoid;
use serde::{Deserialize, Serialize};

/// The sequence encoder and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BackboneConfig {
    #[serde(rename = "sasrec")]
    SasRec(SasRecConfig),
    #[serde(rename = "gru4rec")]
    Gru4Rec(Gru4RecConfig),
}

impl BackboneConfig {
    pub fn name(&self) -> &'static str {
        match self {
            BackboneConfig::SasRec(_) => "sasrec",
            BackboneConfig::Gru4Rec(_) => "gru4rec",
        }
    }
}

/// Everything that shapes a recommender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: BackboneConfig,
    #[serde(default)]
    pub items: ItemRepresentation,
    /// Width of item vectors and user states.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Most recent items a user's sequence keeps (older ones are cut).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn default_hidden() -> usize {
    64
}

fn default_max_len() -> usize {
    50
}

impl ModelConfig {
    pub fn sasrec() -> Self {
        Self::with_backbone(BackboneConfig::SasRec(SasRecConfig::default()))
    }

    pub fn gru4rec() -> Self {
        Self::with_backbone(BackboneConfig::Gru4Rec(Gru4RecConfig::default()))
    }

    fn with_backbone(backbone: BackboneConfig) -> Self {
        Self {
            backbone,
            items: ItemRepresentation::Id,
            hidden: default_hidden(),
            max_len: default_max_len(),
        }
    }

    /// `sasrec`, `sasrec+`, `gru4rec`, ...
    pub fn name(&self) -> String {
        let plus = if self.items.needs_text() { "+" } else { "" };
        format!("{}{plus}", self.backbone.name())
    }
}

// One per model: the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    SasRec(SasRec<B>),
    Gru4Rec(Gru4Rec<B>),
}

#[derive(Module, Debug)]
pub struct Recommender<B: Backend> {
    items: ItemEncoder<B>,
    backbone: Backbone<B>,
}

impl<B: Backend> Recommender<B> {
    /// A freshly initialised model over items `0..num_items`; `text` is needed by the `+`
    /// item representation.
    pub fn new(
        config: &ModelConfig,
        num_items: u32,
        text: Option<&TextTable>,
        device: &B::Device,
    ) -> Result<Self> {
        ensure!(
            config.hidden > 0,
            "the model's hidden size must be positive"
        );
        ensure!(config.max_len > 0, "max_len must be positive");
        let items = ItemEncoder::new(config.items, num_items, config.hidden, text, device)?;
        let backbone = match &config.backbone {
            BackboneConfig::SasRec(c) => {
                ensure!(
                    c.heads > 0 && config.hidden.is_multiple_of(c.heads),
                    "sasrec: {} heads do not divide hidden size {}",
                    c.heads,
                    config.hidden
                );
                Backbone::SasRec(SasRec::new(c, config.hidden, config.max_len, device))
            }
            BackboneConfig::Gru4Rec(c) => {
                ensure!(c.state > 0, "gru4rec: the state size must be positive");
                Backbone::Gru4Rec(Gru4Rec::new(c, config.hidden, device))
            }
        };
        Ok(Self { items, backbone })
    }

    /// User states at every position `[batch, len, hidden]`.
    pub fn states(&self, input: &SeqBatch<B>) -> Tensor<B, 3> {
        let items = self.items.embed(input.items.clone());
        match &self.backbone {
            Backbone::SasRec(m) => m.forward(items, input),
            Backbone::Gru4Rec(m) => m.forward(items, input),
        }
    }

    /// The user state after the most recent item `[batch, hidden]`.
    pub fn last_state(&self, input: &SeqBatch<B>) -> Tensor<B, 2> {
        let states = self.states(input);
        let [batch, len, hidden] = states.dims();
        states
            .slice([0..batch, len - 1..len, 0..hidden])
            .reshape([batch, hidden])
    }

    /// Scores of `tokens` `[batch, candidates]` for users `[batch, hidden]`.
    pub fn score(&self, users: Tensor<B, 2>, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [batch, candidates] = tokens.dims();
        self.items
            .embed(tokens)
            .matmul(users.unsqueeze_dim(2))
            .reshape([batch, candidates])
    }

    /// Binary cross-entropy of each target against its sampled negatives, summed over the
    /// negatives and averaged over positions that have a target.
    pub fn loss(&self, batch: &TrainBatch<B>) -> Tensor<B, 1> {
        let states = self.states(&batch.input);
        let [b, len, hidden] = states.dims();
        let [_, _, k] = batch.negatives.dims();
        let positives = self.items.embed(batch.positives.clone());
        let negatives = self
            .items
            .embed(batch.negatives.clone().reshape([b, len * k]))
            .reshape([b, len, k, hidden]);
        let pos_logits = (states.clone() * positives).sum_dim(2).reshape([b, len]);
        let neg_logits = (states.unsqueeze_dim::<4>(2) * negatives)
            .sum_dim(3)
            .reshape([b, len, k]);
        let per_position = log_sigmoid(pos_logits).neg()
            - log_sigmoid(neg_logits.neg()).sum_dim(2).reshape([b, len]);
        let weight = batch.weight.clone();
        (per_position * weight.clone()).sum() / weight.sum().clamp_min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend as Cpu, device};
    use crate::recommend::data::{Interactions, TrainSampler};
    use rand::SeedableRng;

    fn batch() -> (SeqBatch<Cpu>, SeqBatch<Cpu>) {
        // The same user alone and beside a longer one: padding must not change its state.
        let alone = SeqBatch::new(&[&[3, 1, 4]], 50, &device());
        let padded = SeqBatch::new(&[&[9, 9, 2, 6, 5, 3, 5], &[3, 1, 4]], 50, &device());
        (alone, padded)
    }

    #[test]
    fn a_users_state_does_not_depend_on_its_batch() {
        for config in [ModelConfig::sasrec(), ModelConfig::gru4rec()] {
            let model = Recommender::<Cpu>::new(&config, 10, None, &device()).unwrap();
            let (alone, padded) = batch();
            let a: Vec<f32> = model.last_state(&alone).into_data().to_vec().unwrap();
            let p: Vec<f32> = model.last_state(&padded).into_data().to_vec().unwrap();
            assert_eq!(a.len(), 64);
            for (x, y) in a.iter().zip(&p[64..]) {
                assert!((x - y).abs() < 1e-4, "{}: {x} vs {y}", config.name());
            }
            assert_ne!(a, p[..64], "different users, different states");
        }
    }

    #[test]
    fn scores_are_dot_products_and_loss_is_finite() {
        let model = Recommender::<Cpu>::new(&ModelConfig::sasrec(), 10, None, &device()).unwrap();
        let (alone, _) = batch();
        let user = model.last_state(&alone);
        let tokens = Tensor::<Cpu, 2, Int>::from_data([[1, 2, 3]], &device());
        let scores: Vec<f32> = model
            .score(user.clone(), tokens.clone())
            .into_data()
            .to_vec()
            .unwrap();
        let items: Vec<f32> = model.items.embed(tokens).into_data().to_vec().unwrap();
        let user: Vec<f32> = user.into_data().to_vec().unwrap();
        for (c, score) in scores.iter().enumerate() {
            let dot: f32 = (0..64).map(|j| items[c * 64 + j] * user[j]).sum();
            assert!((dot - score).abs() < 1e-4);
        }

        let data = Interactions::from_sequences(&[vec![1, 2, 3, 4, 5], vec![6, 7, 8]], 10).unwrap();
        let sampler = TrainSampler::new(&data, 50, 4, 2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let b = sampler.batch::<Cpu>(&[0], &mut rng, &device());
        let loss: f32 = model.loss(&b).into_scalar();
        // Untrained: close to (1 + k) * ln 2.
        assert!((loss - 3.0 * 2f32.ln()).abs() < 0.5, "{loss}");
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        let mut config = ModelConfig::sasrec();
        if let BackboneConfig::SasRec(c) = &mut config.backbone {
            c.heads = 3;
        }
        let err = Recommender::<Cpu>::new(&config, 10, None, &device()).unwrap_err();
        assert!(err.to_string().contains("3 heads"), "{err}");
        assert_eq!(ModelConfig::gru4rec().name(), "gru4rec");
    }
}
