//! Sequential recommenders on Burn and their training (stage 3 of SLIM.md).
//!
//! - [`data`]: users and items from the prepare stage's Parquet, padded batches.
//! - [`item`]: item representations (ID, ID + text, SLIM's fused and text-only items).
//! - [`rationale`]: users' rationale vectors and the fallback for users without one.
//! - [`sasrec`], [`gru4rec`], [`srgnn`]: the sequence backbones.
//! - [`model`]: a backbone plus item vectors, scoring and the loss.
//! - [`popularity`]: the popularity baseline.
//! - [`train`]: the training loop with early stopping on validation NDCG@10.
//!
//! Evaluation (candidates, metrics, aggregation) is model-free and lives in
//! [`slim_shared::eval`]; this module never reads or writes the job store itself.

pub mod data;
pub mod gru4rec;
pub mod item;
pub mod model;
pub mod popularity;
pub mod rationale;
pub mod sasrec;
pub mod srgnn;
pub mod train;

pub use data::Interactions;
pub use item::{ItemRepresentation, TextTable};
pub use model::{BackboneConfig, ModelConfig, Recommender};
pub use popularity::evaluate_popularity;
pub use rationale::UserText;
pub use train::{
    TrainConfig, TrainReport, eval_candidates, evaluate, train, train_with_rationales,
    write_reference_inputs,
};

/// The backend recommenders train on: the build's backend with autodiff.
pub type TrainBackend = burn::backend::Autodiff<crate::backend::Backend>;
