//! Jobs in the store: a submitted job is its resolved manifest at `{job}/job.json` plus an entry
//! `_jobs/{job}.json` at the store root, which the coordinator service drives until the job
//! ends and then removes. Keeping the registry in the store (not only on the queue) is what lets
//! a coordinator killed mid-job find its jobs again when it restarts.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use slim_shared::manifest::{LoadedManifest, Manifest};
use slim_shared::markers::{self, JobPhase, job_key};
use slim_shared::stage::Stage;
use slim_shared::store::{Store, StoreError};
use std::sync::Arc;

/// `_jobs/{job}.json`: a job the coordinator should drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub job_id: String,
    pub submitted_at_unix_ms: u64,
}

fn registration_key(job_id: &str) -> String {
    format!("_jobs/{job_id}.json")
}

/// Stores the job's resolved manifest as `{job}/job.json` and returns it as workers will see
/// it. A job id already used by a different manifest is refused: its outputs would mix.
pub async fn store_manifest(
    store: &dyn Store,
    loaded: &LoadedManifest,
) -> Result<Arc<LoadedManifest>> {
    let job_id = loaded.job_id();
    let resolved = loaded.resolved();
    let key = job_key(job_id, "job.json");
    match store.get(&key).await {
        Ok(existing) => {
            let existing: Manifest = serde_json::from_slice(&existing)
                .with_context(|| format!("{}: not a job manifest", store.location(&key)))?;
            if existing != resolved {
                bail!(
                    "job {job_id} already exists at {} with a different manifest; give this one another job id, another output, or delete the old job's folder",
                    store.location(job_id)
                );
            }
        }
        Err(StoreError::NotFound { .. }) => {
            store
                .put(&key, serde_json::to_vec_pretty(&resolved)?.into())
                .await
                .with_context(|| format!("writing {}", store.location(&key)))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", store.location(&key))),
    }
    Ok(Arc::new(LoadedManifest::from_resolved(
        resolved,
        &loaded.source,
    )))
}

/// What `submit` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Registered; a coordinator will drive it.
    Registered,
    /// The job already succeeded; nothing to do.
    AlreadySucceeded,
}

/// Submits a job to the coordinator of `store`: stores its manifest and registers it.
/// Submitting a job again (same manifest) resumes it.
pub async fn submit(store: &dyn Store, loaded: &LoadedManifest) -> Result<Submitted> {
    store_manifest(store, loaded).await?;
    let job_id = loaded.job_id();
    match markers::read_job_state(store, job_id).await? {
        Some(state) if state.phase == JobPhase::Succeeded => {
            return Ok(Submitted::AlreadySucceeded);
        }
        Some(state) if state.phase == JobPhase::Failed => bail!(
            "job {job_id} failed before ({}); `slim retry {job_id}` runs its failed tasks again",
            state.message.unwrap_or_default()
        ),
        _ => {}
    }
    register(store, job_id).await?;
    Ok(Submitted::Registered)
}

/// Clears a failed job's failure records and what it published, then registers it again: the
/// coordinator republishes every task that is not done.
pub async fn retry(store: &dyn Store, job_id: &str) -> Result<Vec<(Stage, Vec<u32>)>> {
    let key = job_key(job_id, "job.json");
    if !store.exists(&key).await? {
        bail!("no job {job_id} at {}", store.location(job_id));
    }
    let cleared = forget_attempts(store, job_id).await?;
    register(store, job_id).await?;
    Ok(cleared)
}

/// Clears what earlier attempts left besides done work: failure records (so failed tasks run
/// again) and the published lists (so everything not done is published again). Returns the
/// failed shards cleared, per stage. Done tasks keep their markers and are not redone.
pub async fn forget_attempts(store: &dyn Store, job_id: &str) -> Result<Vec<(Stage, Vec<u32>)>> {
    let mut cleared = Vec::new();
    for stage in Stage::ALL {
        let shards = markers::clear_failures(store, job_id, stage).await?;
        if !shards.is_empty() {
            cleared.push((stage, shards));
        }
    }
    markers::clear_published(store, job_id).await?;
    Ok(cleared)
}

pub async fn register(store: &dyn Store, job_id: &str) -> Result<()> {
    let registration = Registration {
        job_id: job_id.to_string(),
        submitted_at_unix_ms: markers::now_unix_ms(),
    };
    let key = registration_key(job_id);
    store
        .put(&key, serde_json::to_vec_pretty(&registration)?.into())
        .await
        .with_context(|| format!("writing {}", store.location(&key)))
}

pub async fn unregister(store: &dyn Store, job_id: &str) -> Result<()> {
    let key = registration_key(job_id);
    store
        .delete(&key)
        .await
        .with_context(|| format!("deleting {}", store.location(&key)))
}

/// The ids of the registered jobs.
pub async fn registered(store: &dyn Store) -> Result<Vec<String>> {
    let objects = store.list("_jobs/").await.context("listing _jobs/")?;
    Ok(objects
        .iter()
        .filter_map(|o| {
            o.key
                .strip_prefix("_jobs/")?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .collect())
}
