//! The `prepare` stage: ingest the raw files, preprocess, and write
//! `{job}/data/items.parquet`, `{job}/data/users.parquet`, `{job}/data/summary.json` and the
//! stage's completion manifest `{job}/data/_SUCCESS`.

use super::corpus::{Corpus, ItemMeta};
use super::preprocess::{self, PreprocessStats, Split};
use super::{LineReader, mcauley, recbole};
use crate::manifest::{DataFormat, LoadedManifest, PrepareSection};
use crate::markers::{self, PartInfo, StageManifest, job_key};
use crate::schema::{ItemRow, ItemsBuilder, ParquetFile, UserRowRef, UsersBuilder};
use crate::stage::Stage;
use crate::store::{Location, S3Settings, Store};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

/// What `prepare` did, written to `data/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub job_id: String,
    pub format: DataFormat,
    pub reviews: String,
    pub meta: Option<String>,
    pub params: PrepareSection,
    pub ingest: super::IngestStats,
    /// Items (after filtering) that had no meta record; their text is their id.
    pub items_without_meta: u64,
    #[serde(flatten)]
    pub dataset: PreprocessStats,
    pub elapsed_secs: f64,
    pub slim_version: String,
}

/// Runs the whole prepare stage for a loaded manifest, writing into `store` (rooted at the
/// job's output root). Shows progress bars unless `progress` is hidden.
pub async fn run(
    loaded: &LoadedManifest,
    store: Arc<dyn Store>,
    progress: bool,
) -> Result<(Summary, Vec<PartInfo>)> {
    let started = Instant::now();
    let manifest = loaded.manifest.clone();
    let reviews = loaded.resolve(&manifest.data.reviews);
    let meta = manifest.data.meta.as_deref().map(|m| loaded.resolve(m));
    let s3 = manifest.storage.clone();
    let params = manifest.prepare;
    let format = manifest.data.format;
    let on_error = manifest.data.on_error;
    let include_description = manifest.encoder.include_description;

    let (corpus, split, dir) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut corpus = ingest(format, on_error, &reviews, meta.as_ref(), &s3, progress)?;
        let bar = spinner(progress, "preprocessing (dedupe, k-core, split)");
        let split = preprocess::preprocess(&mut corpus, params);
        bar.finish_and_clear();
        anyhow::ensure!(
            split.stats.users > 0,
            "no user is left after preprocessing ({} interactions read, k_core = {}): lower prepare.k_core or check the input",
            split.stats.interactions_read,
            params.k_core
        );
        let dir = tempfile::tempdir().context("creating a temporary folder for the outputs")?;
        let bar = spinner(progress, "writing Parquet");
        write_users(&corpus, &split, &dir.path().join("users.parquet"))?;
        write_items(&corpus, &split, include_description, &dir.path().join("items.parquet"))?;
        bar.finish_and_clear();
        Ok((corpus, split, dir))
    })
    .await
    .context("the prepare task panicked")??;

    let items_without_meta = split
        .item_source
        .iter()
        .filter(|&&i| !corpus.meta.has(i as usize))
        .count() as u64;
    let summary = Summary {
        job_id: manifest.job.id.clone(),
        format,
        reviews: loaded.resolve(&manifest.data.reviews).to_string(),
        meta: manifest
            .data
            .meta
            .as_deref()
            .map(|m| loaded.resolve(m).to_string()),
        params: manifest.prepare,
        ingest: corpus.stats.clone(),
        items_without_meta,
        dataset: split.stats.clone(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        slim_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if items_without_meta > 0 {
        tracing::warn!(
            items_without_meta,
            "items without meta use their id as text"
        );
    }
    std::fs::write(
        dir.path().join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;

    let job_id = &manifest.job.id;
    let mut parts = Vec::new();
    for (name, rows) in [
        ("users.parquet", Some(summary.dataset.users)),
        ("items.parquet", Some(summary.dataset.items)),
        ("summary.json", None),
    ] {
        let path = dir.path().join(name);
        let key = format!("data/{name}");
        store
            .put_file(&job_key(job_id, &key), &path)
            .await
            .with_context(|| format!("uploading {key}"))?;
        let (bytes, sha256) = markers::file_digest(&path)?;
        parts.push(PartInfo {
            key,
            rows,
            bytes,
            sha256,
        });
    }
    let manifest = StageManifest {
        stage: Stage::Prepare,
        job_id: job_id.clone(),
        parts,
    };
    markers::write_stage_manifest(store.as_ref(), &manifest).await?;
    Ok((summary, manifest.parts))
}

fn spinner(visible: bool, message: &'static str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn byte_bar(visible: bool, len: u64, message: String) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(message);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Opens an input for line reading, with a byte progress bar for local files.
fn open_input(
    location: &Location,
    s3: &S3Settings,
    progress: bool,
    what: &str,
) -> Result<LineReader> {
    match location {
        Location::Local(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("{}: cannot open", path.display()))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let bar = byte_bar(progress, len, format!("reading {what}"));
            let reader: Box<dyn Read + Send> = Box::new(bar.wrap_read(file));
            Ok(LineReader::new(path.display().to_string(), reader)?)
        }
        Location::S3 { .. } => Ok(LineReader::open(location, s3)?),
    }
}

/// Streams the interaction file, then the meta file, into a corpus.
pub fn ingest(
    format: DataFormat,
    on_error: super::OnError,
    reviews: &Location,
    meta: Option<&Location>,
    s3: &S3Settings,
    progress: bool,
) -> Result<Corpus> {
    let mut reader = open_input(reviews, s3, progress, "interactions")?;
    let mut builder = match format {
        DataFormat::Recbole => recbole::read_interactions(&mut reader, on_error)?,
        DataFormat::Mcauley2018 | DataFormat::Mcauley2014 => {
            mcauley::read_reviews(&mut reader, on_error)?
        }
    };
    if let Some(meta) = meta {
        let mut reader = open_input(meta, s3, progress, "item meta")?;
        match format {
            DataFormat::Recbole => recbole::read_items(&mut reader, &mut builder)?,
            DataFormat::Mcauley2018 | DataFormat::Mcauley2014 => {
                mcauley::read_meta(&mut reader, &mut builder)?
            }
        }
    }
    Ok(builder.finish())
}

/// The text an item is known by: title, brand and category path, each when present, and the
/// description when asked for. Items without any of these fall back to their id.
///
/// Form: `{title}. Brand: {brand}. Category: {a} > {b}. {description}`
pub fn render_item_text(id: &str, meta: Option<&ItemMeta>, include_description: bool) -> String {
    let Some(meta) = meta else {
        return id.to_string();
    };
    let mut parts = Vec::new();
    if let Some(title) = meta.title.as_deref().filter(|t| !t.is_empty()) {
        parts.push(title.to_string());
    }
    if let Some(brand) = meta.brand.as_deref().filter(|b| !b.is_empty()) {
        parts.push(format!("Brand: {brand}"));
    }
    if !meta.categories.is_empty() {
        parts.push(format!("Category: {}", meta.categories.join(" > ")));
    }
    if include_description
        && let Some(description) = meta.description.as_deref().filter(|d| !d.is_empty())
    {
        parts.push(description.to_string());
    }
    if parts.is_empty() {
        return id.to_string();
    }
    let mut text = parts.join(". ");
    if !text.ends_with(['.', '!', '?']) {
        text.push('.');
    }
    text
}

fn write_users(corpus: &Corpus, split: &Split, path: &std::path::Path) -> Result<()> {
    let mut file = ParquetFile::<UsersBuilder>::create(path)?;
    for u in 0..split.user_source.len() {
        file.push(|builder| {
            builder.push(UserRowRef {
                user_id: corpus.users.get(split.user_source[u]),
                user_index: u as u32,
                history: split.history.get(u),
                history_length: split.history_length[u],
                valid_item: split.valid_item[u],
                test_item: split.test_item[u],
                shard: split.shard[u],
                in_teacher_sample: split.in_teacher_sample[u],
            })
        })?;
    }
    file.close()
}

fn write_items(
    corpus: &Corpus,
    split: &Split,
    include_description: bool,
    path: &std::path::Path,
) -> Result<()> {
    let mut file = ParquetFile::<ItemsBuilder>::create(path)?;
    for (index, &source) in split.item_source.iter().enumerate() {
        let id = corpus.items.get(source);
        let meta = corpus.meta.get(source as usize);
        let text = render_item_text(id, meta.as_ref(), include_description);
        let has_meta = meta.is_some();
        let meta = meta.unwrap_or_default();
        let row = ItemRow {
            item_index: index as u32,
            item_id: id.to_string(),
            title: meta.title,
            brand: meta.brand,
            categories: meta.categories,
            description: meta.description,
            has_meta,
            text,
            train_count: split.item_train_count[index],
        };
        file.push(|builder| builder.push(&row))?;
    }
    file.close()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_text_uses_what_the_meta_has() {
        let meta = ItemMeta {
            title: Some("Halo 3".into()),
            brand: Some("Microsoft".into()),
            categories: vec!["Video Games".into(), "Xbox 360".into()],
            description: Some("Finish the fight".into()),
        };
        assert_eq!(
            render_item_text("B1", Some(&meta), false),
            "Halo 3. Brand: Microsoft. Category: Video Games > Xbox 360."
        );
        assert_eq!(
            render_item_text("B1", Some(&meta), true),
            "Halo 3. Brand: Microsoft. Category: Video Games > Xbox 360. Finish the fight."
        );
        assert_eq!(render_item_text("B1", None, true), "B1");
        assert_eq!(
            render_item_text("B1", Some(&ItemMeta::default()), true),
            "B1"
        );
    }
}
