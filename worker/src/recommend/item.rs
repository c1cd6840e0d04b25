//! Item vectors: how a recommender represents item `i`, for the sequence it reads and for the
//! candidates it scores (the same vectors on both sides, as in SASRec).
//!
//! Token [`PAD`](super::data::PAD) is row 0 of every table.
//!
//! - [`ItemRepresentation::Id`]: a learned ID embedding.
//! - [`ItemRepresentation::IdPlusText`] (the paper's `+` models): the ID embedding concatenated
//!   with the item's frozen text vector (e.g. MiniLM of its title) projected by a learned
//!   linear layer; the two parts together are `hidden` wide.
//!
//! SLIM's ID-based fusion (`z_i = g_f([g_l(z_text); z_id])`) is one more variant here: `g_l`
//! and `g_f` become optional layers of [`ItemEncoder`]; backbones only see `embed`.

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
}

impl ItemRepresentation {
    pub fn needs_text(&self) -> bool {
        !matches!(self, ItemRepresentation::Id)
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
    /// ID embeddings, token-indexed (row 0 pads and is zero at init).
    id: Embedding<B>,
    /// Frozen text vectors, token-indexed: a constant, not a parameter.
    text: Option<Tensor<B, 2>>,
    /// Projection of the text vectors.
    text_proj: Option<Linear<B>>,
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
        let (id_dim, text_part) = match representation {
            ItemRepresentation::Id => (hidden, None),
            ItemRepresentation::IdPlusText { text_dim } => {
                ensure!(
                    text_dim > 0 && text_dim < hidden,
                    "the text part ({text_dim}) must be narrower than the item vector ({hidden})"
                );
                let Some(table) = text else {
                    anyhow::bail!("the `+` item representation needs item text vectors");
                };
                ensure!(
                    table.items() == num_items as usize,
                    "{} item text vectors for {num_items} items",
                    table.items()
                );
                (hidden - text_dim, Some((table, text_dim)))
            }
        };
        // Small normal init as in common SASRec ports; the pad row starts at zero.
        let id = EmbeddingConfig::new(tokens, id_dim)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            })
            .init(device);
        // Detached into a fresh leaf so the new parameter tracks gradients again.
        let id = Embedding {
            weight: Param::from_tensor(id.weight.val().slice_fill([0..1, 0..id_dim], 0.0).detach()),
        };
        let (text, text_proj) = match text_part {
            Some((table, text_dim)) => (
                Some(table.tensor(device)),
                Some(LinearConfig::new(table.dim, text_dim).init(device)),
            ),
            None => (None, None),
        };
        Ok(Self {
            id,
            text,
            text_proj,
        })
    }

    /// Item vectors for tokens of any batch shape `[a, b]`: `[a, b, hidden]`. PAD rows are
    /// whatever the tables hold; callers mask them.
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let ids = self.id.forward(tokens.clone());
        match (&self.text, &self.text_proj) {
            (Some(table), Some(proj)) => {
                let [a, b] = tokens.dims();
                let flat = tokens.reshape([a * b]);
                let text = table
                    .clone()
                    .select(0, flat)
                    .reshape([a, b, table.dims()[1]]);
                Tensor::cat(vec![ids, proj.forward(text)], 2)
            }
            _ => ids,
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
        assert!(enc.id.weight.val().is_require_grad());
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
