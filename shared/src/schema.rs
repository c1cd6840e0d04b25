//! Parquet schemas of slim's outputs, declared once and used by writers, readers, tests and docs.
//!
//! Every file is written with ZSTD compression and plain Arrow types (UInt32, Utf8, Boolean,
//! List) that pandas, polars, DuckDB and Spark read without help.

use anyhow::{Context, Result, bail};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, ListBuilder, RecordBatch, StringBuilder,
    UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::io::Write;
use std::sync::{Arc, LazyLock};

/// Rows per record batch / row group when writing.
pub const BATCH_ROWS: usize = 64 * 1024;

fn list_of(data_type: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", data_type, true)))
}

/// `data/users.parquet`: one row per user after preprocessing.
pub static USERS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        // The user's id in the source data (reviewerID, RecBole token).
        Field::new("user_id", DataType::Utf8, false),
        // Dense index, 0..users.
        Field::new("user_index", DataType::UInt32, false),
        // Training history as item_index values, oldest first, truncated to max_history.
        Field::new("history", list_of(DataType::UInt32), false),
        // Length of the training history before truncation.
        Field::new("history_length", DataType::UInt32, false),
        // Second-to-last item (validation target).
        Field::new("valid_item", DataType::UInt32, false),
        // Last item (test target).
        Field::new("test_item", DataType::UInt32, false),
        // Work unit of the per-user stages.
        Field::new("shard", DataType::UInt32, false),
        // Whether the user is in the teacher subset U'.
        Field::new("in_teacher_sample", DataType::Boolean, false),
    ]))
});

/// `data/items.parquet`: one row per item that survived preprocessing.
pub static ITEMS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        // Dense index used in users.parquet, 0..items.
        Field::new("item_index", DataType::UInt32, false),
        // The item's id in the source data (ASIN, RecBole token).
        Field::new("item_id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("brand", DataType::Utf8, true),
        // Category path, most general first.
        Field::new("categories", list_of(DataType::Utf8), false),
        Field::new("description", DataType::Utf8, true),
        // Whether the source had a meta record for the item.
        Field::new("has_meta", DataType::Boolean, false),
        // The text the encoder embeds (see data::text::render_item_text).
        Field::new("text", DataType::Utf8, false),
        // Occurrences in training histories (before truncation): popularity without leakage.
        Field::new("train_count", DataType::UInt32, false),
    ]))
});

/// `probe/part-NNNNN.parquet`: one row per user of the shard, from the model-free probe stage.
pub static PROBE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("user_index", DataType::UInt32, false),
        Field::new("history_length", DataType::UInt32, false),
        // FNV-1a over the history's item indices: equal histories, equal fingerprints.
        Field::new("fingerprint", DataType::UInt64, false),
    ]))
});

/// `teacher/part-NNNNN.parquet` and `student/part-NNNNN.parquet`: one rationale per user.
pub static RATIONALES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        // The prompt as sent (after templating and history truncation).
        Field::new("prompt", DataType::Utf8, false),
        // The whole answer.
        Field::new("rationale", DataType::Utf8, false),
        // The answer's three steps: interests, categories, recommended items.
        Field::new("step1", DataType::Utf8, false),
        Field::new("step2", DataType::Utf8, false),
        Field::new("step3", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("prompt_tokens", DataType::UInt32, false),
        Field::new("completion_tokens", DataType::UInt32, false),
        Field::new("latency_ms", DataType::UInt64, false),
        // "stop", "length", ...
        Field::new("finish_reason", DataType::Utf8, false),
        // Accounting. Transport retries (timeouts, 429, 5xx, broken bodies) over every request
        // made for this row.
        Field::new("retries", DataType::UInt32, false),
        // Extra answers asked for because an answer could not be split into three steps.
        Field::new("parse_retries", DataType::UInt32, false),
        // True when even the last answer could not be split: `rationale` holds it whole and
        // the step columns are empty. Such rows are kept, never dropped.
        Field::new("parse_error", DataType::Boolean, false),
        // True when the answer came from the response cache (no request made this time).
        Field::new("cached", DataType::Boolean, false),
        // Estimated USD cost of every answer paid for this row, from the manifest's prices
        // (the original cost for cached rows).
        Field::new("cost_usd", DataType::Float64, false),
    ]))
});

/// One row of a rationale file.
#[derive(Debug, Clone, PartialEq)]
pub struct RationaleRow {
    pub user_id: String,
    pub prompt: String,
    pub rationale: String,
    pub step1: String,
    pub step2: String,
    pub step3: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_ms: u64,
    pub finish_reason: String,
    pub retries: u32,
    pub parse_retries: u32,
    pub parse_error: bool,
    pub cached: bool,
    pub cost_usd: f64,
}

/// A rationale file (`teacher/part-NNNNN.parquet`, `student/part-NNNNN.parquet`) in memory.
pub fn write_rationales(rows: &[RationaleRow]) -> Result<Vec<u8>> {
    use arrow::array::{BooleanArray, Float64Array, StringArray, UInt32Array, UInt64Array};
    let text = |f: fn(&RationaleRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let u32s = |f: fn(&RationaleRow) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(f)))
    };
    let flags = |f: fn(&RationaleRow) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.user_id),
        text(|r| &r.prompt),
        text(|r| &r.rationale),
        text(|r| &r.step1),
        text(|r| &r.step2),
        text(|r| &r.step3),
        text(|r| &r.model),
        u32s(|r| r.prompt_tokens),
        u32s(|r| r.completion_tokens),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.latency_ms),
        )),
        text(|r| &r.finish_reason),
        u32s(|r| r.retries),
        u32s(|r| r.parse_retries),
        flags(|r| r.parse_error),
        flags(|r| r.cached),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.cost_usd),
        )),
    ];
    let batch = RecordBatch::try_new(RATIONALES.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = writer(&mut bytes, &RATIONALES)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

/// Reads a whole rationale file.
pub fn read_rationales(bytes: Bytes, name: &str) -> Result<Vec<RationaleRow>> {
    use arrow::datatypes::{Float64Type, UInt64Type};
    let mut rows = Vec::new();
    for batch in read_batches(bytes, &RATIONALES, name)? {
        let text = |c: &str| column(&batch, c).as_string::<i32>().clone();
        let u32s = |c: &str| column(&batch, c).as_primitive::<UInt32Type>().clone();
        let flags = |c: &str| column(&batch, c).as_boolean().clone();
        let (user_id, prompt, rationale, step1, step2, step3, model, finish_reason) = (
            text("user_id"),
            text("prompt"),
            text("rationale"),
            text("step1"),
            text("step2"),
            text("step3"),
            text("model"),
            text("finish_reason"),
        );
        let (prompt_tokens, completion_tokens, retries, parse_retries) = (
            u32s("prompt_tokens"),
            u32s("completion_tokens"),
            u32s("retries"),
            u32s("parse_retries"),
        );
        let latency = column(&batch, "latency_ms").as_primitive::<UInt64Type>();
        let cost = column(&batch, "cost_usd").as_primitive::<Float64Type>();
        let (parse_error, cached) = (flags("parse_error"), flags("cached"));
        for r in 0..batch.num_rows() {
            rows.push(RationaleRow {
                user_id: user_id.value(r).to_string(),
                prompt: prompt.value(r).to_string(),
                rationale: rationale.value(r).to_string(),
                step1: step1.value(r).to_string(),
                step2: step2.value(r).to_string(),
                step3: step3.value(r).to_string(),
                model: model.value(r).to_string(),
                prompt_tokens: prompt_tokens.value(r),
                completion_tokens: completion_tokens.value(r),
                latency_ms: latency.value(r),
                finish_reason: finish_reason.value(r).to_string(),
                retries: retries.value(r),
                parse_retries: parse_retries.value(r),
                parse_error: parse_error.value(r),
                cached: cached.value(r),
                cost_usd: cost.value(r),
            });
        }
    }
    Ok(rows)
}

/// The text fields of one rationale row, as the encode stage needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RationaleText {
    pub user_id: String,
    pub rationale: String,
    pub step1: String,
    pub step2: String,
    pub step3: String,
}

/// Reads the text columns of a rationale file.
pub fn read_rationale_texts(bytes: Bytes, name: &str) -> Result<Vec<RationaleText>> {
    let mut rows = Vec::new();
    for batch in read_batches(bytes, &RATIONALES, name)? {
        let text = |c: &str| column(&batch, c).as_string::<i32>().clone();
        let (user_id, rationale, step1, step2, step3) = (
            text("user_id"),
            text("rationale"),
            text("step1"),
            text("step2"),
            text("step3"),
        );
        for r in 0..batch.num_rows() {
            rows.push(RationaleText {
                user_id: user_id.value(r).to_string(),
                rationale: rationale.value(r).to_string(),
                step1: step1.value(r).to_string(),
                step2: step2.value(r).to_string(),
                step3: step3.value(r).to_string(),
            });
        }
    }
    Ok(rows)
}

/// An embedding column: `FixedSizeList<Float32>[dim]`, which pandas, polars and DuckDB read
/// as arrays without help.
pub fn embedding_field(name: &str, dim: usize) -> Field {
    Field::new(
        name,
        DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, false)),
            i32::try_from(dim).expect("embedding width fits i32"),
        ),
        false,
    )
}

/// A Parquet file of embeddings: the id columns given, then one vector column per
/// `(name, vectors)`, every vector `dim` wide.
pub fn write_embeddings(
    ids: Vec<(Field, ArrayRef)>,
    vectors: Vec<(&str, &[Vec<f32>])>,
    dim: usize,
) -> Result<Vec<u8>> {
    use arrow::array::{FixedSizeListArray, Float32Array};
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, array) in ids {
        fields.push(field);
        columns.push(array);
    }
    for (name, rows) in vectors {
        let mut flat = Vec::with_capacity(rows.len() * dim);
        for row in rows {
            anyhow::ensure!(
                row.len() == dim,
                "{name}: a vector of {} values, expected {dim}",
                row.len()
            );
            flat.extend_from_slice(row);
        }
        let field = embedding_field(name, dim);
        let DataType::FixedSizeList(inner, width) = field.data_type().clone() else {
            unreachable!("embedding_field builds a FixedSizeList")
        };
        let list =
            FixedSizeListArray::try_new(inner, width, Arc::new(Float32Array::from(flat)), None)?;
        fields.push(field);
        columns.push(Arc::new(list) as ArrayRef);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = writer(&mut bytes, &schema)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

/// `train/runs/part-NNNNN.parquet`: the metrics of one training run (one task of the train
/// stage), one row per split and user group (`all`, then each history-length bucket).
pub static TRAIN_RUNS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        // `sasrec`, `sasrec+`, `slim-sasrec`, `slim_minus-gru4rec`, `slim_agnostic`,
        // `slim_step1`, `popularity`, ...
        Field::new("model", DataType::Utf8, false),
        // Null for the popularity baseline and the ID-agnostic variants.
        Field::new("backbone", DataType::Utf8, true),
        // The manifest's variant: `id`, `plus`, `slim`, `slim_agnostic`, `popularity`, ...
        Field::new("variant", DataType::Utf8, false),
        Field::new("seed", DataType::UInt64, false),
        // `valid` or `test`.
        Field::new("split", DataType::Utf8, false),
        // `all`, a history-length bucket such as `5-9`, or `cold-start` (the users whose
        // target item is in no training history; see `eval::COLD_START`).
        Field::new("bucket", DataType::Utf8, false),
        // Users in the group.
        Field::new("users", DataType::UInt64, false),
    ];
    fields.extend(METRIC_COLUMNS.map(|m| Field::new(m, DataType::Float64, false)));
    fields.extend([
        // The epoch whose weights were evaluated (best validation NDCG@10); 0 untrained.
        Field::new("best_epoch", DataType::UInt32, false),
        // Epochs trained (early stopping included).
        Field::new("epochs", DataType::UInt32, false),
        // Mean seconds per training epoch, evaluation excluded.
        Field::new("seconds_per_epoch", DataType::Float64, false),
        // Wall time of the whole run.
        Field::new("seconds", DataType::Float64, false),
    ]);
    Arc::new(Schema::new(fields))
});

/// `train/metrics.parquet`: the runs aggregated over seeds, one row per model, split and
/// user group; each metric as `{metric}_mean` and `{metric}_std` (sample standard deviation,
/// 0 for a single run).
pub static TRAIN_METRICS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("backbone", DataType::Utf8, true),
        Field::new("variant", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("bucket", DataType::Utf8, false),
        Field::new("users", DataType::UInt64, false),
        // Runs (seeds) aggregated.
        Field::new("runs", DataType::UInt32, false),
    ];
    for m in METRIC_COLUMNS {
        fields.push(Field::new(format!("{m}_mean"), DataType::Float64, false));
        fields.push(Field::new(format!("{m}_std"), DataType::Float64, false));
    }
    fields.extend([
        Field::new("best_epoch_mean", DataType::Float64, false),
        Field::new("seconds_per_epoch_mean", DataType::Float64, false),
    ]);
    Arc::new(Schema::new(fields))
});

/// The metric columns of [`TRAIN_RUNS`], in report order (means over the group's users).
pub const METRIC_COLUMNS: [&str; 5] = ["ndcg10", "hr10", "hr20", "efd10", "epc10"];

/// One row of [`TRAIN_RUNS`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetricsRow {
    pub model: String,
    pub backbone: Option<String>,
    pub variant: String,
    pub seed: u64,
    pub split: String,
    pub bucket: String,
    pub users: u64,
    /// In [`METRIC_COLUMNS`] order.
    pub metrics: [f64; 5],
    pub best_epoch: u32,
    pub epochs: u32,
    pub seconds_per_epoch: f64,
    pub seconds: f64,
}

/// A run file (`train/runs/part-NNNNN.parquet`) in memory.
pub fn write_run_metrics(rows: &[RunMetricsRow]) -> Result<Vec<u8>> {
    use arrow::array::{Float64Array, StringArray, UInt32Array, UInt64Array};
    let text = |f: fn(&RunMetricsRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let floats = |f: &dyn Fn(&RunMetricsRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
    };
    let mut columns: Vec<ArrayRef> = vec![
        text(|r| &r.model),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|r| r.backbone.as_deref())
                .collect::<Vec<_>>(),
        )),
        text(|r| &r.variant),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seed))),
        text(|r| &r.split),
        text(|r| &r.bucket),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.users))),
    ];
    for m in 0..METRIC_COLUMNS.len() {
        columns.push(floats(&|r| r.metrics[m]));
    }
    columns.extend([
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.best_epoch),
        )) as ArrayRef,
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epochs))),
        floats(&|r| r.seconds_per_epoch),
        floats(&|r| r.seconds),
    ]);
    let batch = RecordBatch::try_new(TRAIN_RUNS.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = writer(&mut bytes, &TRAIN_RUNS)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

/// Reads a run file.
pub fn read_run_metrics(bytes: Bytes, name: &str) -> Result<Vec<RunMetricsRow>> {
    use arrow::datatypes::{Float64Type, UInt64Type};
    let mut rows = Vec::new();
    for batch in read_batches(bytes, &TRAIN_RUNS, name)? {
        let text = |c: &str| column(&batch, c).as_string::<i32>().clone();
        let u64s = |c: &str| column(&batch, c).as_primitive::<UInt64Type>().clone();
        let u32s = |c: &str| column(&batch, c).as_primitive::<UInt32Type>().clone();
        let floats = |c: &str| column(&batch, c).as_primitive::<Float64Type>().clone();
        let (model, backbone, variant, split, bucket) = (
            text("model"),
            text("backbone"),
            text("variant"),
            text("split"),
            text("bucket"),
        );
        let (seed, users, best_epoch, epochs) = (
            u64s("seed"),
            u64s("users"),
            u32s("best_epoch"),
            u32s("epochs"),
        );
        let metrics = METRIC_COLUMNS.map(floats);
        let (per_epoch, seconds) = (floats("seconds_per_epoch"), floats("seconds"));
        for r in 0..batch.num_rows() {
            rows.push(RunMetricsRow {
                model: model.value(r).to_string(),
                backbone: (!backbone.is_null(r)).then(|| backbone.value(r).to_string()),
                variant: variant.value(r).to_string(),
                seed: seed.value(r),
                split: split.value(r).to_string(),
                bucket: bucket.value(r).to_string(),
                users: users.value(r),
                metrics: std::array::from_fn(|m| metrics[m].value(r)),
                best_epoch: best_epoch.value(r),
                epochs: epochs.value(r),
                seconds_per_epoch: per_epoch.value(r),
                seconds: seconds.value(r),
            });
        }
    }
    Ok(rows)
}

/// Reads an embedding file's `u32` id column and one vector column (e.g. `item_index` and
/// `embedding` of `embeddings/items/part-NNNNN.parquet`).
pub fn read_embeddings_by_index(
    bytes: Bytes,
    name: &str,
    id: &str,
    vectors: &str,
) -> Result<Vec<(u32, Vec<f32>)>> {
    use arrow::datatypes::Float32Type;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .with_context(|| format!("{name}: not a readable Parquet file"))?;
    let dim = match builder
        .schema()
        .field_with_name(vectors)
        .map(|f| f.data_type())
    {
        Ok(DataType::FixedSizeList(_, dim)) => *dim as usize,
        Ok(other) => bail!("{name}: column {vectors} has type {other}, expected a FixedSizeList"),
        Err(_) => bail!("{name}: column {vectors} is missing"),
    };
    let expected = Arc::new(Schema::new(vec![
        Field::new(id, DataType::UInt32, false),
        embedding_field(vectors, dim),
    ]));
    let mut rows = Vec::new();
    for batch in read_batches_with(builder, &expected, name)? {
        let ids = column(&batch, id).as_primitive::<UInt32Type>();
        let lists = column(&batch, vectors).as_fixed_size_list();
        for r in 0..batch.num_rows() {
            let row = lists.value(r);
            rows.push((
                ids.value(r),
                row.as_primitive::<Float32Type>().values().to_vec(),
            ));
        }
    }
    Ok(rows)
}

/// One row of `data/users.parquet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: String,
    pub user_index: u32,
    pub history: Vec<u32>,
    pub history_length: u32,
    pub valid_item: u32,
    pub test_item: u32,
    pub shard: u32,
    pub in_teacher_sample: bool,
}

/// One row of `data/items.parquet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    pub item_index: u32,
    pub item_id: String,
    pub title: Option<String>,
    pub brand: Option<String>,
    pub categories: Vec<String>,
    pub description: Option<String>,
    pub has_meta: bool,
    pub text: String,
    pub train_count: u32,
}

/// Builds `users.parquet` batches row by row.
#[derive(Default)]
pub struct UsersBuilder {
    user_id: StringBuilder,
    user_index: UInt32Builder,
    history: ListBuilder<UInt32Builder>,
    history_length: UInt32Builder,
    valid_item: UInt32Builder,
    test_item: UInt32Builder,
    shard: UInt32Builder,
    in_teacher_sample: BooleanBuilder,
    rows: usize,
}

/// A columnar builder for one output's rows.
pub trait RowBuilder: Default {
    /// The schema of the batches it builds.
    fn schema() -> &'static SchemaRef;
    /// Rows pushed since the last `finish`.
    fn pending_rows(&self) -> usize;
    /// The rows pushed so far as one batch; the builder is empty afterwards.
    fn finish(&mut self) -> Result<RecordBatch>;
}

/// A Parquet file written row by row: rows go to a [`RowBuilder`] and are flushed as a record
/// batch (one row group) every [`BATCH_ROWS`], so memory stays bounded by one batch.
pub struct ParquetFile<B: RowBuilder> {
    writer: ArrowWriter<std::io::BufWriter<std::fs::File>>,
    builder: B,
}

impl<B: RowBuilder> ParquetFile<B> {
    pub fn create(path: &std::path::Path) -> Result<Self> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            writer: writer(std::io::BufWriter::new(file), B::schema())?,
            builder: B::default(),
        })
    }

    /// Adds one row through `push`, flushing a full batch.
    pub fn push(&mut self, push: impl FnOnce(&mut B)) -> Result<()> {
        push(&mut self.builder);
        if self.builder.pending_rows() >= BATCH_ROWS {
            self.writer.write(&self.builder.finish()?)?;
        }
        Ok(())
    }

    pub fn close(mut self) -> Result<()> {
        if self.builder.pending_rows() > 0 {
            self.writer.write(&self.builder.finish()?)?;
        }
        self.writer.close()?;
        Ok(())
    }
}

impl UsersBuilder {
    pub fn push(&mut self, row: UserRowRef<'_>) {
        self.user_id.append_value(row.user_id);
        self.user_index.append_value(row.user_index);
        self.history.values().append_slice(row.history);
        self.history.append(true);
        self.history_length.append_value(row.history_length);
        self.valid_item.append_value(row.valid_item);
        self.test_item.append_value(row.test_item);
        self.shard.append_value(row.shard);
        self.in_teacher_sample.append_value(row.in_teacher_sample);
        self.rows += 1;
    }
}

impl RowBuilder for UsersBuilder {
    fn schema() -> &'static SchemaRef {
        &USERS
    }

    fn pending_rows(&self) -> usize {
        self.rows
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.user_id.finish()),
            Arc::new(self.user_index.finish()),
            Arc::new(self.history.finish()),
            Arc::new(self.history_length.finish()),
            Arc::new(self.valid_item.finish()),
            Arc::new(self.test_item.finish()),
            Arc::new(self.shard.finish()),
            Arc::new(self.in_teacher_sample.finish()),
        ];
        Ok(RecordBatch::try_new(USERS.clone(), columns)?)
    }
}

/// A borrowed user row, so writers need not allocate per row.
#[derive(Debug, Clone, Copy)]
pub struct UserRowRef<'a> {
    pub user_id: &'a str,
    pub user_index: u32,
    pub history: &'a [u32],
    pub history_length: u32,
    pub valid_item: u32,
    pub test_item: u32,
    pub shard: u32,
    pub in_teacher_sample: bool,
}

/// Builds `items.parquet` batches row by row.
#[derive(Default)]
pub struct ItemsBuilder {
    item_index: UInt32Builder,
    item_id: StringBuilder,
    title: StringBuilder,
    brand: StringBuilder,
    categories: ListBuilder<StringBuilder>,
    description: StringBuilder,
    has_meta: BooleanBuilder,
    text: StringBuilder,
    train_count: UInt32Builder,
    rows: usize,
}

impl ItemsBuilder {
    pub fn push(&mut self, row: &ItemRow) {
        self.item_index.append_value(row.item_index);
        self.item_id.append_value(&row.item_id);
        self.title.append_option(row.title.as_deref());
        self.brand.append_option(row.brand.as_deref());
        for category in &row.categories {
            self.categories.values().append_value(category);
        }
        self.categories.append(true);
        self.description.append_option(row.description.as_deref());
        self.has_meta.append_value(row.has_meta);
        self.text.append_value(&row.text);
        self.train_count.append_value(row.train_count);
        self.rows += 1;
    }
}

impl RowBuilder for ItemsBuilder {
    fn schema() -> &'static SchemaRef {
        &ITEMS
    }

    fn pending_rows(&self) -> usize {
        self.rows
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.item_index.finish()),
            Arc::new(self.item_id.finish()),
            Arc::new(self.title.finish()),
            Arc::new(self.brand.finish()),
            Arc::new(self.categories.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.has_meta.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.train_count.finish()),
        ];
        Ok(RecordBatch::try_new(ITEMS.clone(), columns)?)
    }
}

/// Writer properties shared by every output: ZSTD, row groups of [`BATCH_ROWS`].
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(BATCH_ROWS))
        .set_created_by(format!("slim {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Opens a Parquet writer for `schema` over any sink (a file, a Vec).
pub fn writer<W: Write + Send>(sink: W, schema: &SchemaRef) -> Result<ArrowWriter<W>> {
    Ok(ArrowWriter::try_new(
        sink,
        schema.clone(),
        Some(writer_properties()),
    )?)
}

/// Reads all batches of a Parquet file held in memory, checking its schema.
pub fn read_batches(bytes: Bytes, expected: &SchemaRef, name: &str) -> Result<Vec<RecordBatch>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .with_context(|| format!("{name}: not a readable Parquet file"))?;
    read_batches_with(builder, expected, name)
}

fn read_batches_with(
    builder: ParquetRecordBatchReaderBuilder<Bytes>,
    expected: &SchemaRef,
    name: &str,
) -> Result<Vec<RecordBatch>> {
    let found = builder.schema().clone();
    for field in expected.fields() {
        match found.field_with_name(field.name()) {
            Ok(f) if f.data_type() == field.data_type() => {}
            Ok(f) => bail!(
                "{name}: column {} has type {} but slim expects {}",
                field.name(),
                f.data_type(),
                field.data_type()
            ),
            Err(_) => bail!("{name}: column {} is missing", field.name()),
        }
    }
    let reader = builder.with_batch_size(BATCH_ROWS).build()?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{name}: reading record batches"))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a dyn Array {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("column {name} checked by read_batches"))
        .as_ref()
}

/// Reads `users.parquet` into rows (for small files, tests and tools).
pub fn read_users(bytes: Bytes, name: &str) -> Result<Vec<UserRow>> {
    let mut rows = Vec::new();
    for batch in read_batches(bytes, &USERS, name)? {
        let user_id = column(&batch, "user_id").as_string::<i32>();
        let user_index = column(&batch, "user_index").as_primitive::<UInt32Type>();
        let history = column(&batch, "history").as_list::<i32>();
        let history_length = column(&batch, "history_length").as_primitive::<UInt32Type>();
        let valid_item = column(&batch, "valid_item").as_primitive::<UInt32Type>();
        let test_item = column(&batch, "test_item").as_primitive::<UInt32Type>();
        let shard = column(&batch, "shard").as_primitive::<UInt32Type>();
        let sample = column(&batch, "in_teacher_sample").as_boolean();
        for r in 0..batch.num_rows() {
            rows.push(UserRow {
                user_id: user_id.value(r).to_string(),
                user_index: user_index.value(r),
                history: history
                    .value(r)
                    .as_primitive::<UInt32Type>()
                    .values()
                    .to_vec(),
                history_length: history_length.value(r),
                valid_item: valid_item.value(r),
                test_item: test_item.value(r),
                shard: shard.value(r),
                in_teacher_sample: sample.value(r),
            });
        }
    }
    Ok(rows)
}

/// Reads `items.parquet` into rows.
pub fn read_items(bytes: Bytes, name: &str) -> Result<Vec<ItemRow>> {
    let mut rows = Vec::new();
    let optional =
        |a: &arrow::array::StringArray, r: usize| (!a.is_null(r)).then(|| a.value(r).to_string());
    for batch in read_batches(bytes, &ITEMS, name)? {
        let item_index = column(&batch, "item_index").as_primitive::<UInt32Type>();
        let item_id = column(&batch, "item_id").as_string::<i32>();
        let title = column(&batch, "title").as_string::<i32>();
        let brand = column(&batch, "brand").as_string::<i32>();
        let categories = column(&batch, "categories").as_list::<i32>();
        let description = column(&batch, "description").as_string::<i32>();
        let has_meta = column(&batch, "has_meta").as_boolean();
        let text = column(&batch, "text").as_string::<i32>();
        let train_count = column(&batch, "train_count").as_primitive::<UInt32Type>();
        for r in 0..batch.num_rows() {
            let cats = categories.value(r);
            let cats = cats.as_string::<i32>();
            rows.push(ItemRow {
                item_index: item_index.value(r),
                item_id: item_id.value(r).to_string(),
                title: optional(title, r),
                brand: optional(brand, r),
                categories: (0..cats.len()).map(|i| cats.value(i).to_string()).collect(),
                description: optional(description, r),
                has_meta: has_meta.value(r),
                text: text.value(r).to_string(),
                train_count: train_count.value(r),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip_through_parquet() {
        let mut builder = UsersBuilder::default();
        let history = [3, 1, 2];
        builder.push(UserRowRef {
            user_id: "A1",
            user_index: 0,
            history: &history,
            history_length: 7,
            valid_item: 4,
            test_item: 5,
            shard: 0,
            in_teacher_sample: true,
        });
        builder.push(UserRowRef {
            user_id: "B2",
            user_index: 1,
            history: &[],
            history_length: 0,
            valid_item: 1,
            test_item: 2,
            shard: 1,
            in_teacher_sample: false,
        });
        let batch = builder.finish().unwrap();
        let mut buf = Vec::new();
        let mut w = writer(&mut buf, &USERS).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let rows = read_users(Bytes::from(buf), "users.parquet").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].history, [3, 1, 2]);
        assert_eq!(rows[0].history_length, 7);
        assert!(rows[0].in_teacher_sample);
        assert_eq!(rows[1].user_id, "B2");
        assert!(rows[1].history.is_empty());
    }

    #[test]
    fn rationales_round_trip_and_feed_the_encoder_reader() {
        let row = RationaleRow {
            user_id: "A1".into(),
            prompt: "p".into(),
            rationale: "Step 1: a".into(),
            step1: "a".into(),
            step2: String::new(),
            step3: String::new(),
            model: "m".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            latency_ms: 120,
            finish_reason: "length".into(),
            retries: 2,
            parse_retries: 1,
            parse_error: true,
            cached: false,
            cost_usd: 0.25,
        };
        let bytes = Bytes::from(write_rationales(std::slice::from_ref(&row)).unwrap());
        assert_eq!(read_rationales(bytes.clone(), "r").unwrap(), vec![row]);
        let texts = read_rationale_texts(bytes, "r").unwrap();
        assert_eq!(texts[0].step1, "a");
    }

    #[test]
    fn run_metrics_and_embeddings_round_trip() {
        let row = RunMetricsRow {
            model: "popularity".into(),
            backbone: None,
            variant: "popularity".into(),
            seed: 1,
            split: "test".into(),
            bucket: "5-9".into(),
            users: 12,
            metrics: [0.1, 0.2, 0.3, 0.4, 0.5],
            best_epoch: 0,
            epochs: 0,
            seconds_per_epoch: 0.0,
            seconds: 0.25,
        };
        let sasrec = RunMetricsRow {
            model: "sasrec".into(),
            backbone: Some("sasrec".into()),
            ..row.clone()
        };
        let rows = vec![row, sasrec];
        let bytes = Bytes::from(write_run_metrics(&rows).unwrap());
        assert_eq!(read_run_metrics(bytes, "runs").unwrap(), rows);

        use arrow::array::UInt32Array;
        let vectors = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        let bytes = write_embeddings(
            vec![(
                Field::new("item_index", DataType::UInt32, false),
                Arc::new(UInt32Array::from(vec![4, 2])) as ArrayRef,
            )],
            vec![("embedding", &vectors)],
            2,
        )
        .unwrap();
        let read =
            read_embeddings_by_index(bytes.into(), "items", "item_index", "embedding").unwrap();
        assert_eq!(read, vec![(4, vec![1.0, 2.0]), (2, vec![3.0, 4.0])]);
    }

    #[test]
    fn items_round_trip_and_schema_mismatch_is_named() {
        let row = ItemRow {
            item_index: 0,
            item_id: "B00X".into(),
            title: Some("Zelda".into()),
            brand: None,
            categories: vec!["Games".into(), "Switch".into()],
            description: None,
            has_meta: true,
            text: "Zelda".into(),
            train_count: 9,
        };
        let mut builder = ItemsBuilder::default();
        builder.push(&row);
        let mut buf = Vec::new();
        let mut w = writer(&mut buf, &ITEMS).unwrap();
        w.write(&builder.finish().unwrap()).unwrap();
        w.close().unwrap();
        let bytes = Bytes::from(buf);
        assert_eq!(
            read_items(bytes.clone(), "items.parquet").unwrap(),
            vec![row]
        );
        let err = read_users(bytes, "items.parquet").unwrap_err().to_string();
        assert!(
            err.contains("items.parquet: column user_id is missing"),
            "{err}"
        );
    }
}
