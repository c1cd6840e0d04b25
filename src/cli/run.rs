//! `slim run`: a whole job in this process. The same coordinator driver and worker loop as a
//! cluster, over the embedded queue and the job's own store, so a rerun skips what its markers
//! say is done and the outputs are those a cluster would write.

use anyhow::{Context, Result};
use slim_coordinator::driver::{self, DriveOptions};
use slim_coordinator::{Runtime, dead_letters, jobs};
use slim_shared::manifest::LoadedManifest;
use slim_shared::markers::{self, JobPhase};
use slim_shared::queue::embedded::EmbeddedQueue;
use slim_shared::queue::{TaskQueue, Topology};
use slim_shared::stage::Stage;
use slim_shared::store;
use slim_worker::executor::Registry;
use slim_worker::serve::{Worker, WorkerConfig};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(loaded: LoadedManifest, progress: bool) -> Result<ExitCode> {
    let root = loaded.output_root();
    let store = store::open(&root, &loaded.manifest.storage)
        .await
        .with_context(|| format!("opening the output store {root}"))?;
    let job = jobs::store_manifest(store.as_ref(), &loaded).await?;
    let job_id = job.job_id().to_string();
    // The queue is new: whatever an earlier run published or saw fail is to be done again.
    for (stage, shards) in jobs::forget_attempts(store.as_ref(), &job_id).await? {
        eprintln!(
            "{stage}: retrying {} task(s) that failed before",
            shards.len()
        );
    }

    // Run the job's stages up to the first one this build has no executor for.
    let registry = Registry::builtin();
    let available = registry.stages();
    let planned = job.manifest.job.planned_stages();
    let runnable: Vec<Stage> = planned
        .iter()
        .copied()
        .take_while(|s| available.contains(s))
        .collect();
    let mut done_before = Vec::new();
    for &stage in &runnable {
        if store
            .exists(&markers::stage_manifest_key(&job_id, stage))
            .await?
        {
            done_before.push(stage);
        }
    }

    let queue: Arc<dyn TaskQueue> = Arc::new(EmbeddedQueue::default());
    let topology = Topology::default();
    let rt = Runtime {
        queue: queue.clone(),
        store: store.clone(),
        topology: topology.clone(),
        poll_interval: Duration::from_millis(500),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = Arc::new(Worker::new(
        queue,
        store.clone(),
        registry,
        WorkerConfig {
            topology,
            stages: runnable.clone(),
            grace: Duration::ZERO,
            concurrency: 1,
            progress,
        },
    ));
    let mut background = tokio::task::JoinSet::new();
    background.spawn(worker.run(stopped.clone()));
    for &stage in &runnable {
        background.spawn(dead_letters::drain(rt.clone(), stage, stopped.clone()));
    }
    let drive = driver::drive(
        &rt,
        &job_id,
        DriveOptions {
            progress,
            only: Some(runnable.clone()),
        },
    );
    // The worker and the drains run until told to stop; one ending early is an error the
    // driver would otherwise wait on forever.
    let outcome = tokio::select! {
        outcome = drive => outcome,
        Some(joined) = background.join_next() => {
            let _ = stop.send(true);
            joined.context("a background task panicked")??;
            anyhow::bail!("the in-process worker stopped before the job ended");
        }
    };
    let _ = stop.send(true);
    while let Some(joined) = background.join_next().await {
        joined.context("a background task panicked")??;
    }
    let outcome = outcome?;

    for &stage in &runnable {
        let counters = summed_counters(store.as_ref(), &job_id, stage).await?;
        let what = if done_before.contains(&stage) {
            "already done"
        } else if outcome
            .state
            .stages
            .iter()
            .any(|p| p.stage == stage && Some(p.done) == p.tasks)
        {
            "done"
        } else {
            continue;
        };
        println!("{stage}: {what} ({})", counters);
    }
    if outcome.state.phase == JobPhase::Failed {
        for f in &outcome.failures {
            eprintln!("failed: {} shard {}: {}", f.stage, f.shard, f.error);
        }
        eprintln!("job {job_id} failed; fix the cause and run it again (done tasks are kept)");
        return Ok(ExitCode::FAILURE);
    }
    let pending: Vec<&str> = planned
        .iter()
        .filter(|s| !runnable.contains(s))
        .map(|s| s.name())
        .collect();
    if !pending.is_empty() {
        eprintln!(
            "The stages {} are not yet available in this build; the job stops here.",
            pending.join(", ")
        );
    }
    if runnable.contains(&Stage::Train) {
        // The driver writes the report when train closes; a run that found train done
        // before, or whose report write failed, writes it here.
        let report = markers::job_key(&job_id, slim_shared::report::REPORT_KEY);
        if !store.exists(&report).await? {
            slim_shared::report::write_report(store.as_ref(), &job_id).await?;
        }
        let markdown = store
            .get(&report)
            .await
            .with_context(|| format!("reading {}", store.location(&report)))?;
        println!("\n{}", String::from_utf8_lossy(&markdown).trim_end());
        println!(
            "\nreport: {} (slim report {job_id})",
            store.location(&report)
        );
    }
    println!("outputs: {}", root.join(&job_id));
    Ok(ExitCode::SUCCESS)
}

/// The counters of a stage's tasks, summed over its shards, as `name value, ...`.
async fn summed_counters(store: &dyn store::Store, job_id: &str, stage: Stage) -> Result<String> {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    let shards = markers::done_shards(store, job_id, stage).await?;
    for &shard in &shards {
        if let Some(marker) = markers::read_task_marker(store, job_id, stage, shard).await? {
            for (name, value) in marker.counters {
                *sums.entry(name).or_default() += value;
            }
        }
    }
    let mut parts: Vec<String> = Vec::new();
    if stage.is_sharded() {
        parts.push(format!("{} tasks", shards.len()));
    }
    parts.extend(sums.iter().map(|(k, v)| format!("{k} {v}")));
    Ok(parts.join(", "))
}
