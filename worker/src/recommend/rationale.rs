//! Users' rationale vectors (SLIM's `s_u^text`): one frozen vector per user of an
//! [`Interactions`](super::Interactions), in its user order, from the encode stage's
//! `embeddings/users-{teacher|student}/` (the whole rationale, or one of its steps).
//!
//! **Users without a rationale.** The teacher only covers a sample of users, and a student run
//! may skip some. Such users get no made-up text: their row is marked absent and the model
//! replaces it with one *learned default rationale vector* (a parameter of the recommender,
//! initialised at zero and trained with the rest), so "no rationale" is a state the model can
//! learn to use rather than a zero that collides with real vectors.

use anyhow::{Result, ensure};
use burn::prelude::*;
use burn::tensor::TensorData;

/// Frozen rationale vectors, one row per user, with the users that have one.
#[derive(Debug, Clone)]
pub struct UserText {
    pub dim: usize,
    /// `present.len() * dim` values; rows of absent users are zero.
    pub values: Vec<f32>,
    pub present: Vec<bool>,
}

/// The rationale rows of a batch of users.
#[derive(Debug, Clone)]
pub struct RationaleBatch<B: Backend> {
    /// `[batch, dim]`, zero for absent users.
    pub vectors: Tensor<B, 2>,
    /// `[batch, 1]`: 1 where the user has a rationale, 0 where the default replaces it.
    pub present: Tensor<B, 2>,
}

impl UserText {
    /// From one optional vector per user (in the users' order); every vector `dim` wide.
    pub fn from_rows(rows: &[Option<Vec<f32>>]) -> Result<Self> {
        let dim = rows.iter().flatten().map(Vec::len).next().unwrap_or(0);
        ensure!(dim > 0, "no user has a rationale vector");
        let mut values = Vec::with_capacity(rows.len() * dim);
        let mut present = Vec::with_capacity(rows.len());
        for (u, row) in rows.iter().enumerate() {
            match row {
                Some(v) => {
                    ensure!(
                        v.len() == dim,
                        "user row {u}: rationale vector of {} values, expected {dim}",
                        v.len()
                    );
                    values.extend_from_slice(v);
                    present.push(true);
                }
                None => {
                    values.extend(std::iter::repeat_n(0.0, dim));
                    present.push(false);
                }
            }
        }
        Ok(Self {
            dim,
            values,
            present,
        })
    }

    pub fn users(&self) -> usize {
        self.present.len()
    }

    /// Users with a rationale vector.
    pub fn covered(&self) -> usize {
        self.present.iter().filter(|&&p| p).count()
    }

    /// The rows of users `rows` (indices into the users' order).
    pub fn batch<B: Backend>(&self, rows: &[usize], device: &B::Device) -> RationaleBatch<B> {
        let mut vectors = Vec::with_capacity(rows.len() * self.dim);
        let mut present = Vec::with_capacity(rows.len());
        for &r in rows {
            vectors.extend_from_slice(&self.values[r * self.dim..(r + 1) * self.dim]);
            present.push(if self.present[r] { 1.0f32 } else { 0.0 });
        }
        RationaleBatch {
            vectors: Tensor::from_data(TensorData::new(vectors, [rows.len(), self.dim]), device),
            present: Tensor::from_data(TensorData::new(present, [rows.len(), 1]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend as Cpu, device};

    #[test]
    fn absent_users_are_zero_rows_marked_absent() {
        let t = UserText::from_rows(&[Some(vec![1.0, 2.0]), None, Some(vec![3.0, 4.0])]).unwrap();
        assert_eq!((t.dim, t.users(), t.covered()), (2, 3, 2));
        let b = t.batch::<Cpu>(&[2, 1], &device());
        let v: Vec<f32> = b.vectors.into_data().to_vec().unwrap();
        assert_eq!(v, [3.0, 4.0, 0.0, 0.0]);
        let p: Vec<f32> = b.present.into_data().to_vec().unwrap();
        assert_eq!(p, [1.0, 0.0]);
        let err = UserText::from_rows(&[Some(vec![1.0]), Some(vec![1.0, 2.0])]).unwrap_err();
        assert!(err.to_string().contains("user row 1"), "{err}");
        assert!(UserText::from_rows(&[None, None]).is_err());
    }
}
