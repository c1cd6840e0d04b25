//! `slim run`: the built-in demo in process; a rerun skips what its markers say is done.

mod common;

use common::*;

#[test]
fn run_executes_available_stages_and_a_rerun_skips_them() {
    let out = tempfile::tempdir().unwrap();
    let output = out.path().to_str().unwrap();
    // Only prepare: the model stages have their own tests.
    let run = ["run", "--quiet", "--output", output, "--stages", "prepare"];
    let first = slim_ok(&run);
    // The demo's slice: the first 300 users of the sample.
    assert!(
        first.contains("prepare: done (interactions 3928,") && first.contains("users 300)"),
        "{first}"
    );

    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("demo/job.json")).unwrap()).unwrap();
    let reviews = job["data"]["reviews"].as_str().unwrap();
    assert!(
        reviews.starts_with('/') && reviews.ends_with("Games-6k.test.inter"),
        "{reviews}"
    );
    assert_eq!(job["job"]["output"], output);

    let marker = out.path().join("demo/_markers/prepare/00000.json");
    let before = std::fs::read(&marker).unwrap();
    let users = std::fs::metadata(out.path().join("demo/data/users.parquet"))
        .unwrap()
        .modified()
        .unwrap();

    let second = slim_ok(&run);
    assert!(second.contains("prepare: already done"), "{second}");
    assert_eq!(
        std::fs::read(&marker).unwrap(),
        before,
        "the marker is not rewritten"
    );
    let users_after = std::fs::metadata(out.path().join("demo/data/users.parquet"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(users, users_after, "done work is not redone");
}

#[test]
fn run_reports_a_failing_task_and_exits_non_zero_keeping_done_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir().join("Gift_Cards");
    let manifest = dir.path().join("job.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[job]
id = "probe"
output = "out"
stages = ["probe"]
[data]
format = "mcauley2018"
reviews = "{}"
[prepare]
users_per_shard = 100
[probe]
fail_shards = [2]
"#,
            data.join("Gift_Cards_5.json.gz").display()
        ),
    )
    .unwrap();
    let out = slim(&["run", "--quiet", manifest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("failed: probe shard 2") && stderr.contains("deliberate"),
        "{stderr}"
    );
    let job = dir.path().join("out/probe");
    assert!(job.join("data/_SUCCESS").exists());
    assert!(
        job.join("probe/part-00000.parquet").exists(),
        "other shards are done"
    );
    assert!(
        !job.join("probe/_SUCCESS").exists(),
        "the stage is not complete"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("_state.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "failed");
}
