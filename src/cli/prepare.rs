//! `slim prepare`: the prepare stage from the command line.

use anyhow::{Context, Result};
use slim_shared::data::prepare;
use slim_shared::manifest::LoadedManifest;
use slim_shared::store;

pub async fn run(loaded: &LoadedManifest, progress: bool) -> Result<prepare::Summary> {
    let root = loaded.output_root();
    let store = store::open(&root, &loaded.manifest.storage)
        .await
        .with_context(|| format!("opening the output store {root}"))?;
    tracing::info!(job = loaded.job_id(), output = %root, "prepare: starting");
    let (summary, _parts) = prepare::run(loaded, store, progress).await?;
    let d = &summary.dataset;
    println!(
        "prepare: {} users, {} items, {} interactions (sparsity {:.4}%), {} shards, |U'| = {}; history length p50 {} p90 {} max {}",
        d.users,
        d.items,
        d.interactions,
        d.sparsity * 100.0,
        d.shards,
        d.teacher_sample,
        d.sequence_length.p50,
        d.sequence_length.p90,
        d.sequence_length.max
    );
    if summary.ingest.skipped_lines > 0 {
        println!(
            "prepare: skipped {} malformed lines (see data/summary.json)",
            summary.ingest.skipped_lines
        );
    }
    if summary.items_without_meta > 0 {
        println!(
            "prepare: {} items have no meta and use their id as text",
            summary.items_without_meta
        );
    }
    println!(
        "prepare: wrote {}",
        root.join(&slim_shared::markers::job_key(loaded.job_id(), "data/"))
    );
    Ok(summary)
}
