//! `slim coordinator`: drives every job registered in its store, one driver per job, and drains
//! the dead-letter queues. It holds no state of its own: killed and started again, it finds the
//! registered jobs and their markers in the store and carries on.

use crate::driver::{self, DriveOptions};
use crate::{Runtime, dead_letters, jobs};
use anyhow::{Context, Result};
use slim_shared::stage::Stage;
use std::collections::HashMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs until `shutdown` turns true.
pub async fn run(rt: Runtime, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    rt.topology
        .declare_tasks(rt.queue.as_ref(), &Stage::ALL)
        .await
        .context("declaring the task queues")?;
    let mut drains = tokio::task::JoinSet::new();
    for stage in Stage::ALL {
        drains.spawn(dead_letters::drain(rt.clone(), stage, shutdown.clone()));
    }
    let mut active: HashMap<String, JoinHandle<()>> = HashMap::new();
    tracing::info!(store = %rt.store.location(""), prefix = rt.topology.prefix, "coordinator started");
    loop {
        active.retain(|_, handle| !handle.is_finished());
        match jobs::registered(rt.store.as_ref()).await {
            Ok(registered) => {
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
        if let Some(Ok(Err(e))) = drains.try_join_next() {
            return Err(e.context("draining a dead-letter queue"));
        }
        tokio::select! {
            _ = shutdown.wait_for(|&stop| stop) => break,
            _ = tokio::time::sleep(rt.poll_interval) => {}
        }
    }
    // Drivers hold no state worth saving: the next coordinator rebuilds it from the store.
    for handle in active.values() {
        handle.abort();
    }
    drains.shutdown().await;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Drives one registered job; when it ends (either way) the registration is removed. A
/// driver error (store or broker gone for good) leaves it registered, to be tried again.
async fn drive_registered(rt: Runtime, job_id: String) {
    match driver::drive(&rt, &job_id, DriveOptions::default()).await {
        Ok(outcome) => {
            tracing::info!(job = job_id, phase = %outcome.state.phase, published = outcome.published, "job ended");
            if let Err(e) = jobs::unregister(rt.store.as_ref(), &job_id).await {
                tracing::warn!(job = job_id, error = %format!("{e:#}"), "could not unregister the job");
            }
        }
        Err(e) => {
            tracing::error!(job = job_id, error = %format!("{e:#}"), "driving the job failed; it will be picked up again");
        }
    }
}
