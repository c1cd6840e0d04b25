//! Stage executors: one per stage, behind one interface, found through a registry.
//!
//! An executor does the work of one task (a stage and a shard) and returns the parts it wrote.
//! It does not know whether it runs under RabbitMQ or in process, nor whether the store is S3
//! or a disk. [`run_task`] wraps every executor with the completion protocol: skip when the
//! task's marker exists (redelivery is normal), otherwise execute and write the marker last.

use anyhow::{Context, Result};
use async_trait::async_trait;
use slim_shared::manifest::LoadedManifest;
use slim_shared::markers::{self, PartInfo, TaskMarker};
use slim_shared::stage::Stage;
use slim_shared::store::Store;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Everything a task needs.
pub struct TaskContext {
    pub job: Arc<LoadedManifest>,
    /// Store rooted at the job's output root; keys start with the job id.
    pub store: Arc<dyn Store>,
    pub shard: u32,
    pub attempt: u32,
    /// Show progress bars (interactive runs only).
    pub progress: bool,
}

impl TaskContext {
    /// Writes one output of the task under the job's folder (`key` relative to it, e.g.
    /// `probe/part-00003.parquet`) and describes it for the marker.
    pub async fn put_part(&self, key: &str, bytes: Vec<u8>, rows: Option<u64>) -> Result<PartInfo> {
        let part = PartInfo::of_bytes(key, &bytes, rows);
        self.store
            .put(&markers::job_key(self.job.job_id(), key), bytes.into())
            .await
            .with_context(|| {
                format!(
                    "writing {}",
                    self.store
                        .location(&markers::job_key(self.job.job_id(), key))
                )
            })?;
        Ok(part)
    }

    /// Every Parquet part under the job's `folder` (e.g. `teacher`), read whole, in key order:
    /// `(location, bytes)`. Empty when the folder has none.
    pub async fn read_parts(&self, folder: &str) -> Result<Vec<(String, bytes::Bytes)>> {
        let prefix = format!("{}/", markers::job_key(self.job.job_id(), folder));
        let mut objects = self
            .store
            .list(&prefix)
            .await
            .with_context(|| format!("listing {}", self.store.location(&prefix)))?;
        objects.retain(|o| {
            let name = o.key.rsplit('/').next().unwrap_or_default();
            name.starts_with("part-") && name.ends_with(".parquet")
        });
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let mut parts = Vec::with_capacity(objects.len());
        for object in objects {
            let location = self.store.location(&object.key).to_string();
            let bytes = self
                .store
                .get(&object.key)
                .await
                .with_context(|| format!("reading {location}"))?;
            parts.push((location, bytes));
        }
        Ok(parts)
    }
}

/// Runs blocking work (model loading, training, encoding) on tokio's blocking pool inside the
/// caller's tracing span, so its log lines carry the task's job, stage and shard too.
pub async fn blocking<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .context("blocking work panicked")
}

/// What a task produced.
#[derive(Debug, Default)]
pub struct TaskResult {
    pub parts: Vec<PartInfo>,
    pub counters: BTreeMap<String, u64>,
}

#[async_trait]
pub trait StageExecutor: Send + Sync {
    fn stage(&self) -> Stage;
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult>;
}

/// The executors this worker can run.
#[derive(Default, Clone)]
pub struct Registry {
    executors: HashMap<Stage, Arc<dyn StageExecutor>>,
}

impl Registry {
    /// Every executor built into this binary.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry.register(Arc::new(crate::stages::prepare::PrepareExecutor));
        registry.register(Arc::new(crate::stages::probe::ProbeExecutor::default()));
        registry.register(Arc::new(crate::stages::teacher::TeacherExecutor::default()));
        registry.register(Arc::new(crate::stages::distill::DistillExecutor));
        registry.register(Arc::new(crate::stages::student::StudentExecutor::default()));
        registry.register(Arc::new(crate::stages::encode::EncodeExecutor::default()));
        registry.register(Arc::new(crate::stages::train::TrainExecutor));
        registry
    }

    pub fn register(&mut self, executor: Arc<dyn StageExecutor>) {
        self.executors.insert(executor.stage(), executor);
    }

    pub fn get(&self, stage: Stage) -> Option<&Arc<dyn StageExecutor>> {
        self.executors.get(&stage)
    }

    /// Stages with an executor, in DAG order.
    pub fn stages(&self) -> Vec<Stage> {
        slim_shared::stage::topological_order()
            .into_iter()
            .filter(|s| self.executors.contains_key(s))
            .collect()
    }
}

/// How a task ended.
#[derive(Debug)]
pub enum TaskOutcome {
    /// The marker already existed: the task was done before (a redelivery or a rerun).
    AlreadyDone(TaskMarker),
    /// Executed now; the marker is written.
    Done(TaskMarker),
}

/// A name for this worker in markers and logs: host and process id.
pub fn worker_name() -> String {
    // Read once: every task's marker carries it.
    static NAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", std::process::id())
    });
    NAME.clone()
}

/// Runs one task with the completion protocol: skip if marked done, else execute, then mark.
pub async fn run_task(registry: &Registry, ctx: &TaskContext, stage: Stage) -> Result<TaskOutcome> {
    let job_id = ctx.job.job_id().to_string();
    if let Some(marker) =
        markers::read_task_marker(ctx.store.as_ref(), &job_id, stage, ctx.shard).await?
    {
        tracing::info!(job = %job_id, %stage, shard = ctx.shard, "already done; skipping");
        return Ok(TaskOutcome::AlreadyDone(marker));
    }
    let executor = registry
        .get(stage)
        .with_context(|| format!("this worker has no executor for the {stage} stage"))?;
    // The caller's `task` span (the worker loop's) gives every log line job, stage and shard.
    let result = executor
        .execute(ctx)
        .await
        .with_context(|| format!("{stage} shard {} of job {job_id}", ctx.shard))?;
    let marker = TaskMarker {
        job_id,
        stage,
        shard: ctx.shard,
        attempt: ctx.attempt,
        worker: worker_name(),
        finished_at_unix_ms: markers::now_unix_ms(),
        parts: result.parts,
        counters: result.counters,
    };
    markers::write_task_marker(ctx.store.as_ref(), &marker).await?;
    Ok(TaskOutcome::Done(marker))
}
