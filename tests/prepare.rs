//! `slim prepare` end to end on the real bundled data, read back with pyarrow.

mod common;

use common::*;
use serde_json::Value;
use slim_shared::store::Location;

fn summary(dir: &std::path::Path, job: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(job).join("data/summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn prepares_the_video_games_sample() {
    let out = tempfile::tempdir().unwrap();
    // The games job prepares the whole sample (the demo takes a slice of it).
    let stdout = slim_ok(&[
        "prepare",
        "jobs/games.toml",
        "--quiet",
        "--output",
        out.path().to_str().unwrap(),
    ]);
    assert!(stdout.contains("50335 users"), "{stdout}");

    let s = summary(out.path(), "games");
    // The sample is 5-core over full histories, but its rows keep only the last 50 items, so
    // the k-core filter removes a few more (counts checked against the pandas peer in
    // benches/ingest_pandas.py).
    assert_eq!(s["users"], 50335);
    assert_eq!(s["items"], 16428);
    assert_eq!(s["interactions"], 437772);
    assert_eq!(s["kcore_users_removed"], 211);
    assert_eq!(s["ingest"]["skipped_lines"], 0);
    assert_eq!(s["items_without_meta"], 0);
    assert_eq!(s["sequence_length"]["min"], 5);
    assert_eq!(s["sequence_length"]["max"], 50);
    assert_eq!(s["teacher_sample"], 6000);
    assert_eq!(s["shards"], 101);

    let users = pyarrow_describe(
        &out.path().join("games/data/users.parquet"),
        "{'sample': sum(t.column('in_teacher_sample').to_pylist()), 'max_shard': max(t.column('shard').to_pylist()), 'hist0': t.column('history')[0].as_py(), 'valid0': t.column('valid_item')[0].as_py(), 'test0': t.column('test_item')[0].as_py()}",
    );
    assert_eq!(users["rows"], 50335);
    assert_eq!(
        users["columns"],
        serde_json::json!([
            "user_id",
            "user_index",
            "history",
            "history_length",
            "valid_item",
            "test_item",
            "shard",
            "in_teacher_sample"
        ])
    );
    assert_eq!(users["types"]["history"], "list<item: uint32>");
    assert_eq!(users["compression"], "ZSTD");
    assert_eq!(users["extra"]["sample"], 6000);
    assert_eq!(users["extra"]["max_shard"], 100);
    // User 0 of the file: history 0..=13 then target 14, so valid = 13, test = 14 and the
    // training history is items 0..=12 in order (item indices follow first appearance).
    assert_eq!(
        users["extra"]["hist0"],
        serde_json::json!((0..13).collect::<Vec<u32>>())
    );
    assert_eq!(users["extra"]["valid0"], 13);
    assert_eq!(users["extra"]["test0"], 14);

    let items = pyarrow_describe(
        &out.path().join("games/data/items.parquet"),
        "{'title0': t.column('title')[0].as_py(), 'meta': sum(t.column('has_meta').to_pylist()), 'amp': sum('&amp;' in (x or '') for x in t.column('title').to_pylist())}",
    );
    assert_eq!(items["rows"], 16428);
    assert_eq!(items["extra"]["title0"], "Fire Emblem: The Sacred Stones");
    assert_eq!(items["extra"]["meta"], 16428);
    assert_eq!(items["extra"]["amp"], 0, "HTML entities are decoded");

    let marker: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("games/data/_SUCCESS")).unwrap(),
    )
    .unwrap();
    let parts = marker["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["key"], "data/users.parquet");
    assert_eq!(parts[0]["rows"], 50335);
    assert_eq!(parts[0]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn prepares_gift_cards_from_raw_mcauley_files() {
    let out = tempfile::tempdir().unwrap();
    slim_ok(&[
        "prepare",
        "jobs/gift_cards.toml",
        "--quiet",
        "--output",
        out.path().to_str().unwrap(),
    ]);
    let s = summary(out.path(), "gift-cards");
    assert_eq!(s["ingest"]["interaction_lines"], 2972);
    // 7 repeated (user, item) pairs in the raw file.
    assert_eq!(s["duplicates_removed"], 7);
    // Same counts as pandas: drop_duplicates(reviewerID, asin) then an iterated 5-core.
    let users = s["users"].as_u64().unwrap();
    let items = s["items"].as_u64().unwrap();
    assert_eq!((users, items), (453, 147));
    assert_eq!(s["interactions"], 2941);
    assert_eq!(s["items_without_meta"], 0);

    let users_pq = pyarrow_describe(&out.path().join("gift-cards/data/users.parquet"), "None");
    assert_eq!(users_pq["rows"].as_u64().unwrap(), users);
    let items_pq = pyarrow_describe(
        &out.path().join("gift-cards/data/items.parquet"),
        "{'brands': sum(1 for b in t.column('brand').to_pylist() if b), 'cats': sum(1 for c in t.column('categories').to_pylist() if c)}",
    );
    assert_eq!(items_pq["rows"].as_u64().unwrap(), items);
    assert!(items_pq["extra"]["brands"].as_u64().unwrap() > 0);
    assert!(items_pq["extra"]["cats"].as_u64().unwrap() > 0);
    assert_eq!(items_pq["types"]["categories"], "list<item: string>");
}

#[test]
fn prepare_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for dir in [&a, &b] {
        slim_ok(&[
            "prepare",
            "jobs/gift_cards.toml",
            "--quiet",
            "--output",
            dir.path().to_str().unwrap(),
        ]);
    }
    for file in ["users.parquet", "items.parquet"] {
        let read = |d: &tempfile::TempDir| {
            std::fs::read(d.path().join("gift-cards/data").join(file)).unwrap()
        };
        assert_eq!(read(&a), read(&b), "{file} differs between two runs");
    }
}

#[test]
fn validate_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[job]\nid = \"x\"\noutput = \"out\"\n[data]\nformat = \"recbole\"\nreviews = \"nope.inter\"\nreveiws = 1\n[prepare]\nk_core = 0\n",
    )
    .unwrap();
    let out = slim(&["validate", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("data.reviews: file not found"), "{text}");
    assert!(
        text.contains("data.reveiws: unknown key; did you mean `reviews`?"),
        "{text}"
    );
    assert!(
        text.contains("prepare.k_core: must be at least 1"),
        "{text}"
    );
    assert!(text.contains("3 problems"), "{text}");

    for job in [
        "jobs/demo.toml",
        "jobs/games.toml",
        "jobs/gift_cards.toml",
        "jobs/template.toml",
    ] {
        let out = slim_ok(&["validate", job]);
        assert!(out.contains("ok"), "{out}");
    }
}

#[test]
fn a_malformed_line_names_file_and_line_and_skip_mode_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let inter = dir.path().join("x.inter");
    let mut text = String::from("user_id:token\titem_id:token\ttimestamp:float\n");
    for u in 0..4 {
        for i in 0..5 {
            text.push_str(&format!("u{u}\ti{i}\t{}\n", i * 10));
        }
    }
    text.push_str("u9\ti1\tnot-a-time\n");
    std::fs::write(&inter, &text).unwrap();
    let manifest = |on_error: &str| {
        format!(
            "[job]\nid = \"bad\"\noutput = \"out\"\n[data]\nformat = \"recbole\"\nreviews = \"x.inter\"\non_error = \"{on_error}\"\n[prepare]\nk_core = 2\n"
        )
    };
    let path = dir.path().join("job.toml");
    std::fs::write(&path, manifest("fail")).unwrap();
    let out = slim(&["prepare", path.to_str().unwrap(), "--quiet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.inter: line 22"), "{err}");
    assert!(
        !dir.path().join("out/bad/data/users.parquet").exists(),
        "nothing is written on failure"
    );

    std::fs::write(&path, manifest("skip")).unwrap();
    let stdout = slim_ok(&["prepare", path.to_str().unwrap(), "--quiet"]);
    assert!(stdout.contains("skipped 1 malformed lines"), "{stdout}");
    let s = summary(&dir.path().join("out"), "bad");
    assert_eq!(s["ingest"]["skipped_lines"], 1);
    assert_eq!(s["users"], 4);
    assert_eq!(s["items_without_meta"], 5);
}

/// Reads from S3 and writes to S3 (Garage on loopback), then reads the output with pyarrow's own
/// S3 client straight from the bucket.
#[test]
fn prepares_from_s3_inputs_into_s3_outputs() {
    let (root, settings) = slim_shared::testkit::garage();
    let prefix = slim_shared::testkit::unique_prefix("prepare-s3");
    let Location::S3 { bucket, .. } = &root else {
        unreachable!()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime
        .block_on(slim_shared::store::open(&root, &settings))
        .unwrap();
    let gift = data_dir().join("Gift_Cards");
    for name in ["Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz"] {
        runtime
            .block_on(store.put_file(&format!("{prefix}/raw/{name}"), &gift.join(name)))
            .unwrap();
    }
    let endpoint = settings.endpoint.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"[job]
id = "gift-s3"
output = "s3://{bucket}/{prefix}/out"
[data]
format = "mcauley2018"
reviews = "s3://{bucket}/{prefix}/raw/Gift_Cards_5.json.gz"
meta = "s3://{bucket}/{prefix}/raw/meta_Gift_Cards.json.gz"
[storage]
endpoint = "{endpoint}"
region = "{region}"
"#,
            region = settings.region.clone().unwrap()
        ),
    )
    .unwrap();
    let stdout = slim_ok(&["prepare", job.to_str().unwrap(), "--quiet"]);
    assert!(stdout.contains("453 users"), "{stdout}");

    let keys: Vec<String> = runtime
        .block_on(store.list(&format!("{prefix}/out/gift-s3/data/")))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    for name in ["_SUCCESS", "items.parquet", "summary.json", "users.parquet"] {
        assert!(
            keys.iter().any(|k| k.ends_with(&format!("/data/{name}"))),
            "{name} missing in {keys:?}"
        );
    }

    let script = r#"
import os, sys, pyarrow.parquet as pq
from pyarrow import fs
s3 = fs.S3FileSystem(endpoint_override=os.environ["SLIM_S3_ENDPOINT"], region=os.environ.get("SLIM_S3_REGION", "garage"),
                     access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                     scheme="http", force_virtual_addressing=False)
t = pq.read_table(sys.argv[1], filesystem=s3)
print(t.num_rows, ",".join(t.column_names))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &format!("{bucket}/{prefix}/out/gift-s3/data/users.parquet"),
        ])
        .env("SLIM_S3_ENDPOINT", &endpoint)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("453 user_id,user_index,history"), "{text}");
}
