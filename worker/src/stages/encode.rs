//! The `encode` stage executor: text becomes vectors. Task `s` (one per user shard) embeds
//!
//! - the items with `item_index % shards == s` (their `text` column) into
//!   `embeddings/items/part-NNNNN.parquet` (`item_index`, `item_id`, `embedding`);
//! - for each rationale source present (`teacher/part-s`, `student/part-s`), every user's whole
//!   rationale and each of its three steps (for the Step1/2/3 ablations) into
//!   `embeddings/users-{source}/part-NNNNN.parquet` (`user_id`, `rationale`, `step1`, `step2`,
//!   `step3`).
//!
//! Identical texts within a task are embedded once.

use crate::backend::{self, Backend};
use crate::encoder::TextEncoder;
use crate::executor::{StageExecutor, TaskContext, TaskResult};
use anyhow::{Context, Result};
use arrow::array::{ArrayRef, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field};
use async_trait::async_trait;
use slim_shared::markers::job_key;
use slim_shared::plan;
use slim_shared::schema;
use slim_shared::stage::Stage;
use slim_shared::store::StoreError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The encoder of the last model used, kept across tasks: loading costs more than a small task.
type Cached = Option<((PathBuf, usize), Arc<TextEncoder<Backend>>)>;

#[derive(Default)]
pub struct EncodeExecutor {
    encoder: Mutex<Cached>,
}

/// The rationale sources, in the order they are looked for.
const SOURCES: [&str; 2] = ["teacher", "student"];

#[async_trait]
impl StageExecutor for EncodeExecutor {
    fn stage(&self) -> Stage {
        Stage::Encode
    }

    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult> {
        let job_id = ctx.job.job_id();
        let settings = ctx.job.manifest.encoder.clone();
        let model = match ctx.job.resolve(&settings.model) {
            slim_shared::store::Location::Local(path) => path,
            other => anyhow::bail!("encoder.model must be a local folder, not {other}"),
        };
        let encoder = self.encoder(model, settings.max_length as usize).await?;
        let batch = settings.batch_size.max(1) as usize;
        let shards = plan::read_summary(ctx.store.as_ref(), job_id)
            .await?
            .dataset
            .shards
            .max(1);
        let mut result = TaskResult::default();

        let items_key = job_key(job_id, "data/items.parquet");
        let bytes = ctx
            .store
            .get(&items_key)
            .await
            .with_context(|| format!("reading {items_key}"))?;
        let items: Vec<schema::ItemRow> = schema::read_items(bytes, "data/items.parquet")?
            .into_iter()
            .filter(|i| i.item_index % shards == ctx.shard)
            .collect();
        let part = format!("embeddings/items/part-{:05}.parquet", ctx.shard);
        let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
        let enc = encoder.clone();
        let vectors =
            crate::executor::blocking(move || embed_unique(&enc, &texts, batch)).await??;
        let bytes = schema::write_embeddings(
            vec![
                (
                    Field::new("item_index", DataType::UInt32, false),
                    Arc::new(UInt32Array::from_iter_values(
                        items.iter().map(|i| i.item_index),
                    )) as ArrayRef,
                ),
                (
                    Field::new("item_id", DataType::Utf8, false),
                    Arc::new(StringArray::from_iter_values(
                        items.iter().map(|i| i.item_id.as_str()),
                    )),
                ),
            ],
            vec![("embedding", &vectors)],
            encoder.dim(),
        )?;
        result
            .parts
            .push(ctx.put_part(&part, bytes, Some(items.len() as u64)).await?);
        result.counters.insert("items".into(), items.len() as u64);

        for source in SOURCES {
            let key = job_key(job_id, &format!("{source}/part-{:05}.parquet", ctx.shard));
            let bytes = match ctx.store.get(&key).await {
                Ok(bytes) => bytes,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {key}")),
            };
            let rows = schema::read_rationale_texts(bytes, &key)?;
            let fields: [fn(&schema::RationaleText) -> &str; 4] =
                [|r| &r.rationale, |r| &r.step1, |r| &r.step2, |r| &r.step3];
            let mut texts = Vec::with_capacity(rows.len() * 4);
            for field in fields {
                texts.extend(rows.iter().map(|r| field(r).to_string()));
            }
            let enc = encoder.clone();
            let vectors =
                crate::executor::blocking(move || embed_unique(&enc, &texts, batch)).await??;
            let per_field: Vec<&[Vec<f32>]> = vectors.chunks(rows.len().max(1)).collect();
            let names = ["rationale", "step1", "step2", "step3"];
            let columns = names
                .iter()
                .enumerate()
                .map(|(i, name)| (*name, per_field.get(i).copied().unwrap_or(&[])))
                .collect();
            let bytes = schema::write_embeddings(
                vec![(
                    Field::new("user_id", DataType::Utf8, false),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.user_id.as_str()),
                    )),
                )],
                columns,
                encoder.dim(),
            )?;
            let part = format!("embeddings/users-{source}/part-{:05}.parquet", ctx.shard);
            result
                .parts
                .push(ctx.put_part(&part, bytes, Some(rows.len() as u64)).await?);
            result
                .counters
                .insert(format!("{source}_users"), rows.len() as u64);
        }
        Ok(result)
    }
}

impl EncodeExecutor {
    async fn encoder(
        &self,
        model: PathBuf,
        max_length: usize,
    ) -> Result<Arc<TextEncoder<Backend>>> {
        let key = (model.clone(), max_length);
        if let Some((cached, encoder)) = &*self.encoder.lock().unwrap_or_else(|e| e.into_inner())
            && *cached == key
        {
            return Ok(encoder.clone());
        }
        let encoder = crate::executor::blocking(move || {
            TextEncoder::<Backend>::load(&model, max_length, &backend::device())
        })
        .await??;
        let encoder = Arc::new(encoder);
        *self.encoder.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, encoder.clone()));
        Ok(encoder)
    }
}

/// Embeds `texts`, each distinct text once.
fn embed_unique(
    encoder: &TextEncoder<Backend>,
    texts: &[String],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<&str> = Vec::new();
    let index: Vec<usize> = texts
        .iter()
        .map(|t| {
            *slot.entry(t.as_str()).or_insert_with(|| {
                unique.push(t.as_str());
                unique.len() - 1
            })
        })
        .collect();
    let vectors = encoder.encode(&unique, batch)?;
    Ok(index.into_iter().map(|i| vectors[i].clone()).collect())
}
