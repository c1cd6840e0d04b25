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
    job_key(
        job_id,
        &format!("_markers/{}/{shard:05}.json", stage.name()),
    )
}

/// `{job}/{stage folder}/_SUCCESS`
pub fn stage_manifest_key(job_id: &str, stage: Stage) -> String {
    job_key(job_id, &format!("{}/_SUCCESS", stage.folder()))
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
    let prefix = job_key(job_id, &format!("_markers/{}/", stage.name()));
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
            read_stage_manifest(&store, "j", Stage::Prepare)
                .await
                .unwrap(),
            Some(manifest)
        );
    }
}
