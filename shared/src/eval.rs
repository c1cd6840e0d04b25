//! The evaluation protocol of SLIM.md, shared by every recommender (pure Rust, no model code).
//!
//! - **Candidates.** Leave-one-out: each user's target (the validation item or the test item)
//!   is ranked against [`NEGATIVES`] random items the user never interacted with: not in the
//!   stored history, not the validation item, not the test item. Negatives are drawn without
//!   replacement from a ChaCha8 stream keyed by `(seed, split, user_index)`, so every model sees
//!   the same candidates for a seed whatever the order users are visited in. The stored history
//!   is truncated to `max_history`, so items older than that cannot be excluded.
//!   Candidates are `[positive, negatives...]`.
//! - **Rank and ties.** The positive's 0-based rank is the number of negatives whose score is
//!   greater than *or equal to* its own: ties count against the positive, so a constant model
//!   ranks every positive last and gets no credit. A NaN on either side also counts against it.
//! - **Accuracy.** `NDCG@K = 1 / log2(rank + 2)` and `HR@K = 1` when `rank < K`, else 0.
//! - **Popularity bias** (after Vargas & Castells, RecSys 2011, relevance-aware with the NDCG
//!   discount and no list normalisation; only the positive is relevant, so a user scores only
//!   when the positive is in the top K), with `c(i)` the item's `train_count`, `C` the sum of
//!   all train counts and `c_max` their maximum:
//!   - `EPC@K = disc(rank) * (1 - c(i) / c_max)` (expected popularity complement);
//!   - `EFD@K = disc(rank) * -log2(max(c(i), 1) / C)` (expected free discovery, in bits).
//!
//!   Both are 0 for a miss; higher means hits on less popular items.
//! - **Aggregation.** Means over users, overall and by history-length bucket ([`Buckets`]:
//!   `0-4`, `5-9`, `10-19`, `20+` training items before truncation by default); across seeds
//!   the mean and the sample standard deviation (n - 1).
//! - **Cold-start items.** The users whose target item occurs in no training history
//!   (`train_count` 0) form one more group, [`COLD_START`]: an ID-based model has never
//!   updated such an item's ID embedding, an ID-agnostic model scores it from its text alone.

use crate::schema::{self, UserRow};
use anyhow::{Context, Result};
use arrow::array::{ArrayRef, ListBuilder, RecordBatch, StringArray, UInt32Array, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

/// Random negatives per evaluated user (SLIM.md: 100, so 101 candidates).
pub const NEGATIVES: usize = 100;

/// The cut-offs reported.
pub const K: usize = 10;
pub const K_WIDE: usize = 20;

/// Which target a user is evaluated on; each split draws its own candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The second-to-last item: early stopping.
    Valid,
    /// The last item: the reported numbers.
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// The items of one user the protocol needs.
#[derive(Debug, Clone, Copy)]
pub struct UserItems<'a> {
    pub user_index: u32,
    /// Training history, oldest first.
    pub history: &'a [u32],
    pub valid_item: u32,
    pub test_item: u32,
}

impl<'a> From<&'a UserRow> for UserItems<'a> {
    fn from(row: &'a UserRow) -> Self {
        Self {
            user_index: row.user_index,
            history: &row.history,
            valid_item: row.valid_item,
            test_item: row.test_item,
        }
    }
}

impl UserItems<'_> {
    /// The split's positive.
    pub fn target(&self, split: Split) -> u32 {
        match split {
            Split::Valid => self.valid_item,
            Split::Test => self.test_item,
        }
    }

    fn interacted(&self) -> HashSet<u32> {
        let mut seen: HashSet<u32> = self.history.iter().copied().collect();
        seen.insert(self.valid_item);
        seen.insert(self.test_item);
        seen
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvalError {
    #[error(
        "user {user_index}: only {available} of {num_items} items are not in the user's history, \
         {needed} negatives are needed; use fewer negatives or a larger catalogue"
    )]
    TooFewItems {
        user_index: u32,
        available: usize,
        num_items: u32,
        needed: usize,
    },
    #[error("user {user_index}: item {item} is outside the catalogue of {num_items} items")]
    ItemOutOfRange {
        user_index: u32,
        item: u32,
        num_items: u32,
    },
}

/// Draws evaluation candidates: deterministic in `(seed, split, user_index)` only.
#[derive(Debug, Clone, Copy)]
pub struct CandidateSampler {
    pub seed: u64,
    pub num_items: u32,
    pub negatives: usize,
}

impl CandidateSampler {
    /// The protocol's sampler: [`NEGATIVES`] negatives over items `0..num_items`.
    pub fn new(seed: u64, num_items: u32) -> Self {
        Self {
            seed,
            num_items,
            negatives: NEGATIVES,
        }
    }

    pub fn with_negatives(self, negatives: usize) -> Self {
        Self { negatives, ..self }
    }

    /// The user's ChaCha8 stream: the seed picks the key, `(user, split)` the stream, so users
    /// and splits never share random numbers.
    fn rng(&self, user_index: u32, split: Split) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream((u64::from(user_index) << 1) | u64::from(split == Split::Test));
        rng
    }

    /// `[positive, negatives...]` for one user.
    pub fn candidates(&self, user: &UserItems<'_>, split: Split) -> Result<Vec<u32>, EvalError> {
        let positive = user.target(split);
        let seen = user.interacted();
        if let Some(&item) = seen.iter().find(|&&i| i >= self.num_items) {
            return Err(EvalError::ItemOutOfRange {
                user_index: user.user_index,
                item,
                num_items: self.num_items,
            });
        }
        let available = self.num_items as usize - seen.len();
        if available < self.negatives {
            return Err(EvalError::TooFewItems {
                user_index: user.user_index,
                available,
                num_items: self.num_items,
                needed: self.negatives,
            });
        }
        let mut rng = self.rng(user.user_index, split);
        let mut out = Vec::with_capacity(1 + self.negatives);
        out.push(positive);
        if available >= 2 * self.negatives {
            // Rejection sampling: cheap while most items are allowed.
            let mut taken = HashSet::with_capacity(self.negatives);
            while out.len() <= self.negatives {
                let item = rng.random_range(0..self.num_items);
                if !seen.contains(&item) && taken.insert(item) {
                    out.push(item);
                }
            }
        } else {
            // Dense users: a partial Fisher-Yates shuffle of the allowed items.
            let mut pool: Vec<u32> = (0..self.num_items).filter(|i| !seen.contains(i)).collect();
            for k in 0..self.negatives {
                let j = rng.random_range(k..pool.len());
                pool.swap(k, j);
            }
            out.extend_from_slice(&pool[..self.negatives]);
        }
        Ok(out)
    }

    /// Candidates for many users, in their order.
    pub fn candidates_for<'a>(
        &self,
        users: impl IntoIterator<Item = UserItems<'a>>,
        split: Split,
    ) -> Result<Candidates, EvalError> {
        let mut user_index = Vec::new();
        let mut items = Vec::new();
        for user in users {
            items.extend(self.candidates(&user, split)?);
            user_index.push(user.user_index);
        }
        Ok(Candidates {
            split,
            seed: self.seed,
            width: 1 + self.negatives,
            user_index,
            items,
        })
    }
}

/// Candidate lists of many users, flat: row `r` is `items[r * width..(r + 1) * width]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    pub split: Split,
    pub seed: u64,
    /// 1 + negatives.
    pub width: usize,
    pub user_index: Vec<u32>,
    pub items: Vec<u32>,
}

impl Candidates {
    pub fn len(&self) -> usize {
        self.user_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user_index.is_empty()
    }

    /// Row `r`: `[positive, negatives...]`.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.items[r * self.width..(r + 1) * self.width]
    }

    /// The rows as Parquet ([`CANDIDATES`]), so a reference implementation outside slim ranks
    /// exactly the same items.
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        let mut lists = ListBuilder::new(UInt32Builder::new());
        for r in 0..self.len() {
            lists.values().append_slice(self.row(r));
            lists.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(self.user_index.clone())),
            Arc::new(StringArray::from(vec![self.split.name(); self.len()])),
            Arc::new(lists.finish()),
        ];
        let batch = RecordBatch::try_new(CANDIDATES.clone(), columns)?;
        let mut bytes = Vec::new();
        let mut writer = schema::writer(&mut bytes, &CANDIDATES)?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(bytes)
    }
}

/// Exported candidates: one row per user and split.
pub static CANDIDATES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("user_index", DataType::UInt32, false),
        // "valid" or "test".
        Field::new("split", DataType::Utf8, false),
        // item_index values: the positive first, then the negatives.
        Field::new(
            "candidates",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
            false,
        ),
    ]))
});

/// The positive's 0-based rank among `scores` (positive at index 0): the number of negatives
/// scored greater than or equal to it (ties and NaN count against the positive).
pub fn rank_of_positive(scores: &[f32]) -> usize {
    let Some((&positive, negatives)) = scores.split_first() else {
        return 0;
    };
    negatives
        .iter()
        .filter(|&&s| s.partial_cmp(&positive) != Some(std::cmp::Ordering::Less))
        .count()
}

/// The rank discount of NDCG: `1 / log2(rank + 2)`.
pub fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 2) as f64).log2()
}

pub fn ndcg_at(rank: usize, k: usize) -> f64 {
    if rank < k { discount(rank) } else { 0.0 }
}

pub fn hit_at(rank: usize, k: usize) -> f64 {
    if rank < k { 1.0 } else { 0.0 }
}

/// Item popularity from `train_count` (occurrences in training histories: no leakage).
#[derive(Debug, Clone)]
pub struct Popularity {
    counts: Vec<u32>,
    max: u32,
    total: u64,
}

impl Popularity {
    /// `counts[i]` is item i's train count.
    pub fn new(counts: Vec<u32>) -> Self {
        let max = counts.iter().copied().max().unwrap_or(0);
        let total = counts.iter().map(|&c| u64::from(c)).sum();
        Self { counts, max, total }
    }

    pub fn count(&self, item: u32) -> u32 {
        self.counts.get(item as usize).copied().unwrap_or(0)
    }

    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// `1 - c(i) / c_max`: 0 for the most popular item, 1 for an item never seen in training.
    pub fn complement(&self, item: u32) -> f64 {
        if self.max == 0 {
            return 1.0;
        }
        1.0 - f64::from(self.count(item)) / f64::from(self.max)
    }

    /// `-log2(max(c(i), 1) / C)`: the surprise of the item in bits.
    pub fn free_discovery(&self, item: u32) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        -(f64::from(self.count(item).max(1)) / self.total as f64).log2()
    }
}

/// One user's metric values (or their means).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub ndcg10: f64,
    pub hr10: f64,
    pub hr20: f64,
    pub efd10: f64,
    pub epc10: f64,
}

impl Metrics {
    /// The names and values, in report order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("ndcg@10", self.ndcg10),
            ("hr@10", self.hr10),
            ("hr@20", self.hr20),
            ("efd@10", self.efd10),
            ("epc@10", self.epc10),
        ]
    }

    /// Metrics of one user whose positive `item` got 0-based `rank`.
    pub fn of_rank(rank: usize, item: u32, popularity: &Popularity) -> Self {
        let ndcg10 = ndcg_at(rank, K);
        Self {
            ndcg10,
            hr10: hit_at(rank, K),
            hr20: hit_at(rank, K_WIDE),
            efd10: ndcg10 * popularity.free_discovery(item),
            epc10: ndcg10 * popularity.complement(item),
        }
    }

    /// Metrics of one user from the scores of its candidates (positive first).
    pub fn of_scores(candidates: &[u32], scores: &[f32], popularity: &Popularity) -> Self {
        assert_eq!(
            candidates.len(),
            scores.len(),
            "one score per candidate expected"
        );
        Self::of_rank(rank_of_positive(scores), candidates[0], popularity)
    }

    fn add(&mut self, other: &Metrics) {
        self.ndcg10 += other.ndcg10;
        self.hr10 += other.hr10;
        self.hr20 += other.hr20;
        self.efd10 += other.efd10;
        self.epc10 += other.epc10;
    }

    fn scale(&self, by: f64) -> Metrics {
        Metrics {
            ndcg10: self.ndcg10 * by,
            hr10: self.hr10 * by,
            hr20: self.hr20 * by,
            efd10: self.efd10 * by,
            epc10: self.epc10 * by,
        }
    }
}

/// History-length buckets for the sparsity breakdown: bucket `b` holds lengths in
/// `[edges[b - 1], edges[b])`, the first from 0, the last unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    edges: Vec<u32>,
}

impl Default for Buckets {
    /// `0-4`, `5-9`, `10-19`, `20+`.
    fn default() -> Self {
        Self::new(vec![5, 10, 20])
    }
}

impl Buckets {
    /// `edges` must be increasing and positive.
    pub fn new(edges: Vec<u32>) -> Self {
        assert!(
            edges.windows(2).all(|w| w[0] < w[1]) && edges.first().is_none_or(|&e| e > 0),
            "bucket edges must be positive and increasing: {edges:?}"
        );
        Self { edges }
    }

    pub fn len(&self) -> usize {
        self.edges.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn of(&self, history_length: u32) -> usize {
        self.edges.partition_point(|&e| e <= history_length)
    }

    pub fn label(&self, bucket: usize) -> String {
        let low = if bucket == 0 {
            0
        } else {
            self.edges[bucket - 1]
        };
        match self.edges.get(bucket) {
            Some(&high) if high - 1 == low => format!("{low}"),
            Some(&high) => format!("{low}-{}", high - 1),
            None => format!("{low}+"),
        }
    }
}

/// The group of users whose target item is in no training history.
pub const COLD_START: &str = "cold-start";

/// Sums metrics over users, overall, by history-length bucket and for cold-start targets.
#[derive(Debug, Clone)]
pub struct Evaluation {
    buckets: Buckets,
    total: (usize, Metrics),
    by_bucket: Vec<(usize, Metrics)>,
    cold: (usize, Metrics),
}

/// Mean metrics over a group of users.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupMetrics {
    /// "all" or a bucket label.
    pub group: String,
    pub users: usize,
    pub metrics: Metrics,
}

/// The outcome of one evaluation: overall means first, then one row per bucket, then the
/// cold-start group ([`COLD_START`]; no users when every target was trained on).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    pub overall: GroupMetrics,
    pub buckets: Vec<GroupMetrics>,
    pub cold_start: GroupMetrics,
}

impl Evaluation {
    pub fn new(buckets: Buckets) -> Self {
        let by_bucket = vec![(0, Metrics::default()); buckets.len()];
        Self {
            buckets,
            total: (0, Metrics::default()),
            by_bucket,
            cold: (0, Metrics::default()),
        }
    }

    /// Adds one user's metrics; `cold_start`: its target is in no training history.
    pub fn add(&mut self, history_length: u32, cold_start: bool, metrics: &Metrics) {
        self.total.0 += 1;
        self.total.1.add(metrics);
        let bucket = &mut self.by_bucket[self.buckets.of(history_length)];
        bucket.0 += 1;
        bucket.1.add(metrics);
        if cold_start {
            self.cold.0 += 1;
            self.cold.1.add(metrics);
        }
    }

    /// Adds one user from its candidates' scores (positive first); the positive's train
    /// count decides whether it is a cold-start target.
    pub fn add_scores(
        &mut self,
        history_length: u32,
        candidates: &[u32],
        scores: &[f32],
        popularity: &Popularity,
    ) {
        self.add(
            history_length,
            popularity.count(candidates[0]) == 0,
            &Metrics::of_scores(candidates, scores, popularity),
        );
    }

    pub fn report(&self) -> EvalReport {
        let mean = |group: String, (users, sum): &(usize, Metrics)| GroupMetrics {
            group,
            users: *users,
            metrics: sum.scale(if *users == 0 {
                0.0
            } else {
                1.0 / *users as f64
            }),
        };
        EvalReport {
            overall: mean("all".into(), &self.total),
            buckets: self
                .by_bucket
                .iter()
                .enumerate()
                .map(|(b, sum)| mean(self.buckets.label(b), sum))
                .collect(),
            cold_start: mean(COLD_START.into(), &self.cold),
        }
    }
}

/// Mean and sample standard deviation of one metric across runs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for fewer than two runs.
    pub std: f64,
    pub runs: usize,
}

pub fn mean_std(values: &[f64]) -> MeanStd {
    let n = values.len();
    if n == 0 {
        return MeanStd {
            mean: 0.0,
            std: 0.0,
            runs: 0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n < 2 {
        0.0
    } else {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    };
    MeanStd { mean, std, runs: n }
}

/// Every metric's mean and standard deviation across runs (seeds), in [`Metrics::named`] order.
pub fn across_runs(runs: &[Metrics]) -> Vec<(&'static str, MeanStd)> {
    let columns: Vec<[(&str, f64); 5]> = runs.iter().map(Metrics::named).collect();
    Metrics::default()
        .named()
        .iter()
        .enumerate()
        .map(|(m, (name, _))| {
            let values: Vec<f64> = columns.iter().map(|c| c[m].1).collect();
            (*name, mean_std(&values))
        })
        .collect()
}

/// Reads exported candidates back (tests and tools).
pub fn read_candidates(bytes: bytes::Bytes, name: &str) -> Result<Vec<(u32, String, Vec<u32>)>> {
    use arrow::array::AsArray;
    use arrow::datatypes::UInt32Type;
    let mut rows = Vec::new();
    for batch in schema::read_batches(bytes, &CANDIDATES, name)? {
        let column = |c: &str| {
            batch
                .column_by_name(c)
                .with_context(|| format!("{name}: column {c}"))
        };
        let users = column("user_index")?.as_primitive::<UInt32Type>().clone();
        let splits = column("split")?.as_string::<i32>().clone();
        let lists = column("candidates")?.as_list::<i32>().clone();
        for r in 0..batch.num_rows() {
            rows.push((
                users.value(r),
                splits.value(r).to_string(),
                lists
                    .value(r)
                    .as_primitive::<UInt32Type>()
                    .values()
                    .to_vec(),
            ));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores with the positive (index 0) at 0-based `rank`: `rank` negatives above it, the
    /// rest below, 101 candidates.
    fn scores_with_rank(rank: usize) -> Vec<f32> {
        let mut scores = vec![0.5];
        scores.extend((0..NEGATIVES).map(|n| if n < rank { 1.0 } else { 0.0 }));
        scores
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn rank_one_is_a_full_hit() {
        let pop = Popularity::new(vec![1; 200]);
        let m = Metrics::of_rank(rank_of_positive(&scores_with_rank(0)), 0, &pop);
        assert_eq!(rank_of_positive(&scores_with_rank(0)), 0);
        assert!(close(m.ndcg10, 1.0));
        assert_eq!((m.hr10, m.hr20), (1.0, 1.0));
    }

    #[test]
    fn rank_ten_is_the_last_hit_at_ten_and_eleven_misses() {
        let pop = Popularity::new(vec![1; 200]);
        // 1-based rank 10: nine negatives above.
        let r10 = rank_of_positive(&scores_with_rank(9));
        assert_eq!(r10, 9);
        let m = Metrics::of_rank(r10, 0, &pop);
        assert!(close(m.ndcg10, 1.0 / 11f64.log2()), "{}", m.ndcg10);
        assert!(close(m.ndcg10, 0.289_064_826_317_888), "{}", m.ndcg10);
        assert_eq!((m.hr10, m.hr20), (1.0, 1.0));
        // 1-based rank 11.
        let m = Metrics::of_rank(rank_of_positive(&scores_with_rank(10)), 0, &pop);
        assert_eq!((m.ndcg10, m.hr10, m.hr20), (0.0, 0.0, 1.0));
    }

    #[test]
    fn rank_twenty_hits_at_twenty_and_twenty_one_misses() {
        let pop = Popularity::new(vec![1; 200]);
        let m = Metrics::of_rank(rank_of_positive(&scores_with_rank(19)), 0, &pop);
        assert_eq!((m.ndcg10, m.hr10, m.hr20), (0.0, 0.0, 1.0));
        let m = Metrics::of_rank(rank_of_positive(&scores_with_rank(20)), 0, &pop);
        assert_eq!((m.ndcg10, m.hr10, m.hr20), (0.0, 0.0, 0.0));
        // Hand-computed: 1-based rank 3 gives 1 / log2(4) = 0.5.
        assert!(close(ndcg_at(2, 10), 0.5));
    }

    #[test]
    fn ties_count_against_the_positive() {
        // Every score equal: the positive ranks last, a constant model gets nothing.
        let constant = vec![0.3_f32; 1 + NEGATIVES];
        assert_eq!(rank_of_positive(&constant), NEGATIVES);
        let m = Metrics::of_rank(rank_of_positive(&constant), 0, &Popularity::new(vec![1]));
        assert_eq!(m, Metrics::default());
        // Two negatives tie with the positive, one is above, the rest below: rank 3 (0-based).
        let mut scores = vec![0.5, 0.9, 0.5, 0.5];
        scores.extend([0.1; 97]);
        assert_eq!(rank_of_positive(&scores), 3);
        assert!(close(ndcg_at(3, 10), 1.0 / 5f64.log2()));
        // NaN never helps the positive.
        assert_eq!(rank_of_positive(&[f32::NAN, 0.0, 1.0]), 2);
        assert_eq!(rank_of_positive(&[0.5, f32::NAN, 0.0]), 1);
    }

    #[test]
    fn popularity_metrics_follow_the_documented_formulas() {
        // Counts 0, 2, 6: total 8, max 6.
        let pop = Popularity::new(vec![0, 2, 6]);
        assert!(close(pop.complement(2), 0.0));
        assert!(close(pop.complement(1), 1.0 - 2.0 / 6.0));
        assert!(close(pop.complement(0), 1.0));
        assert!(close(pop.free_discovery(1), 2.0)); // -log2(2/8)
        assert!(close(pop.free_discovery(0), 3.0)); // count floored at 1: -log2(1/8)
        // A hit at 1-based rank 3 on item 1: discount 0.5.
        let m = Metrics::of_rank(2, 1, &pop);
        assert!(close(m.epc10, 0.5 * (2.0 / 3.0)));
        assert!(close(m.efd10, 0.5 * 2.0));
        // A miss scores nothing however novel the item.
        assert_eq!(Metrics::of_rank(10, 0, &pop).efd10, 0.0);
    }

    fn user(user_index: u32, history: &[u32], valid: u32, test: u32) -> UserItems<'_> {
        UserItems {
            user_index,
            history,
            valid_item: valid,
            test_item: test,
        }
    }

    #[test]
    fn sampler_never_returns_the_users_own_items_and_no_duplicates() {
        let history: Vec<u32> = (0..60).map(|i| i * 2).collect();
        // 62 interacted items: 300 items take the rejection path, 170 the dense path.
        for num_items in [300, 170] {
            let sampler = CandidateSampler::new(7, num_items);
            for split in [Split::Valid, Split::Test] {
                for u in 0..50 {
                    let user = user(u, &history, 1, 3);
                    let c = sampler.candidates(&user, split).unwrap();
                    assert_eq!(c.len(), 1 + NEGATIVES);
                    assert_eq!(c[0], user.target(split));
                    let negatives: HashSet<u32> = c[1..].iter().copied().collect();
                    assert_eq!(negatives.len(), NEGATIVES, "duplicates in {c:?}");
                    for n in &negatives {
                        assert!(*n < num_items);
                        assert!(!history.contains(n) && *n != 1 && *n != 3, "own item {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn same_seed_same_candidates_whatever_the_order_and_other_seeds_differ() {
        let histories: Vec<Vec<u32>> = (0..20u32).map(|u| vec![u, u + 20, u + 40]).collect();
        let users: Vec<UserItems> = histories
            .iter()
            .enumerate()
            .map(|(u, h)| user(u as u32, h, 900, 901))
            .collect();
        let sampler = CandidateSampler::new(42, 1000);
        let forward = sampler
            .candidates_for(users.iter().copied(), Split::Test)
            .unwrap();
        let backward = sampler
            .candidates_for(users.iter().rev().copied(), Split::Test)
            .unwrap();
        for r in 0..users.len() {
            assert_eq!(forward.row(r), backward.row(users.len() - 1 - r));
        }
        let again = sampler
            .candidates_for(users.iter().copied(), Split::Test)
            .unwrap();
        assert_eq!(forward, again);
        let other = CandidateSampler::new(43, 1000)
            .candidates_for(users.iter().copied(), Split::Test)
            .unwrap();
        assert_ne!(forward.items, other.items);
        let valid = sampler
            .candidates_for(users.iter().copied(), Split::Valid)
            .unwrap();
        assert_ne!(forward.row(0)[1..], valid.row(0)[1..]);
        // Users differ from each other too.
        assert_ne!(forward.row(0)[1..], forward.row(1)[1..]);
    }

    #[test]
    fn sampler_reports_a_catalogue_too_small() {
        let history: Vec<u32> = (0..10).collect();
        let err = CandidateSampler::new(1, 105)
            .candidates(&user(3, &history, 10, 11), Split::Test)
            .unwrap_err();
        assert_eq!(
            err,
            EvalError::TooFewItems {
                user_index: 3,
                available: 93,
                num_items: 105,
                needed: 100
            }
        );
        assert!(err.to_string().starts_with("user 3: only 93 of 105"));
        let err = CandidateSampler::new(1, 5)
            .with_negatives(1)
            .candidates(&user(0, &[9], 1, 2), Split::Test)
            .unwrap_err();
        assert!(matches!(err, EvalError::ItemOutOfRange { item: 9, .. }));
    }

    #[test]
    fn buckets_split_by_history_length() {
        let b = Buckets::default();
        let labels: Vec<String> = (0..b.len()).map(|i| b.label(i)).collect();
        assert_eq!(labels, ["0-4", "5-9", "10-19", "20+"]);
        assert_eq!(
            [0, 4, 5, 9, 10, 19, 20, 500].map(|l| b.of(l)),
            [0, 0, 1, 1, 2, 2, 3, 3]
        );
        let pop = Popularity::new(vec![1; 10]);
        let mut e = Evaluation::new(b);
        e.add(3, false, &Metrics::of_rank(0, 0, &pop));
        e.add(4, false, &Metrics::of_rank(50, 0, &pop));
        e.add(25, false, &Metrics::of_rank(15, 0, &pop));
        let r = e.report();
        assert_eq!(r.overall.users, 3);
        assert!(close(r.overall.metrics.hr10, 1.0 / 3.0));
        assert!(close(r.overall.metrics.hr20, 2.0 / 3.0));
        assert_eq!(r.buckets[0].users, 2);
        assert!(close(r.buckets[0].metrics.ndcg10, 0.5));
        assert_eq!(r.buckets[1].users, 0);
        assert_eq!(r.buckets[1].metrics, Metrics::default());
        assert_eq!(
            (r.buckets[3].group.as_str(), r.buckets[3].metrics.hr20),
            ("20+", 1.0)
        );
        assert_eq!(
            (r.cold_start.group.as_str(), r.cold_start.users),
            ("cold-start", 0)
        );
        assert_eq!(r.cold_start.metrics, Metrics::default());
    }

    #[test]
    fn cold_start_groups_users_whose_target_was_never_trained_on() {
        // Item 0 is trained on twice, item 1 never.
        let pop = Popularity::new(vec![2, 0, 1]);
        let mut e = Evaluation::new(Buckets::default());
        // Positive item 1 (cold) at rank 0; positive item 0 (warm) at rank 2; positive item 1
        // (cold) at rank 11, a miss.
        e.add_scores(3, &[1, 0, 2], &[0.9, 0.5, 0.1], &pop);
        e.add_scores(7, &[0, 1, 2], &[0.1, 0.5, 0.9], &pop);
        let (mut missed, mut low) = (vec![1], vec![0.0]);
        missed.extend([0; 11]);
        low.extend([0.5; 11]);
        e.add_scores(12, &missed, &low, &pop);
        let r = e.report();
        assert_eq!(r.overall.users, 3);
        assert_eq!(r.cold_start.users, 2);
        // One cold hit at rank 0 and one cold miss: NDCG@10 (1 + 0) / 2.
        assert!(close(r.cold_start.metrics.ndcg10, 0.5));
        assert!(close(r.cold_start.metrics.hr10, 0.5));
        // A never-trained item is maximally novel: EPC 1, EFD -log2(1 / 3) bits at discount 1.
        assert!(close(r.cold_start.metrics.epc10, 0.5));
        assert!(close(r.cold_start.metrics.efd10, 0.5 * 3f64.log2()));
        // The buckets still partition all users.
        assert_eq!(r.buckets.iter().map(|b| b.users).sum::<usize>(), 3);
    }

    #[test]
    fn mean_and_sample_std_across_seeds() {
        let s = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!(close(s.mean, 5.0));
        assert!(close(s.std, (32.0f64 / 7.0).sqrt()));
        assert_eq!(mean_std(&[3.0]).std, 0.0);
        let runs = [
            Metrics {
                ndcg10: 0.2,
                ..Default::default()
            },
            Metrics {
                ndcg10: 0.4,
                ..Default::default()
            },
        ];
        let agg = across_runs(&runs);
        assert_eq!(agg[0].0, "ndcg@10");
        assert!(close(agg[0].1.mean, 0.3));
        assert!(close(agg[0].1.std, 0.02f64.sqrt()));
        assert_eq!(agg[1].1.mean, 0.0);
    }

    #[test]
    fn candidates_round_trip_through_parquet() {
        let h = [1, 2, 3];
        let users = [user(0, &h, 4, 5), user(7, &h, 6, 8)];
        let c = CandidateSampler::new(5, 200)
            .candidates_for(users, Split::Valid)
            .unwrap();
        let rows = read_candidates(c.to_parquet().unwrap().into(), "candidates.parquet").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].0, 7);
        assert_eq!(rows[1].1, "valid");
        assert_eq!(rows[1].2, c.row(1));
        assert_eq!(rows[1].2[0], 6);
    }
}
