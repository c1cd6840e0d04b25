//! `slim coordinator`: drives every job registered in its store, one driver per job, and drains
//! the dead-letter queues. It holds no state of its own: killed and started again, it finds the
//! registered jobs and their markers in the store and carries on.
//!
//! For operators it keeps `slim_coordinator_*` and `slim_job_tasks` up to date and samples the
//! depth of every task queue into `slim_queue_ready_messages` ([`slim_shared::telemetry`]).

use crate::driver::{self, DriveOptions};
use crate::{Runtime, dead_letters, jobs};
use anyhow::{Context, Result};
use slim_shared::markers::JobPhase;
use slim_shared::queue::dlq_name;
use slim_shared::stage::Stage;
use slim_shared::telemetry;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often queue depths are sampled for `slim_queue_ready_messages`.
const DEPTH_SAMPLE: Duration = Duration::from_secs(15);

/// How a coordinator's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (SIGTERM) while jobs may still be registered.
    Stopped,
    /// `until_done`: no registered job is left; whether every job driven succeeded.
    Done { all_succeeded: bool },
}

/// How a coordinator runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceOptions {
    /// Return once no registered job is left (a batch run, e.g. a Kubernetes Job), instead of
    /// waiting for more until `shutdown`.
    pub until_done: bool,
}

/// Runs until `shutdown` turns true.
pub async fn run(rt: Runtime, shutdown: watch::Receiver<bool>) -> Result<()> {
    run_with(rt, shutdown, ServiceOptions::default())
        .await
        .map(drop)
}

/// Runs until `shutdown` turns true or, with `until_done`, until no registered job is left.
pub async fn run_with(
    rt: Runtime,
    mut shutdown: watch::Receiver<bool>,
    options: ServiceOptions,
) -> Result<Ended> {
    rt.topology
        .declare_tasks(rt.queue.as_ref(), &Stage::ALL)
        .await
        .context("declaring the task queues")?;
    let mut drains = tokio::task::JoinSet::new();
    for stage in Stage::ALL {
        drains.spawn(dead_letters::drain(rt.clone(), stage, shutdown.clone()));
    }
    let depths = tokio::spawn(sample_depths(rt.clone(), shutdown.clone()));
    let mut active: HashMap<String, JoinHandle<Option<JobPhase>>> = HashMap::new();
    let mut all_succeeded = true;
    tracing::info!(store = %rt.store.location(""), prefix = rt.topology.prefix, until_done = options.until_done, "coordinator started");
    let ended = loop {
        let finished: Vec<String> = active
            .iter()
            .filter(|(_, handle)| handle.is_finished())
            .map(|(job, _)| job.clone())
            .collect();
        for job in finished {
            if let Some(handle) = active.remove(&job)
                && let Ok(Some(phase)) = handle.await
            {
                all_succeeded &= phase == JobPhase::Succeeded;
            }
        }
        match jobs::registered(rt.store.as_ref()).await {
            Ok(registered) => {
                if options.until_done && registered.is_empty() && active.is_empty() {
                    tracing::info!(all_succeeded, "no registered job left; stopping");
                    break Ended::Done { all_succeeded };
                }
                for job_id in registered {
                    if active.contains_key(&job_id) {
                        continue;
                    }
                    let handle = tokio::spawn(drive_registered(rt.clone(), job_id.clone()));
                    active.insert(job_id, handle);
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not list the registered jobs")
            }
        }
        telemetry::JOBS_ACTIVE.set(&[], active.len() as f64);
        if let Some(Ok(Err(e))) = drains.try_join_next() {
            return Err(e.context("draining a dead-letter queue"));
        }
        tokio::select! {
            _ = shutdown.wait_for(|&stop| stop) => break Ended::Stopped,
            _ = tokio::time::sleep(rt.poll_interval) => {}
        }
    };
    telemetry::HEALTH.set_stopping();
    // Drivers hold no state worth saving: the next coordinator rebuilds it from the store.
    for handle in active.values() {
        handle.abort();
    }
    depths.abort();
    drains.shutdown().await;
    tracing::info!("coordinator stopped");
    Ok(ended)
}

/// Drives one registered job; when it ends (either way) the registration is removed. A
/// driver error (store or broker gone for good) leaves it registered, to be tried again.
/// Returns the phase it ended in, if it ended.
async fn drive_registered(rt: Runtime, job_id: String) -> Option<JobPhase> {
    match driver::drive(&rt, &job_id, DriveOptions::default()).await {
        Ok(outcome) => {
            let phase = outcome.state.phase;
            tracing::info!(job = job_id, %phase, published = outcome.published, "job ended");
            telemetry::JOBS_ENDED.inc(&[&phase.to_string()]);
            telemetry::JOB_TASKS.remove_first(&job_id);
            if let Err(e) = jobs::unregister(rt.store.as_ref(), &job_id).await {
                tracing::warn!(job = job_id, error = %format!("{e:#}"), "could not unregister the job");
            }
            Some(phase)
        }
        Err(e) => {
            tracing::error!(job = job_id, error = %format!("{e:#}"), "driving the job failed; it will be picked up again");
            None
        }
    }
}

/// Samples the ready messages of every task queue and its dead-letter queue, so a dashboard
/// sees the backlog per stage without access to the broker's management API.
async fn sample_depths(rt: Runtime, mut shutdown: watch::Receiver<bool>) {
    loop {
        for stage in Stage::ALL {
            let tasks = rt.topology.tasks(stage);
            for queue in [dlq_name(&tasks), tasks] {
                match rt.queue.depth(&queue).await {
                    Ok(depth) => telemetry::QUEUE_READY.set(&[&queue], depth as f64),
                    Err(e) => {
                        tracing::debug!(queue, error = %e, "could not sample the queue depth")
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|&stop| stop) => return,
            _ = tokio::time::sleep(DEPTH_SAMPLE) => {}
        }
    }
}
