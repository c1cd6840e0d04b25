//! The queues of one slim deployment and the options they are declared with. The coordinator
//! and every worker declare them the same way (RabbitMQ refuses a second declaration with other
//! arguments), so both build them from one [`Topology`].
//!
//! - `{prefix}.tasks.{stage}`: one task queue per stage, so workers can serve a subset of
//!   stages (GPU workers for distill and student) and autoscalers can scale per stage. Each
//!   has its dead-letter queue `{prefix}.tasks.{stage}.dlq`, drained by the coordinator.
//! - `{prefix}.events.{job}`: one events queue per job, declared by the job's coordinator and
//!   deleted when the job ends. Events are advisory (progress, logs); markers are the truth.

use super::{QueueOptions, TaskQueue};
use crate::stage::Stage;
use std::time::Duration;

/// Queue names and options of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Prefix of every queue name, so deployments can share a broker (default `slim`).
    pub prefix: String,
    /// Deliveries of a task before it is dead-lettered.
    pub delivery_limit: u32,
    /// How long a worker may hold a task before RabbitMQ takes it back: longer than the
    /// longest task (distillation can take hours).
    pub consumer_timeout: Duration,
    /// Tasks a worker holds at once per stage queue. 1 suits long tasks: a held task is a task
    /// no other worker can take.
    pub prefetch: u16,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: "slim".into(),
            delivery_limit: 5,
            consumer_timeout: Duration::from_secs(12 * 60 * 60),
            prefetch: 1,
        }
    }
}

impl Topology {
    /// The task queue of `stage`.
    pub fn tasks(&self, stage: Stage) -> String {
        format!("{}.tasks.{}", self.prefix, stage.name())
    }

    /// The events queue of a job.
    pub fn events(&self, job_id: &str) -> String {
        format!("{}.events.{job_id}", self.prefix)
    }

    pub fn task_options(&self) -> QueueOptions {
        QueueOptions {
            delivery_limit: self.delivery_limit,
            consumer_timeout_ms: u64::try_from(self.consumer_timeout.as_millis())
                .unwrap_or(u64::MAX),
            prefetch: self.prefetch,
            advisory: false,
        }
    }

    /// Events are advisory (markers are the truth), small and settled at once: a best-effort
    /// queue with a large prefetch.
    pub fn event_options(&self) -> QueueOptions {
        QueueOptions {
            delivery_limit: 3,
            consumer_timeout_ms: 30 * 60 * 1000,
            prefetch: 512,
            advisory: true,
        }
    }

    /// Declares the task queues of `stages`.
    pub async fn declare_tasks(
        &self,
        queue: &dyn TaskQueue,
        stages: &[Stage],
    ) -> super::Result<()> {
        for &stage in stages {
            queue
                .declare(&self.tasks(stage), self.task_options())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_per_stage_and_job() {
        let t = Topology {
            prefix: "team-a".into(),
            ..Topology::default()
        };
        assert_eq!(t.tasks(Stage::Teacher), "team-a.tasks.teacher");
        assert_eq!(t.events("games"), "team-a.events.games");
        assert_eq!(t.task_options().delivery_limit, 5);
        assert_eq!(t.task_options().consumer_timeout_ms, 12 * 60 * 60 * 1000);
    }
}
