//! Driving one job to its end: publish the tasks of each ready stage, follow events and
//! markers, close stages, fail the job when a task is dead-lettered.
//!
//! All state is rebuilt from the store on every pass ("reconcile"): the markers say what is
//! done, the failure records what failed for good, `_published/` what is already on the queue.
//! A coordinator killed at any point and started again therefore publishes only what is
//! missing. Events only make it react sooner and report what is running.

use crate::Runtime;
use anyhow::{Context, Result};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use slim_shared::manifest::Manifest;
use slim_shared::markers::{
    self, JobPhase, JobState, StageManifest, StageProgress, TaskError, job_key,
};
use slim_shared::messages::{EventKind, TaskMessage, decode_events};
use slim_shared::plan;
use slim_shared::stage::Stage;
use slim_shared::telemetry;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// How a driver shows progress.
#[derive(Debug, Clone, Default)]
pub struct DriveOptions {
    /// Progress bars on stderr (interactive runs).
    pub progress: bool,
    /// Drive only these of the job's stages (for builds that lack some executors); the job
    /// then counts as succeeded once they are done.
    pub only: Option<Vec<Stage>>,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub state: JobState,
    /// Failure records of the stage that failed, when the job failed.
    pub failures: Vec<TaskError>,
    /// Tasks this driver published.
    pub published: u64,
}

/// Reads the resolved manifest a job was submitted with.
pub async fn read_job_manifest(rt: &Runtime, job_id: &str) -> Result<Manifest> {
    let key = job_key(job_id, "job.json");
    let bytes = rt
        .store
        .get(&key)
        .await
        .with_context(|| format!("reading {}", rt.store.location(&key)))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a job manifest", rt.store.location(&key)))
}

/// Drives `job_id` until it succeeds or fails. Errors are for the driver itself (store or
/// broker unreachable for good); a job that fails is an `Ok` outcome with phase `Failed`.
pub async fn drive(rt: &Runtime, job_id: &str, options: DriveOptions) -> Result<JobOutcome> {
    let manifest = read_job_manifest(rt, job_id).await?;
    let mut stages = manifest.job.planned_stages();
    if let Some(only) = &options.only {
        stages.retain(|s| only.contains(s));
    }
    let events_queue = rt.topology.events(job_id);
    rt.queue
        .declare(&events_queue, rt.topology.event_options())
        .await
        .with_context(|| format!("declaring {events_queue}"))?;
    rt.topology
        .declare_tasks(rt.queue.as_ref(), &stages)
        .await
        .context("declaring the task queues")?;
    let mut events = rt
        .queue
        .consume(&events_queue)
        .await
        .with_context(|| format!("consuming {events_queue}"))?;

    let mut driver = Driver {
        rt,
        job_id,
        stages,
        previous: markers::read_job_state(rt.store.as_ref(), job_id).await?,
        running: BTreeMap::new(),
        unfinished: 0,
        finished_since_pass: 0,
        published: 0,
        bars: Bars::new(options.progress),
    };
    tracing::info!(job = job_id, stages = ?driver.stages, "driving job");
    let outcome = loop {
        let (state, failures) = driver.reconcile().await?;
        if state.phase != JobPhase::Running {
            break JobOutcome {
                state,
                failures,
                published: driver.published,
            };
        }
        // Wait for the first event (or the poll interval), then take whatever else arrived
        // within a short window, so a burst of events costs one reconcile pass; but look at
        // once when the events say every unfinished task has finished.
        let mut window = rt.poll_interval;
        let started = Instant::now();
        while let Ok(next) = tokio::time::timeout(window, events.next()).await {
            let delivery = next.with_context(|| format!("receiving from {events_queue}"))?;
            match decode_events(delivery.body()) {
                Ok(batch) => batch.into_iter().for_each(|event| driver.note_event(event)),
                Err(e) => {
                    tracing::warn!(queue = events_queue, error = %e, "ignoring an unreadable event")
                }
            }
            if let Err(e) = delivery.ack().await {
                tracing::debug!(error = %e, "event ack failed");
            }
            if driver.finished_since_pass >= driver.unfinished {
                break;
            }
            window = RECONCILE_WINDOW.saturating_sub(started.elapsed());
        }
    };
    drop(events);
    if let Err(e) = rt.queue.delete(&events_queue).await {
        tracing::warn!(queue = events_queue, error = %e, "could not delete the events queue");
    }
    driver.bars.finish();
    match outcome.state.phase {
        JobPhase::Succeeded => tracing::info!(job = job_id, "job succeeded"),
        _ => {
            for f in &outcome.failures {
                tracing::error!(job = job_id, stage = %f.stage, shard = f.shard, attempts = f.attempts, error = %f.error, "task dead-lettered");
            }
            tracing::error!(job = job_id, message = ?outcome.state.message, "job failed");
        }
    }
    Ok(outcome)
}

/// Events arriving within this window after the first are handled in the same pass.
const RECONCILE_WINDOW: Duration = Duration::from_millis(200);

struct Driver<'a> {
    rt: &'a Runtime,
    job_id: &'a str,
    stages: Vec<Stage>,
    /// The last state written, to keep stage start times across restarts and avoid rewrites.
    previous: Option<JobState>,
    /// Tasks started and not yet finished, from events: (stage, shard) → worker.
    running: BTreeMap<(Stage, u32), String>,
    /// Published tasks neither done nor failed at the last pass.
    unfinished: u32,
    /// Tasks reported finished since the last pass (redeliveries may count twice).
    finished_since_pass: u32,
    published: u64,
    bars: Bars,
}

impl Driver<'_> {
    fn note_event(&mut self, event: slim_shared::messages::EventMessage) {
        let Some(stage) = Stage::parse(&event.stage) else {
            return;
        };
        let key = (stage, event.shard);
        match event.kind {
            EventKind::Started => {
                self.running.insert(key, event.worker);
            }
            EventKind::Finished { .. } => {
                self.running.remove(&key);
                self.finished_since_pass = self.finished_since_pass.saturating_add(1);
            }
            EventKind::Failed { error } => {
                self.running.remove(&key);
                tracing::warn!(job = self.job_id, %stage, shard = event.shard, attempt = event.attempt, worker = event.worker, error, "task failed; it will be retried until its delivery limit");
            }
        }
    }

    /// One pass: read what is done, close finished stages, publish what is ready, record the
    /// state. Returns the state and, when a stage failed, its failure records.
    async fn reconcile(&mut self) -> Result<(JobState, Vec<TaskError>)> {
        let store = self.rt.store.as_ref();
        let now = markers::now_unix_ms();
        let mut progress = Vec::new();
        let mut complete: HashSet<Stage> = HashSet::new();
        let mut failures = Vec::new();
        let mut blocked = false;
        self.unfinished = 0;
        self.finished_since_pass = 0;
        for &stage in &self.stages.clone() {
            let before = self
                .previous
                .as_ref()
                .and_then(|s| s.stages.iter().find(|p| p.stage == stage).cloned());
            let mut entry = StageProgress {
                stage,
                tasks: None,
                done: 0,
                failed: 0,
                running: 0,
                started_at_unix_ms: before.as_ref().and_then(|b| b.started_at_unix_ms),
                finished_at_unix_ms: before.as_ref().and_then(|b| b.finished_at_unix_ms),
            };
            let closed_key = markers::stage_manifest_key(self.job_id, stage);
            if store
                .exists(&closed_key)
                .await
                .with_context(|| format!("checking {closed_key}"))?
            {
                let tasks = match before.and_then(|b| b.tasks) {
                    Some(tasks) => tasks,
                    None => plan::task_count(store, self.job_id, stage).await?,
                };
                entry.tasks = Some(tasks);
                entry.done = tasks;
                entry.finished_at_unix_ms.get_or_insert(now);
                self.bars.set(stage, tasks as u64, tasks as u64);
                complete.insert(stage);
                progress.push(entry);
                continue;
            }
            let ready = stage.depends_on().iter().all(|d| complete.contains(d));
            if !ready || blocked {
                progress.push(entry);
                continue;
            }
            let tasks = plan::task_count(store, self.job_id, stage).await?;
            let done = markers::done_shards(store, self.job_id, stage).await?;
            let failed = markers::failed_shards(store, self.job_id, stage).await?;
            entry.tasks = Some(tasks);
            entry.done = done.len() as u32;
            entry.failed = failed.difference(&done).count() as u32;
            entry.running = self.running.keys().filter(|(s, _)| *s == stage).count() as u32;
            entry.started_at_unix_ms.get_or_insert(now);
            self.bars.set(stage, done.len() as u64, tasks as u64);
            if done.len() as u32 >= tasks {
                self.close_stage(stage, tasks).await?;
                entry.finished_at_unix_ms = Some(now);
                complete.insert(stage);
                progress.push(entry);
                continue;
            }
            self.publish_missing(stage, tasks, &done, &failed).await?;
            self.unfinished += tasks.saturating_sub(entry.done + entry.failed);
            if entry.failed > 0 && entry.done + entry.failed >= tasks {
                // Every task has ended and some failed for good: the stage, and the job, fail.
                failures = markers::read_failures(store, self.job_id, stage).await?;
                failures.retain(|f| !done.contains(&f.shard));
            }
            blocked = true;
            progress.push(entry);
        }
        let phase = if complete.len() == self.stages.len() {
            JobPhase::Succeeded
        } else if !failures.is_empty() {
            JobPhase::Failed
        } else {
            JobPhase::Running
        };
        let message = (!failures.is_empty()).then(|| {
            let f = &failures[0];
            format!(
                "{} task(s) of the {} stage were dead-lettered; shard {}: {}",
                failures.len(),
                f.stage,
                f.shard,
                f.error
            )
        });
        for p in &progress {
            let stage = p.stage.name();
            let tasks = f64::from(p.tasks.unwrap_or(0));
            telemetry::JOB_TASKS.set(&[self.job_id, stage, "total"], tasks);
            telemetry::JOB_TASKS.set(&[self.job_id, stage, "done"], f64::from(p.done));
            telemetry::JOB_TASKS.set(&[self.job_id, stage, "failed"], f64::from(p.failed));
            telemetry::JOB_TASKS.set(&[self.job_id, stage, "running"], f64::from(p.running));
        }
        let state = JobState {
            job_id: self.job_id.to_string(),
            phase,
            message,
            stages: progress,
            updated_at_unix_ms: now,
        };
        let changed = self.previous.as_ref().is_none_or(|p| {
            p.phase != state.phase || p.stages != state.stages || p.message != state.message
        });
        if changed {
            markers::write_job_state(store, &state).await?;
            self.previous = Some(state.clone());
        }
        Ok((state, failures))
    }

    /// Publishes the tasks of `stage` that are neither done, failed, nor already published.
    async fn publish_missing(
        &mut self,
        stage: Stage,
        tasks: u32,
        done: &BTreeSet<u32>,
        failed: &BTreeSet<u32>,
    ) -> Result<()> {
        let store = self.rt.store.as_ref();
        let mut published = markers::read_published(store, self.job_id, stage).await?;
        let missing: Vec<u32> = (0..tasks)
            .filter(|s| !done.contains(s) && !failed.contains(s) && !published.contains(s))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let queue = self.rt.topology.tasks(stage);
        let job_id = self.job_id;
        let rt = self.rt;
        // Confirms are awaited per message but many are in flight at once. The futures own
        // what they use, so the stream is `Send` for any lifetime (spawned drivers need that).
        let mut sends = futures::stream::iter(missing.clone().into_iter().map(|shard| {
            let queue_handle = rt.queue.clone();
            let queue = queue.clone();
            let body = TaskMessage::new(job_id, stage.name(), shard, 0).encode();
            async move { queue_handle.publish(&queue, body).await.map(|()| shard) }
        }))
        .buffer_unordered(PUBLISH_IN_FLIGHT);
        let mut result = Ok(());
        while let Some(sent) = sends.next().await {
            match sent {
                Ok(shard) => {
                    published.insert(shard);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(sends);
        let count = published.len();
        // Record what went out even when a publish failed, so a retry does not duplicate it.
        markers::write_published(store, self.job_id, stage, &published).await?;
        let sent = missing.iter().filter(|s| published.contains(s)).count() as u64;
        self.published += sent;
        telemetry::TASKS_PUBLISHED.add(&[stage.name()], sent as f64);
        tracing::info!(job = job_id, %stage, published = sent, total_published = count, tasks, "published tasks");
        result.with_context(|| format!("publishing {stage} tasks to {queue}"))
    }

    /// Writes the stage's `_SUCCESS` manifest from its tasks' markers.
    async fn close_stage(&mut self, stage: Stage, tasks: u32) -> Result<()> {
        let store = self.rt.store.as_ref();
        let job_id = self.job_id;
        // Many reads in flight: one at a time, a stage of 10,000 tasks waited on 10,000 round
        // trips (to S3, or to the blocking pool for a local store) in a row.
        let mut markers = futures::stream::iter(0..tasks)
            .map(|shard| async move {
                markers::read_task_marker(store, job_id, stage, shard)
                    .await?
                    .with_context(|| format!("the marker of {stage} shard {shard} disappeared"))
            })
            .buffer_unordered(MARKER_READS_IN_FLIGHT);
        let mut parts = Vec::new();
        while let Some(marker) = markers.next().await {
            parts.extend(marker?.parts);
        }
        drop(markers);
        parts.sort_by(|a, b| a.key.cmp(&b.key));
        markers::write_stage_manifest(
            store,
            &StageManifest {
                stage,
                job_id: self.job_id.to_string(),
                parts,
            },
        )
        .await?;
        self.bars.set(stage, tasks as u64, tasks as u64);
        tracing::info!(job = self.job_id, %stage, tasks, "stage complete");
        if stage == Stage::Train {
            // The report aggregates every run, so it is written once the last is done. It is
            // derived data: a failure is logged (and `slim report` redoes it), never fatal.
            if let Err(e) = slim_shared::report::write_report(store, self.job_id).await {
                tracing::error!(
                    job = self.job_id,
                    error = format!("{e:#}"),
                    "writing the train report failed; `slim report` retries it"
                );
            }
        }
        Ok(())
    }
}

/// Publishes awaiting their confirm at once. A stage of many short tasks is published as fast
/// as the broker confirms; 1,024 kept the no-op benchmark at 54-74% of raw lapin where 256 gave
/// 44-70% (docs/runtime.md).
const PUBLISH_IN_FLIGHT: usize = 1024;

/// Task markers read at once when a stage closes.
const MARKER_READS_IN_FLIGHT: usize = 64;

/// One progress bar per stage, shown only in interactive runs.
struct Bars {
    multi: Option<MultiProgress>,
    bars: BTreeMap<Stage, ProgressBar>,
}

impl Bars {
    fn new(visible: bool) -> Self {
        Self {
            multi: visible.then(MultiProgress::new),
            bars: BTreeMap::new(),
        }
    }

    fn set(&mut self, stage: Stage, done: u64, tasks: u64) {
        let Some(multi) = &self.multi else { return };
        let bar = self.bars.entry(stage).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(tasks));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {pos}/{len} tasks {per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(stage.name());
            bar
        });
        bar.set_length(tasks);
        bar.set_position(done);
    }

    fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}
