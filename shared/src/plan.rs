//! How many tasks a stage has. Single-task stages have one (shard 0); sharded stages have one
//! per user shard, a number `prepare` decides and records in `data/summary.json`, so they can
//! be planned only once `prepare` is done. The `train` stage has one task per run of the
//! manifest's grid (see [`train_runs`]), read from the job's stored manifest.

use crate::data::prepare::Summary;
use crate::manifest::{Manifest, TrainSection};
use crate::markers::job_key;
use crate::stage::Stage;
use crate::store::Store;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// `{job}/data/summary.json`
pub fn summary_key(job_id: &str) -> String {
    job_key(job_id, "data/summary.json")
}

/// Reads the prepare stage's summary.
pub async fn read_summary(store: &dyn Store, job_id: &str) -> Result<Summary> {
    let key = summary_key(job_id);
    let bytes = store
        .get(&key)
        .await
        .with_context(|| format!("reading {key} (written by the prepare stage)"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{key}: not a prepare summary"))
}

/// Reads the resolved manifest a job was submitted with, `{job}/job.json`.
pub async fn read_job_manifest(store: &dyn Store, job_id: &str) -> Result<Manifest> {
    let key = job_key(job_id, "job.json");
    let bytes = store
        .get(&key)
        .await
        .with_context(|| format!("reading {}", store.location(&key)))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a job manifest", store.location(&key)))
}

/// The number of tasks of `stage` in a job whose prepare stage is done.
pub async fn task_count(store: &dyn Store, job_id: &str, stage: Stage) -> Result<u32> {
    if stage == Stage::Train {
        let manifest = read_job_manifest(store, job_id).await?;
        // An empty grid still has one task, which reports the problem.
        return Ok((train_runs(&manifest.train).len() as u32).max(1));
    }
    if !stage.is_sharded() {
        return Ok(1);
    }
    let summary = read_summary(store, job_id).await?;
    Ok(summary.dataset.shards)
}

/// The model-free variant: trained once, whatever the backbones and seeds.
pub const POPULARITY: &str = "popularity";

/// The ID-agnostic variants: SLIM's transformer `g_t` over text vectors, which has no ID
/// backbone, so they are trained once per seed whatever the backbones.
pub const ID_AGNOSTIC_VARIANTS: &[&str] = &["slim_agnostic", "step1", "step2", "step3"];

pub fn is_id_agnostic(variant: &str) -> bool {
    ID_AGNOSTIC_VARIANTS.contains(&variant)
}

/// One run of the `train` stage: one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainRun {
    /// `None` for the popularity baseline and the ID-agnostic variants, which have no
    /// backbone.
    pub backbone: Option<String>,
    pub variant: String,
    /// Initialisation, dropout, shuffling and training negatives (evaluation candidates
    /// depend on `prepare.seed` only, so every run ranks the same ones).
    pub seed: u64,
}

impl fmt::Display for TrainRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backbone {
            Some(backbone) => write!(f, "{backbone}/{} seed {}", self.variant, self.seed),
            None if self.variant == POPULARITY => write!(f, "{}", self.variant),
            None => write!(f, "{} seed {}", self.variant, self.seed),
        }
    }
}

/// The runs of the `train` stage; task `shard` does `train_runs(section)[shard]`.
///
/// The order is stable for a manifest: backbones in their listed order, within each the
/// ID-based variants in their listed order, within each the seeds in their listed order, so
/// `shard = (backbone * variants + variant) * seeds + seed` counting only the ID-based
/// variants (neither `popularity` nor the [`ID_AGNOSTIC_VARIANTS`]). Then the ID-agnostic
/// variants in their listed order, each once per seed (backbone `None`: their transformer is
/// the same whatever the backbones). The popularity baseline, when listed, is one more run at
/// the end (backbone `None`, the first seed): it is deterministic, so one run is all its
/// seeds. Duplicate names are kept once.
pub fn train_runs(section: &TrainSection) -> Vec<TrainRun> {
    fn unique<T: PartialEq + Clone>(items: &[T]) -> Vec<T> {
        let mut out: Vec<T> = Vec::new();
        for item in items {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        out
    }
    let (backbones, variants, seeds) = (
        unique(&section.backbones),
        unique(&section.variants),
        unique(&section.seeds),
    );
    let mut runs = Vec::new();
    for backbone in &backbones {
        let id_based = variants
            .iter()
            .filter(|v| *v != POPULARITY && !is_id_agnostic(v));
        for variant in id_based {
            for &seed in &seeds {
                runs.push(TrainRun {
                    backbone: Some(backbone.clone()),
                    variant: variant.clone(),
                    seed,
                });
            }
        }
    }
    for variant in variants.iter().filter(|v| is_id_agnostic(v)) {
        for &seed in &seeds {
            runs.push(TrainRun {
                backbone: None,
                variant: variant.clone(),
                seed,
            });
        }
    }
    if variants.iter().any(|v| v == POPULARITY) {
        runs.push(TrainRun {
            backbone: None,
            variant: POPULARITY.into(),
            seed: seeds.first().copied().unwrap_or(0),
        });
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(backbones: &[&str], variants: &[&str], seeds: &[u64]) -> TrainSection {
        TrainSection {
            backbones: backbones.iter().map(|s| s.to_string()).collect(),
            variants: variants.iter().map(|s| s.to_string()).collect(),
            seeds: seeds.to_vec(),
            ..TrainSection::default()
        }
    }

    #[test]
    fn train_shards_map_to_backbone_variant_seed_in_a_stable_order() {
        let runs = train_runs(&section(
            &["sasrec", "gru4rec"],
            &["popularity", "id", "plus"],
            &[1, 2, 3],
        ));
        // 2 backbones x 2 variants x 3 seeds, then popularity once.
        assert_eq!(runs.len(), 13);
        let at = |b: usize, v: usize, s: usize| &runs[(b * 2 + v) * 3 + s];
        assert_eq!(
            at(0, 0, 0),
            &TrainRun {
                backbone: Some("sasrec".into()),
                variant: "id".into(),
                seed: 1
            }
        );
        assert_eq!(at(0, 1, 2).to_string(), "sasrec/plus seed 3");
        assert_eq!(at(1, 0, 1).to_string(), "gru4rec/id seed 2");
        assert_eq!(at(1, 1, 2).to_string(), "gru4rec/plus seed 3");
        assert_eq!(runs[12].backbone, None);
        assert_eq!(runs[12].variant, "popularity");
        // Planning twice gives the same runs; duplicates are dropped.
        let again = train_runs(&section(
            &["sasrec", "gru4rec", "sasrec"],
            &["popularity", "id", "plus", "id"],
            &[1, 2, 3, 1],
        ));
        assert_eq!(again, runs);
        // Popularity alone is one task; nothing listed is none.
        assert_eq!(
            train_runs(&section(&["sasrec"], &["popularity"], &[7])).len(),
            1
        );
        assert!(train_runs(&section(&["sasrec"], &["id"], &[])).is_empty());
    }

    #[test]
    fn id_agnostic_variants_run_once_per_seed_after_the_backbone_runs() {
        let runs = train_runs(&section(
            &["sasrec", "gru4rec"],
            &["step1", "popularity", "slim", "slim_agnostic"],
            &[1, 2],
        ));
        // 2 backbones x slim x 2 seeds, then step1 and slim_agnostic x 2 seeds, then
        // popularity.
        assert_eq!(runs.len(), 4 + 4 + 1);
        assert_eq!(runs[3].to_string(), "gru4rec/slim seed 2");
        assert_eq!(runs[4].to_string(), "step1 seed 1");
        assert_eq!(runs[4].backbone, None);
        assert_eq!(runs[7].to_string(), "slim_agnostic seed 2");
        assert_eq!(runs[8].to_string(), "popularity");
        // No backbone listed: the ID-agnostic runs still happen.
        let alone = train_runs(&section(&[], &["slim_agnostic"], &[3]));
        assert_eq!(alone.len(), 1);
        assert!(is_id_agnostic("step3") && !is_id_agnostic("slim"));
    }
}
