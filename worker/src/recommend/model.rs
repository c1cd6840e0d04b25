//! A recommender: item vectors ([`ItemEncoder`]) plus a sequence backbone; the score of item
//! `i` for a user is `<s_u, z_i>`, the user's state at the last position dotted with the
//! item's vector.
//!
//! SLIM's variants slot in without changing the training loop (SLIM.md, stage 3):
//!
//! - **ID-based** (`items = fused`, `rationale = true`): items are `z_i = g_f([g_l(z_i^text);
//!   z_i^id])`; the backbone reads those item vectors (the same on both sides, as for the `+`
//!   models) and its state at every position is fused with the user's rationale vector by the
//!   same layers, `s_u = g_f([g_l(s_u^text); s_u^SeqEnc])`.
//! - **ID-agnostic** (`items = text`, `rationale = true`, SASRec backbone): `g_t` is the
//!   transformer over text vectors only: items are their projected text vectors, the user's
//!   rationale vector (projected by its own linear map) is a token in front of the sequence of
//!   the history's item text vectors, and the user state is the transformer's output at the
//!   last position. With an empty history this is SLIM.md's `s_u = g_t(s_u^text)`.
//!
//! A user without a rationale vector gets the model's learned default vector instead (see
//! [`super::rationale`]).

use super::data::{SeqBatch, TrainBatch};
use super::gru4rec::{Gru4Rec, Gru4RecConfig};
use super::item::{ItemEncoder, ItemRepresentation, TextTable};
use super::rationale::RationaleBatch;
use super::sasrec::{SasRec, SasRecConfig};
use super::srgnn::{SrGnn, SrGnnConfig};
use anyhow::{Result, ensure};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
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
    #[serde(rename = "srgnn")]
    SrGnn(SrGnnConfig),
}

impl BackboneConfig {
    pub fn name(&self) -> &'static str {
        match self {
            BackboneConfig::SasRec(_) => "sasrec",
            BackboneConfig::Gru4Rec(_) => "gru4rec",
            BackboneConfig::SrGnn(_) => "srgnn",
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
    /// Whether the user's rationale vector joins the user state (SLIM): fused with `g_l` and
    /// `g_f` for `fused` items, a token in front of the sequence for `text` items.
    #[serde(default)]
    pub rationale: bool,
    /// The name reported instead of the one built from backbone and items (`slim-sasrec`, ...).
    #[serde(default)]
    pub label: Option<String>,
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

    pub fn srgnn() -> Self {
        Self::with_backbone(BackboneConfig::SrGnn(SrGnnConfig::default()))
    }

    fn with_backbone(backbone: BackboneConfig) -> Self {
        Self {
            backbone,
            items: ItemRepresentation::Id,
            hidden: default_hidden(),
            max_len: default_max_len(),
            rationale: false,
            label: None,
        }
    }

    /// SLIM's ID-based model on `backbone`: fused items and the rationale fused into the state.
    pub fn slim(backbone: BackboneConfig) -> Self {
        Self {
            items: ItemRepresentation::Fused,
            rationale: true,
            ..Self::with_backbone(backbone)
        }
    }

    /// SLIM's ID-agnostic model: one transformer layer (`g_t`) over text vectors only.
    pub fn slim_agnostic() -> Self {
        let g_t = SasRecConfig {
            blocks: 1,
            ..SasRecConfig::default()
        };
        Self {
            items: ItemRepresentation::Text,
            rationale: true,
            ..Self::with_backbone(BackboneConfig::SasRec(g_t))
        }
    }

    /// The label if set, else `sasrec`, `sasrec+`, `gru4rec`, ... (`~` marks other item
    /// representations without a label).
    pub fn name(&self) -> String {
        if let Some(label) = &self.label {
            return label.clone();
        }
        let mark = match self.items {
            ItemRepresentation::Id => "",
            ItemRepresentation::IdPlusText { .. } => "+",
            ItemRepresentation::Fused | ItemRepresentation::Text => "~",
        };
        let rationale = if self.rationale { "+r" } else { "" };
        format!("{}{mark}{rationale}", self.backbone.name())
    }
}

// One per model: the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    SasRec(SasRec<B>),
    Gru4Rec(Gru4Rec<B>),
    SrGnn(SrGnn<B>),
}

#[derive(Module, Debug)]
pub struct Recommender<B: Backend> {
    items: ItemEncoder<B>,
    backbone: Backbone<B>,
    /// Stands in for the rationale vector of users without one (learned, zero at init).
    default_rationale: Option<Param<Tensor<B, 1>>>,
    /// ID-agnostic: the rationale vector's projection to the token width of `g_t`.
    rationale_token: Option<Linear<B>>,
}

impl<B: Backend> Recommender<B> {
    /// A freshly initialised model over items `0..num_items`; `text` is needed by the item
    /// representations with text. Models that read rationales need [`Recommender::with_rationales`].
    pub fn new(
        config: &ModelConfig,
        num_items: u32,
        text: Option<&TextTable>,
        device: &B::Device,
    ) -> Result<Self> {
        Self::with_rationales(config, num_items, text, None, device)
    }

    /// As [`Recommender::new`]; `rationale_dim` is the width of the users' rationale vectors,
    /// required when `config.rationale` is set.
    pub fn with_rationales(
        config: &ModelConfig,
        num_items: u32,
        text: Option<&TextTable>,
        rationale_dim: Option<usize>,
        device: &B::Device,
    ) -> Result<Self> {
        ensure!(
            config.hidden > 0,
            "the model's hidden size must be positive"
        );
        ensure!(config.max_len > 0, "max_len must be positive");
        let (default_rationale, rationale_token) = if config.rationale {
            let Some(dim) = rationale_dim.filter(|&d| d > 0) else {
                anyhow::bail!(
                    "{}: the model reads user rationale vectors but none were given",
                    config.name()
                );
            };
            if let Some(t) = text {
                ensure!(
                    config.items != ItemRepresentation::Fused || t.dim == dim,
                    "{}: item text vectors are {} wide but rationale vectors {dim}; g_l maps both, so they must come from the same text encoder",
                    config.name(),
                    t.dim
                );
            }
            let token = match (config.items, &config.backbone) {
                (ItemRepresentation::Fused, _) => None,
                (ItemRepresentation::Text, BackboneConfig::SasRec(_)) => {
                    Some(LinearConfig::new(dim, config.hidden).init(device))
                }
                (ItemRepresentation::Text, other) => anyhow::bail!(
                    "{}: the ID-agnostic model's g_t is a transformer; the {} backbone cannot read a rationale token",
                    config.name(),
                    other.name()
                ),
                (other, _) => anyhow::bail!(
                    "{}: rationale vectors need fused or text items, not {other:?}",
                    config.name()
                ),
            };
            let default = Param::from_tensor(Tensor::zeros([dim], device).require_grad());
            (Some(default), token)
        } else {
            (None, None)
        };
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
            BackboneConfig::SrGnn(c) => {
                ensure!(
                    c.steps > 0,
                    "srgnn: at least one propagation step is needed"
                );
                Backbone::SrGnn(SrGnn::new(c, config.hidden, device))
            }
        };
        Ok(Self {
            items,
            backbone,
            default_rationale,
            rationale_token,
        })
    }

    /// The batch's rationale vectors `[batch, dim]`, the learned default where a user has
    /// none (or the batch carries none), if the model reads rationales.
    fn rationale(&self, input: &SeqBatch<B>) -> Option<Tensor<B, 2>> {
        let default = self.default_rationale.as_ref()?.val();
        let [batch, _] = input.items.dims();
        let [dim] = default.dims();
        let default = default.unsqueeze::<2>().expand([batch, dim]);
        Some(match &input.rationale {
            Some(RationaleBatch { vectors, present }) => {
                let present = present.clone().expand([batch, dim]);
                vectors.clone() * present.clone() + default * present.neg().add_scalar(1.0)
            }
            None => default,
        })
    }

    /// User states at every position `[batch, len, hidden]`.
    pub fn states(&self, input: &SeqBatch<B>) -> Tensor<B, 3> {
        self.encode(input, false)
    }

    /// The user state after the most recent item `[batch, hidden]`.
    pub fn last_state(&self, input: &SeqBatch<B>) -> Tensor<B, 2> {
        let states = self.encode(input, true);
        let [batch, _, hidden] = states.dims();
        states.reshape([batch, hidden])
    }

    /// States at every position, or with `last_only` at the last one `[batch, 1, hidden]`
    /// (SR-GNN then builds one graph per user instead of one per position).
    fn encode(&self, input: &SeqBatch<B>, last_only: bool) -> Tensor<B, 3> {
        let items = self.items.embed(input.items.clone());
        let rationale = self.rationale(input);
        let last = |states: Tensor<B, 3>| {
            let [batch, len, hidden] = states.dims();
            if last_only {
                states.slice([0..batch, len - 1..len, 0..hidden])
            } else {
                states
            }
        };
        let states = match &self.backbone {
            Backbone::SasRec(m) => {
                let prefix = self
                    .rationale_token
                    .as_ref()
                    .zip(rationale.clone())
                    .map(|(token, r)| token.forward(r));
                last(m.forward(items, input, prefix))
            }
            Backbone::Gru4Rec(m) => last(m.forward(items, input)),
            Backbone::SrGnn(m) => m.forward(items, input, last_only),
        };
        match rationale {
            Some(r) => self.items.fuse_user(r, states.clone()).unwrap_or(states),
            None => states,
        }
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
        for config in [
            ModelConfig::sasrec(),
            ModelConfig::gru4rec(),
            ModelConfig::srgnn(),
        ] {
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
    fn states_never_see_later_items() {
        // Training predicts the next item at every position: a state must not depend on what
        // follows it, and the last state must be the same whether or not all are computed.
        for config in [
            ModelConfig::sasrec(),
            ModelConfig::gru4rec(),
            ModelConfig::srgnn(),
        ] {
            let model = Recommender::<Cpu>::new(&config, 10, None, &device()).unwrap();
            let states = |history: &[u32]| -> Vec<f32> {
                let batch = SeqBatch::new(&[history], 50, &device());
                model.states(&batch).into_data().to_vec().unwrap()
            };
            // Three items then a return to the first: the graph of the whole history has an
            // edge 4 -> 3 that no earlier prefix has.
            let a = states(&[3, 1, 4, 3]);
            let b = states(&[3, 1, 4, 9]);
            let hidden = config.hidden;
            for (x, y) in a[..3 * hidden].iter().zip(&b[..3 * hidden]) {
                assert!((x - y).abs() < 1e-6, "{}: {x} vs {y}", config.name());
            }
            assert_ne!(a[3 * hidden..], b[3 * hidden..], "{}", config.name());
            let last: Vec<f32> = model
                .last_state(&SeqBatch::new(&[&[3, 1, 4, 3]], 50, &device()))
                .into_data()
                .to_vec()
                .unwrap();
            for (x, y) in last.iter().zip(&a[3 * hidden..]) {
                assert!((x - y).abs() < 1e-5, "{}: {x} vs {y}", config.name());
            }
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

    /// Two users with rationale vectors, a third without.
    fn with_rationales(batch: SeqBatch<Cpu>, rows: &[usize]) -> SeqBatch<Cpu> {
        use crate::recommend::rationale::UserText;
        let text =
            UserText::from_rows(&[Some(vec![1.0, 0.0, 0.0]), Some(vec![0.0, 1.0, 0.0]), None])
                .unwrap();
        SeqBatch {
            rationale: Some(text.batch(rows, &device())),
            ..batch
        }
    }

    fn item_text() -> TextTable {
        TextTable::from_rows(
            &(0..10)
                .map(|i| vec![i as f32 / 10.0, 1.0, 0.0])
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn slim_states_depend_on_the_rationale_and_not_on_the_batch() {
        let mut agnostic = ModelConfig::slim_agnostic();
        agnostic.hidden = 16;
        let mut slim = ModelConfig::slim(BackboneConfig::Gru4Rec(Gru4RecConfig::default()));
        slim.hidden = 16;
        for config in [
            ModelConfig::slim(BackboneConfig::SasRec(SasRecConfig::default())),
            ModelConfig::slim(BackboneConfig::SrGnn(SrGnnConfig::default())),
            slim,
            agnostic,
        ] {
            let model = Recommender::<Cpu>::with_rationales(
                &config,
                10,
                Some(&item_text()),
                Some(3),
                &device(),
            )
            .unwrap();
            let hidden = config.hidden;
            let seq = || SeqBatch::new(&[&[3, 1, 4], &[3, 1, 4]], 50, &device());
            let states: Vec<f32> = model
                .last_state(&with_rationales(seq(), &[0, 1]))
                .into_data()
                .to_vec()
                .unwrap();
            assert_ne!(
                states[..hidden],
                states[hidden..],
                "{config:?}: same history, other rationale"
            );
            // Alone, or beside a longer user: the same state.
            let alone = SeqBatch::new(&[&[3, 1, 4]], 50, &device());
            let a: Vec<f32> = model
                .last_state(&with_rationales(alone, &[1]))
                .into_data()
                .to_vec()
                .unwrap();
            let padded = SeqBatch::new(&[&[9, 9, 2, 6, 5, 3, 5], &[3, 1, 4]], 50, &device());
            let p: Vec<f32> = model
                .last_state(&with_rationales(padded, &[0, 1]))
                .into_data()
                .to_vec()
                .unwrap();
            for (x, y) in a.iter().zip(&p[hidden..]) {
                assert!((x - y).abs() < 1e-4, "{}: {x} vs {y}", config.name());
            }
            // A user without a rationale gets the default: the same as a batch without any.
            let missing: Vec<f32> = model
                .last_state(&with_rationales(
                    SeqBatch::new(&[&[3, 1, 4]], 50, &device()),
                    &[2],
                ))
                .into_data()
                .to_vec()
                .unwrap();
            let none: Vec<f32> = model
                .last_state(&SeqBatch::new(&[&[3, 1, 4]], 50, &device()))
                .into_data()
                .to_vec()
                .unwrap();
            assert_eq!(missing, none);
        }
    }

    #[test]
    fn rationale_models_are_checked_when_built() {
        let slim = ModelConfig::slim(BackboneConfig::SasRec(SasRecConfig::default()));
        let err = Recommender::<Cpu>::new(&slim, 10, Some(&item_text()), &device()).unwrap_err();
        assert!(err.to_string().contains("none were given"), "{err}");
        let err =
            Recommender::<Cpu>::with_rationales(&slim, 10, Some(&item_text()), Some(5), &device())
                .unwrap_err();
        assert!(err.to_string().contains("same text encoder"), "{err}");
        let mut gru = ModelConfig::slim_agnostic();
        gru.backbone = BackboneConfig::Gru4Rec(Gru4RecConfig::default());
        let err =
            Recommender::<Cpu>::with_rationales(&gru, 10, Some(&item_text()), Some(3), &device())
                .unwrap_err();
        assert!(err.to_string().contains("g_t is a transformer"), "{err}");
        let mut plus = ModelConfig::sasrec();
        plus.rationale = true;
        assert!(Recommender::<Cpu>::with_rationales(&plus, 10, None, Some(3), &device()).is_err());
        assert_eq!(ModelConfig::slim_agnostic().name(), "sasrec~+r");
        let mut labelled = ModelConfig::slim_agnostic();
        labelled.label = Some("slim_agnostic".into());
        assert_eq!(labelled.name(), "slim_agnostic");
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
