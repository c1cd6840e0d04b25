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
    user_runs: Vec<UserRun>,
    item: Vec<u32>,
    /// Timestamps, when the source has them; otherwise file order is time order.
    time: Option<Vec<f64>>,
    meta: MetaTable,
    on_error: OnError,
    stats: IngestStats,
}

impl std::fmt::Debug for CorpusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpusBuilder")
            .field("users", &self.users.len())
            .field("items", &self.items.len())
            .field("interactions", &self.item.len())
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
            user_runs: Vec::new(),
            item: Vec::new(),
            time: timed.then(Vec::new),
            meta: MetaTable::default(),
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
        match self.user_runs.last_mut() {
            Some(run) if run.user == u => run.len += 1,
            _ => self.user_runs.push(UserRun { user: u, len: 1 }),
        }
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
                self.meta.set(i as usize, &meta);
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
    pub fn malformed(
        &mut self,
        reader: &LineReader,
        message: impl Into<String>,
    ) -> Result<(), SourceError> {
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
        self.meta.ensure_len(self.items.len());
        Corpus {
            users: self.users,
            items: self.items,
            user_runs: self.user_runs,
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
    /// Interaction columns, in file order. The user column is run-length encoded: most files
    /// list a user's interactions together, which makes it nearly free.
    pub user_runs: Vec<UserRun>,
    pub item: Vec<u32>,
    pub time: Option<Vec<f64>>,
    /// Indexed by item index; `None` where the source had no meta record.
    pub meta: MetaTable,
    pub stats: IngestStats,
}

/// `len` consecutive interactions of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRun {
    pub user: u32,
    pub len: u32,
}

impl Corpus {
    pub fn interactions(&self) -> usize {
        self.item.len()
    }

    /// The user of each interaction, in file order.
    pub fn user_column(&self) -> impl Iterator<Item = u32> + '_ {
        self.user_runs
            .iter()
            .flat_map(|run| std::iter::repeat_n(run.user, run.len as usize))
    }

    /// The meta of an item by its source id (`None` for unknown ids and items without meta).
    pub fn meta_of(&self, item: &str) -> Option<ItemMeta> {
        self.meta.get(self.items.lookup(item)? as usize)
    }

    /// (user id, item id, time) of each interaction in file order: for tests and debugging.
    pub fn triples(&self) -> Vec<(String, String, Option<f64>)> {
        self.user_column()
            .enumerate()
            .map(|(k, user)| {
                (
                    self.users.get(user).to_string(),
                    self.items.get(self.item[k]).to_string(),
                    self.time.as_ref().map(|t| t[k]),
                )
            })
            .collect()
    }
}

/// Item meta for every item, all text in one arena: a meta record costs 16 bytes plus its text,
/// instead of four heap strings with their headers and allocator overhead per item.
#[derive(Debug, Default)]
pub struct MetaTable {
    text: String,
    entries: Vec<MetaEntry>,
}

#[derive(Debug, Clone, Copy, Default)]
struct MetaEntry {
    start: u64,
    len: u32,
    /// `PRESENT` plus one bit per optional field that is `Some`.
    flags: u8,
}

const PRESENT: u8 = 1;
const HAS_TITLE: u8 = 2;
const HAS_BRAND: u8 = 4;
const HAS_DESCRIPTION: u8 = 8;
/// Separates fields, and categories within their field. Control characters are stripped from
/// the text first, so they cannot clash.
const FIELD: char = '\u{1e}';
const CATEGORY: char = '\u{1f}';

impl MetaTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn ensure_len(&mut self, len: usize) {
        if self.entries.len() < len {
            self.entries.resize(len, MetaEntry::default());
        }
    }

    /// Stores `meta` for item `index`, replacing what was there (the old text stays in the
    /// arena: replacing is rare, a duplicate meta line).
    pub fn set(&mut self, index: usize, meta: &ItemMeta) {
        self.ensure_len(index + 1);
        let start = self.text.len();
        let mut flags = PRESENT;
        let push = |text: &mut String, value: &str| {
            text.extend(value.chars().filter(|c| !c.is_control()));
        };
        if let Some(title) = &meta.title {
            flags |= HAS_TITLE;
            push(&mut self.text, title);
        }
        self.text.push(FIELD);
        if let Some(brand) = &meta.brand {
            flags |= HAS_BRAND;
            push(&mut self.text, brand);
        }
        self.text.push(FIELD);
        for (k, category) in meta.categories.iter().enumerate() {
            if k > 0 {
                self.text.push(CATEGORY);
            }
            push(&mut self.text, category);
        }
        self.text.push(FIELD);
        if let Some(description) = &meta.description {
            flags |= HAS_DESCRIPTION;
            push(&mut self.text, description);
        }
        let len = u32::try_from(self.text.len() - start).expect("one item's meta is under 4 GiB");
        self.entries[index] = MetaEntry {
            start: start as u64,
            len,
            flags,
        };
    }

    pub fn has(&self, index: usize) -> bool {
        self.entries
            .get(index)
            .is_some_and(|e| e.flags & PRESENT != 0)
    }

    /// The meta of item `index`, or `None` when the source had none.
    pub fn get(&self, index: usize) -> Option<ItemMeta> {
        let entry = *self.entries.get(index)?;
        if entry.flags & PRESENT == 0 {
            return None;
        }
        let start = entry.start as usize;
        let text = &self.text[start..start + entry.len as usize];
        let mut fields = text.split(FIELD);
        let mut next = |flag: u8| {
            let value = fields.next().unwrap_or_default();
            (flag == 0 || entry.flags & flag != 0).then(|| value.to_string())
        };
        let title = next(HAS_TITLE);
        let brand = next(HAS_BRAND);
        let categories = next(0).unwrap_or_default();
        let description = next(HAS_DESCRIPTION);
        Some(ItemMeta {
            title,
            brand,
            categories: if categories.is_empty() {
                Vec::new()
            } else {
                categories.split(CATEGORY).map(str::to_string).collect()
            },
            description,
        })
    }

    /// Every item's meta in index order.
    pub fn iter(&self) -> impl Iterator<Item = Option<ItemMeta>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_table_round_trips_every_shape() {
        let full = ItemMeta {
            title: Some("Zelda\u{1e}".into()),
            brand: Some(String::new()),
            categories: vec!["Games".into(), "".into(), "Switch".into()],
            description: Some("An \"adventure\"".into()),
        };
        let empty = ItemMeta::default();
        let mut table = MetaTable::default();
        table.set(2, &full);
        table.set(0, &empty);
        table.ensure_len(4);
        let expected_full = ItemMeta {
            title: Some("Zelda".into()),
            ..full.clone()
        };
        assert_eq!(table.get(2), Some(expected_full));
        assert_eq!(table.get(0), Some(ItemMeta::default()));
        assert_eq!(table.get(1), None);
        assert_eq!(table.get(3), None);
        assert_eq!(table.get(9), None);
        assert!(table.has(0) && !table.has(1));
        table.set(2, &empty);
        assert_eq!(table.get(2), Some(ItemMeta::default()));
        assert_eq!(table.iter().filter(Option::is_some).count(), 2);
    }
}
