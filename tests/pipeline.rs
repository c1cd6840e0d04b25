//! The whole SLIM job, every stage, as users run it: `slim run` in one process, and the same job
//! submitted to a cluster (`slim coordinator` and two `slim worker` processes on the real
//! RabbitMQ and Garage S3), which must give the same metrics.
//!
//! Fast by construction: 60 Gift Cards users, the model-free `rehearsal` teacher (a real
//! teacher is a paid remote API or a large model), a tiny random-weight student (trained and run
//! for real by the distill and student stages), the real all-MiniLM-L6-v2 encoder, and SASRec
//! for two epochs at width 16.

mod common;

use common::*;
use serde_json::Value;
use slim_shared::schema;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const JOB: &str = "pipe";

/// The job's manifest in `dir` (the tiny student is written there too), with `output`.
fn manifest(dir: &Path, output: &str) -> PathBuf {
    manifest_named(dir, "job.toml", output)
}

fn manifest_named(dir: &Path, name: &str, output: &str) -> PathBuf {
    let student = dir.join("tiny-student");
    if !student.exists() {
        slim_worker::llm::tiny::write_tiny_chat_model(&student, 7).unwrap();
    }
    let data = data_dir().join("Gift_Cards");
    let text = format!(
        r#"
[job]
id = "{JOB}"
output = "{output}"

[data]
format = "mcauley2018"
reviews = "{reviews}"
meta = "{meta}"

[prepare]
max_users = 60
teacher_sample = 20
users_per_shard = 20

[teacher]
backend = "rehearsal"
max_new_tokens = 96

[student]
base_model = "{student}"
lora_rank = 4
lora_alpha = 8.0
epochs = 2
batch_size = 4
learning_rate = 0.01
warmup_steps = 1
max_seq_len = 640
history_token_budget = 256
checkpoint_every = 2
max_new_tokens = 24
generation_batch = 8

[encoder]
model = "{encoder}"

[train]
backbones = ["sasrec"]
variants = ["id", "plus", "slim", "popularity"]
seeds = [1]
epochs = 2
embedding_dim = 16
eval_negatives = 50
"#,
        reviews = data.join("Gift_Cards_5.json.gz").display(),
        meta = data.join("meta_Gift_Cards.json.gz").display(),
        student = student.display(),
        encoder = repo().join("models/all-minilm-l6-v2").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn parquet_rows(path: &Path) -> usize {
    pyarrow_describe(path, "None")["rows"].as_u64().unwrap() as usize
}

/// Every `part-*.parquet` of a folder.
fn parts(folder: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .collect();
    found.sort();
    found
}

/// Checks every stage's outputs of a finished job in `job` (a local folder) and returns the
/// test metrics by model: `{model: [ndcg10, hr10, hr20]}`.
fn check_outputs(job: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    for stage in ["data", "teacher", "student", "embeddings", "train"] {
        let success: Value = serde_json::from_slice(
            &std::fs::read(job.join(stage).join("_SUCCESS"))
                .unwrap_or_else(|e| panic!("{stage}/_SUCCESS: {e}")),
        )
        .unwrap();
        assert!(
            !success["parts"].as_array().unwrap().is_empty(),
            "{stage}/_SUCCESS lists its parts: {success}"
        );
    }
    let users = schema::read_users(
        std::fs::read(job.join("data/users.parquet"))
            .unwrap()
            .into(),
        "users",
    )
    .unwrap();
    assert_eq!(users.len(), 60);
    let all: BTreeSet<String> = users.iter().map(|u| u.user_id.clone()).collect();
    let sampled: BTreeSet<String> = users
        .iter()
        .filter(|u| u.in_teacher_sample)
        .map(|u| u.user_id.clone())
        .collect();

    let rationale_users = |folder: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for part in parts(&job.join(folder)) {
            for row in
                schema::read_rationales(std::fs::read(&part).unwrap().into(), "part").unwrap()
            {
                assert!(seen.insert(row.user_id.clone()), "{} twice", row.user_id);
            }
        }
        seen
    };
    assert_eq!(rationale_users("teacher"), sampled, "teacher: U' exactly");
    assert_eq!(rationale_users("student"), all, "student: every user");

    let summary: Value =
        serde_json::from_slice(&std::fs::read(job.join("student/distill.json")).unwrap()).unwrap();
    assert_eq!(summary["teacher_rows"], 20);
    assert!(
        summary["validation_loss_after"].as_f64().unwrap()
            < summary["validation_loss_before"].as_f64().unwrap(),
        "distillation lowers the validation loss: {summary}"
    );

    let item_rows: usize = parts(&job.join("embeddings/items"))
        .iter()
        .map(|p| parquet_rows(p))
        .sum();
    let items = schema::read_items(
        std::fs::read(job.join("data/items.parquet"))
            .unwrap()
            .into(),
        "items",
    )
    .unwrap();
    assert_eq!(item_rows, items.len(), "one vector per item");
    for (folder, expected) in [
        ("users-teacher", sampled.len()),
        ("users-student", all.len()),
    ] {
        let rows: usize = parts(&job.join("embeddings").join(folder))
            .iter()
            .map(|p| parquet_rows(p))
            .sum();
        assert_eq!(rows, expected, "embeddings/{folder}");
    }

    let report = std::fs::read_to_string(job.join("train/report.md")).unwrap();
    for model in ["SASRec", "SASRec+", "SLIM"] {
        assert!(report.contains(model), "report lacks {model}:\n{report}");
    }
    let metrics = pyarrow_describe(
        &job.join("train/metrics.parquet"),
        "{f'{m}': [n, h, h2] for m, s, b, n, h, h2 in zip(t['model'].to_pylist(), t['split'].to_pylist(), t['bucket'].to_pylist(), t['ndcg10_mean'].to_pylist(), t['hr10_mean'].to_pylist(), t['hr20_mean'].to_pylist()) if s == 'test' and b == 'all'}",
    );
    let by_model: std::collections::BTreeMap<String, Vec<f64>> =
        serde_json::from_value(metrics["extra"].clone()).unwrap();
    for model in ["sasrec", "sasrec+", "slim-sasrec", "popularity"] {
        let values = by_model
            .get(model)
            .unwrap_or_else(|| panic!("no test metrics for {model}: {by_model:?}"));
        assert!(
            values.iter().all(|v| (0.0..=1.0).contains(v)),
            "{model}: {values:?}"
        );
        assert!(values[1] <= values[2], "HR@10 <= HR@20 for {model}");
    }
    by_model
}

#[test]
fn the_whole_job_runs_in_process_and_writes_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let job_file = manifest(dir.path(), &out.display().to_string());
    let stdout = slim_ok(&["run", job_file.to_str().unwrap()]);
    for stage in [
        "prepare", "teacher", "distill", "student", "encode", "train",
    ] {
        assert!(
            stdout.contains(&format!("{stage}: done")),
            "{stage} not reported done:\n{stdout}"
        );
    }
    assert!(stdout.contains("SLIM"), "the report is printed:\n{stdout}");
    check_outputs(&out.join(JOB));

    // A rerun finds every stage done and changes nothing.
    let before = std::fs::read(out.join(JOB).join("train/metrics.parquet")).unwrap();
    let again = slim_ok(&["run", job_file.to_str().unwrap()]);
    assert!(again.contains("train: already done"), "{again}");
    assert_eq!(
        std::fs::read(out.join(JOB).join("train/metrics.parquet")).unwrap(),
        before
    );
    let report = slim_ok(&["report", JOB, "--store", out.to_str().unwrap()]);
    assert!(report.contains("SASRec+"), "{report}");
}

/// Copies every object under `prefix` of the S3 store to `dest` (keys become paths).
fn download(
    root: &slim_shared::store::Location,
    settings: &slim_shared::store::S3Settings,
    dest: &Path,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = slim_shared::store::open(root, settings).await.unwrap();
        for object in store.list(&format!("{JOB}/")).await.unwrap() {
            let bytes = store.get(&object.key).await.unwrap();
            let path = dest.join(&object.key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    });
}

/// Reads the job's rationale and embedding files straight from Garage with polars (an analyst's
/// reader, through its own S3 client): `{folder: rows}`.
fn polars_rows_from_s3(store_uri: &str, settings: &slim_shared::store::S3Settings) -> Value {
    let script = r#"
import json, os, sys
import polars as pl
opts = {"aws_endpoint_url": os.environ["SLIM_S3_ENDPOINT"], "aws_region": os.environ["SLIM_S3_REGION"],
        "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "aws_allow_http": "true", "aws_virtual_hosted_style_request": "false"}
root = sys.argv[1]
out = {}
for folder in ["teacher", "student", "embeddings/items", "embeddings/users-student"]:
    df = pl.scan_parquet(f"{root}/{folder}/part-*.parquet", storage_options=opts).collect()
    out[folder] = df.height
    if folder == "embeddings/users-student":
        out["dim"] = len(df["rationale"][0])
print(json.dumps(out))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &format!("{store_uri}/{JOB}")])
        .env("SLIM_S3_ENDPOINT", settings.endpoint.as_deref().unwrap())
        .env("SLIM_S3_REGION", settings.region.as_deref().unwrap())
        .output()
        .expect("python3 runs (pip install polars)");
    assert!(
        out.status.success(),
        "polars could not read the job from S3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_same_job_on_rabbitmq_and_garage_with_two_workers_gives_the_same_metrics() {
    use slim_shared::store::Location;
    let (root, settings) = slim_shared::testkit::garage();
    let Location::S3 { bucket, .. } = &root else {
        unreachable!("garage() is an S3 location")
    };
    let prefix = slim_shared::testkit::unique_prefix("pipeline");
    let store_uri = format!("s3://{bucket}/{prefix}");
    let var = |name: &str| std::env::var(name).unwrap();
    let mut cluster = Cluster::new("pipeline", JOB)
        .with_env("SLIM_STORE", &store_uri)
        .with_env("AWS_ENDPOINT_URL", settings.endpoint.as_deref().unwrap())
        .with_env("AWS_REGION", settings.region.as_deref().unwrap())
        .with_env("AWS_ACCESS_KEY_ID", &var("AWS_ACCESS_KEY_ID"))
        .with_env("AWS_SECRET_ACCESS_KEY", &var("AWS_SECRET_ACCESS_KEY"));
    let dir = tempfile::tempdir().unwrap();
    cluster.start_coordinator();
    cluster.start_worker(&[]);
    cluster.start_worker(&[]);
    cluster.submit(&manifest(dir.path(), &store_uri));
    let (ok, status) = cluster.wait_for_status(JOB);
    assert!(ok, "the job failed:\n{status}\n{}", cluster.logs());
    for stage in [
        "prepare", "teacher", "distill", "student", "encode", "train",
    ] {
        assert!(
            status.contains(stage),
            "slim status lists {stage}:\n{status}"
        );
    }
    // Both workers took part.
    let logs: Vec<String> = cluster
        .workers()
        .into_iter()
        .map(|i| cluster.procs[i].log_text())
        .collect();
    assert!(
        logs.iter()
            .all(|l| l.contains("\"stage\":\"student\"") || l.contains("\"stage\":\"encode\"")),
        "every worker ran shards:\n{}",
        cluster.logs()
    );

    let s3_rows = polars_rows_from_s3(&store_uri, &settings);
    assert_eq!(s3_rows["teacher"], 20, "{s3_rows}");
    assert_eq!(s3_rows["student"], 60, "{s3_rows}");
    assert_eq!(s3_rows["embeddings/users-student"], 60, "{s3_rows}");
    assert_eq!(s3_rows["dim"], 384, "{s3_rows}");

    let copied = dir.path().join("from-s3");
    download(
        &Location::S3 {
            bucket: bucket.clone(),
            key: prefix.clone(),
        },
        &settings,
        &copied,
    );
    let on_cluster = check_outputs(&copied.join(JOB));

    // The same manifest in one process: the same seeds give the same metrics.
    let local = dir.path().join("local");
    let local_manifest = manifest_named(dir.path(), "local.toml", &local.display().to_string());
    slim_ok(&["run", local_manifest.to_str().unwrap()]);
    let in_process = check_outputs(&local.join(JOB));
    assert_eq!(
        on_cluster, in_process,
        "cluster and in-process metrics differ"
    );
}
