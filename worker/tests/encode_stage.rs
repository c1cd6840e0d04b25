//! The encode stage on real data: Gift Cards prepared by the real prepare stage, the real
//! encoder, and a teacher rationale part written in the rationale schema. The embeddings are
//! read back by DuckDB, as analysts would.

use slim_shared::manifest::LoadedManifest;
use slim_shared::schema;
use slim_shared::stage::Stage;
use slim_shared::store::{self, Location, S3Settings};
use slim_worker::executor::{Registry, TaskContext, TaskOutcome, run_task};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data_dir() -> PathBuf {
    std::env::var_os("SLIM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/amazon"))
}

fn rationale_part(users: &[&str]) -> Vec<u8> {
    let rows: Vec<schema::RationaleRow> = users
        .iter()
        .enumerate()
        .map(|(i, user)| schema::RationaleRow {
            user_id: user.to_string(),
            prompt: "the prompt".into(),
            rationale: format!("Step 1: likes puzzles {i}. Step 2: cards. Step 3: a gift card."),
            step1: format!("likes puzzles {i}"),
            // The same second step for everyone: embedded once.
            step2: "cards".into(),
            step3: "a gift card".into(),
            model: "a teacher".into(),
            prompt_tokens: 100,
            completion_tokens: 20,
            latency_ms: 5,
            finish_reason: "stop".into(),
            retries: 0,
            parse_retries: 0,
            parse_error: false,
            cached: false,
            cost_usd: 0.0,
        })
        .collect();
    schema::write_rationales(&rows).unwrap()
}

fn duckdb(sql: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!("import duckdb; print(duckdb.sql({sql:?}).fetchall())"),
        ])
        .output()
        .expect("python3 runs (pip install duckdb)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn encode_embeds_items_and_rationales_readable_by_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir().join("Gift_Cards");
    let manifest = format!(
        r#"
[job]
id = "enc"
output = "{out}"
[data]
format = "mcauley2018"
reviews = "{reviews}"
meta = "{meta}"
[prepare]
users_per_shard = 200
[encoder]
model = "{model}"
batch_size = 16
"#,
        out = dir.path().display(),
        reviews = data.join("Gift_Cards_5.json.gz").display(),
        meta = data.join("meta_Gift_Cards.json.gz").display(),
        model = repo().join("models/all-minilm-l6-v2").display(),
    );
    let job = Arc::new(
        LoadedManifest::from_str(&manifest, "<test>", dir.path().to_path_buf())
            .map_err(|p| p.to_string())
            .unwrap(),
    );
    let store = store::open(
        &Location::Local(dir.path().to_path_buf()),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let registry = Registry::builtin();
    let ctx = |shard| TaskContext {
        job: job.clone(),
        store: store.clone(),
        shard,
        attempt: 1,
        progress: false,
    };
    run_task(&registry, &ctx(0), Stage::Prepare).await.unwrap();
    let users = schema::read_users(
        std::fs::read(dir.path().join("enc/data/users.parquet"))
            .unwrap()
            .into(),
        "users",
    )
    .unwrap();
    let shard1: Vec<&str> = users
        .iter()
        .filter(|u| u.shard == 1)
        .map(|u| u.user_id.as_str())
        .take(5)
        .collect();
    std::fs::create_dir_all(dir.path().join("enc/teacher")).unwrap();
    std::fs::write(
        dir.path().join("enc/teacher/part-00001.parquet"),
        rationale_part(&shard1),
    )
    .unwrap();

    let shards = users.iter().map(|u| u.shard).max().unwrap() + 1;
    assert!(shards >= 2);
    let mut items = 0;
    for shard in 0..shards {
        let TaskOutcome::Done(marker) = run_task(&registry, &ctx(shard), Stage::Encode)
            .await
            .unwrap()
        else {
            panic!("not run")
        };
        items += marker.counters["items"];
        assert_eq!(
            marker.counters.get("teacher_users").copied(),
            (shard == 1).then_some(5)
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("enc/data/summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        items,
        summary["items"].as_u64().unwrap(),
        "every item embedded once"
    );

    let job_dir = dir.path().join("enc");
    let items_glob = job_dir.join("embeddings/items/*.parquet");
    let out = duckdb(&format!(
        "select count(*), min(len(embedding)), max(len(embedding)), count(distinct item_index) from '{}'",
        items_glob.display()
    ));
    assert_eq!(out, format!("[({items}, 384, 384, {items})]"));

    // Item vectors are the encoder's vectors of the items' text.
    let check = duckdb(&format!(
        "select list_inner_product(embedding, embedding) from '{}' limit 3",
        items_glob.display()
    ));
    assert!(
        check.contains("0.99") || check.contains("1.0"),
        "unit vectors: {check}"
    );

    let teacher = job_dir.join("embeddings/users-teacher/part-00001.parquet");
    let out = duckdb(&format!(
        "select count(*), count(distinct step2), max(list_cosine_similarity(step1, rationale)) < 1.0 from '{}'",
        teacher.display()
    ));
    assert_eq!(out, "[(5, 1, True)]");
    assert!(!Path::new(&job_dir.join("embeddings/users-teacher/part-00000.parquet")).exists());
}
