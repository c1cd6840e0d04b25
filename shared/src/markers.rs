//! Completion markers: how the store records what is done.
//!
//! - A task marker `{job}/_markers/{stage}/{shard:05}.json` is written by the worker after all of
//!   the task's outputs. Its presence means the shard is done: a redelivered task finds it and
//!   acks without redoing the work, and a restarted coordinator rebuilds the job's state from
//!   the markers.
//! - A stage manifest `{job}/{stage folder}/_SUCCESS` is written after every task of the stage
//!   is done. It lists the stage's parts with row counts, sizes and checksums, so analysts know
//!   the folder is complete and which files belong to it.
//!
//! - A task error `{job}/_errors/{stage}/{shard:05}.json` is written by the worker each time a
//!   task fails (the last error wins); a failure record `{job}/_failed/{stage}/{shard:05}.json`
//!   is written by the coordinator when the task is dead-lettered, and is what fails the job.
//! - `{job}/_published/{stage}.json` lists the shards the coordinator has published, so a
//!   restarted coordinator publishes only the rest; `{job}/_state.json` is the job's state as the
//!   coordinator last saw it.
//! - Dead letters that belong to no job (undecodable messages) are kept at
//!   `_dead_letters/{unix_ms}-{n}.json` under the store's root.
//!
//! Keys are deterministic, so writing a marker twice is harmless.

use crate::stage::Stage;
use crate::store::{Store, StoreError, join_key};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;

/// One output file, as listed in markers and stage manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// Key relative to the job's folder, e.g. `data/users.parquet`.
    pub key: String,
    /// Rows, for Parquet files.
    pub rows: Option<u64>,
    pub bytes: u64,
    pub sha256: String,
}

impl PartInfo {
    /// Describes an object written from memory.
    pub fn of_bytes(key: impl Into<String>, bytes: &[u8], rows: Option<u64>) -> Self {
        Self {
            key: key.into(),
            rows,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// A stage's completion manifest (`{job}/{stage folder}/_SUCCESS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageManifest {
    pub stage: Stage,
    pub job_id: String,
    pub parts: Vec<PartInfo>,
}

/// A task's completion marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMarker {
    pub job_id: String,
    pub stage: Stage,
    pub shard: u32,
    pub attempt: u32,
    /// Which worker did it (host name and pid), for operators.
    pub worker: String,
    pub finished_at_unix_ms: u64,
    pub parts: Vec<PartInfo>,
    /// Stage-specific counters (rows, tokens, retries, ...).
    pub counters: BTreeMap<String, u64>,
}

/// The object key of a job's file: `{job_id}/{key}`.
pub fn job_key(job_id: &str, key: &str) -> String {
    join_key(job_id, key)
}

/// `{job}/_markers/{stage}/{shard:05}.json`
pub fn task_marker_key(job_id: &str, stage: Stage, shard: u32) -> String {
    shard_record_key(job_id, "_markers", stage, shard)
}

/// `{job}/{stage folder}/_SUCCESS` (`student/_SUCCESS_distill` for distill, whose folder is
/// the student's).
pub fn stage_manifest_key(job_id: &str, stage: Stage) -> String {
    job_key(
        job_id,
        &format!("{}/{}", stage.folder(), stage.success_file()),
    )
}

/// Why a task failed: the worker's last error (`_errors/`) or the coordinator's failure record
/// once the task was dead-lettered (`_failed/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub job_id: String,
    pub stage: Stage,
    pub shard: u32,
    /// Deliveries so far, this one included (as far as the broker counted them).
    pub attempts: u32,
    /// The worker that saw the error, when known.
    pub worker: Option<String>,
    /// The error with its causes, outermost first.
    pub error: String,
    /// Why the broker or the worker dead-lettered it (failure records only).
    pub dead_letter_reason: Option<String>,
    pub at_unix_ms: u64,
}

/// A message that was dead-lettered but names no job (not decodable), kept for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub queue: String,
    pub reason: String,
    /// The message's bytes as text (lossy for bytes that are not UTF-8).
    pub body: String,
    pub at_unix_ms: u64,
}

/// The state of a job as the coordinator last recorded it (`{job}/_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job_id: String,
    pub phase: JobPhase,
    /// What ended the job, for failed jobs.
    pub message: Option<String>,
    pub stages: Vec<StageProgress>,
    pub updated_at_unix_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Running,
    Succeeded,
    Failed,
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobPhase::Running => "running",
            JobPhase::Succeeded => "succeeded",
            JobPhase::Failed => "failed",
        })
    }
}

/// One stage's counts in a [`JobState`]. `tasks` is `None` while the stage cannot be planned
/// yet (its task count depends on an earlier stage's output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageProgress {
    pub stage: Stage,
    pub tasks: Option<u32>,
    pub done: u32,
    pub failed: u32,
    /// Tasks a worker reported started and not yet ended.
    #[serde(default)]
    pub running: u32,
    /// When the coordinator first published the stage's tasks.
    #[serde(default)]
    pub started_at_unix_ms: Option<u64>,
    /// When the stage's last task was done.
    #[serde(default)]
    pub finished_at_unix_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch, for records.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `{job}/_errors/{stage}/{shard:05}.json`
pub fn task_error_key(job_id: &str, stage: Stage, shard: u32) -> String {
    shard_record_key(job_id, "_errors", stage, shard)
}

/// `{job}/_failed/{stage}/{shard:05}.json`
pub fn failure_key(job_id: &str, stage: Stage, shard: u32) -> String {
    shard_record_key(job_id, "_failed", stage, shard)
}

/// `{job}/{folder}/{stage}/{shard:05}.json`: the layout of every per-shard record, which
/// [`shards_under`] lists.
fn shard_record_key(job_id: &str, folder: &str, stage: Stage, shard: u32) -> String {
    job_key(
        job_id,
        &format!("{folder}/{}/{shard:05}.json", stage.name()),
    )
}

/// `{job}/_published/{stage}.json`
pub fn published_key(job_id: &str, stage: Stage) -> String {
    job_key(job_id, &format!("_published/{}.json", stage.name()))
}

/// `{job}/_state.json`
pub fn job_state_key(job_id: &str) -> String {
    job_key(job_id, "_state.json")
}

pub async fn write_task_error(store: &dyn Store, error: &TaskError) -> Result<()> {
    write_json(
        store,
        &task_error_key(&error.job_id, error.stage, error.shard),
        error,
    )
    .await
}

pub async fn read_task_error(
    store: &dyn Store,
    job_id: &str,
    stage: Stage,
    shard: u32,
) -> Result<Option<TaskError>> {
    read_json(store, &task_error_key(job_id, stage, shard)).await
}

pub async fn write_failure(store: &dyn Store, failure: &TaskError) -> Result<()> {
    write_json(
        store,
        &failure_key(&failure.job_id, failure.stage, failure.shard),
        failure,
    )
    .await
}

/// Every failure record of `stage`.
pub async fn read_failures(
    store: &dyn Store,
    job_id: &str,
    stage: Stage,
) -> Result<Vec<TaskError>> {
    let mut failures = Vec::new();
    for shard in shards_under(store, job_id, "_failed", stage).await? {
        if let Some(f) = read_json(store, &failure_key(job_id, stage, shard)).await? {
            failures.push(f);
        }
    }
    Ok(failures)
}

/// The shards of `stage` with a failure record.
pub async fn failed_shards(store: &dyn Store, job_id: &str, stage: Stage) -> Result<BTreeSet<u32>> {
    shards_under(store, job_id, "_failed", stage).await
}

/// Removes the failure records of `stage` (and the workers' last errors), for a retry.
pub async fn clear_failures(store: &dyn Store, job_id: &str, stage: Stage) -> Result<Vec<u32>> {
    let shards: Vec<u32> = failed_shards(store, job_id, stage)
        .await?
        .into_iter()
        .collect();
    for &shard in &shards {
        for key in [
            failure_key(job_id, stage, shard),
            task_error_key(job_id, stage, shard),
        ] {
            store
                .delete(&key)
                .await
                .with_context(|| format!("deleting {key}"))?;
        }
    }
    Ok(shards)
}

pub async fn read_published(
    store: &dyn Store,
    job_id: &str,
    stage: Stage,
) -> Result<BTreeSet<u32>> {
    Ok(read_json(store, &published_key(job_id, stage))
        .await?
        .unwrap_or_default())
}

pub async fn write_published(
    store: &dyn Store,
    job_id: &str,
    stage: Stage,
    shards: &BTreeSet<u32>,
) -> Result<()> {
    write_json(store, &published_key(job_id, stage), shards).await
}

/// Forgets what was published for every stage of the job, so the coordinator republishes
/// whatever is not done (for `slim retry`).
pub async fn clear_published(store: &dyn Store, job_id: &str) -> Result<()> {
    for stage in Stage::ALL {
        let key = published_key(job_id, stage);
        store
            .delete(&key)
            .await
            .with_context(|| format!("deleting {key}"))?;
    }
    Ok(())
}

pub async fn write_job_state(store: &dyn Store, state: &JobState) -> Result<()> {
    write_json(store, &job_state_key(&state.job_id), state).await
}

pub async fn read_job_state(store: &dyn Store, job_id: &str) -> Result<Option<JobState>> {
    read_json(store, &job_state_key(job_id)).await
}

/// Keeps an undecodable dead letter under `_dead_letters/` at the store's root.
pub async fn write_dead_letter(store: &dyn Store, letter: &DeadLetter) -> Result<String> {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = format!(
        "_dead_letters/{}-{}-{n}.json",
        letter.at_unix_ms,
        std::process::id()
    );
    write_json(store, &key, letter).await?;
    Ok(key)
}

/// Every kept dead letter, oldest first.
pub async fn read_dead_letters(store: &dyn Store) -> Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    for object in store
        .list("_dead_letters/")
        .await
        .context("listing _dead_letters/")?
    {
        if let Some(letter) = read_json(store, &object.key).await? {
            letters.push(letter);
        }
    }
    Ok(letters)
}

pub async fn write_task_marker(store: &dyn Store, marker: &TaskMarker) -> Result<()> {
    let key = task_marker_key(&marker.job_id, marker.stage, marker.shard);
    write_json(store, &key, marker).await
}

async fn write_json<T: Serialize>(store: &dyn Store, key: &str, value: &T) -> Result<()> {
    store
        .put(key, serde_json::to_vec_pretty(value)?.into())
        .await
        .with_context(|| format!("writing {key}"))
}

pub async fn read_task_marker(
    store: &dyn Store,
    job_id: &str,
    stage: Stage,
    shard: u32,
) -> Result<Option<TaskMarker>> {
    read_json(store, &task_marker_key(job_id, stage, shard)).await
}

/// A JSON object from the store, `None` when absent.
async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<T>> {
    match store.get(key).await {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{key}: not valid JSON of the expected shape")
        })?)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {key}")),
    }
}

/// The shards of `stage` that have a marker.
pub async fn done_shards(store: &dyn Store, job_id: &str, stage: Stage) -> Result<BTreeSet<u32>> {
    shards_under(store, job_id, "_markers", stage).await
}

/// The shards with a `{shard:05}.json` record under `{job}/{folder}/{stage}/`.
async fn shards_under(
    store: &dyn Store,
    job_id: &str,
    folder: &str,
    stage: Stage,
) -> Result<BTreeSet<u32>> {
    let prefix = job_key(job_id, &format!("{folder}/{}/", stage.name()));
    let objects = store
        .list(&prefix)
        .await
        .with_context(|| format!("listing {prefix}"))?;
    Ok(objects
        .iter()
        .filter_map(|o| {
            o.key
                .rsplit('/')
                .next()?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect())
}

pub async fn write_stage_manifest(store: &dyn Store, manifest: &StageManifest) -> Result<()> {
    let key = stage_manifest_key(&manifest.job_id, manifest.stage);
    write_json(store, &key, manifest).await
}

pub async fn read_stage_manifest(
    store: &dyn Store,
    job_id: &str,
    stage: Stage,
) -> Result<Option<StageManifest>> {
    read_json(store, &stage_manifest_key(job_id, stage)).await
}

/// Size and SHA-256 of a local file, streamed.
pub fn file_digest(path: &Path) -> Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    #[tokio::test]
    async fn markers_round_trip_and_list_done_shards() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        assert!(
            read_task_marker(&store, "j", Stage::Teacher, 3)
                .await
                .unwrap()
                .is_none()
        );
        for shard in [3, 0, 12] {
            let marker = TaskMarker {
                job_id: "j".into(),
                stage: Stage::Teacher,
                shard,
                attempt: 1,
                worker: "test".into(),
                finished_at_unix_ms: 1,
                parts: vec![],
                counters: BTreeMap::from([("rows".to_string(), 10)]),
            };
            write_task_marker(&store, &marker).await.unwrap();
        }
        assert_eq!(
            task_marker_key("j", Stage::Teacher, 3),
            "j/_markers/teacher/00003.json"
        );
        let marker = read_task_marker(&store, "j", Stage::Teacher, 12)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(marker.counters["rows"], 10);
        let done = done_shards(&store, "j", Stage::Teacher).await.unwrap();
        assert_eq!(done.into_iter().collect::<Vec<_>>(), [0, 3, 12]);
        assert!(
            done_shards(&store, "j", Stage::Student)
                .await
                .unwrap()
                .is_empty()
        );

        let manifest = StageManifest {
            stage: Stage::Prepare,
            job_id: "j".into(),
            parts: vec![],
        };
        write_stage_manifest(&store, &manifest).await.unwrap();
        assert_eq!(stage_manifest_key("j", Stage::Prepare), "j/data/_SUCCESS");
        assert_eq!(
            stage_manifest_key("j", Stage::Distill),
            "j/student/_SUCCESS_distill"
        );
        assert_eq!(
            stage_manifest_key("j", Stage::Student),
            "j/student/_SUCCESS"
        );
        assert_eq!(
            read_stage_manifest(&store, "j", Stage::Prepare)
                .await
                .unwrap(),
            Some(manifest)
        );
    }
}
