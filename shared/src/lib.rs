//! slim's shared core: everything the coordinator, the workers and the CLI agree on.
//!
//! - [`manifest`]: the job manifest (TOML) and its validation.
//! - [`store`]: one storage interface over a local directory and S3.
//! - [`data`]: streaming ingestion of Amazon review data, preprocessing (dedupe, k-core,
//!   leave-one-out split, sampling, sharding) and the `prepare` stage's outputs.
//! - [`schema`]: the Parquet schemas of every output, declared once.
//! - [`stage`]: the stages of a job and their dependencies.
//! - [`markers`]: completion markers of tasks and stages in the store.
//! - [`messages`]: versioned task, event and job messages.
//! - [`plan`]: how many tasks each stage of a job has.
//! - [`prompts`]: the teacher's and the student's prompts, and the parser of their answers.
//! - [`queue`]: one task-queue interface over RabbitMQ and an in-process queue.
//! - [`report`]: the train stage's runs aggregated over seeds into tables and plots.
//! - [`telemetry`]: the process's Prometheus metrics and its readiness (`/metrics`, `/readyz`).
//! - [`testkit`]: helpers for tests that need the real S3 server (Garage).
//!
//! This crate holds no ML code. Stages call into it; they never see which queue or store
//! backend is behind the interfaces.

pub mod data;
pub mod eval;
pub mod manifest;
pub mod markers;
pub mod messages;
pub mod plan;
pub mod prompts;
pub mod queue;
pub mod report;
pub mod schema;
pub mod stage;
pub mod store;
pub mod telemetry;
pub mod testkit;
