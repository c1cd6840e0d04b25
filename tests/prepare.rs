//! `slim prepare` end to end on the real bundled data, read back with pyarrow.

mod common;

use common::*;
use serde_json::Value;

fn summary(dir: &std::path::Path, job: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(job).join("data/summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn prepares_the_video_games_sample() {
    let out = tempfile::tempdir().unwrap();
    let stdout = slim_ok(&["prepare", "jobs/demo.toml", "--quiet", "--output", out.path().to_str().unwrap()]);
    assert!(stdout.contains("50546 users"), "{stdout}");

    let s = summary(out.path(), "demo");
    // The sample is already 5-core: nothing is filtered, every user has >= 5 interactions.
    assert_eq!(s["users"], 50546);
    assert_eq!(s["items"], 16859);
    assert_eq!(s["kcore_users_removed"], 0);
    assert_eq!(s["ingest"]["skipped_lines"], 0);
    assert_eq!(s["items_without_meta"], 0);
    assert_eq!(s["sequence_length"]["min"], 5);
    assert_eq!(s["sequence_length"]["max"], 50);
    assert_eq!(s["teacher_sample"], 64);
    assert_eq!(s["shards"], 51);

    let users = pyarrow_describe(
        &out.path().join("demo/data/users.parquet"),
        "{'sample': sum(t.column('in_teacher_sample').to_pylist()), 'max_shard': max(t.column('shard').to_pylist()), 'hist0': t.column('history')[0].as_py(), 'valid0': t.column('valid_item')[0].as_py(), 'test0': t.column('test_item')[0].as_py()}",
    );
    assert_eq!(users["rows"], 50546);
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
    assert_eq!(users["extra"]["sample"], 64);
    assert_eq!(users["extra"]["max_shard"], 50);
    // User 0 of the file: history 0..=13 then target 14, so valid = 13, test = 14 and the
    // training history is items 0..=12 in order (item indices follow first appearance).
    assert_eq!(users["extra"]["hist0"], serde_json::json!((0..13).collect::<Vec<u32>>()));
    assert_eq!(users["extra"]["valid0"], 13);
    assert_eq!(users["extra"]["test0"], 14);

    let items = pyarrow_describe(
        &out.path().join("demo/data/items.parquet"),
        "{'title0': t.column('title')[0].as_py(), 'meta': sum(t.column('has_meta').to_pylist()), 'amp': sum('&amp;' in (x or '') for x in t.column('title').to_pylist())}",
    );
    assert_eq!(items["rows"], 16859);
    assert_eq!(items["extra"]["title0"], "Fire Emblem: The Sacred Stones");
    assert_eq!(items["extra"]["meta"], 16859);
    assert_eq!(items["extra"]["amp"], 0, "HTML entities are decoded");

    let marker: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("demo/data/_SUCCESS")).unwrap()).unwrap();
    let parts = marker["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["key"], "data/users.parquet");
    assert_eq!(parts[0]["rows"], 50546);
    assert_eq!(parts[0]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn prepares_gift_cards_from_raw_mcauley_files() {
    let out = tempfile::tempdir().unwrap();
    slim_ok(&["prepare", "jobs/gift_cards.toml", "--quiet", "--output", out.path().to_str().unwrap()]);
    let s = summary(out.path(), "gift-cards");
    assert_eq!(s["ingest"]["interaction_lines"], 2972);
    // 7 repeated (user, item) pairs in the raw file.
    assert_eq!(s["duplicates_removed"], 7);
    let users = s["users"].as_u64().unwrap();
    let items = s["items"].as_u64().unwrap();
    assert!(users > 300 && users <= 458, "{users} users");
    assert!(items > 50 && items <= 148, "{items} items");
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
        slim_ok(&["prepare", "jobs/gift_cards.toml", "--quiet", "--output", dir.path().to_str().unwrap()]);
    }
    for file in ["users.parquet", "items.parquet"] {
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join("gift-cards/data").join(file)).unwrap();
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
    assert!(text.contains("data.reveiws: unknown key; did you mean `reviews`?"), "{text}");
    assert!(text.contains("prepare.k_core: must be at least 1"), "{text}");
    assert!(text.contains("3 problems"), "{text}");

    for job in ["jobs/demo.toml", "jobs/gift_cards.toml"] {
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
    assert!(!dir.path().join("out/bad/data/users.parquet").exists(), "nothing is written on failure");

    std::fs::write(&path, manifest("skip")).unwrap();
    let stdout = slim_ok(&["prepare", path.to_str().unwrap(), "--quiet"]);
    assert!(stdout.contains("skipped 1 malformed lines"), "{stdout}");
    let s = summary(&dir.path().join("out"), "bad");
    assert_eq!(s["ingest"]["skipped_lines"], 1);
    assert_eq!(s["users"], 4);
    assert_eq!(s["items_without_meta"], 5);
}
