//! Preprocessing, deterministic for a seed: group interactions per user in time order, dedupe
//! repeated (user, item) pairs, filter to the k-core, split leave-one-out, truncate histories,
//! sample the teacher subset U' and assign shards.
//!
//! Everything stays columnar (CSR offsets plus flat item arrays) so a corpus of tens of millions
//! of interactions preprocesses in a few hundred MB.

use super::corpus::Corpus;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The preprocessing parameters are the manifest's `[prepare]` section.
pub use crate::manifest::PrepareSection as Params;

/// Per-user sequences as CSR: user `u`'s items are `items[offsets[u]..offsets[u + 1]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sequences {
    pub offsets: Vec<usize>,
    pub items: Vec<u32>,
}

impl Sequences {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, user: usize) -> &[u32] {
        &self.items[self.offsets[user]..self.offsets[user + 1]]
    }

    /// Filters every sequence in place, without a second copy of the items.
    /// `keep(user, item)` is called in sequence order within each user.
    fn retain(&mut self, mut keep: impl FnMut(usize, u32) -> bool) {
        let mut write = 0;
        let mut start = 0;
        for user in 0..self.len() {
            let end = self.offsets[user + 1];
            for read in start..end {
                let item = self.items[read];
                if keep(user, item) {
                    self.items[write] = item;
                    write += 1;
                }
            }
            start = end;
            self.offsets[user + 1] = write;
        }
        self.items.truncate(write);
    }
}

/// The split dataset. Users and items are re-indexed densely; `user_source[u]` and
/// `item_source[i]` point back into the corpus interners.
#[derive(Debug, Clone)]
pub struct Split {
    pub user_source: Vec<u32>,
    pub item_source: Vec<u32>,
    /// Training histories (oldest first), truncated to `max_history` most recent items.
    pub history: Sequences,
    /// Length of each training history before truncation.
    pub history_length: Vec<u32>,
    pub valid_item: Vec<u32>,
    pub test_item: Vec<u32>,
    pub shard: Vec<u32>,
    pub in_teacher_sample: Vec<bool>,
    /// Occurrences of each item in the (untruncated) training histories.
    pub item_train_count: Vec<u32>,
    pub stats: PreprocessStats,
}

/// Counters and distribution facts for the summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreprocessStats {
    pub interactions_read: u64,
    pub duplicates_removed: u64,
    pub kcore_iterations: u32,
    pub kcore_users_removed: u64,
    pub kcore_items_removed: u64,
    /// Users left with fewer than 3 interactions, which cannot be split into train/valid/test.
    pub too_short_users_removed: u64,
    /// Users dropped by `max_users`.
    pub users_capped: u64,
    pub users: u64,
    pub items: u64,
    pub interactions: u64,
    /// 1 - interactions / (users x items).
    pub sparsity: f64,
    /// Full sequence length per user (train + valid + test).
    pub sequence_length: Percentiles,
    pub teacher_sample: u64,
    pub shards: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub min: u32,
    pub p25: u32,
    pub p50: u32,
    pub p75: u32,
    pub p90: u32,
    pub p99: u32,
    pub max: u32,
    pub mean: f64,
}

impl Percentiles {
    fn of(mut values: Vec<u32>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        // Nearest-rank percentiles.
        let at =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        let sum: u64 = values.iter().map(|&v| u64::from(v)).sum();
        Self {
            min: values[0],
            p25: at(0.25),
            p50: at(0.50),
            p75: at(0.75),
            p90: at(0.90),
            p99: at(0.99),
            max: *values.last().expect("non-empty"),
            mean: sum as f64 / values.len() as f64,
        }
    }
}

/// Runs every preprocessing step on an ingested corpus.
pub fn preprocess(corpus: &mut Corpus, params: Params) -> Split {
    let mut stats = PreprocessStats {
        interactions_read: corpus.interactions() as u64,
        ..Default::default()
    };
    let sequences = group_by_user(corpus);
    let sequences = dedupe(sequences, &mut stats);
    let (users, sequences) = k_core(sequences, corpus.items.len(), params.k_core, &mut stats);
    split(users, sequences, corpus.items.len(), params, stats)
}

/// Groups the interaction log into per-user sequences in time order. Ties in time keep file
/// order (the sort is stable), so the result is deterministic for a given input.
/// Frees the corpus's interaction columns as it goes.
fn group_by_user(corpus: &mut Corpus) -> Sequences {
    let n_users = corpus.users.len();
    let runs = std::mem::take(&mut corpus.user_runs);
    let items = std::mem::take(&mut corpus.item);
    let times = corpus.time.take();

    let mut offsets = vec![0usize; n_users + 1];
    for run in &runs {
        offsets[run.user as usize + 1] += run.len as usize;
    }
    for u in 0..n_users {
        offsets[u + 1] += offsets[u];
    }

    // Files that list each user's interactions together, users in first-seen order (RecBole
    // sequence files, most exports), are already grouped: keep their columns as they are
    // instead of scattering a copy.
    let grouped = runs
        .iter()
        .enumerate()
        .all(|(k, run)| run.user as usize == k);
    let (mut grouped_items, grouped_times) = if grouped {
        (items, times)
    } else {
        let mut cursor = offsets.clone();
        let mut out_items = vec![0u32; items.len()];
        let mut out_times = times.as_ref().map(|t| vec![0f64; t.len()]);
        let mut k = 0;
        for run in &runs {
            let slot = &mut cursor[run.user as usize];
            for _ in 0..run.len {
                out_items[*slot] = items[k];
                if let (Some(out), Some(t)) = (&mut out_times, &times) {
                    out[*slot] = t[k];
                }
                *slot += 1;
                k += 1;
            }
        }
        (out_items, out_times)
    };
    drop(runs);

    if let Some(times) = grouped_times {
        let mut pairs: Vec<(f64, u32)> = Vec::new();
        for u in 0..n_users {
            let range = offsets[u]..offsets[u + 1];
            let slice_times = &times[range.clone()];
            if slice_times.windows(2).all(|w| w[0] <= w[1]) {
                continue;
            }
            pairs.clear();
            pairs.extend(
                slice_times
                    .iter()
                    .copied()
                    .zip(grouped_items[range.clone()].iter().copied()),
            );
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (slot, (_, item)) in grouped_items[range].iter_mut().zip(&pairs) {
                *slot = *item;
            }
        }
    }
    Sequences {
        offsets,
        items: grouped_items,
    }
}

/// Keeps the first (earliest) occurrence of each item in each user's sequence.
fn dedupe(mut sequences: Sequences, stats: &mut PreprocessStats) -> Sequences {
    let before = sequences.items.len();
    let mut seen = hashbrown::HashSet::new();
    let mut current = usize::MAX;
    sequences.retain(|user, item| {
        if user != current {
            seen.clear();
            current = user;
        }
        seen.insert(item)
    });
    stats.duplicates_removed = (before - sequences.items.len()) as u64;
    sequences
}

/// Iteratively removes users and items with fewer than `k` interactions until none is left.
/// Returns the surviving users' corpus indices and their filtered sequences.
fn k_core(
    sequences: Sequences,
    n_items: usize,
    k: u32,
    stats: &mut PreprocessStats,
) -> (Vec<u32>, Sequences) {
    let n_users = sequences.len();
    let mut user_alive = vec![true; n_users];
    let mut item_alive = vec![true; n_items];
    let mut item_degree = vec![0u32; n_items];
    loop {
        stats.kcore_iterations += 1;
        item_degree.iter_mut().for_each(|d| *d = 0);
        let mut changed = false;
        for (u, alive) in user_alive.iter_mut().enumerate() {
            if !*alive {
                continue;
            }
            let degree = sequences
                .get(u)
                .iter()
                .filter(|&&i| item_alive[i as usize])
                .count();
            if (degree as u32) < k {
                *alive = false;
                stats.kcore_users_removed += 1;
                changed = true;
                continue;
            }
            for &i in sequences.get(u) {
                if item_alive[i as usize] {
                    item_degree[i as usize] += 1;
                }
            }
        }
        for (alive, &degree) in item_alive.iter_mut().zip(&item_degree) {
            if *alive && degree < k {
                *alive = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Count items removed by the filter: seen in some sequence but not alive.
    let mut occurs = vec![false; n_items];
    for &i in &sequences.items {
        occurs[i as usize] = true;
    }
    stats.kcore_items_removed = (0..n_items)
        .filter(|&i| occurs[i] && !item_alive[i])
        .count() as u64;

    let mut sequences = sequences;
    sequences.retain(|user, item| user_alive[user] && item_alive[item as usize]);
    // Drop the (now empty) rows of removed users.
    let users: Vec<u32> = (0..n_users)
        .filter(|&u| user_alive[u])
        .map(|u| u as u32)
        .collect();
    let mut offsets = Vec::with_capacity(users.len() + 1);
    offsets.push(0);
    offsets.extend(users.iter().map(|&u| sequences.offsets[u as usize + 1]));
    sequences.offsets = offsets;
    (users, sequences)
}

/// Leave-one-out split, truncation, re-indexing, U' sampling and sharding. Works in place on
/// the filtered sequences, which become the training histories.
fn split(
    users: Vec<u32>,
    mut sequences: Sequences,
    n_items: usize,
    params: Params,
    mut stats: PreprocessStats,
) -> Split {
    // Users that cannot give train, valid and test items; then the optional cap.
    let mut budget = match params.max_users {
        0 => usize::MAX,
        max => max as usize,
    };
    let mut keep_user = vec![false; users.len()];
    for (u, keep) in keep_user.iter_mut().enumerate() {
        if sequences.get(u).len() < 3 {
            stats.too_short_users_removed += 1;
        } else if budget == 0 {
            stats.users_capped += 1;
        } else {
            *keep = true;
            budget -= 1;
        }
    }

    // Re-index items densely in order of first use, so ids are stable for a given input.
    let mut new_index = vec![u32::MAX; n_items];
    let mut item_source: Vec<u32> = Vec::new();
    let mut item_train_count: Vec<u32> = Vec::new();
    let mut user_source = Vec::new();
    let mut history_length = Vec::new();
    let mut valid_item = Vec::new();
    let mut test_item = Vec::new();
    let mut lengths = Vec::new();
    let mut interactions = 0u64;

    let mut offsets = Vec::with_capacity(users.len() + 1);
    offsets.push(0);
    let mut write = 0;
    for (u, &source_user) in users.iter().enumerate() {
        let range = sequences.offsets[u]..sequences.offsets[u + 1];
        if !keep_user[u] {
            continue;
        }
        for slot in &mut sequences.items[range.clone()] {
            let index = &mut new_index[*slot as usize];
            if *index == u32::MAX {
                *index = item_source.len() as u32;
                item_source.push(*slot);
                item_train_count.push(0);
            }
            *slot = *index;
        }
        let seq = &sequences.items[range.clone()];
        let n = seq.len();
        interactions += n as u64;
        lengths.push(n as u32);
        valid_item.push(seq[n - 2]);
        test_item.push(seq[n - 1]);
        history_length.push((n - 2) as u32);
        for &i in &seq[..n - 2] {
            item_train_count[i as usize] += 1;
        }
        let start = match params.max_history {
            0 => 0,
            max => (n - 2).saturating_sub(max as usize),
        };
        // Move the kept training items to the front; `write` never passes the read range.
        let keep = range.start + start..range.start + n - 2;
        sequences.items.copy_within(keep.clone(), write);
        write += keep.len();
        offsets.push(write);
        user_source.push(source_user);
    }
    sequences.items.truncate(write);
    sequences.items.shrink_to_fit();
    sequences.offsets = offsets;

    let n_users = user_source.len();
    let shard = (0..n_users as u32)
        .map(|row| row / params.users_per_shard.max(1))
        .collect::<Vec<_>>();
    let sample = (params.teacher_sample as usize).min(n_users);
    let mut in_teacher_sample = vec![false; n_users];
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    for u in rand::seq::index::sample(&mut rng, n_users, sample) {
        in_teacher_sample[u] = true;
    }

    stats.users = n_users as u64;
    stats.items = item_source.len() as u64;
    stats.interactions = interactions;
    stats.sparsity = if n_users == 0 || item_source.is_empty() {
        1.0
    } else {
        1.0 - interactions as f64 / (n_users as f64 * item_source.len() as f64)
    };
    stats.sequence_length = Percentiles::of(lengths);
    stats.teacher_sample = sample as u64;
    stats.shards = shard.last().map_or(0, |s| s + 1);
    Split {
        user_source,
        item_source,
        history: sequences,
        history_length,
        valid_item,
        test_item,
        shard,
        in_teacher_sample,
        item_train_count,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{CorpusBuilder, OnError};

    fn params(k: u32) -> Params {
        Params {
            k_core: k,
            max_history: 0,
            teacher_sample: 2,
            seed: 7,
            users_per_shard: 2,
            max_users: 0,
        }
    }

    fn timed(rows: &[(&str, &str, f64)]) -> Corpus {
        let mut b = CorpusBuilder::new(true, OnError::Fail);
        for (u, i, t) in rows {
            b.push(u, i, Some(*t));
        }
        b.finish()
    }

    fn names(corpus: &Corpus, split: &Split, user: usize) -> Vec<String> {
        let mut seq: Vec<u32> = split.history.get(user).to_vec();
        seq.push(split.valid_item[user]);
        seq.push(split.test_item[user]);
        seq.iter()
            .map(|&i| corpus.items.get(split.item_source[i as usize]).to_string())
            .collect()
    }

    #[test]
    fn orders_by_time_and_keeps_file_order_for_ties() {
        let mut corpus = timed(&[
            ("u", "c", 3.0),
            ("v", "x", 1.0),
            ("u", "a", 1.0),
            ("u", "b2", 2.0),
            ("u", "b1", 2.0),
            ("v", "y", 2.0),
            ("v", "z", 3.0),
        ]);
        let split = preprocess(&mut corpus, params(1));
        assert_eq!(names(&corpus, &split, 0), ["a", "b2", "b1", "c"]);
        assert_eq!(names(&corpus, &split, 1), ["x", "y", "z"]);
    }

    #[test]
    fn duplicates_keep_the_earliest_occurrence() {
        let mut corpus = timed(&[
            ("u", "a", 5.0),
            ("u", "b", 1.0),
            ("u", "a", 2.0),
            ("u", "c", 3.0),
            ("u", "d", 4.0),
        ]);
        let split = preprocess(&mut corpus, params(1));
        assert_eq!(names(&corpus, &split, 0), ["b", "a", "c", "d"]);
        assert_eq!(split.stats.duplicates_removed, 1);
    }

    #[test]
    fn k_core_iterates_to_a_fixed_point() {
        let mut rows = Vec::new();
        for u in ["u1", "u2", "u3"] {
            for (t, i) in ["a", "b", "c"].iter().enumerate() {
                rows.push((u, *i, t as f64));
            }
        }
        rows.push(("u4", "a", 0.0));
        rows.push(("u4", "rare", 1.0));
        rows.push(("u4", "d", 2.0));
        rows.push(("u5", "d", 0.0));
        rows.push(("u5", "b", 1.0));
        rows.push(("u5", "c", 2.0));
        let mut corpus = timed(&rows);
        let split = preprocess(&mut corpus, params(3));
        // Iteration 1: users all have 3 -> kept; items rare (1), d (2) removed.
        // Iteration 2: u4 has only "a", u5 has b, c -> both removed.
        // Iteration 3: a, b, c have 3 users each -> stable.
        assert_eq!(split.stats.users, 3);
        assert_eq!(split.stats.items, 3);
        assert_eq!(split.stats.kcore_users_removed, 2);
        assert_eq!(split.stats.kcore_items_removed, 2);
        assert_eq!(split.stats.kcore_iterations, 3);
        assert!(
            split
                .history
                .items
                .iter()
                .all(|&i| (i as usize) < split.item_source.len())
        );
    }

    #[test]
    fn split_truncates_samples_and_shards_deterministically() {
        let mut rows = Vec::new();
        for u in 0..5 {
            for t in 0..(6 + u) {
                rows.push((format!("u{u}"), format!("i{t}"), t as f64));
            }
        }
        let rows: Vec<(&str, &str, f64)> = rows
            .iter()
            .map(|(u, i, t)| (u.as_str(), i.as_str(), *t))
            .collect();
        let mut p = params(1);
        p.max_history = 3;
        let run = |p: Params| {
            let mut corpus = timed(&rows);
            preprocess(&mut corpus, p)
        };
        let a = run(p);
        assert_eq!(a.history.get(0).len(), 3);
        assert_eq!(a.history_length[0], 4);
        assert_eq!(a.history_length[4], 8);
        assert_eq!(a.shard, [0, 0, 1, 1, 2]);
        assert_eq!(a.stats.shards, 3);
        assert_eq!(a.in_teacher_sample.iter().filter(|&&s| s).count(), 2);
        let b = run(p);
        assert_eq!(a.in_teacher_sample, b.in_teacher_sample);
        let others: Vec<Vec<bool>> = (0..8)
            .map(|seed| run(Params { seed, ..p }).in_teacher_sample)
            .collect();
        assert!(
            others.iter().any(|s| *s != a.in_teacher_sample),
            "the seed changes the sample"
        );
        // Training counts exclude valid and test items.
        let total_train: u32 = a.item_train_count.iter().sum();
        assert_eq!(total_train, a.history_length.iter().sum::<u32>());
    }

    #[test]
    fn users_too_short_to_split_are_dropped_and_counted() {
        let mut corpus = timed(&[
            ("u", "a", 1.0),
            ("u", "b", 2.0),
            ("v", "a", 1.0),
            ("v", "b", 2.0),
            ("v", "c", 3.0),
        ]);
        let split = preprocess(&mut corpus, params(1));
        assert_eq!(split.stats.users, 1);
        assert_eq!(split.stats.too_short_users_removed, 1);
    }

    #[test]
    fn untimed_sequences_keep_file_order() {
        let mut b = CorpusBuilder::new(false, OnError::Fail);
        for i in ["c", "a", "b", "d"] {
            b.push("u", i, None);
        }
        let mut corpus = b.finish();
        let split = preprocess(&mut corpus, params(1));
        assert_eq!(names(&corpus, &split, 0), ["c", "a", "b", "d"]);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).collect());
        assert_eq!(
            (p.min, p.p25, p.p50, p.p90, p.p99, p.max),
            (1, 25, 50, 90, 99, 100)
        );
        assert!((p.mean - 50.5).abs() < 1e-9);
    }
}
