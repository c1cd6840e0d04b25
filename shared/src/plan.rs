//! How many tasks a stage has. Single-task stages have one (shard 0); sharded stages have one
//! per user shard, a number `prepare` decides and records in `data/summary.json`, so they can
//! be planned only once `prepare` is done.

use crate::data::prepare::Summary;
use crate::markers::job_key;
use crate::stage::Stage;
use crate::store::Store;
use anyhow::{Context, Result};

/// `{job}/data/summary.json`
pub fn summary_key(job_id: &str) -> String {
    job_key(job_id, "data/summary.json")
}

/// Reads the prepare stage's summary.
pub async fn read_summary(store: &dyn Store, job_id: &str) -> Result<Summary> {
    let key = summary_key(job_id);
    let bytes = store
        .get(&key)
        .await
        .with_context(|| format!("reading {key} (written by the prepare stage)"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{key}: not a prepare summary"))
}

/// The number of tasks of `stage` in a job whose prepare stage is done.
pub async fn task_count(store: &dyn Store, job_id: &str, stage: Stage) -> Result<u32> {
    if !stage.is_sharded() {
        return Ok(1);
    }
    let summary = read_summary(store, job_id).await?;
    Ok(summary.dataset.shards)
}
