//! The train stage on real data: Gift Cards prepared by the real prepare stage, every task of
//! a small backbone x variant x seed grid run through the completion protocol, then the
//! report aggregated from the run files.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::datatypes::{DataType, Field};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slim_shared::manifest::LoadedManifest;
use slim_shared::plan;
use slim_shared::schema;
use slim_shared::stage::Stage;
use slim_shared::store::{self, Location, S3Settings, Store};
use slim_worker::executor::{Registry, TaskContext, TaskOutcome, run_task};
use slim_worker::stages::train::run_part_key;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn data_dir() -> PathBuf {
    std::env::var_os("SLIM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/amazon")
        })
}

/// A Gift Cards job with `train` settings `train` (TOML lines) and `stages`.
fn job(out: &Path, stages: &str, train: &str) -> Arc<LoadedManifest> {
    let data = data_dir().join("Gift_Cards");
    let manifest = format!(
        r#"
[job]
id = "tr"
output = "{out}"
stages = {stages}
[data]
format = "mcauley2018"
reviews = "{reviews}"
meta = "{meta}"
[prepare]
users_per_shard = 200
[train]
{train}
"#,
        out = out.display(),
        reviews = data.join("Gift_Cards_5.json.gz").display(),
        meta = data.join("meta_Gift_Cards.json.gz").display(),
    );
    Arc::new(
        LoadedManifest::from_str(&manifest, "<test>", out.to_path_buf())
            .map_err(|p| p.to_string())
            .unwrap(),
    )
}

fn ctx(job: &Arc<LoadedManifest>, store: &Arc<dyn Store>, shard: u32) -> TaskContext {
    TaskContext {
        job: job.clone(),
        store: store.clone(),
        shard,
        attempt: 1,
        progress: false,
    }
}

/// Random 8-wide item vectors in the encode stage's layout, split over two parts.
async fn write_item_vectors(store: &dyn Store, items: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for part in 0..2u32 {
        let ids: Vec<u32> = (0..items).filter(|i| i % 2 == part).collect();
        let vectors: Vec<Vec<f32>> = ids
            .iter()
            .map(|_| (0..8).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let bytes = schema::write_embeddings(
            vec![(
                Field::new("item_index", DataType::UInt32, false),
                Arc::new(UInt32Array::from(ids)) as ArrayRef,
            )],
            vec![("embedding", &vectors)],
            8,
        )
        .unwrap();
        let key = format!("tr/embeddings/items/part-{part:05}.parquet");
        store.put(&key, bytes.into()).await.unwrap();
    }
}

#[tokio::test]
async fn every_run_of_the_grid_writes_its_metrics_and_the_report_aggregates_them() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        r#"["train"]"#,
        r#"backbones = ["sasrec", "gru4rec"]
variants = ["id", "plus", "popularity"]
seeds = [1, 2]
epochs = 3
batch_size = 64
embedding_dim = 16
eval_negatives = 50
patience = 2"#,
    );
    let store = store::open(
        &Location::Local(dir.path().to_path_buf()),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let registry = Registry::builtin();
    run_task(&registry, &ctx(&job, &store, 0), Stage::Prepare)
        .await
        .unwrap();

    let runs = plan::train_runs(&job.manifest.train);
    assert_eq!(runs.len(), 2 * 2 * 2 + 1);
    let stored: serde_json::Value = serde_json::to_value(job.resolved()).unwrap();
    store
        .put("tr/job.json", serde_json::to_vec(&stored).unwrap().into())
        .await
        .unwrap();
    assert_eq!(
        plan::task_count(store.as_ref(), "tr", Stage::Train)
            .await
            .unwrap(),
        9,
        "the planner agrees with the executor"
    );

    // `plus` before the encode stage ran: a clear error naming the missing files.
    let plus = runs.iter().position(|r| r.variant == "plus").unwrap() as u32;
    let err = run_task(&registry, &ctx(&job, &store, plus), Stage::Train)
        .await
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("tr/embeddings/items/part-*.parquet") && err.contains("encode stage"),
        "{err}"
    );

    let items = schema::read_items(
        std::fs::read(dir.path().join("tr/data/items.parquet"))
            .unwrap()
            .into(),
        "items",
    )
    .unwrap();
    write_item_vectors(store.as_ref(), items.len() as u32).await;

    for (shard, run) in runs.iter().enumerate() {
        let TaskOutcome::Done(marker) =
            run_task(&registry, &ctx(&job, &store, shard as u32), Stage::Train)
                .await
                .unwrap_or_else(|e| panic!("{run}: {e:#}"))
        else {
            panic!("{run}: not run")
        };
        assert_eq!(marker.parts[0].key, run_part_key(shard as u32));
        let bytes = std::fs::read(dir.path().join("tr").join(run_part_key(shard as u32))).unwrap();
        let rows = schema::read_run_metrics(bytes.into(), "part").unwrap();
        // valid and test, each overall and in four history-length buckets.
        assert_eq!(rows.len(), 10, "{run}");
        let all = rows
            .iter()
            .find(|r| r.split == "test" && r.bucket == "all")
            .unwrap();
        assert_eq!(all.variant, run.variant);
        assert_eq!(all.backbone, run.backbone);
        assert_eq!(all.seed, run.seed);
        let bucket_users: u64 = rows
            .iter()
            .filter(|r| r.split == "test" && r.bucket != "all")
            .map(|r| r.users)
            .sum();
        assert_eq!(bucket_users, all.users);
        assert!(all.metrics.iter().all(|m| m.is_finite() && *m >= 0.0));
        assert!(all.metrics[0] <= all.metrics[1] && all.metrics[1] <= all.metrics[2]);
        match run.backbone.as_deref() {
            None => assert_eq!((all.model.as_str(), all.epochs), ("popularity", 0)),
            Some(b) => {
                let plus = if run.variant == "plus" { "+" } else { "" };
                assert_eq!(all.model, format!("{b}{plus}"));
                assert!(all.epochs >= 1 && all.best_epoch >= 1);
            }
        }
    }

    let written = slim_shared::report::write_report(store.as_ref(), "tr")
        .await
        .unwrap();
    let md = &written.markdown;
    eprintln!("{md}");
    for row in [
        "| SASRec | 2 |",
        "| SASRec+ | 2 |",
        "| GRU4Rec | 2 |",
        "| GRU4Rec+ | 2 |",
        "| Popularity | 1 |",
    ] {
        assert!(md.contains(row), "{row} missing from\n{md}");
    }
    assert!(!md.contains("Partial"), "{md}");
    for file in [
        "metrics.parquet",
        "report.md",
        "ndcg10.svg",
        "ndcg10_by_bucket.svg",
    ] {
        assert!(dir.path().join("tr/train").join(file).exists(), "{file}");
    }
}

#[tokio::test]
async fn unimplemented_variants_fail_their_task_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A job that does not plan train passes validation with any variant; its train tasks
    // (run by hand here) must still refuse what this build cannot train.
    let job = job(
        dir.path(),
        r#"["prepare"]"#,
        r#"backbones = ["srgnn", "sasrec"]
variants = ["slim_agnostic"]
seeds = [1]"#,
    );
    let store = store::open(
        &Location::Local(dir.path().to_path_buf()),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let registry = Registry::builtin();
    for (shard, needle) in [
        (0, "`srgnn` is not implemented yet"),
        (1, "`slim_agnostic` is not implemented yet"),
    ] {
        let err = run_task(&registry, &ctx(&job, &store, shard), Stage::Train)
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(needle), "{err}");
    }
    let err = run_task(&registry, &ctx(&job, &store, 2), Stage::Train)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("train shard 2 does not exist"),
        "{err:#}"
    );
    assert!(
        !dir.path().join("tr/_markers/train").exists(),
        "no marker for a failed task"
    );
}
