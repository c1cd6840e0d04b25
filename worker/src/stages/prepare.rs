//! The `prepare` stage executor: one task that ingests, preprocesses and writes `data/`.

use crate::executor::{StageExecutor, TaskContext, TaskResult};
use anyhow::Result;
use async_trait::async_trait;
use slim_shared::data::prepare;
use slim_shared::stage::Stage;

pub struct PrepareExecutor;

#[async_trait]
impl StageExecutor for PrepareExecutor {
    fn stage(&self) -> Stage {
        Stage::Prepare
    }

    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult> {
        let (summary, parts) = prepare::run(&ctx.job, ctx.store.clone(), ctx.progress).await?;
        let d = &summary.dataset;
        let counters = [
            ("users", d.users),
            ("items", d.items),
            ("interactions", d.interactions),
            ("skipped_lines", summary.ingest.skipped_lines),
            ("items_without_meta", summary.items_without_meta),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(TaskResult { parts, counters })
    }
}
