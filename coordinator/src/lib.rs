//! slim's coordinator: turns a manifest into a DAG of stages and advances it.
//!
//! This crate plans; it never runs ML code and never touches a model. Stages are named by the
//! contracts of ARCHITECTURE.md.

pub mod plan;
