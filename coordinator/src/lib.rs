//! slim's coordinator: turns a submitted job into tasks on the queue and drives it to its end.
//!
//! - [`jobs`]: submitting, registering and retrying jobs in the store.
//! - [`driver`]: one job, stage by stage, rebuilt from the store's markers on every pass.
//! - [`dead_letters`]: turns dead-lettered tasks into failure records the driver acts on.
//! - [`service`]: the long-running `slim coordinator`, driving every registered job.
//! - [`status`]: what `slim status` reports, from the store and the queue.
//!
//! This crate never runs ML code; stages are defined in `slim_shared::stage`.

pub mod dead_letters;
pub mod driver;
pub mod jobs;
pub mod service;
pub mod status;

use slim_shared::queue::{TaskQueue, Topology};
use slim_shared::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// What a coordinator works with: the queue, the store root that holds the jobs, the queue
/// names, and how often it looks at the store when no event arrives.
#[derive(Clone)]
pub struct Runtime {
    pub queue: Arc<dyn TaskQueue>,
    pub store: Arc<dyn Store>,
    pub topology: Topology,
    pub poll_interval: Duration,
}
