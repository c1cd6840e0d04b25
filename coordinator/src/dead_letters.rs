//! Dead letters: tasks that used their last delivery (or that no worker could read) end on
//! `{tasks queue}.dlq`. The coordinator drains those queues and records each one in the store:
//! a task of a job becomes the failure record `{job}/_failed/{stage}/{shard}.json`, carrying
//! the worker's last error, which fails the job; a message that is not a task is kept under
//! `_dead_letters/` with the reason, for operators. Nothing is dropped unrecorded.

use crate::Runtime;
use anyhow::{Context, Result};
use slim_shared::markers::{self, DeadLetter, TaskError};
use slim_shared::messages::decode_task;
use slim_shared::queue::{dlq_name, next_unless_shutdown};
use slim_shared::stage::Stage;
use slim_shared::telemetry;
use tokio::sync::watch;

/// Drains the dead-letter queue of `stage`'s tasks until `shutdown` turns true.
pub async fn drain(rt: Runtime, stage: Stage, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let queue = dlq_name(&rt.topology.tasks(stage));
    // Declared here too, so a drain may start before anyone else declared the queues.
    rt.topology
        .declare_tasks(rt.queue.as_ref(), &[stage])
        .await
        .with_context(|| format!("declaring the {stage} task queue"))?;
    let consumer = telemetry::HEALTH.consumer(&queue);
    let mut deliveries = rt
        .queue
        .consume(&queue)
        .await
        .with_context(|| format!("consuming {queue}"))?;
    consumer.set_live(deliveries.liveness());
    while let Some(delivery) = next_unless_shutdown(&mut deliveries, &mut shutdown)
        .await
        .with_context(|| format!("receiving from {queue}"))?
    {
        let reason = delivery
            .dead_letter_reason()
            .unwrap_or("delivery limit reached")
            .to_string();
        let recorded = record(
            &rt,
            &queue,
            stage,
            delivery.body().to_vec(),
            reason,
            delivery.delivery_count(),
        )
        .await;
        if let Err(e) = recorded {
            // Not acked: it stays on the dead-letter queue and is recorded on a later try.
            tracing::error!(queue, error = %format!("{e:#}"), "could not record a dead letter");
            let _ = delivery.nack_requeue().await;
            tokio::time::sleep(rt.poll_interval).await;
            continue;
        }
        if let Err(e) = delivery.ack().await {
            tracing::debug!(queue, error = %e, "dead letter ack failed; it will be recorded again");
        }
    }
    Ok(())
}

async fn record(
    rt: &Runtime,
    queue: &str,
    stage: Stage,
    body: Vec<u8>,
    reason: String,
    deliveries: u32,
) -> Result<()> {
    let task = match decode_task(&body) {
        Ok(task) => task,
        Err(e) => {
            let letter = DeadLetter {
                queue: queue.to_string(),
                reason: format!("{reason} ({e})"),
                body: String::from_utf8_lossy(&body).into_owned(),
                at_unix_ms: markers::now_unix_ms(),
            };
            let key = markers::write_dead_letter(rt.store.as_ref(), &letter).await?;
            telemetry::DEAD_LETTERS.inc(&[stage.name(), "unreadable"]);
            tracing::warn!(
                queue,
                reason = letter.reason,
                kept_at = key,
                "kept a dead letter that is not a task"
            );
            return Ok(());
        }
    };
    let store = rt.store.as_ref();
    let last_error = markers::read_task_error(store, &task.job_id, stage, task.shard).await?;
    let failure = TaskError {
        job_id: task.job_id.clone(),
        stage,
        shard: task.shard,
        attempts: last_error.as_ref().map_or(deliveries, |e| e.attempts),
        worker: last_error.as_ref().and_then(|e| e.worker.clone()),
        error: last_error.map(|e| e.error).unwrap_or_else(|| {
            format!("no worker reported an error ({reason}): workers may have died running it")
        }),
        dead_letter_reason: Some(reason),
        at_unix_ms: markers::now_unix_ms(),
    };
    markers::write_failure(store, &failure).await?;
    telemetry::DEAD_LETTERS.inc(&[stage.name(), "task"]);
    tracing::error!(job = task.job_id, %stage, shard = task.shard, error = failure.error, "task dead-lettered");
    Ok(())
}
