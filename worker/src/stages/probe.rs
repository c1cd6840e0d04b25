//! The `probe` stage executor: model-free work on one user shard, for checking a deployment end
//! to end and measuring the runtime. It reads the shard's users from `data/users.parquet` and
//! writes `probe/part-NNNNN.parquet` with a fingerprint of each history. `[probe]` in the
//! manifest adds simulated work (`work_ms`) and deliberate failures (`fail_shards`).

use crate::executor::{StageExecutor, TaskContext, TaskResult};
use anyhow::{Context, Result, bail};
use arrow::array::{RecordBatch, StringBuilder, UInt32Builder, UInt64Builder};
use async_trait::async_trait;
use slim_shared::markers::{self, job_key};
use slim_shared::schema::{self, UserRow};
use slim_shared::stage::Stage;
use std::sync::{Arc, Mutex};

/// The users of the last job seen, keyed by the SHA-256 of its users.parquet, so the shards of
/// one job do not each decode the whole file again.
type UsersCache = Option<(String, Arc<Vec<UserRow>>)>;

#[derive(Default)]
pub struct ProbeExecutor {
    users: Mutex<UsersCache>,
}

#[async_trait]
impl StageExecutor for ProbeExecutor {
    fn stage(&self) -> Stage {
        Stage::Probe
    }

    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult> {
        let probe = &ctx.job.manifest.probe;
        if probe.work_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(probe.work_ms)).await;
        }
        if probe.fail_shards.contains(&ctx.shard) {
            bail!(
                "shard {} is listed in probe.fail_shards: this failure is deliberate",
                ctx.shard
            );
        }
        let users = self.users(ctx).await?;
        let shard_users: Vec<&UserRow> = users.iter().filter(|u| u.shard == ctx.shard).collect();
        let bytes = encode_part(&shard_users)?;
        let key = format!("probe/part-{:05}.parquet", ctx.shard);
        let part = ctx
            .put_part(&key, bytes, Some(shard_users.len() as u64))
            .await?;
        Ok(TaskResult {
            parts: vec![part],
            counters: [("users".to_string(), shard_users.len() as u64)].into(),
        })
    }
}

impl ProbeExecutor {
    async fn users(&self, ctx: &TaskContext) -> Result<Arc<Vec<UserRow>>> {
        let job_id = ctx.job.job_id();
        let prepared = markers::read_stage_manifest(ctx.store.as_ref(), job_id, Stage::Prepare)
            .await?
            .context("the prepare stage is not done (no data/_SUCCESS)")?;
        let digest = prepared
            .parts
            .iter()
            .find(|p| p.key == "data/users.parquet")
            .context("data/_SUCCESS does not list data/users.parquet")?
            .sha256
            .clone();
        if let Some((cached, users)) = &*self.users.lock().unwrap_or_else(|e| e.into_inner())
            && *cached == digest
        {
            return Ok(users.clone());
        }
        let key = job_key(job_id, "data/users.parquet");
        let bytes = ctx
            .store
            .get(&key)
            .await
            .with_context(|| format!("reading {key}"))?;
        let users = Arc::new(
            crate::executor::blocking(move || schema::read_users(bytes, "data/users.parquet"))
                .await??,
        );
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) = Some((digest, users.clone()));
        Ok(users)
    }
}

/// FNV-1a, 64 bit: stable across platforms and releases, unlike std's hasher.
fn fingerprint(history: &[u32]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for item in history {
        for byte in item.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn encode_part(users: &[&UserRow]) -> Result<Vec<u8>> {
    let mut user_id = StringBuilder::new();
    let mut user_index = UInt32Builder::new();
    let mut history_length = UInt32Builder::new();
    let mut fingerprints = UInt64Builder::new();
    for user in users {
        user_id.append_value(&user.user_id);
        user_index.append_value(user.user_index);
        history_length.append_value(user.history_length);
        fingerprints.append_value(fingerprint(&user.history));
    }
    let batch = RecordBatch::try_new(
        schema::PROBE.clone(),
        vec![
            Arc::new(user_id.finish()),
            Arc::new(user_index.finish()),
            Arc::new(history_length.finish()),
            Arc::new(fingerprints.finish()),
        ],
    )?;
    let mut bytes = Vec::new();
    let mut writer = schema::writer(&mut bytes, &schema::PROBE)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_histories_apart() {
        assert_eq!(fingerprint(&[1, 2, 3]), fingerprint(&[1, 2, 3]));
        assert_ne!(fingerprint(&[1, 2, 3]), fingerprint(&[3, 2, 1]));
        assert_ne!(fingerprint(&[]), fingerprint(&[0]));
    }
}
