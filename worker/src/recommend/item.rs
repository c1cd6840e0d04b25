//! Item vectors: how a recommender represents item `i`, for the sequence it reads and for the
//! candidates it scores (the same vectors on both sides, as in SASRec).
//!
//! Token [`PAD`](super::data::PAD) is row 0 of every table.
//!
//! - [`ItemRepresentation::Id`]: a learned ID embedding.
//! - [`ItemRepresentation::IdPlusText`] (the paper's `+` models): the ID embedding concatenated
//!   with the item's frozen text vector (e.g. MiniLM of its title) projected by a learned
//!   linear layer; the two parts together are `hidden` wide.
//! - [`ItemRepresentation::Fused`] (SLIM, ID-based): `z_i = g_f([g_l(z_i^text); z_i^id])` with
//!   `g_l` a linear map from the text width to `hidden` and `g_f` a linear map from `2 hidden`
//!   to `hidden`. The same `g_l` and `g_f` fuse the user's rationale vector into the
//!   backbone's state ([`ItemEncoder::fuse_user`]), as SLIM.md writes both formulas with them.
//! - [`ItemRepresentation::Text`] (SLIM, ID-agnostic): no ID embedding at all, `z_i` is the
//!   item's text vector through a learned linear map (the token embedding of the transformer
//!   `g_t`), so an item never seen in training is scored from its text alone.
//!
//! Backbones only see `embed`.

use crate::nn::linear_rows;
use anyhow::{Result, ensure};
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use serde::{Deserialize, Serialize};

/// How items are represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ItemRepresentation {
    /// ID embedding only.
    #[default]
    Id,
    /// ID embedding (`hidden - text_dim` wide) concatenated with the text vector projected
    /// to `text_dim`.
    IdPlusText { text_dim: usize },
    /// `g_f([g_l(text); id])`, every part `hidden` wide (SLIM, ID-based).
    Fused,
    /// The projected text vector only (SLIM, ID-agnostic).
    Text,
}

impl ItemRepresentation {
    pub fn needs_text(&self) -> bool {
        !matches!(self, ItemRepresentation::Id)
    }

    /// Whether items have learned ID embeddings.
    pub fn has_ids(&self) -> bool {
        !matches!(self, ItemRepresentation::Text)
    }
}

/// Frozen item text vectors, one row per item index.
#[derive(Debug, Clone)]
pub struct TextTable {
    pub dim: usize,
    /// `rows * dim` values, row `i` is item `i`.
    pub values: Vec<f32>,
}

impl TextTable {
    /// From one vector per item index.
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Self> {
        let dim = rows.first().map_or(0, Vec::len);
        ensure!(dim > 0, "item text vectors are empty");
        let mut values = Vec::with_capacity(rows.len() * dim);
        for (i, row) in rows.iter().enumerate() {
            ensure!(
                row.len() == dim,
                "item {i}: text vector of {} values, expected {dim}",
                row.len()
            );
            values.extend_from_slice(row);
        }
        Ok(Self { dim, values })
    }

    pub fn items(&self) -> usize {
        self.values.len() / self.dim.max(1)
    }

    /// The table in token order: a zero row for the padding token, then the items.
    fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        let mut values = vec![0.0; self.dim];
        values.extend_from_slice(&self.values);
        Tensor::from_data(
            TensorData::new(values, [self.items() + 1, self.dim]),
            device,
        )
    }
}

/// The learned (and frozen) parts of the item representation.
#[derive(Module, Debug)]
pub struct ItemEncoder<B: Backend> {
    /// ID embeddings, token-indexed (row 0 pads and is zero at init); none when ID-agnostic.
    id: Option<Embedding<B>>,
    /// Frozen text vectors, token-indexed: a constant, not a parameter.
    text: Option<Tensor<B, 2>>,
    /// Projection of the text vectors (`g_l` when fused).
    text_proj: Option<Linear<B>>,
    /// `g_f`: the fusion of `[g_l(text); id]` back to `hidden`.
    fuse: Option<Linear<B>>,
}

impl<B: Backend> ItemEncoder<B> {
    /// `hidden`: the width of an item vector.
    pub fn new(
        representation: ItemRepresentation,
        num_items: u32,
        hidden: usize,
        text: Option<&TextTable>,
        device: &B::Device,
    ) -> Result<Self> {
        let tokens = num_items as usize + 1;
        let text_table = || -> Result<&TextTable> {
            let Some(table) = text else {
                anyhow::bail!("the {representation:?} item representation needs item text vectors");
            };
            ensure!(
                table.items() == num_items as usize,
                "{} item text vectors for {num_items} items",
                table.items()
            );
            Ok(table)
        };
        let (id_dim, text_part) = match representation {
            ItemRepresentation::Id => (hidden, None),
            ItemRepresentation::IdPlusText { text_dim } => {
                ensure!(
                    text_dim > 0 && text_dim < hidden,
                    "the text part ({text_dim}) must be narrower than the item vector ({hidden})"
                );
                (hidden - text_dim, Some((text_table()?, text_dim)))
            }
            ItemRepresentation::Fused => (hidden, Some((text_table()?, hidden))),
            ItemRepresentation::Text => (0, Some((text_table()?, hidden))),
        };
        // Small normal init as in common SASRec ports; the pad row starts at zero.
        let id = representation.has_ids().then(|| {
            let id = EmbeddingConfig::new(tokens, id_dim)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device);
            // Detached into a fresh leaf so the new parameter tracks gradients again.
            Embedding {
                weight: Param::from_tensor(
                    id.weight.val().slice_fill([0..1, 0..id_dim], 0.0).detach(),
                ),
            }
        });
        let (text, text_proj) = match text_part {
            Some((table, text_dim)) => (
                Some(table.tensor(device)),
                Some(LinearConfig::new(table.dim, text_dim).init(device)),
            ),
            None => (None, None),
        };
        let fuse = (representation == ItemRepresentation::Fused).then(|| {
            // g_f starts by passing the ID (or backbone state) half through unchanged, with
            // the usual random init on the text half and no bias: SLIM starts as its backbone
            // plus a little text and learns how much text and rationale to mix in. With the
            // default init throughout, the fusion after SASRec's final layer norm lost to
            // plain SASRec (worker/tests/recommend.rs records the numbers).
            let g_f: Linear<B> = LinearConfig::new(2 * hidden, hidden).init(device);
            // Burn stores the weight as [input, output]: rows 0..hidden read the text half.
            let text_half = g_f.weight.val().slice([0..hidden, 0..hidden]);
            let eye = Tensor::<B, 2>::eye(hidden, device);
            let weight = Tensor::cat(vec![text_half, eye], 0).detach();
            let bias = g_f
                .bias
                .as_ref()
                .map(|b| Param::from_tensor(b.val().zeros_like().detach()));
            Linear {
                weight: Param::from_tensor(weight),
                bias,
            }
        });
        Ok(Self {
            id,
            text,
            text_proj,
            fuse,
        })
    }

    /// SLIM's user-side fusion `g_f([g_l(s_u^text); s_u])` at every position: `rationale`
    /// `[batch, text_dim]`, `states` `[batch, len, hidden]`. `None` unless items are fused.
    pub fn fuse_user(&self, rationale: Tensor<B, 2>, states: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let (g_l, g_f) = (self.text_proj.as_ref()?, self.fuse.as_ref()?);
        let [batch, len, hidden] = states.dims();
        let text = g_l
            .forward(rationale)
            .unsqueeze_dim::<3>(1)
            .expand([batch, len, hidden]);
        Some(linear_rows(g_f, Tensor::cat(vec![text, states], 2)))
    }

    /// Item vectors for tokens of any batch shape `[a, b]`: `[a, b, hidden]`. PAD rows are
    /// whatever the tables hold; callers mask them.
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let ids = self.id.as_ref().map(|id| id.forward(tokens.clone()));
        let text = match (&self.text, &self.text_proj) {
            (Some(table), Some(proj)) => {
                let [a, b] = tokens.dims();
                let flat = tokens.reshape([a * b]);
                let items = table.dims()[0];
                // Projecting is linear, so gather-then-project equals project-then-gather;
                // do whichever multiplies fewer rows (a training batch gathers tens of
                // thousands of rows from a catalogue that may be smaller).
                let text = if a * b > items {
                    proj.forward(table.clone()).select(0, flat)
                } else {
                    proj.forward(table.clone().select(0, flat))
                };
                Some(text.reshape([a, b, proj.weight.dims()[1]]))
            }
            _ => None,
        };
        match (ids, text, &self.fuse) {
            (Some(ids), Some(text), Some(g_f)) => linear_rows(g_f, Tensor::cat(vec![text, ids], 2)),
            (Some(ids), Some(text), None) => Tensor::cat(vec![ids, text], 2),
            (Some(ids), None, _) => ids,
            (None, Some(text), _) => text,
            (None, None, _) => unreachable!("an item encoder has IDs or text"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend as Cpu, device};

    #[test]
    fn id_plus_text_concatenates_the_projected_frozen_text() {
        let text = TextTable::from_rows(&[vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]).unwrap();
        let enc = ItemEncoder::<Cpu>::new(
            ItemRepresentation::IdPlusText { text_dim: 2 },
            2,
            6,
            Some(&text),
            &device(),
        )
        .unwrap();
        let tokens = Tensor::<Cpu, 2, Int>::from_data([[1, 2], [0, 1]], &device());
        let v = enc.embed(tokens);
        assert_eq!(v.dims(), [2, 2, 6]);
        let rows: Vec<f32> = v.into_data().to_vec().unwrap();
        // Token 1 appears twice and gets the same vector; the pad row's text part is the
        // projection's bias only.
        assert_eq!(rows[0..6], rows[18..24]);
        assert_ne!(rows[0..6], rows[6..12]);
        // Wrong shapes are named.
        let err = ItemEncoder::<Cpu>::new(
            ItemRepresentation::IdPlusText { text_dim: 2 },
            3,
            6,
            Some(&text),
            &device(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("2 item text vectors for 3 items"));
        assert!(
            ItemEncoder::<Cpu>::new(
                ItemRepresentation::IdPlusText { text_dim: 2 },
                2,
                6,
                None,
                &device()
            )
            .is_err()
        );
    }

    #[test]
    fn id_embeddings_are_trainable_under_autodiff() {
        let enc = ItemEncoder::<crate::recommend::TrainBackend>::new(
            ItemRepresentation::Id,
            5,
            4,
            None,
            &device(),
        )
        .unwrap();
        assert!(enc.id.unwrap().weight.val().is_require_grad());
    }

    #[test]
    fn fused_items_and_users_go_through_the_same_g_l_and_g_f() {
        let text = TextTable::from_rows(&[vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]).unwrap();
        let enc = ItemEncoder::<Cpu>::new(ItemRepresentation::Fused, 2, 4, Some(&text), &device())
            .unwrap();
        let tokens = Tensor::<Cpu, 2, Int>::from_data([[1, 2]], &device());
        let z: Vec<f32> = enc.embed(tokens.clone()).into_data().to_vec().unwrap();
        assert_eq!(z.len(), 8);
        // By hand: g_f([g_l(text_1); id_1]).
        let (g_l, g_f) = (enc.text_proj.clone().unwrap(), enc.fuse.clone().unwrap());
        let id = enc.id.clone().unwrap().forward(tokens);
        let t = g_l.forward(Tensor::<Cpu, 2>::from_data([[1.0, 0.0, 0.0]], &device()));
        let id_1 = id.slice([0..1, 0..1, 0..4]).reshape([1, 4]);
        let expected: Vec<f32> = g_f
            .forward(Tensor::cat(vec![t, id_1], 1))
            .into_data()
            .to_vec()
            .unwrap();
        for (a, b) in z[..4].iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{z:?} vs {expected:?}");
        }
        // A user state fused with a rationale equal to item 1's text and a state equal to
        // item 1's ID vector is item 1's vector: the same two layers.
        let state = enc
            .id
            .clone()
            .unwrap()
            .forward(Tensor::from_data([[1]], &device()));
        let rationale = Tensor::<Cpu, 2>::from_data([[1.0, 0.0, 0.0]], &device());
        let user: Vec<f32> = enc
            .fuse_user(rationale, state)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        for (a, b) in user.iter().zip(&z[..4]) {
            assert!((a - b).abs() < 1e-6);
        }
        // g_f starts as the identity on the ID/state half, with no bias.
        let w: Vec<f32> = g_f.weight.val().into_data().to_vec().unwrap();
        let state_half: Vec<f32> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(w[16..], state_half);
        let bias: Vec<f32> = g_f.bias.unwrap().val().into_data().to_vec().unwrap();
        assert_eq!(bias, [0.0; 4]);
        // Non-fused encoders have no user fusion.
        let plain = ItemEncoder::<Cpu>::new(ItemRepresentation::Id, 2, 4, None, &device()).unwrap();
        let s = Tensor::<Cpu, 3>::zeros([1, 1, 4], &device());
        assert!(
            plain
                .fuse_user(Tensor::zeros([1, 3], &device()), s)
                .is_none()
        );
    }

    #[test]
    fn text_only_items_need_no_ids_and_differ_by_text() {
        let text = TextTable::from_rows(&[vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.0]]).unwrap();
        let enc = ItemEncoder::<Cpu>::new(ItemRepresentation::Text, 3, 4, Some(&text), &device())
            .unwrap();
        assert!(enc.id.is_none());
        let v: Vec<f32> = enc
            .embed(Tensor::from_data([[1, 2, 3]], &device()))
            .into_data()
            .to_vec()
            .unwrap();
        // Items 0 and 2 share their text, so their vectors: nothing tells them apart.
        assert_eq!(v[0..4], v[8..12]);
        assert_ne!(v[0..4], v[4..8]);
        assert!(ItemEncoder::<Cpu>::new(ItemRepresentation::Text, 3, 4, None, &device()).is_err());
    }

    #[test]
    fn id_embeddings_start_with_a_zero_pad_row() {
        let enc = ItemEncoder::<Cpu>::new(ItemRepresentation::Id, 5, 4, None, &device()).unwrap();
        let v: Vec<f32> = enc
            .embed(Tensor::from_data([[0, 3]], &device()))
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(v[..4], [0.0; 4]);
        assert!(v[4..].iter().any(|&x| x != 0.0));
    }
}
