//! slim's shared core: everything the coordinator, the workers and the CLI agree on.
//!
//! - [`manifest`]: the job manifest (TOML) and its validation.
//! - [`store`]: one storage interface over a local directory and S3.
//! - [`data`]: streaming ingestion of Amazon review data, preprocessing (dedupe, k-core,
//!   leave-one-out split, sampling, sharding) and the `prepare` stage's outputs.
//! - [`schema`]: the Parquet schemas of every output, declared once.
//! - [`testkit`]: helpers for tests that need the real S3 server (Garage).
//!
//! This crate holds no ML code and knows nothing about queues: stages call into it.

pub mod data;
pub mod manifest;
pub mod schema;
pub mod store;
pub mod testkit;
