//! The in-memory result of ingestion: interned users and items, the interaction log, item meta.
//!
//! Format readers (`recbole`, `mcauley`) push into a [`CorpusBuilder`]; preprocessing turns the
//! finished [`Corpus`] into per-user histories. Interactions are kept as parallel columns of
//! dense indices so that tens of millions of them fit in a few hundred MB.

use super::intern::Interner;
use super::source::{LineReader, SourceError};
use serde::{Deserialize, Serialize};

/// What to do with a malformed input line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop with an error naming the file and line.
    #[default]
    Fail,
    /// Skip the line and count it in the summary.
    Skip,
}

/// Descriptive fields of an item, as far as the source has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemMeta {
    pub title: Option<String>,
    pub brand: Option<String>,
    /// Category path, most general first.
    pub categories: Vec<String>,
    pub description: Option<String>,
}

/// Counters reported in the prepare summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestStats {
    /// Interaction lines read (header excluded).
    pub interaction_lines: u64,
    /// Meta lines read (header excluded).
    pub meta_lines: u64,
    /// Malformed lines skipped under `on_error = "skip"`, interactions and meta together.
    pub skipped_lines: u64,
    /// The first few skipped lines' errors, for the summary.
    pub skipped_examples: Vec<String>,
    /// Meta records for items that never occur in the interactions (ignored).
    pub meta_unused: u64,
}

const SKIPPED_EXAMPLES: usize = 10;

/// Accumulates interactions and meta while a reader streams a file.
pub struct CorpusBuilder {
    users: Interner,
    items: Interner,
    user: Vec<u32>,
    item: Vec<u32>,
    /// Timestamps, when the source has them; otherwise file order is time order.
    time: Option<Vec<f64>>,
    meta: Vec<Option<ItemMeta>>,
    on_error: OnError,
    stats: IngestStats,
}

impl std::fmt::Debug for CorpusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpusBuilder")
            .field("users", &self.users.len())
            .field("items", &self.items.len())
            .field("interactions", &self.user.len())
            .field("timed", &self.time.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl CorpusBuilder {
    /// `timed`: whether interactions carry timestamps (otherwise the order they arrive in is the
    /// time order, as in RecBole `item_id_list` files).
    pub fn new(timed: bool, on_error: OnError) -> Self {
        Self {
            users: Interner::new(),
            items: Interner::new(),
            user: Vec::new(),
            item: Vec::new(),
            time: timed.then(Vec::new),
            meta: Vec::new(),
            on_error,
            stats: IngestStats::default(),
        }
    }

    pub fn is_timed(&self) -> bool {
        self.time.is_some()
    }

    /// Records one interaction. `time` must be `Some` exactly when the builder is timed.
    pub fn push(&mut self, user: &str, item: &str, time: Option<f64>) {
        let u = self.users.intern(user);
        let i = self.items.intern(item);
        self.user.push(u);
        self.item.push(i);
        if let Some(times) = &mut self.time {
            times.push(time.expect("a timed corpus needs a timestamp for every interaction"));
        }
    }

    /// Attaches meta to an item seen in the interactions; meta of unseen items is counted and dropped.
    /// Returns whether the item was known.
    pub fn set_meta(&mut self, item: &str, meta: ItemMeta) -> bool {
        match self.items.lookup(item) {
            Some(i) => {
                let i = i as usize;
                if self.meta.len() <= i {
                    self.meta.resize(self.items.len(), None);
                }
                self.meta[i] = Some(meta);
                true
            }
            None => {
                self.stats.meta_unused += 1;
                false
            }
        }
    }

    /// Whether `item` occurs in the interactions read so far (lets meta readers skip parsing).
    pub fn knows_item(&self, item: &str) -> bool {
        self.items.lookup(item).is_some()
    }

    pub fn count_interaction_line(&mut self) {
        self.stats.interaction_lines += 1;
    }

    pub fn count_meta_line(&mut self) {
        self.stats.meta_lines += 1;
    }

    /// Applies the error policy to a malformed line: `Err` under `fail`, a counted skip under `skip`.
    pub fn malformed(&mut self, reader: &LineReader, message: impl Into<String>) -> Result<(), SourceError> {
        let error = reader.error(message);
        match self.on_error {
            OnError::Fail => Err(error),
            OnError::Skip => {
                self.stats.skipped_lines += 1;
                if self.stats.skipped_examples.len() < SKIPPED_EXAMPLES {
                    self.stats.skipped_examples.push(error.to_string());
                }
                tracing::debug!(%error, "skipped malformed line");
                Ok(())
            }
        }
    }

    pub fn finish(mut self) -> Corpus {
        self.meta.resize(self.items.len(), None);
        Corpus {
            users: self.users,
            items: self.items,
            user: self.user,
            item: self.item,
            time: self.time,
            meta: self.meta,
            stats: self.stats,
        }
    }
}

/// Everything ingestion read, before preprocessing.
pub struct Corpus {
    pub users: Interner,
    pub items: Interner,
    /// Interaction columns, in file order.
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub time: Option<Vec<f64>>,
    /// Indexed by item index; `None` where the source had no meta record.
    pub meta: Vec<Option<ItemMeta>>,
    pub stats: IngestStats,
}

impl Corpus {
    pub fn interactions(&self) -> usize {
        self.user.len()
    }
}
