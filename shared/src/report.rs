//! The train stage's report: every run's metrics (`train/runs/part-*.parquet`) aggregated
//! over seeds into `train/metrics.parquet`, `train/report.md` (tables laid out like the
//! paper's Table 1 for the ID-based models and Table 2 for the ID-agnostic ones, a sparsity
//! table by history-length bucket, cold-start items, popularity bias) and two SVG plots
//! (`train/ndcg10.svg`, `train/ndcg10_by_bucket.svg`).
//!
//! Pure aggregation and rendering, no model code: the coordinator writes the report when the
//! train stage closes, `slim report` writes it again on demand. The output depends only on
//! the run files, so rewriting it is harmless.

use crate::eval::{COLD_START, MeanStd, mean_std};
use crate::manifest::Manifest;
use crate::markers::job_key;
use crate::plan;
use crate::schema::{self, METRIC_COLUMNS, RunMetricsRow, TRAIN_METRICS};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Where the runs are, relative to the job.
pub const RUNS_FOLDER: &str = "train/runs";
pub const METRICS_KEY: &str = "train/metrics.parquet";
pub const REPORT_KEY: &str = "train/report.md";
pub const NDCG_PLOT_KEY: &str = "train/ndcg10.svg";
pub const BUCKET_PLOT_KEY: &str = "train/ndcg10_by_bucket.svg";

/// The paper's Table 1 on Amazon Games (NDCG@10, HR@10, HR@20 in %), by display name.
pub const PAPER_GAMES: &[(&str, [f64; 3])] = &[
    ("SASRec", [22.73, 37.77, 51.53]),
    ("SASRec+", [27.46, 44.88, 58.90]),
    ("SLIM-minus (SASRec)", [31.58, 50.83, 63.45]),
    ("SLIM (SASRec)", [31.43, 51.11, 64.10]),
    ("GRU4Rec", [17.61, 30.87, 42.39]),
    ("GRU4Rec+", [27.33, 44.06, 56.53]),
    ("SLIM (GRU4Rec)", [28.37, 45.68, 58.09]),
    ("SRGNN", [16.45, 29.29, 40.99]),
    ("SRGNN+", [21.54, 36.77, 49.11]),
    ("SLIM (SRGNN)", [23.77, 39.81, 52.34]),
];

/// The paper's Table 2 on Amazon Games (ID-agnostic; NDCG@10, HR@10, HR@20 in %).
pub const PAPER_GAMES_AGNOSTIC: &[(&str, [f64; 3])] = &[
    ("SLIM (ID-agnostic)", [21.99, 38.33, 53.59]),
    ("SLIM-Step1", [13.78, 26.08, 41.71]),
    ("SLIM-Step2", [16.78, 30.09, 45.75]),
    ("SLIM-Step3", [20.20, 35.57, 50.04]),
];

/// A model as the paper names it: `sasrec+` is `SASRec+`, `slim-sasrec` is `SLIM (SASRec)`,
/// `slim_minus-gru4rec` is `SLIM-minus (GRU4Rec)`, `slim_agnostic` is `SLIM (ID-agnostic)`,
/// `slim_step1` is `SLIM-Step1`.
pub fn display_name(model: &str) -> String {
    fn backbone(name: &str) -> String {
        match name {
            "sasrec" => "SASRec".to_string(),
            "gru4rec" => "GRU4Rec".to_string(),
            "srgnn" => "SRGNN".to_string(),
            "popularity" => "Popularity".to_string(),
            other => other.to_string(),
        }
    }
    if let Some(b) = model.strip_prefix("slim-") {
        return format!("SLIM ({})", backbone(b));
    }
    if let Some(b) = model.strip_prefix("slim_minus-") {
        return format!("SLIM-minus ({})", backbone(b));
    }
    if model == "slim_agnostic" {
        return "SLIM (ID-agnostic)".into();
    }
    if let Some(step) = model.strip_prefix("slim_step") {
        return format!("SLIM-Step{step}");
    }
    let (base, plus) = match model.strip_suffix('+') {
        Some(base) => (base, "+"),
        None => (model, ""),
    };
    format!("{}{plus}", backbone(base))
}

/// Whether a variant is one of the ID-agnostic ones (the report's Table 2).
fn is_id_agnostic(variant: &str) -> bool {
    plan::is_id_agnostic(variant)
}

/// One model's metrics over its runs, for one split and user group.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub model: String,
    pub backbone: Option<String>,
    pub variant: String,
    pub split: String,
    pub bucket: String,
    /// Users in the group (the same for every run: the split is fixed).
    pub users: u64,
    /// Runs aggregated (seeds).
    pub runs: usize,
    /// In [`METRIC_COLUMNS`] order.
    pub metrics: [MeanStd; 5],
    pub best_epoch: f64,
    pub seconds_per_epoch: f64,
}

impl Aggregate {
    pub fn metric(&self, name: &str) -> MeanStd {
        let m = METRIC_COLUMNS
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        self.metrics[m]
    }
}

/// Groups rows by (model, backbone, variant, split, bucket) in order of first appearance and
/// takes each metric's mean and sample standard deviation over the runs.
pub fn aggregate(rows: &[RunMetricsRow]) -> Vec<Aggregate> {
    type Key = (String, Option<String>, String, String, String);
    let mut order: Vec<Key> = Vec::new();
    let mut groups: BTreeMap<Key, Vec<&RunMetricsRow>> = BTreeMap::new();
    for row in rows {
        let key = (
            row.model.clone(),
            row.backbone.clone(),
            row.variant.clone(),
            row.split.clone(),
            row.bucket.clone(),
        );
        let group = groups.entry(key.clone()).or_default();
        if group.is_empty() {
            order.push(key);
        }
        group.push(row);
    }
    order
        .into_iter()
        .map(|key| {
            let group = &groups[&key];
            let mean = |f: fn(&RunMetricsRow) -> f64| {
                mean_std(&group.iter().map(|r| f(r)).collect::<Vec<_>>()).mean
            };
            let (model, backbone, variant, split, bucket) = key;
            Aggregate {
                model,
                backbone,
                variant,
                split,
                bucket,
                users: group.iter().map(|r| r.users).max().unwrap_or(0),
                runs: group.len(),
                metrics: std::array::from_fn(|m| {
                    mean_std(&group.iter().map(|r| r.metrics[m]).collect::<Vec<_>>())
                }),
                best_epoch: mean(|r| f64::from(r.best_epoch)),
                seconds_per_epoch: mean(|r| r.seconds_per_epoch),
            }
        })
        .collect()
}

/// `train/metrics.parquet` in memory.
pub fn write_metrics(aggregates: &[Aggregate]) -> Result<Vec<u8>> {
    let text = |f: fn(&Aggregate) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(aggregates.iter().map(f)))
    };
    let floats = |f: &dyn Fn(&Aggregate) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(aggregates.iter().map(f)))
    };
    let mut columns: Vec<ArrayRef> = vec![
        text(|a| &a.model),
        Arc::new(StringArray::from(
            aggregates
                .iter()
                .map(|a| a.backbone.as_deref())
                .collect::<Vec<_>>(),
        )),
        text(|a| &a.variant),
        text(|a| &a.split),
        text(|a| &a.bucket),
        Arc::new(UInt64Array::from_iter_values(
            aggregates.iter().map(|a| a.users),
        )),
        Arc::new(UInt32Array::from_iter_values(
            aggregates.iter().map(|a| a.runs as u32),
        )),
    ];
    for m in 0..METRIC_COLUMNS.len() {
        columns.push(floats(&|a| a.metrics[m].mean));
        columns.push(floats(&|a| a.metrics[m].std));
    }
    columns.push(floats(&|a| a.best_epoch));
    columns.push(floats(&|a| a.seconds_per_epoch));
    let batch = RecordBatch::try_new(TRAIN_METRICS.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = schema::writer(&mut bytes, &TRAIN_METRICS)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

/// What the report says about the job beyond its runs (from its manifest, when known).
#[derive(Debug, Clone, Default)]
pub struct ReportContext {
    pub job_id: String,
    /// The input file, to say whether the paper's Games numbers compare like with like.
    pub dataset: Option<String>,
    pub eval_negatives: Option<u32>,
    /// Runs the manifest plans, to flag a partial report.
    pub planned_runs: Option<usize>,
}

impl ReportContext {
    pub fn from_manifest(job_id: &str, manifest: Option<&Manifest>) -> Self {
        Self {
            job_id: job_id.to_string(),
            dataset: manifest.map(|m| m.data.reviews.clone()),
            eval_negatives: manifest.map(|m| m.train.eval_negatives),
            planned_runs: manifest.map(|m| plan::train_runs(&m.train).len()),
        }
    }

    fn is_games(&self) -> bool {
        self.dataset
            .as_deref()
            .is_some_and(|d| d.to_lowercase().contains("game"))
    }
}

/// `{mean} ± {std}` in percent.
fn pct(m: MeanStd) -> String {
    format!("{:.2} ± {:.2}", 100.0 * m.mean, 100.0 * m.std)
}

fn plain(m: MeanStd) -> String {
    format!("{:.4} ± {:.4}", m.mean, m.std)
}

/// Test rows for the whole population, one per model, in run order.
fn overall<'a>(aggregates: &'a [Aggregate], split: &str) -> Vec<&'a Aggregate> {
    aggregates
        .iter()
        .filter(|a| a.split == split && a.bucket == "all")
        .collect()
}

/// `train/report.md`.
pub fn render_markdown(ctx: &ReportContext, aggregates: &[Aggregate]) -> String {
    let mut out = String::new();
    let test = overall(aggregates, "test");
    let runs: usize = test.iter().map(|a| a.runs).sum();
    let users = test.first().map_or(0, |a| a.users);
    let _ = writeln!(out, "# Train report: job `{}`\n", ctx.job_id);
    let negatives = ctx
        .eval_negatives
        .map_or("sampled".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "Leave-one-out on {users} users: each user's last item is ranked against {negatives} \
         random items the user never interacted with (the same candidates for every model and \
         seed). Means ± sample standard deviations over seeds, in % unless noted; {runs} runs \
         in all."
    );
    if let Some(planned) = ctx.planned_runs
        && planned > runs
    {
        let _ = writeln!(
            out,
            "\n**Partial report:** {runs} of {planned} planned runs are done."
        );
    }

    let paper_note = if ctx.is_games() {
        "paper, Games"
    } else {
        "paper, Games (other data: orientation only)"
    };
    let (agnostic, id_based): (Vec<&Aggregate>, Vec<&Aggregate>) = test
        .iter()
        .copied()
        .partition(|a| is_id_agnostic(&a.variant));
    let accuracy_table = |out: &mut String, rows: &[&Aggregate], paper: &[(&str, [f64; 3])]| {
        let _ = writeln!(
            out,
            "| model | seeds | NDCG@10 | HR@10 | HR@20 | {paper_note}: NDCG@10 / HR@10 / HR@20 |"
        );
        out.push_str("|---|---|---|---|---|---|\n");
        for a in rows {
            let name = display_name(&a.model);
            let paper = paper
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("".to_string(), |(_, v)| {
                    format!("{:.2} / {:.2} / {:.2}", v[0], v[1], v[2])
                });
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {paper} |",
                a.runs,
                pct(a.metric("ndcg10")),
                pct(a.metric("hr10")),
                pct(a.metric("hr20")),
            );
        }
    };
    out.push_str("\n## Accuracy (test; laid out like the paper's Table 1)\n\n");
    accuracy_table(&mut out, &id_based, PAPER_GAMES);
    if !agnostic.is_empty() {
        out.push_str(
            "\n## ID-agnostic models (test; laid out like the paper's Table 2)\n\n\
             No item ID embeddings: items are their text vectors, users the transformer g_t over \
             the rationale vector and the history's item text vectors. Step1/2/3 feed only that \
             step of the rationale.\n\n",
        );
        accuracy_table(&mut out, &agnostic, PAPER_GAMES_AGNOSTIC);
    }
    out.push_str("\n![Test NDCG@10 by model](ndcg10.svg)\n");

    out.push_str("\n## Sparsity (test NDCG@10 by training-history length)\n\n");
    let buckets = bucket_labels(aggregates);
    let header: Vec<String> = buckets
        .iter()
        .map(|b| {
            let users = test_bucket(aggregates, None, b).map_or(0, |a| a.users);
            format!("{b} ({users} users)")
        })
        .collect();
    let _ = writeln!(out, "| model | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(buckets.len()));
    for a in &test {
        let cells: Vec<String> = buckets
            .iter()
            .map(|b| {
                test_bucket(aggregates, Some(&a.model), b)
                    .filter(|x| x.users > 0)
                    .map_or("".into(), |x| pct(x.metric("ndcg10")))
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} |",
            display_name(&a.model),
            cells.join(" | ")
        );
    }
    out.push_str("\n![Test NDCG@10 by history length](ndcg10_by_bucket.svg)\n");

    out.push_str(
        "\n## Cold-start items (test users whose target item is in no training history)\n\n",
    );
    let cold_users = test_bucket(aggregates, None, COLD_START).map_or(0, |a| a.users);
    if cold_users == 0 {
        out.push_str(
            "No test target is cold: every one occurs in some training history (k-core data \
             rarely has any).\n",
        );
    } else {
        let _ = writeln!(
            out,
            "{cold_users} users. ID-based models never trained these items' ID embeddings; the \
             ID-agnostic ones score them from their text.\n"
        );
        out.push_str("| model | NDCG@10 | HR@10 | HR@20 |\n|---|---|---|---|\n");
        for a in &test {
            if let Some(c) = test_bucket(aggregates, Some(&a.model), COLD_START) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    display_name(&a.model),
                    pct(c.metric("ndcg10")),
                    pct(c.metric("hr10")),
                    pct(c.metric("hr20"))
                );
            }
        }
    }

    out.push_str(
        "\n## Popularity bias (test; higher means hits on less popular items)\n\n\
         EFD@10 in bits, EPC@10 in [0, 1] (see `shared/src/eval.rs` for the formulas).\n\n",
    );
    out.push_str("| model | EFD@10 | EPC@10 |\n|---|---|---|\n");
    for a in &test {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            display_name(&a.model),
            plain(a.metric("efd10")),
            plain(a.metric("epc10"))
        );
    }

    out.push_str("\n## Training\n\n");
    out.push_str(
        "| model | valid NDCG@10 | best epoch (mean) | seconds per epoch |\n|---|---|---|---|\n",
    );
    for a in &test {
        let valid = aggregates
            .iter()
            .find(|v| v.split == "valid" && v.bucket == "all" && v.model == a.model)
            .map_or("".into(), |v| pct(v.metric("ndcg10")));
        let _ = writeln!(
            out,
            "| {} | {valid} | {:.1} | {:.2} |",
            display_name(&a.model),
            a.best_epoch,
            a.seconds_per_epoch
        );
    }
    out
}

/// The history-length bucket labels in the order the runs wrote them.
fn bucket_labels(aggregates: &[Aggregate]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for a in aggregates
        .iter()
        .filter(|a| a.bucket != "all" && a.bucket != COLD_START)
    {
        if !labels.contains(&a.bucket) {
            labels.push(a.bucket.clone());
        }
    }
    labels
}

/// The test aggregate of `model` (any model when `None`) in `bucket`.
fn test_bucket<'a>(
    aggregates: &'a [Aggregate],
    model: Option<&str>,
    bucket: &str,
) -> Option<&'a Aggregate> {
    aggregates
        .iter()
        .find(|a| a.split == "test" && a.bucket == bucket && model.is_none_or(|m| a.model == m))
}

/// Hand-written SVG: two small charts need no plotting library.
pub mod svg {
    use std::fmt::Write as _;

    pub const COLORS: [&str; 8] = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
    ];
    pub const WIDTH: f64 = 720.0;
    pub const HEIGHT: f64 = 400.0;
    pub const LEFT: f64 = 64.0;
    pub const RIGHT: f64 = 160.0;
    pub const TOP: f64 = 40.0;
    pub const BOTTOM: f64 = 64.0;

    pub fn escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    /// A tick step giving about five ticks up to `max`.
    pub fn tick_step(max: f64) -> f64 {
        let raw = (max / 5.0).max(1e-9);
        let magnitude = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * magnitude)
    }

    /// The frame: title, y axis with ticks and grid up to the returned top value.
    pub fn open(out: &mut String, title: &str, y_label: &str, max: f64) -> f64 {
        let step = tick_step(max);
        let top = (max / step).ceil().max(1.0) * step;
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>
"#,
            WIDTH / 2.0,
            escape(title),
            TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
            escape(y_label),
        );
        let mut tick = 0.0;
        while tick <= top + step / 2.0 {
            let y = y_of(tick, top);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                format_tick(tick, step)
            );
            tick += step;
        }
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM,
            WIDTH - RIGHT,
            HEIGHT - BOTTOM
        );
        top
    }

    fn format_tick(value: f64, step: f64) -> String {
        if step >= 1.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.1}")
        }
    }

    pub fn y_of(value: f64, top: f64) -> f64 {
        let plot = HEIGHT - TOP - BOTTOM;
        HEIGHT - BOTTOM - plot * (value / top).clamp(0.0, 1.0)
    }
}

/// Bar chart of test NDCG@10 (%) per model with ±1 std error bars.
pub fn ndcg_bar_chart(aggregates: &[Aggregate]) -> String {
    use svg::*;
    let test = overall(aggregates, "test");
    let max = test
        .iter()
        .map(|a| 100.0 * (a.metric("ndcg10").mean + a.metric("ndcg10").std))
        .fold(1.0, f64::max);
    let mut out = String::new();
    let top = open(&mut out, "Test NDCG@10 by model", "NDCG@10 (%)", max);
    let slot = (WIDTH - LEFT - RIGHT) / test.len().max(1) as f64;
    for (i, a) in test.iter().enumerate() {
        let m = a.metric("ndcg10");
        let (mean, std) = (100.0 * m.mean, 100.0 * m.std);
        let x = LEFT + slot * (i as f64 + 0.2);
        let width = slot * 0.6;
        let y = y_of(mean, top);
        let center = x + width / 2.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{:.1}" fill="{}"/>"#,
            HEIGHT - BOTTOM - y,
            COLORS[i % COLORS.len()]
        );
        if std > 0.0 {
            let (low, high) = (y_of(mean - std, top), y_of(mean + std, top));
            let _ = writeln!(
                out,
                r#"<line x1="{center:.1}" y1="{low:.1}" x2="{center:.1}" y2="{high:.1}" stroke="black"/><line x1="{:.1}" y1="{high:.1}" x2="{:.1}" y2="{high:.1}" stroke="black"/>"#,
                center - 5.0,
                center + 5.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{center:.1}" y="{:.1}" text-anchor="middle">{mean:.2}</text><text x="{center:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y_of(mean + std, top) - 6.0,
            HEIGHT - BOTTOM + 18.0,
            escape(&display_name(&a.model))
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Line chart of test NDCG@10 (%) by history-length bucket, one line per model.
pub fn bucket_line_chart(aggregates: &[Aggregate]) -> String {
    use svg::*;
    let buckets = bucket_labels(aggregates);
    let models: Vec<&str> = overall(aggregates, "test")
        .iter()
        .map(|a| a.model.as_str())
        .collect();
    let value = |model: &str, bucket: &str| {
        test_bucket(aggregates, Some(model), bucket)
            .filter(|a| a.users > 0)
            .map(|a| 100.0 * a.metric("ndcg10").mean)
    };
    let max = models
        .iter()
        .flat_map(|m| buckets.iter().filter_map(|b| value(m, b)))
        .fold(1.0, f64::max);
    let mut out = String::new();
    let top = open(
        &mut out,
        "Test NDCG@10 by training-history length",
        "NDCG@10 (%)",
        max,
    );
    let slot = (WIDTH - LEFT - RIGHT) / buckets.len().max(1) as f64;
    let x_of = |b: usize| LEFT + slot * (b as f64 + 0.5);
    for (b, label) in buckets.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x_of(b),
            HEIGHT - BOTTOM + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">training items per user</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - BOTTOM + 40.0
    );
    for (i, model) in models.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = buckets
            .iter()
            .enumerate()
            .filter_map(|(b, label)| value(model, label).map(|v| (x_of(b), y_of(v, top))))
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &points {
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
            );
        }
        let legend_y = TOP + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            WIDTH - RIGHT + 16.0,
            legend_y,
            WIDTH - RIGHT + 34.0,
            legend_y + 10.0,
            escape(&display_name(model))
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Reads every run file of a job, in key (shard) order.
pub async fn read_runs(store: &dyn Store, job_id: &str) -> Result<Vec<RunMetricsRow>> {
    let prefix = format!("{}/", job_key(job_id, RUNS_FOLDER));
    let objects = store
        .list(&prefix)
        .await
        .with_context(|| format!("listing {}", store.location(&prefix)))?;
    let mut rows = Vec::new();
    for object in objects.iter().filter(|o| o.key.ends_with(".parquet")) {
        let location = store.location(&object.key).to_string();
        let bytes = store
            .get(&object.key)
            .await
            .with_context(|| format!("reading {location}"))?;
        rows.extend(schema::read_run_metrics(bytes, &location)?);
    }
    Ok(rows)
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct WrittenReport {
    /// The markdown of `train/report.md`.
    pub markdown: String,
    /// Run rows read.
    pub rows: usize,
    /// Keys written, relative to the job.
    pub keys: Vec<&'static str>,
}

/// Aggregates the job's runs and writes `train/metrics.parquet`, `train/report.md` and the
/// plots. Fails when there is no run to report.
pub async fn write_report(store: &dyn Store, job_id: &str) -> Result<WrittenReport> {
    let rows = read_runs(store, job_id).await?;
    if rows.is_empty() {
        bail!(
            "{}/part-*.parquet: no train runs to report (the train stage writes them)",
            store.location(&job_key(job_id, RUNS_FOLDER))
        );
    }
    // A job copied without its manifest still gets its tables.
    let manifest = if store.exists(&job_key(job_id, "job.json")).await? {
        Some(plan::read_job_manifest(store, job_id).await?)
    } else {
        None
    };
    let aggregates = aggregate(&rows);
    let ctx = ReportContext::from_manifest(job_id, manifest.as_ref());
    let markdown = render_markdown(&ctx, &aggregates);
    let outputs: [(&'static str, Vec<u8>); 4] = [
        (METRICS_KEY, write_metrics(&aggregates)?),
        (NDCG_PLOT_KEY, ndcg_bar_chart(&aggregates).into_bytes()),
        (BUCKET_PLOT_KEY, bucket_line_chart(&aggregates).into_bytes()),
        // The report last: its presence means the rest is there.
        (REPORT_KEY, markdown.clone().into_bytes()),
    ];
    let mut keys = Vec::new();
    for (key, bytes) in outputs {
        let full = job_key(job_id, key);
        store
            .put(&full, bytes.into())
            .await
            .with_context(|| format!("writing {}", store.location(&full)))?;
        keys.push(key);
    }
    tracing::info!(
        job = job_id,
        rows = rows.len(),
        models = overall(&aggregates, "test").len(),
        "train report written"
    );
    Ok(WrittenReport {
        markdown,
        rows: rows.len(),
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, seed: u64, bucket: &str, ndcg: f64) -> RunMetricsRow {
        RunMetricsRow {
            model: model.into(),
            backbone: (model != "popularity").then(|| model.trim_end_matches('+').into()),
            variant: if model.ends_with('+') { "plus" } else { "id" }.into(),
            seed,
            split: "test".into(),
            bucket: bucket.into(),
            users: if bucket == "all" { 30 } else { 10 },
            metrics: [ndcg, ndcg * 2.0, ndcg * 3.0, 1.5, 0.25],
            best_epoch: seed as u32 + 1,
            epochs: 9,
            seconds_per_epoch: 2.0,
            seconds: 20.0,
        }
    }

    fn rows() -> Vec<RunMetricsRow> {
        let mut rows = Vec::new();
        for (model, base) in [("sasrec", 0.20), ("sasrec+", 0.25)] {
            for seed in 1..=3 {
                let n = base + 0.01 * seed as f64;
                rows.push(row(model, seed, "all", n));
                rows.push(row(model, seed, "0-4", n - 0.05));
                rows.push(row(model, seed, "5-9", n + 0.05));
            }
        }
        rows.push(row("popularity", 1, "all", 0.05));
        rows.push(row("popularity", 1, "0-4", 0.04));
        rows.push(row("popularity", 1, "5-9", 0.06));
        rows
    }

    #[test]
    fn runs_aggregate_to_mean_and_sample_std_over_seeds() {
        let agg = aggregate(&rows());
        assert_eq!(agg.len(), 9, "3 models x 3 groups");
        let plus = agg
            .iter()
            .find(|a| a.model == "sasrec+" && a.bucket == "all")
            .unwrap();
        assert_eq!(plus.runs, 3);
        assert_eq!(plus.variant, "plus");
        let ndcg = plus.metric("ndcg10");
        assert!((ndcg.mean - 0.27).abs() < 1e-12, "{ndcg:?}");
        // Values 0.26, 0.27, 0.28: sample std 0.01.
        assert!((ndcg.std - 0.01).abs() < 1e-12, "{ndcg:?}");
        assert!((plus.metric("hr10").std - 0.02).abs() < 1e-12);
        assert_eq!(plus.best_epoch, 3.0);
        let pop = agg.iter().find(|a| a.model == "popularity").unwrap();
        assert_eq!((pop.runs, pop.metric("ndcg10").std), (1, 0.0));
        assert_eq!(pop.backbone, None);
    }

    #[test]
    fn report_tables_hold_every_model_with_the_papers_numbers_beside() {
        let agg = aggregate(&rows());
        let ctx = ReportContext {
            job_id: "games".into(),
            dataset: Some("/data/Video_Games/Games.inter".into()),
            eval_negatives: Some(100),
            planned_runs: Some(7),
        };
        let md = render_markdown(&ctx, &agg);
        assert!(
            md.contains("| SASRec | 3 | 22.00 ± 1.00 | 44.00 ± 2.00 | 66.00 ± 3.00 | 22.73 / 37.77 / 51.53 |"),
            "{md}"
        );
        assert!(md.contains("| SASRec+ | 3 | 27.00 ± 1.00 |"), "{md}");
        assert!(md.contains("| Popularity | 1 | 5.00 ± 0.00 |"), "{md}");
        assert!(
            md.contains("| model | 0-4 (10 users) | 5-9 (10 users) |"),
            "{md}"
        );
        assert!(
            md.contains("| SASRec | 17.00 ± 1.00 | 27.00 ± 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| Popularity | 1.5000 ± 0.0000 | 0.2500 ± 0.0000 |"),
            "{md}"
        );
        assert!(md.contains("ranked against 100 random items"), "{md}");
        assert!(!md.contains("Partial"), "7 runs planned, 7 done: {md}");
        let partial = ReportContext {
            planned_runs: Some(10),
            ..ctx
        };
        assert!(render_markdown(&partial, &agg).contains("7 of 10 planned runs"));

        let bars = ndcg_bar_chart(&agg);
        assert!(bars.starts_with("<svg") && bars.trim_end().ends_with("</svg>"));
        assert_eq!(bars.matches("<rect x=").count(), 3, "one bar per model");
        assert!(bars.contains(">SASRec+</text>"));
        let lines = bucket_line_chart(&agg);
        assert_eq!(lines.matches("<polyline").count(), 3);
        assert!(lines.contains(">5-9</text>"));
    }

    #[test]
    fn slim_models_get_the_papers_names() {
        assert_eq!(display_name("slim-sasrec"), "SLIM (SASRec)");
        assert_eq!(display_name("slim_minus-gru4rec"), "SLIM-minus (GRU4Rec)");
        assert_eq!(display_name("slim_agnostic"), "SLIM (ID-agnostic)");
        assert_eq!(display_name("slim_step2"), "SLIM-Step2");
        assert_eq!(display_name("gru4rec+"), "GRU4Rec+");
    }

    /// `model`'s rows for one seed: `all`, one bucket, and `cold-start` with `cold` users.
    fn slim_rows(
        model: &str,
        variant: &str,
        seed: u64,
        ndcg: f64,
        cold: u64,
    ) -> Vec<RunMetricsRow> {
        let base = RunMetricsRow {
            model: model.into(),
            backbone: (!plan::is_id_agnostic(variant)).then(|| "sasrec".into()),
            variant: variant.into(),
            seed,
            split: "test".into(),
            bucket: "all".into(),
            users: 40,
            metrics: [ndcg, 2.0 * ndcg, 3.0 * ndcg, 1.0, 0.5],
            best_epoch: 2,
            epochs: 4,
            seconds_per_epoch: 1.0,
            seconds: 5.0,
        };
        vec![
            base.clone(),
            RunMetricsRow {
                bucket: "0-4".into(),
                ..base.clone()
            },
            RunMetricsRow {
                bucket: COLD_START.into(),
                users: cold,
                metrics: [ndcg / 2.0, ndcg, ndcg, 2.0, 1.0],
                ..base
            },
        ]
    }

    #[test]
    fn id_agnostic_models_get_their_own_table_and_cold_start_is_reported() {
        let mut rows = Vec::new();
        for seed in [1, 2] {
            let bump = 0.01 * seed as f64;
            rows.extend(slim_rows("sasrec", "id", seed, 0.20 + bump, 4));
            rows.extend(slim_rows("slim-sasrec", "slim", seed, 0.30 + bump, 4));
            rows.extend(slim_rows(
                "slim_minus-sasrec",
                "slim_minus",
                seed,
                0.31 + bump,
                4,
            ));
            rows.extend(slim_rows(
                "slim_agnostic",
                "slim_agnostic",
                seed,
                0.22 + bump,
                4,
            ));
            rows.extend(slim_rows("slim_step1", "step1", seed, 0.12 + bump, 4));
        }
        let agg = aggregate(&rows);
        let ctx = ReportContext {
            job_id: "g".into(),
            dataset: Some("Games.inter".into()),
            eval_negatives: Some(100),
            planned_runs: Some(10),
        };
        let md = render_markdown(&ctx, &agg);
        let table1 = md.find("laid out like the paper's Table 1").unwrap();
        let table2 = md.find("laid out like the paper's Table 2").unwrap();
        assert!(table1 < table2, "{md}");
        let (t1, t2) = (&md[table1..table2], &md[table2..]);
        assert!(t1.contains("| SLIM (SASRec) | 2 | 31.50 ± 0.71 |"), "{md}");
        assert!(
            t1.contains("31.43 / 51.11 / 64.10"),
            "the paper beside: {md}"
        );
        assert!(t1.contains("| SLIM-minus (SASRec) | 2 |"), "{md}");
        assert!(!t1.contains("SLIM (ID-agnostic)"), "{md}");
        assert!(
            t2.contains("| SLIM (ID-agnostic) | 2 | 23.50 ± 0.71 |")
                && t2.contains("21.99 / 38.33 / 53.59"),
            "{md}"
        );
        assert!(
            t2.contains("| SLIM-Step1 | 2 | 13.50 ± 0.71 |")
                && t2.contains("13.78 / 26.08 / 41.71"),
            "{md}"
        );
        // Cold-start: the group's own numbers, and never a sparsity column.
        assert!(md.contains("## Cold-start items"), "{md}");
        assert!(md.contains("4 users."), "{md}");
        assert!(md.contains("| SLIM (ID-agnostic) | 11.75 ± 0.35 |"), "{md}");
        assert!(md.contains("| model | 0-4 (40 users) |\n"), "{md}");
        let lines = bucket_line_chart(&agg);
        assert!(!lines.contains("cold-start"), "{lines}");
        // No cold targets: said so.
        let warm: Vec<RunMetricsRow> = slim_rows("sasrec", "id", 1, 0.2, 0);
        let md = render_markdown(&ctx, &aggregate(&warm));
        assert!(md.contains("No test target is cold"), "{md}");
        assert!(
            !md.contains("Table 2"),
            "no ID-agnostic runs, no Table 2: {md}"
        );
    }

    #[tokio::test]
    async fn write_report_reads_the_runs_and_writes_every_output() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::local::LocalStore::new(dir.path().to_path_buf());
        let err = write_report(&store, "j").await.unwrap_err().to_string();
        assert!(err.contains("no train runs to report"), "{err}");
        let all = rows();
        for (part, chunk) in all.chunks(9).enumerate() {
            let key = job_key("j", &format!("train/runs/part-{part:05}.parquet"));
            let bytes = schema::write_run_metrics(chunk).unwrap();
            store.put(&key, bytes.into()).await.unwrap();
        }
        let written = write_report(&store, "j").await.unwrap();
        assert_eq!(written.rows, all.len());
        for key in &written.keys {
            assert!(dir.path().join("j").join(key).exists(), "{key}");
        }
        let md = std::fs::read_to_string(dir.path().join("j/train/report.md")).unwrap();
        assert_eq!(md, written.markdown);
        assert!(
            md.contains("other data: orientation only"),
            "no manifest: {md}"
        );
        let metrics = std::fs::read(dir.path().join("j/train/metrics.parquet")).unwrap();
        let batches =
            schema::read_batches(metrics.into(), &TRAIN_METRICS, "metrics.parquet").unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 9);
    }
}
