//! Dataset ingestion, preprocessing and the `prepare` stage.
//!
//! Flow: a format reader ([`recbole`], [`mcauley`]) streams the interaction file into a
//! [`corpus::CorpusBuilder`], then the meta file; [`preprocess`] dedupes, filters to the k-core,
//! orders each user's history in time, splits leave-one-out, samples U' and assigns shards;
//! [`prepare`] writes `data/items.parquet`, `data/users.parquet` and `data/summary.json`.

pub mod corpus;
pub mod intern;
pub mod mcauley;
pub mod prepare;
pub mod preprocess;
pub mod pyliteral;
pub mod recbole;
pub mod source;
pub mod text;

pub use corpus::{Corpus, CorpusBuilder, IngestStats, ItemMeta, OnError};
pub use source::{LineReader, SourceError};
