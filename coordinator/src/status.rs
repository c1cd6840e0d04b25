//! `slim status`: a job's progress per stage (done, running, failed, pending, queued),
//! throughput and ETA, read live from the store's markers, the coordinator's last recorded
//! state and, when a broker is given, the queue depths.

use crate::Runtime;
use crate::driver::read_job_manifest;
use anyhow::Result;
use serde::Serialize;
use slim_shared::markers::{self, JobPhase, TaskError};
use slim_shared::plan;
use slim_shared::stage::Stage;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub stage: Stage,
    /// `None` until the stage can be planned (prepare not done yet).
    pub tasks: Option<u32>,
    pub done: u32,
    pub running: u32,
    pub failed: u32,
    /// Tasks ready on the queue, when a broker was asked.
    pub queued: Option<u64>,
    /// Tasks done per second since the stage started.
    pub tasks_per_sec: Option<f64>,
    pub eta_secs: Option<f64>,
    /// The counters of the done tasks, summed (for the teacher: requests, retries, tokens,
    /// cost_microusd, ...).
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job_id: String,
    pub description: String,
    /// `None` when no coordinator has picked the job up yet.
    pub phase: Option<JobPhase>,
    pub message: Option<String>,
    pub stages: Vec<StageStatus>,
    pub failures: Vec<TaskError>,
}

/// Reads a job's status. `rt.queue` is asked for queue depths only when `with_queue` is set.
pub async fn read(rt: &Runtime, job_id: &str, with_queue: bool) -> Result<JobStatus> {
    let store = rt.store.as_ref();
    let manifest = read_job_manifest(rt, job_id).await?;
    let state = markers::read_job_state(store, job_id).await?;
    let prepared = store.exists(&plan::summary_key(job_id)).await?;
    let now = markers::now_unix_ms();
    let mut stages = Vec::new();
    let mut failures = Vec::new();
    for stage in manifest.job.planned_stages() {
        let recorded = state
            .as_ref()
            .and_then(|s| s.stages.iter().find(|p| p.stage == stage));
        let tasks = if stage.is_sharded() && !prepared {
            None
        } else {
            Some(plan::task_count(store, job_id, stage).await?)
        };
        let done_shards = markers::done_shards(store, job_id, stage).await?;
        let stage_failures: Vec<TaskError> = markers::read_failures(store, job_id, stage)
            .await?
            .into_iter()
            .filter(|f| !done_shards.contains(&f.shard))
            .collect();
        let done = done_shards.len() as u32;
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        for &shard in &done_shards {
            if let Some(marker) = markers::read_task_marker(store, job_id, stage, shard).await? {
                for (name, value) in marker.counters {
                    *counters.entry(name).or_default() += value;
                }
            }
        }
        let queued = if with_queue {
            rt.queue.depth(&rt.topology.tasks(stage)).await.ok()
        } else {
            None
        };
        let (tasks_per_sec, eta_secs) = match (recorded.and_then(|r| r.started_at_unix_ms), tasks) {
            (Some(started), Some(tasks)) if done > 0 && done < tasks => {
                let end = recorded.and_then(|r| r.finished_at_unix_ms).unwrap_or(now);
                let secs = (end.saturating_sub(started) as f64 / 1000.0).max(1e-3);
                let rate = f64::from(done) / secs;
                (Some(rate), Some(f64::from(tasks - done) / rate))
            }
            _ => (None, None),
        };
        stages.push(StageStatus {
            stage,
            tasks,
            done,
            running: recorded.map_or(0, |r| r.running),
            failed: stage_failures.len() as u32,
            queued,
            tasks_per_sec,
            eta_secs,
            counters,
        });
        failures.extend(stage_failures);
    }
    Ok(JobStatus {
        job_id: job_id.to_string(),
        description: manifest.job.description,
        phase: state.as_ref().map(|s| s.phase),
        message: state.and_then(|s| s.message),
        stages,
        failures,
    })
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = self
            .phase
            .map_or("submitted, not yet picked up".to_string(), |p| {
                p.to_string()
            });
        writeln!(f, "job {}: {phase}", self.job_id)?;
        if !self.description.is_empty() {
            writeln!(f, "  {}", self.description)?;
        }
        if let Some(message) = &self.message {
            writeln!(f, "  {message}")?;
        }
        writeln!(
            f,
            "  {:<8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>9}",
            "stage", "tasks", "done", "running", "failed", "pending", "queued", "tasks/s", "eta"
        )?;
        for s in &self.stages {
            let dash = || "-".to_string();
            let pending = s
                .tasks
                .map(|t| t.saturating_sub(s.done + s.failed + s.running).to_string())
                .unwrap_or_else(dash);
            writeln!(
                f,
                "  {:<8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>9}",
                s.stage.name(),
                s.tasks.map(|t| t.to_string()).unwrap_or_else(dash),
                s.done,
                s.running,
                s.failed,
                pending,
                s.queued.map(|q| q.to_string()).unwrap_or_else(dash),
                s.tasks_per_sec
                    .map(|r| format!("{r:.1}"))
                    .unwrap_or_else(dash),
                s.eta_secs.map(format_secs).unwrap_or_else(dash),
            )?;
        }
        for s in self.stages.iter().filter(|s| !s.counters.is_empty()) {
            let counters: Vec<String> = s
                .counters
                .iter()
                .map(|(name, value)| match name.strip_suffix("_microusd") {
                    Some(money) => format!("{money}_usd {:.4}", *value as f64 / 1e6),
                    None => format!("{name} {value}"),
                })
                .collect();
            writeln!(f, "  {}: {}", s.stage.name(), counters.join(", "))?;
        }
        for failure in &self.failures {
            writeln!(
                f,
                "  failed: {} shard {} after {} attempt(s): {}",
                failure.stage, failure.shard, failure.attempts, failure.error
            )?;
        }
        Ok(())
    }
}

fn format_secs(secs: f64) -> String {
    let secs = secs.round() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}
