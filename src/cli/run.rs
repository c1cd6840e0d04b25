//! `slim run`: a whole job in this process. The job's resolved manifest is stored as
//! `{job}/job.json`, then every stage this build has an executor for runs in DAG order through
//! the same completion protocol as distributed workers, so a rerun skips what is done.

use anyhow::{Context, Result};
use slim_shared::manifest::LoadedManifest;
use slim_shared::markers::job_key;
use slim_shared::stage::{Stage, topological_order};
use slim_shared::store;
use slim_worker::executor::{Registry, TaskContext, TaskOutcome, run_task};
use std::process::ExitCode;
use std::sync::Arc;

pub async fn run(loaded: LoadedManifest, progress: bool) -> Result<ExitCode> {
    let root = loaded.output_root();
    let store = store::open(&root, &loaded.manifest.storage)
        .await
        .with_context(|| format!("opening the output store {root}"))?;
    let job_id = loaded.job_id().to_string();
    let resolved = loaded.resolved();
    store
        .put(
            &job_key(&job_id, "job.json"),
            serde_json::to_vec_pretty(&resolved)?.into(),
        )
        .await
        .context("writing job.json")?;
    let job = Arc::new(LoadedManifest::from_resolved(resolved, &loaded.source));

    let registry = Registry::builtin();
    let available = registry.stages();
    for stage in topological_order() {
        if !available.contains(&stage) {
            continue;
        }
        // Single-task stages use shard 0; sharded stages arrive with their executors.
        let ctx = TaskContext {
            job: job.clone(),
            store: store.clone(),
            shard: 0,
            attempt: 1,
            progress,
        };
        match run_task(&registry, &ctx, stage).await? {
            TaskOutcome::AlreadyDone(marker) => {
                println!(
                    "{stage}: already done ({}), skipped",
                    counters(&marker.counters)
                );
            }
            TaskOutcome::Done(marker) => println!("{stage}: done ({})", counters(&marker.counters)),
        }
    }
    let pending: Vec<&str> = topological_order()
        .into_iter()
        .filter(|s| !available.contains(s))
        .map(Stage::name)
        .collect();
    if !pending.is_empty() {
        eprintln!(
            "The stages {} are not yet available in this build; the job stops here.",
            pending.join(", ")
        );
    }
    println!("outputs: {}", root.join(&job_id));
    Ok(ExitCode::SUCCESS)
}

fn counters(counters: &std::collections::BTreeMap<String, u64>) -> String {
    counters
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
