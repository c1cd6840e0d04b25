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
        r#"backbones = ["sasrec", "gru4rec", "srgnn"]
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
    assert_eq!(runs.len(), 3 * 2 * 2 + 1);
    let stored: serde_json::Value = serde_json::to_value(job.resolved()).unwrap();
    store
        .put("tr/job.json", serde_json::to_vec(&stored).unwrap().into())
        .await
        .unwrap();
    assert_eq!(
        plan::task_count(store.as_ref(), "tr", Stage::Train)
            .await
            .unwrap(),
        13,
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
        // valid and test, each overall, in four history-length buckets and cold-start.
        assert_eq!(rows.len(), 12, "{run}");
        let all = rows
            .iter()
            .find(|r| r.split == "test" && r.bucket == "all")
            .unwrap();
        assert_eq!(all.variant, run.variant);
        assert_eq!(all.backbone, run.backbone);
        assert_eq!(all.seed, run.seed);
        let bucket_users: u64 = rows
            .iter()
            .filter(|r| r.split == "test" && r.bucket != "all" && r.bucket != "cold-start")
            .map(|r| r.users)
            .sum();
        assert_eq!(bucket_users, all.users);
        let cold = rows
            .iter()
            .find(|r| r.split == "test" && r.bucket == "cold-start")
            .unwrap();
        assert!(cold.users <= all.users);
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
        "| SRGNN | 2 |",
        "| SRGNN+ | 2 |",
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
async fn a_shard_outside_the_grid_fails_its_task_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // One run in the grid, so shard 1 names a run that does not exist.
    let job = job(
        dir.path(),
        r#"["prepare"]"#,
        r#"backbones = ["sasrec"]
variants = ["id"]
seeds = [1]"#,
    );
    let store = store::open(
        &Location::Local(dir.path().to_path_buf()),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let registry = Registry::builtin();
    let err = run_task(&registry, &ctx(&job, &store, 1), Stage::Train)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("train shard 1 does not exist"),
        "{err:#}"
    );
    assert!(
        !dir.path().join("tr/_markers/train").exists(),
        "no marker for a failed task"
    );
}

/// Stand-ins for the encode stage's rationale vectors (the real ones need the student and the
/// text encoder): each user's vector is the mean of its history's item vectors plus noise, so
/// it says something about the user, as a rationale does; `step1`..`step3` are noisier copies.
/// Only users `keep` accepts get a row.
async fn write_user_vectors(
    store: &dyn Store,
    dir: &Path,
    source: &str,
    keep: impl Fn(&schema::UserRow) -> bool,
) -> usize {
    let items: Vec<Vec<f32>> = {
        let mut rows = Vec::new();
        for part in 0..2 {
            let bytes =
                std::fs::read(dir.join(format!("tr/embeddings/items/part-{part:05}.parquet")))
                    .unwrap();
            rows.extend(
                schema::read_embeddings_by_index(bytes.into(), "items", "item_index", "embedding")
                    .unwrap(),
            );
        }
        rows.sort_by_key(|(i, _)| *i);
        rows.into_iter().map(|(_, v)| v).collect()
    };
    let users = schema::read_users(
        std::fs::read(dir.join("tr/data/users.parquet"))
            .unwrap()
            .into(),
        "users",
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let kept: Vec<&schema::UserRow> = users.iter().filter(|u| keep(u)).collect();
    let mean = |u: &schema::UserRow| -> Vec<f32> {
        let mut v = vec![0.0f32; 8];
        for &i in &u.history {
            for (x, y) in v.iter_mut().zip(&items[i as usize]) {
                *x += y / u.history.len() as f32;
            }
        }
        v
    };
    let noisy = |v: &[f32], scale: f32, rng: &mut ChaCha8Rng| -> Vec<f32> {
        v.iter()
            .map(|x| x + scale * rng.random_range(-1.0f32..1.0))
            .collect()
    };
    let mut columns: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 4];
    for u in &kept {
        let m = mean(u);
        for (c, scale) in [0.05, 0.3, 0.2, 0.1].into_iter().enumerate() {
            columns[c].push(noisy(&m, scale, &mut rng));
        }
    }
    let ids: Vec<&str> = kept.iter().map(|u| u.user_id.as_str()).collect();
    let bytes = schema::write_embeddings(
        vec![(
            Field::new("user_id", DataType::Utf8, false),
            Arc::new(arrow::array::StringArray::from(ids)) as ArrayRef,
        )],
        ["rationale", "step1", "step2", "step3"]
            .into_iter()
            .zip(columns.iter().map(Vec::as_slice))
            .collect(),
        8,
    )
    .unwrap();
    let key = format!("tr/embeddings/users-{source}/part-00000.parquet");
    store.put(&key, bytes.into()).await.unwrap();
    kept.len()
}

#[tokio::test]
async fn slim_variants_train_on_rationale_vectors_and_name_the_files_they_miss() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        r#"["train"]"#,
        r#"backbones = ["gru4rec"]
variants = ["slim", "slim_minus", "slim_agnostic", "step1", "step2", "step3", "popularity"]
seeds = [1]
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
    let names: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        names,
        [
            "gru4rec/slim seed 1",
            "gru4rec/slim_minus seed 1",
            "slim_agnostic seed 1",
            "step1 seed 1",
            "step2 seed 1",
            "step3 seed 1",
            "popularity"
        ]
    );

    // Nothing encoded yet: the item vectors are named first, then the rationale vectors.
    let items = schema::read_items(
        std::fs::read(dir.path().join("tr/data/items.parquet"))
            .unwrap()
            .into(),
        "items",
    )
    .unwrap();
    let err = run_task(&registry, &ctx(&job, &store, 0), Stage::Train)
        .await
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("tr/embeddings/items/part-*.parquet") && err.contains("slim variant"),
        "{err}"
    );
    write_item_vectors(store.as_ref(), items.len() as u32).await;
    for (shard, source) in [(0, "student"), (1, "teacher"), (3, "student")] {
        let err = run_task(&registry, &ctx(&job, &store, shard), Stage::Train)
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains(&format!("tr/embeddings/users-{source}/part-*.parquet"))
                && err.contains(&format!("run the {source} and encode stages first")),
            "{err}"
        );
    }

    // The student covers every user, the teacher only a third of them (the rest get the
    // learned default vector).
    let students = write_user_vectors(store.as_ref(), dir.path(), "student", |_| true).await;
    let teachers = write_user_vectors(store.as_ref(), dir.path(), "teacher", |u| {
        u.user_index % 3 == 0
    })
    .await;
    assert!(
        teachers > 0 && teachers < students,
        "{teachers} of {students}"
    );

    let mut test_ndcg = std::collections::HashMap::new();
    for (shard, run) in runs.iter().enumerate() {
        run_task(&registry, &ctx(&job, &store, shard as u32), Stage::Train)
            .await
            .unwrap_or_else(|e| panic!("{run}: {e:#}"));
        let bytes = std::fs::read(dir.path().join("tr").join(run_part_key(shard as u32))).unwrap();
        let rows = schema::read_run_metrics(bytes.into(), "part").unwrap();
        let all = rows
            .iter()
            .find(|r| r.split == "test" && r.bucket == "all")
            .unwrap();
        assert_eq!(all.users as usize, students);
        assert!(
            all.metrics.iter().all(|m| m.is_finite() && *m >= 0.0),
            "{run}: {:?}",
            all.metrics
        );
        assert!(all.metrics[0] <= all.metrics[1] && all.metrics[1] <= all.metrics[2]);
        assert!(all.metrics[1] <= 1.0);
        test_ndcg.insert(all.model.clone(), all.metrics[0]);
    }
    eprintln!("test NDCG@10: {test_ndcg:?}");
    let mut models: Vec<&String> = test_ndcg.keys().collect();
    models.sort();
    assert_eq!(
        models,
        [
            "popularity",
            "slim-gru4rec",
            "slim_agnostic",
            "slim_minus-gru4rec",
            "slim_step1",
            "slim_step2",
            "slim_step3"
        ]
    );

    let written = slim_shared::report::write_report(store.as_ref(), "tr")
        .await
        .unwrap();
    let md = &written.markdown;
    eprintln!("{md}");
    for row in [
        "| SLIM (GRU4Rec) | 1 |",
        "| SLIM-minus (GRU4Rec) | 1 |",
        "| SLIM (ID-agnostic) | 1 |",
        "| SLIM-Step1 | 1 |",
        "| SLIM-Step3 | 1 |",
        "laid out like the paper's Table 2",
        "## Cold-start items",
    ] {
        assert!(md.contains(row), "{row} missing from\n{md}");
    }
}
