//! The worker loop: take a task from a stage's queue, run it with the completion protocol,
//! report, settle. Stateless: everything a task needs is in its message and the store, so a
//! worker can be killed at any moment and its unsettled task goes to another worker.
//!
//! Settling:
//! - done (or found done: a redelivery) → ack, after the outputs and the marker are written;
//! - failed → the error is written to `{job}/_errors/...`, then the task is requeued, or
//!   dead-lettered with the error as reason when it has used its last delivery;
//! - not a task this build can read (garbage, unknown version, unknown stage) → dead-lettered
//!   at once with the decode error as reason; the worker carries on.
//!
//! Shutdown (SIGTERM): stop taking tasks, let the current one finish within the grace period,
//! else requeue it, and return. A worker can also stop by itself ([`StopWhen`]: after N tasks,
//! or when idle), the same way, for one-shot pods such as a KEDA ScaledJob's.
//!
//! Observability: every settled delivery is counted in `slim_tasks_total` and timed in
//! `slim_task_duration_seconds` by stage and result, running tasks in `slim_tasks_in_flight`
//! ([`slim_shared::telemetry`]); each consumer is registered with the process's readiness;
//! every log line of a task carries job, stage, shard and attempt (the `task` span).

use crate::executor::{Registry, TaskContext, TaskOutcome, run_task, worker_name};
use anyhow::{Context, Result};
use slim_shared::manifest::{LoadedManifest, Manifest};
use slim_shared::markers::{self, TaskError, job_key};
use slim_shared::messages::{EventBatch, EventKind, EventMessage, TaskMessage, decode_task};
use slim_shared::queue::{Delivery, TaskQueue, Topology, next_unless_shutdown, shutdown_requested};
use slim_shared::stage::Stage;
use slim_shared::store::Store;
use slim_shared::telemetry::{self, result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// What a worker does and how.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub topology: Topology,
    /// The stages this worker serves (each has its own queue and consumer).
    pub stages: Vec<Stage>,
    /// How long the current task may run on after a shutdown request before it is requeued.
    pub grace: Duration,
    /// Let executors show progress bars (in-process runs on a terminal).
    pub progress: bool,
    /// Tasks of one stage this worker runs at once (1 for compute-bound stages; more for
    /// stages that mostly wait, such as a teacher behind a remote API).
    pub concurrency: usize,
}

/// When a worker stops by itself, as if asked to shut down. Both off by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopWhen {
    /// After settling this many deliveries.
    pub tasks: Option<u64>,
    /// After this long with no task running.
    pub idle: Option<Duration>,
}

/// Tasks a worker settled, by outcome.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub done: AtomicU64,
    pub already_done: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl WorkerStats {
    pub fn summary(&self) -> String {
        format!(
            "{} done, {} already done, {} failed, {} dead-lettered",
            self.done.load(Ordering::Relaxed),
            self.already_done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed)
        )
    }
}

pub struct Worker {
    queue: Arc<dyn TaskQueue>,
    /// The store root that holds the jobs (`{root}/{job}/job.json`).
    store: Arc<dyn Store>,
    registry: Registry,
    config: WorkerConfig,
    name: String,
    /// Manifests of jobs seen, by job id: a job's manifest does not change once submitted.
    jobs: Mutex<HashMap<String, Arc<LoadedManifest>>>,
    pub stats: WorkerStats,
    stop_when: StopWhen,
    /// Turns true on the caller's shutdown or when [`StopWhen`] says so; the loops watch it.
    stop: watch::Sender<bool>,
    /// The coordinator's started / finished / failed events, sent in batches.
    events: EventBatcher,
    /// Deliveries settled, tasks running, and when the last one ended (ms since `born`).
    settled: AtomicU64,
    busy: AtomicU64,
    last_active_ms: AtomicU64,
    born: Instant,
}

/// How handling one delivery ended, for the loop.
enum Handled {
    Settled,
    /// Shutdown came and the grace period ran out: the task was requeued.
    Interrupted,
}

impl Worker {
    pub fn new(
        queue: Arc<dyn TaskQueue>,
        store: Arc<dyn Store>,
        registry: Registry,
        config: WorkerConfig,
    ) -> Self {
        Self {
            events: EventBatcher::new(queue.clone(), config.topology.clone()),
            queue,
            store,
            registry,
            config,
            name: worker_name(),
            jobs: Mutex::new(HashMap::new()),
            stats: WorkerStats::default(),
            stop_when: StopWhen::default(),
            stop: watch::channel(false).0,
            settled: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// Stops by itself after some tasks or when idle (see [`StopWhen`]).
    pub fn stop_when(mut self, stop_when: StopWhen) -> Self {
        self.stop_when = stop_when;
        self
    }

    /// Serves every configured stage until `shutdown` turns true, then returns.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> Result<()> {
        for &stage in &self.config.stages {
            anyhow::ensure!(
                self.registry.get(stage).is_some(),
                "this build has no executor for the {stage} stage"
            );
        }
        self.config
            .topology
            .declare_tasks(self.queue.as_ref(), &self.config.stages)
            .await
            .context("declaring the task queues")?;
        // The loops watch `stop`: the caller's shutdown, or this worker's own decision to stop.
        let mut helpers = tokio::task::JoinSet::new();
        let worker = self.clone();
        let mut outside = shutdown.clone();
        helpers.spawn(async move {
            shutdown_requested(&mut outside).await;
            worker.stop.send_replace(true);
        });
        if let Some(idle) = self.stop_when.idle {
            helpers.spawn(self.clone().stop_when_idle(idle));
        }
        let mut loops = tokio::task::JoinSet::new();
        for &stage in &self.config.stages {
            for _ in 0..self.config.concurrency.max(1) {
                let worker = self.clone();
                let shutdown = self.stop.subscribe();
                loops.spawn(async move { worker.serve(stage, shutdown).await });
            }
        }
        tracing::info!(worker = %self.name, stages = ?self.config.stages, "worker started");
        let mut result = Ok(());
        while let Some(joined) = loops.join_next().await {
            let outcome = joined.context("a stage loop panicked").and_then(|r| r);
            if let Err(e) = outcome
                && result.is_ok()
            {
                // One stage failing for good (its queue deleted, broker gone) stops the worker:
                // a supervisor restarting it is clearer than a half-serving worker.
                loops.abort_all();
                result = Err(e);
            }
        }
        helpers.shutdown().await;
        self.events.flush().await;
        tracing::info!(worker = %self.name, "worker stopped: {}", self.stats.summary());
        result
    }

    /// Stops the worker once no task has run for `idle`.
    async fn stop_when_idle(self: Arc<Self>, idle: Duration) {
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let since = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
            let quiet = self.born.elapsed().saturating_sub(since);
            if self.busy.load(Ordering::Relaxed) == 0 && quiet >= idle {
                tracing::info!(
                    idle_secs = idle.as_secs_f64(),
                    "no task for a while; stopping"
                );
                self.stop.send_replace(true);
                return;
            }
        }
    }

    fn note_active(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(now, Ordering::Relaxed);
    }

    /// Counts a settled delivery; stops the worker when it has settled its share.
    fn note_settled(&self) {
        let settled = self.settled.fetch_add(1, Ordering::Relaxed) + 1;
        if self.stop_when.tasks.is_some_and(|limit| settled >= limit) && !*self.stop.borrow() {
            tracing::info!(settled, "settled its share of tasks; stopping");
            self.stop.send_replace(true);
        }
    }

    async fn serve(&self, stage: Stage, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let queue = self.config.topology.tasks(stage);
        let consumer = telemetry::HEALTH.consumer(&queue);
        let mut deliveries = self
            .queue
            .consume(&queue)
            .await
            .with_context(|| format!("consuming {queue}"))?;
        consumer.set_live(deliveries.liveness());
        while let Some(delivery) = next_unless_shutdown(&mut deliveries, &mut shutdown)
            .await
            .with_context(|| format!("receiving from {queue}"))?
        {
            self.busy.fetch_add(1, Ordering::Relaxed);
            let handled = self.handle(stage, delivery, &mut shutdown).await;
            self.note_active();
            self.busy.fetch_sub(1, Ordering::Relaxed);
            if let Handled::Interrupted = handled {
                break;
            }
            self.note_settled();
        }
        Ok(())
    }

    async fn handle(
        &self,
        stage: Stage,
        delivery: Delivery,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Handled {
        let started = Instant::now();
        let task = match decode_task(delivery.body()) {
            Ok(task) if task.stage == stage.name() => task,
            Ok(task) => {
                let reason = format!("a {} task on the queue of the {stage} stage", task.stage);
                self.dead_letter(delivery, &reason).await;
                telemetry::task_settled(stage.name(), result::REJECTED, started.elapsed());
                return Handled::Settled;
            }
            Err(e) => {
                self.dead_letter(delivery, &e.to_string()).await;
                telemetry::task_settled(stage.name(), result::REJECTED, started.elapsed());
                return Handled::Settled;
            }
        };
        let attempt = delivery.delivery_count();
        // Every log line of the task, here and in its executor, carries these fields.
        let span = tracing::info_span!(
            "task",
            job = %task.job_id,
            stage = %stage,
            shard = task.shard,
            attempt
        );
        self.handle_task(stage, task, attempt, delivery, shutdown, started)
            .instrument(span)
            .await
    }

    async fn handle_task(
        &self,
        stage: Stage,
        task: TaskMessage,
        attempt: u32,
        delivery: Delivery,
        shutdown: &mut watch::Receiver<bool>,
        started: Instant,
    ) -> Handled {
        let _in_flight = telemetry::InFlight::start(stage.name());
        self.publish_event(&task, EventKind::Started);
        let outcome = tokio::select! {
            outcome = self.execute(stage, &task, attempt) => outcome,
            _ = grace_expired(shutdown, self.config.grace) => {
                tracing::warn!("shutting down: the task did not finish within the grace period; requeueing it");
                if let Err(e) = delivery.nack_requeue().await {
                    tracing::warn!(error = %e, "requeueing failed; the broker will redeliver the task");
                }
                telemetry::task_settled(stage.name(), result::INTERRUPTED, started.elapsed());
                return Handled::Interrupted;
            }
        };
        match outcome {
            Ok(outcome) => {
                let (marker, counter, result) = match outcome {
                    TaskOutcome::Done(marker) => (marker, &self.stats.done, result::DONE),
                    TaskOutcome::AlreadyDone(marker) => {
                        (marker, &self.stats.already_done, result::ALREADY_DONE)
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let finished = EventKind::Finished {
                    counters: marker.counters,
                };
                self.publish_event(&task, finished);
                if let Err(e) = delivery.ack().await {
                    // The work is done and marked: a redelivery will find the marker.
                    tracing::warn!(error = %e, "ack failed; the task will be redelivered and skipped");
                }
                telemetry::task_settled(stage.name(), result, started.elapsed());
            }
            Err(e) => {
                let result = self.fail(stage, &task, attempt, delivery, e).await;
                telemetry::task_settled(stage.name(), result, started.elapsed());
            }
        }
        Handled::Settled
    }

    async fn execute(&self, stage: Stage, task: &TaskMessage, attempt: u32) -> Result<TaskOutcome> {
        let job = self.job(&task.job_id).await?;
        let ctx = TaskContext {
            job,
            store: self.store.clone(),
            shard: task.shard,
            attempt,
            progress: self.config.progress,
        };
        run_task(&self.registry, &ctx, stage).await
    }

    /// Records the error, then requeues the task or, on its last delivery, dead-letters it.
    /// Returns the result to count it under.
    async fn fail(
        &self,
        stage: Stage,
        task: &TaskMessage,
        attempt: u32,
        delivery: Delivery,
        error: anyhow::Error,
    ) -> &'static str {
        let text = format!("{error:#}");
        let last = attempt >= self.config.topology.delivery_limit;
        tracing::error!(last, error = %text, "task failed");
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let record = TaskError {
            job_id: task.job_id.clone(),
            stage,
            shard: task.shard,
            attempts: attempt,
            worker: Some(self.name.clone()),
            error: text.clone(),
            dead_letter_reason: None,
            at_unix_ms: markers::now_unix_ms(),
        };
        if let Err(e) = markers::write_task_error(self.store.as_ref(), &record).await {
            tracing::warn!(error = %format!("{e:#}"), "could not record the task's error");
        }
        self.publish_event(
            task,
            EventKind::Failed {
                error: text.clone(),
            },
        );
        let settled = if last {
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            delivery.reject_to_dead_letter(&text).await
        } else {
            delivery.nack_requeue().await
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "settling a failed task failed; the broker will redeliver it");
        }
        if last {
            result::DEAD_LETTERED
        } else {
            result::FAILED
        }
    }

    async fn dead_letter(&self, delivery: Delivery, reason: &str) {
        tracing::error!(
            reason,
            bytes = delivery.body().len(),
            "not a task this worker can run; dead-lettering it"
        );
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = delivery.reject_to_dead_letter(reason).await {
            tracing::warn!(error = %e, "dead-lettering failed; the broker will redeliver the message");
        }
    }

    /// The job's manifest, from `{job}/job.json` the first time.
    async fn job(&self, job_id: &str) -> Result<Arc<LoadedManifest>> {
        if let Some(job) = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(job_id)
        {
            return Ok(job.clone());
        }
        let key = job_key(job_id, "job.json");
        let bytes =
            self.store.get(&key).await.with_context(|| {
                format!("reading the job's manifest {}", self.store.location(&key))
            })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a job manifest", self.store.location(&key)))?;
        let job = Arc::new(LoadedManifest::from_resolved(
            manifest,
            &self.store.location(&key).to_string(),
        ));
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= 256 {
            jobs.clear();
        }
        jobs.insert(job_id.to_string(), job.clone());
        Ok(job)
    }

    fn publish_event(&self, task: &TaskMessage, kind: EventKind) {
        self.events
            .send(EventMessage::for_task(task, kind, &self.name));
    }
}

/// How long an event waits for others to share its message.
const EVENT_BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Sends a worker's events in batches, one message per job's events queue every
/// [`EVENT_BATCH_WINDOW`] at most: a short task's start and end, and those of the tasks next to
/// it, cost the broker one message instead of two each.
///
/// Events are advisory: a lost one costs the coordinator a little latency, never correctness.
/// So they are sent in the background, off the task's path, and a failure is only logged.
#[derive(Clone)]
struct EventBatcher {
    queue: Arc<dyn TaskQueue>,
    topology: Topology,
    /// Events not sent yet; a send is scheduled whenever this is not empty.
    pending: Arc<Mutex<Vec<EventMessage>>>,
    /// Held while a batch is sent, so batches leave in the order their events happened.
    sending: Arc<tokio::sync::Mutex<()>>,
}

impl EventBatcher {
    fn new(queue: Arc<dyn TaskQueue>, topology: Topology) -> Self {
        Self {
            queue,
            topology,
            pending: Arc::default(),
            sending: Arc::default(),
        }
    }

    fn send(&self, event: EventMessage) {
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.push(event);
            pending.len() == 1
        };
        if first {
            let batcher = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(EVENT_BATCH_WINDOW).await;
                batcher.flush().await;
            });
        }
    }

    /// Sends every pending event now.
    async fn flush(&self) {
        let _sending = self.sending.lock().await;
        let events = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut by_job: HashMap<String, Vec<EventMessage>> = HashMap::new();
        for event in events {
            by_job.entry(event.job_id.clone()).or_default().push(event);
        }
        for (job_id, events) in by_job {
            let name = self.topology.events(&job_id);
            let body = EventBatch::new(events).encode();
            if let Err(e) = self.queue.notify(&name, body).await {
                tracing::debug!(queue = name, error = %e, "events not delivered");
            }
        }
    }
}

/// Resolves `grace` after `shutdown` turns true.
async fn grace_expired(shutdown: &mut watch::Receiver<bool>, grace: Duration) {
    shutdown_requested(shutdown).await;
    tokio::time::sleep(grace).await;
}
