//! `slim report JOB --store ROOT`: the train runs of a job aggregated over seeds, printed, and
//! written as metrics.parquet (read back by pyarrow), report.md and SVG plots.

mod common;

use common::*;
use slim_shared::schema::{self, RunMetricsRow};

fn run_row(model: &str, seed: u64, split: &str, bucket: &str, ndcg: f64) -> RunMetricsRow {
    RunMetricsRow {
        model: model.into(),
        backbone: Some(model.trim_end_matches('+').into()),
        variant: if model.ends_with('+') { "plus" } else { "id" }.into(),
        seed,
        split: split.into(),
        bucket: bucket.into(),
        users: 100,
        metrics: [ndcg, 0.4, 0.6, 1.0, 0.1],
        best_epoch: 4,
        epochs: 6,
        seconds_per_epoch: 0.5,
        seconds: 4.0,
    }
}

#[test]
fn report_aggregates_run_files_prints_the_table_and_writes_its_outputs() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().to_str().unwrap();
    let err = slim(&["report", "g", "--store", root]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("no train runs to report"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );

    let runs = out.path().join("g/train/runs");
    std::fs::create_dir_all(&runs).unwrap();
    let mut shard = 0;
    for (model, ndcg) in [("sasrec", 0.30), ("sasrec+", 0.35)] {
        for seed in [1, 2] {
            let delta = if seed == 1 { -0.01 } else { 0.01 };
            let rows: Vec<RunMetricsRow> = [("test", "all"), ("test", "0-4"), ("valid", "all")]
                .iter()
                .map(|(split, bucket)| run_row(model, seed, split, bucket, ndcg + delta))
                .collect();
            std::fs::write(
                runs.join(format!("part-{shard:05}.parquet")),
                schema::write_run_metrics(&rows).unwrap(),
            )
            .unwrap();
            shard += 1;
        }
    }

    let stdout = slim_ok(&["report", "g", "--store", root]);
    assert!(
        stdout.contains(
            "| SASRec | 2 | 30.00 ± 1.41 | 40.00 ± 0.00 | 60.00 ± 0.00 | 22.73 / 37.77 / 51.53 |"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("| SASRec+ | 2 | 35.00 ± 1.41 |"),
        "{stdout}"
    );
    let train = out.path().join("g/train");
    assert_eq!(
        std::fs::read_to_string(train.join("report.md")).unwrap(),
        stdout
    );
    for svg in ["ndcg10.svg", "ndcg10_by_bucket.svg"] {
        let text = std::fs::read_to_string(train.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("SASRec+"),
            "{svg}"
        );
    }
    let metrics = pyarrow_describe(
        &train.join("metrics.parquet"),
        "t.to_pydict()['ndcg10_mean']",
    );
    assert_eq!(metrics["rows"], 6, "2 models x 3 groups: {metrics}");
    assert_eq!(metrics["types"]["ndcg10_std"], "double");
    let means: Vec<f64> = serde_json::from_value(metrics["extra"].clone()).unwrap();
    assert!((means[0] - 0.30).abs() < 1e-9, "{means:?}");
}

#[test]
fn report_puts_slim_models_in_tables_one_and_two_with_the_cold_start_group() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().to_str().unwrap();
    let runs = out.path().join("s/train/runs");
    std::fs::create_dir_all(&runs).unwrap();
    let runs_of = [
        ("slim-sasrec", Some("sasrec"), "slim", 0.31),
        ("slim_agnostic", None, "slim_agnostic", 0.22),
        ("slim_step1", None, "step1", 0.14),
    ];
    for (shard, (model, backbone, variant, ndcg)) in runs_of.into_iter().enumerate() {
        let rows: Vec<RunMetricsRow> = ["all", "0-4", "cold-start"]
            .iter()
            .map(|bucket| RunMetricsRow {
                model: model.into(),
                backbone: backbone.map(String::from),
                variant: variant.into(),
                users: if *bucket == "cold-start" { 7 } else { 100 },
                ..run_row(model, 1, "test", bucket, ndcg)
            })
            .collect();
        std::fs::write(
            runs.join(format!("part-{shard:05}.parquet")),
            schema::write_run_metrics(&rows).unwrap(),
        )
        .unwrap();
    }
    let stdout = slim_ok(&["report", "s", "--store", root]);
    let table2 = stdout
        .find("laid out like the paper's Table 2")
        .unwrap_or_else(|| panic!("no Table 2 in\n{stdout}"));
    assert!(
        stdout[..table2].contains("| SLIM (SASRec) | 1 | 31.00 ± 0.00 |"),
        "{stdout}"
    );
    assert!(
        stdout[table2..].contains("| SLIM (ID-agnostic) | 1 | 22.00 ± 0.00 |")
            && stdout[table2..].contains("| SLIM-Step1 | 1 | 14.00 ± 0.00 |"),
        "{stdout}"
    );
    assert!(stdout.contains("7 users. ID-based models"), "{stdout}");
    let metrics = pyarrow_describe(
        &out.path().join("s/train/metrics.parquet"),
        "t.to_pydict()['bucket']",
    );
    assert_eq!(metrics["rows"], 9, "3 models x 3 groups: {metrics}");
    let buckets: Vec<String> = serde_json::from_value(metrics["extra"].clone()).unwrap();
    assert_eq!(buckets[2], "cold-start");
}
