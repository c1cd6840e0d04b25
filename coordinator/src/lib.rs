//! slim's coordinator: turns a manifest into a DAG of stages and advances it.
//!
//! This crate plans; it never runs ML code and never touches a model. Stages are named by the
//! contracts of ARCHITECTURE.md and defined in `slim_shared::stage`.

pub use slim_shared::stage as plan;
