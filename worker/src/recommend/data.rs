//! The recommenders' data: users' sequences from `data/users.parquet`, item popularity from
//! `data/items.parquet`, and the left-padded batches the models read.
//!
//! Item `i` (its `item_index`) is token `i + 1`; token [`PAD`] pads. Sequences are left-padded
//! and left-truncated to `max_len` (the oldest items go), so the last position always holds
//! the most recent item.

use super::rationale::{RationaleBatch, UserText};
use anyhow::{Context, Result, ensure};
use burn::prelude::*;
use burn::tensor::{Bool, Int, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slim_shared::eval::{Candidates, Popularity, Split, UserItems};
use slim_shared::schema::{self, ItemRow, UserRow};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// The padding token.
pub const PAD: i32 = 0;

/// The token of an item index.
pub fn token(item: u32) -> i32 {
    item as i32 + 1
}

/// Users and items as the recommenders need them.
#[derive(Debug, Clone)]
pub struct Interactions {
    pub users: Vec<UserRow>,
    /// Items are `0..num_items`.
    pub num_items: u32,
    /// `train_count[i]`: occurrences of item i in training histories (no leakage).
    pub train_count: Vec<u32>,
}

impl Interactions {
    /// Checks that every item of every user is in the catalogue.
    pub fn new(users: Vec<UserRow>, num_items: u32, train_count: Vec<u32>) -> Result<Self> {
        ensure!(
            train_count.len() == num_items as usize,
            "{} train counts for {num_items} items",
            train_count.len()
        );
        for user in &users {
            let items = user
                .history
                .iter()
                .chain([&user.valid_item, &user.test_item]);
            if let Some(item) = items.copied().find(|&i| i >= num_items) {
                anyhow::bail!(
                    "user {} ({}): item_index {item} is outside the catalogue of {num_items} items",
                    user.user_index,
                    user.user_id
                );
            }
        }
        Ok(Self {
            users,
            num_items,
            train_count,
        })
    }

    /// From the rows of users.parquet and items.parquet; items must be indexed `0..len`.
    pub fn from_rows(users: Vec<UserRow>, items: &[ItemRow]) -> Result<Self> {
        let mut train_count = vec![0; items.len()];
        for item in items {
            let slot = train_count
                .get_mut(item.item_index as usize)
                .with_context(|| {
                    format!(
                        "items.parquet: item_index {} of {} is not below the item count {}",
                        item.item_index,
                        item.item_id,
                        items.len()
                    )
                })?;
            *slot = item.train_count;
        }
        Self::new(users, items.len() as u32, train_count)
    }

    /// Reads `users.parquet` and `items.parquet` from a prepared job's `data/` folder.
    pub fn load(data_dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<bytes::Bytes> {
            let path = data_dir.join(name);
            Ok(std::fs::read(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .into())
        };
        let users = schema::read_users(read("users.parquet")?, "users.parquet")?;
        let items = schema::read_items(read("items.parquet")?, "items.parquet")?;
        Self::from_rows(users, &items)
    }

    /// Users from whole sequences, oldest first (tests, tools): the last item is the test
    /// item, the one before the validation item, the rest the history. Each sequence needs
    /// at least three items.
    pub fn from_sequences(sequences: &[Vec<u32>], num_items: u32) -> Result<Self> {
        let mut users = Vec::with_capacity(sequences.len());
        let mut train_count = vec![0u32; num_items as usize];
        for (u, seq) in sequences.iter().enumerate() {
            ensure!(
                seq.len() >= 3,
                "sequence {u} has {} items, at least 3 are needed",
                seq.len()
            );
            let history = seq[..seq.len() - 2].to_vec();
            for &i in &history {
                if let Some(c) = train_count.get_mut(i as usize) {
                    *c += 1;
                }
            }
            users.push(UserRow {
                user_id: format!("u{u}"),
                user_index: u as u32,
                history_length: history.len() as u32,
                history,
                valid_item: seq[seq.len() - 2],
                test_item: seq[seq.len() - 1],
                shard: 0,
                in_teacher_sample: false,
            });
        }
        Self::new(users, num_items, train_count)
    }

    /// The first `users` users as a dataset of their own: items re-indexed densely in order of
    /// first appearance, train counts recounted from the kept histories. Also returns the
    /// original index of each new item (to pick their text vectors).
    pub fn head(&self, users: usize) -> (Interactions, Vec<u32>) {
        let mut new_index: HashMap<u32, u32> = HashMap::new();
        let mut original = Vec::new();
        let mut map = |item: u32| {
            *new_index.entry(item).or_insert_with(|| {
                original.push(item);
                original.len() as u32 - 1
            })
        };
        let rows: Vec<UserRow> = self
            .users
            .iter()
            .take(users)
            .map(|u| UserRow {
                history: u.history.iter().map(|&i| map(i)).collect(),
                valid_item: map(u.valid_item),
                test_item: map(u.test_item),
                ..u.clone()
            })
            .collect();
        let mut train_count = vec![0u32; original.len()];
        for user in &rows {
            for &i in &user.history {
                train_count[i as usize] += 1;
            }
        }
        let num_items = original.len() as u32;
        let data = Interactions {
            users: rows,
            num_items,
            train_count,
        };
        (data, original)
    }

    pub fn popularity(&self) -> Popularity {
        Popularity::new(self.train_count.clone())
    }

    pub fn user_items(&self) -> impl Iterator<Item = UserItems<'_>> + Clone {
        self.users.iter().map(UserItems::from)
    }

    /// The input sequence that predicts the split's target: the history for validation, the
    /// history plus the validation item for test.
    pub fn eval_input(user: &UserRow, split: Split) -> Vec<u32> {
        let mut seq = user.history.clone();
        if split == Split::Test {
            seq.push(user.valid_item);
        }
        seq
    }
}

/// A left-padded batch of sequences.
#[derive(Debug, Clone)]
pub struct SeqBatch<B: Backend> {
    /// Item tokens `[batch, len]`.
    pub items: Tensor<B, 2, Int>,
    /// `true` where `items` is padding, `[batch, len]`.
    pub padding: Tensor<B, 2, Bool>,
    /// Absolute positions `[batch, len]`, counted so that the last position is `max_len - 1`
    /// whatever the batch's width: a user's encoding does not depend on its batch.
    pub positions: Tensor<B, 2, Int>,
    /// The users' rationale vectors, for models that read them (SLIM).
    pub rationale: Option<RationaleBatch<B>>,
}

/// One training batch: next-item prediction at every position of each history.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    pub input: SeqBatch<B>,
    /// The next item at each position `[batch, len]` (PAD where there is none).
    pub positives: Tensor<B, 2, Int>,
    /// Sampled negatives at each position `[batch, len, negatives]`.
    pub negatives: Tensor<B, 3, Int>,
    /// 1 at positions with a target, 0 at padding `[batch, len]`.
    pub weight: Tensor<B, 2>,
}

/// One evaluation batch: each user's sequence and candidate tokens (positive first).
#[derive(Debug, Clone)]
pub struct EvalBatch<B: Backend> {
    pub input: SeqBatch<B>,
    /// `[batch, candidates]`.
    pub candidates: Tensor<B, 2, Int>,
}

/// Left-pads `sequences` (each already at most `max_len` long) to their longest.
fn pad_left(sequences: &[&[u32]], max_len: usize) -> (Vec<i32>, Vec<bool>, Vec<i32>, usize) {
    let len = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
    let mut items = Vec::with_capacity(sequences.len() * len);
    let mut padding = Vec::with_capacity(sequences.len() * len);
    for seq in sequences {
        let pad = len - seq.len();
        items.extend(std::iter::repeat_n(PAD, pad));
        items.extend(seq.iter().map(|&i| token(i)));
        padding.extend(std::iter::repeat_n(true, pad));
        padding.extend(std::iter::repeat_n(false, seq.len()));
    }
    let first = (max_len - len) as i32;
    let positions = (0..sequences.len())
        .flat_map(|_| (0..len as i32).map(move |p| first + p))
        .collect();
    (items, padding, positions, len)
}

fn int_tensor<B: Backend, const D: usize>(
    values: Vec<i32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

impl<B: Backend> SeqBatch<B> {
    /// The last `max_len` items of each sequence, left-padded.
    pub fn new(sequences: &[&[u32]], max_len: usize, device: &B::Device) -> Self {
        let cut: Vec<&[u32]> = sequences
            .iter()
            .map(|s| &s[s.len().saturating_sub(max_len)..])
            .collect();
        let (items, padding, positions, len) = pad_left(&cut, max_len);
        let shape = [sequences.len(), len];
        Self {
            items: int_tensor(items, shape, device),
            padding: Tensor::from_data(TensorData::new(padding, shape), device),
            positions: int_tensor(positions, shape, device),
            rationale: None,
        }
    }
}

/// Training sequences in batches: each epoch shuffles users, groups users of similar length
/// (so little padding is computed) and shuffles the batches, all from the seed and epoch.
#[derive(Debug, Clone)]
pub struct TrainSampler {
    /// Per user with at least two history items: the history (last `max_len + 1` items).
    sequences: Vec<Vec<u32>>,
    /// The row in `Interactions::users` of each sequence.
    users: Vec<usize>,
    /// Rationale vectors by user row, attached to every batch when set.
    rationales: Option<Arc<UserText>>,
    /// Items each user has interacted with, which are never sampled as its negatives.
    seen: Vec<HashSet<u32>>,
    num_items: u32,
    pub max_len: usize,
    pub batch_size: usize,
    pub negatives: usize,
}

/// Batches sorted by length together: a pool of this many batches is sorted at a time.
const POOL_BATCHES: usize = 32;

impl TrainSampler {
    pub fn new(data: &Interactions, max_len: usize, batch_size: usize, negatives: usize) -> Self {
        let mut sequences = Vec::new();
        let mut users = Vec::new();
        let mut seen = Vec::new();
        for (row, user) in data.users.iter().enumerate() {
            if user.history.len() < 2 {
                continue;
            }
            users.push(row);
            let h = &user.history;
            sequences.push(h[h.len().saturating_sub(max_len + 1)..].to_vec());
            let mut items: HashSet<u32> = h.iter().copied().collect();
            items.extend([user.valid_item, user.test_item]);
            seen.push(items);
        }
        Self {
            sequences,
            users,
            rationales: None,
            seen,
            num_items: data.num_items,
            max_len,
            batch_size: batch_size.max(1),
            negatives,
        }
    }

    /// Attaches each user's rationale vector (rows in the order of the `Interactions`' users)
    /// to every batch.
    pub fn with_rationales(mut self, rationales: Arc<UserText>) -> Self {
        self.rationales = Some(rationales);
        self
    }

    /// Users with a training pair.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Batches of user rows (indices into the sampler's users) for one epoch.
    pub fn epoch_batches(&self, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..self.sequences.len()).collect();
        order.shuffle(&mut rng);
        let mut batches = Vec::new();
        for pool in order.chunks_mut(self.batch_size * POOL_BATCHES) {
            pool.sort_by_key(|&u| self.sequences[u].len());
            batches.extend(pool.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        batches
    }

    /// The tensors of one batch; negatives come from `rng`.
    pub fn batch<B: Backend>(
        &self,
        rows: &[usize],
        rng: &mut impl Rng,
        device: &B::Device,
    ) -> TrainBatch<B> {
        let inputs: Vec<&[u32]> = rows
            .iter()
            .map(|&u| {
                let s = &self.sequences[u];
                &s[..s.len() - 1]
            })
            .collect();
        let (items, padding, positions, len) = pad_left(&inputs, self.max_len);
        let mut positives = Vec::with_capacity(rows.len() * len);
        let mut weight = Vec::with_capacity(rows.len() * len);
        let mut negatives = Vec::with_capacity(rows.len() * len * self.negatives);
        for &u in rows {
            let targets = &self.sequences[u][1..];
            let pad = len - targets.len();
            positives.extend(std::iter::repeat_n(PAD, pad));
            positives.extend(targets.iter().map(|&i| token(i)));
            weight.extend(std::iter::repeat_n(0.0f32, pad));
            weight.extend(std::iter::repeat_n(1.0f32, targets.len()));
            negatives.extend(std::iter::repeat_n(PAD, pad * self.negatives));
            for _ in 0..targets.len() * self.negatives {
                negatives.push(token(self.negative(u, rng)));
            }
        }
        let shape = [rows.len(), len];
        TrainBatch {
            input: SeqBatch {
                items: int_tensor(items, shape, device),
                padding: Tensor::from_data(TensorData::new(padding, shape), device),
                positions: int_tensor(positions, shape, device),
                rationale: self.rationales.as_ref().map(|r| {
                    let users: Vec<usize> = rows.iter().map(|&u| self.users[u]).collect();
                    r.batch(&users, device)
                }),
            },
            positives: int_tensor(positives, shape, device),
            negatives: int_tensor(negatives, [rows.len(), len, self.negatives], device),
            weight: Tensor::from_data(TensorData::new(weight, shape), device),
        }
    }

    /// A uniformly random item the user never interacted with.
    fn negative(&self, user: usize, rng: &mut impl Rng) -> u32 {
        let seen = &self.seen[user];
        // Users see a small part of the catalogue; the bound only guards tiny catalogues.
        for _ in 0..1000 {
            let item = rng.random_range(0..self.num_items);
            if !seen.contains(&item) {
                return item;
            }
        }
        rng.random_range(0..self.num_items)
    }
}

/// Evaluation batches over users in the order of their candidate rows; `rationales`, by user
/// row, are attached when given.
pub fn eval_batches<'a, B: Backend>(
    data: &'a Interactions,
    candidates: &'a Candidates,
    rationales: Option<&'a UserText>,
    max_len: usize,
    batch_size: usize,
    device: &'a B::Device,
) -> impl Iterator<Item = (std::ops::Range<usize>, EvalBatch<B>)> + 'a {
    let rows = candidates.len();
    (0..rows).step_by(batch_size.max(1)).map(move |start| {
        let range = start..(start + batch_size.max(1)).min(rows);
        let sequences: Vec<Vec<u32>> = range
            .clone()
            .map(|r| Interactions::eval_input(&data.users[r], candidates.split))
            .collect();
        let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let tokens: Vec<i32> = candidates.items
            [range.start * candidates.width..range.end * candidates.width]
            .iter()
            .map(|&i| token(i))
            .collect();
        let mut input = SeqBatch::new(&refs, max_len, device);
        input.rationale = rationales.map(|r| r.batch(&range.clone().collect::<Vec<_>>(), device));
        let batch = EvalBatch {
            input,
            candidates: int_tensor(tokens, [range.len(), candidates.width], device),
        };
        (range, batch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend as Cpu, device};

    fn data() -> Interactions {
        Interactions::from_sequences(
            &[
                vec![0, 1, 2, 3, 4],
                vec![5, 6, 7],
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ],
            10,
        )
        .unwrap()
    }

    #[test]
    fn sequences_split_leave_one_out_and_count_training_items_only() {
        let d = data();
        assert_eq!(d.users[0].history, [0, 1, 2]);
        assert_eq!((d.users[0].valid_item, d.users[0].test_item), (3, 4));
        assert_eq!(d.train_count[1], 2);
        assert_eq!(d.train_count[8], 0, "test items are not counted");
        assert_eq!(Interactions::eval_input(&d.users[1], Split::Test), [5, 6]);
        assert_eq!(Interactions::eval_input(&d.users[1], Split::Valid), [5]);
        assert!(Interactions::from_sequences(&[vec![1, 2]], 10).is_err());
        let err = Interactions::from_sequences(&[vec![1, 2, 30]], 10).unwrap_err();
        assert!(err.to_string().contains("item_index 30"), "{err}");
    }

    #[test]
    fn head_reindexes_items_densely() {
        let (d, original) = data().head(2);
        assert_eq!(d.users.len(), 2);
        assert_eq!(d.num_items, 8);
        assert_eq!(original, [0, 1, 2, 3, 4, 5, 6, 7]);
        let (d, original) = Interactions::from_sequences(&[vec![9, 4, 9, 7]], 10)
            .unwrap()
            .head(1);
        assert_eq!(d.users[0].history, [0, 1]);
        assert_eq!((d.users[0].valid_item, d.users[0].test_item), (0, 2));
        assert_eq!(original, [9, 4, 7]);
        assert_eq!(d.train_count, [1, 1, 0]);
    }

    #[test]
    fn sequences_are_left_padded_and_truncated_with_right_aligned_positions() {
        let b = SeqBatch::<Cpu>::new(&[&[1, 2, 3, 4], &[7]], 3, &device());
        let items: Vec<i32> = b.items.into_data().convert::<i32>().to_vec().unwrap();
        assert_eq!(items, [3, 4, 5, 0, 0, 8]);
        let pad: Vec<bool> = b.padding.into_data().to_vec().unwrap();
        assert_eq!(pad, [false, false, false, true, true, false]);
        let pos: Vec<i32> = b.positions.into_data().convert::<i32>().to_vec().unwrap();
        assert_eq!(pos, [0, 1, 2, 0, 1, 2]);
        // A narrower batch keeps the last position at max_len - 1.
        let b = SeqBatch::<Cpu>::new(&[&[1]], 50, &device());
        let pos: Vec<i32> = b.positions.into_data().convert::<i32>().to_vec().unwrap();
        assert_eq!(pos, [49]);
    }

    #[test]
    fn training_batches_predict_the_next_item_with_unseen_negatives() {
        let d = data();
        let sampler = TrainSampler::new(&d, 50, 2, 3);
        assert_eq!(sampler.len(), 2, "user 1 has one history item: no pair");
        let batches = sampler.epoch_batches(1, 0);
        let all: HashSet<usize> = batches.iter().flatten().copied().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(batches, sampler.epoch_batches(1, 0));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // Row 1 of the sampler is user 2: history 1..=6.
        let b = sampler.batch::<Cpu>(&[1, 0], &mut rng, &device());
        let items: Vec<i32> = b.input.items.into_data().convert::<i32>().to_vec().unwrap();
        let pos: Vec<i32> = b.positives.into_data().convert::<i32>().to_vec().unwrap();
        assert_eq!(items, [2, 3, 4, 5, 6, 0, 0, 0, 1, 2]);
        assert_eq!(pos, [3, 4, 5, 6, 7, 0, 0, 0, 2, 3]);
        let w: Vec<f32> = b.weight.into_data().to_vec().unwrap();
        assert_eq!(w, [1., 1., 1., 1., 1., 0., 0., 0., 1., 1.]);
        let neg: Vec<i32> = b.negatives.into_data().convert::<i32>().to_vec().unwrap();
        assert_eq!(neg.len(), 2 * 5 * 3);
        // User 2 saw items 1..=8 (tokens 2..=9): only tokens 1 and 10 are allowed.
        assert!(neg[..15].iter().all(|&t| t == 1 || t == 10), "{neg:?}");
        assert!(neg[15..24].iter().all(|&t| t == PAD));
        assert!(neg[24..].iter().all(|&t| t > 5), "user 0 saw items 0..=4");
        assert!(b.input.rationale.is_none());
    }

    #[test]
    fn batches_carry_the_rationales_of_their_own_users() {
        let d = data();
        // One vector per user: user u's is [u, u].
        let rows: Vec<Option<Vec<f32>>> = (0..3)
            .map(|u| (u != 1).then(|| vec![u as f32; 2]))
            .collect();
        let text = Arc::new(UserText::from_rows(&rows).unwrap());
        let sampler = TrainSampler::new(&d, 50, 2, 1).with_rationales(text.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // Sampler rows 1, 0 are users 2, 0 (user 1 has no training pair).
        let b = sampler.batch::<Cpu>(&[1, 0], &mut rng, &device());
        let r = b.input.rationale.unwrap();
        let v: Vec<f32> = r.vectors.into_data().to_vec().unwrap();
        assert_eq!(v, [2.0, 2.0, 0.0, 0.0]);
        let candidates = slim_shared::eval::CandidateSampler::new(1, 10)
            .with_negatives(2)
            .candidates_for(d.user_items(), Split::Test)
            .unwrap();
        let batches: Vec<_> =
            eval_batches::<Cpu>(&d, &candidates, Some(&text), 50, 2, &device()).collect();
        let second = batches[1].1.input.rationale.clone().unwrap();
        let v: Vec<f32> = second.vectors.into_data().to_vec().unwrap();
        assert_eq!(v, [2.0, 2.0], "the second batch holds user 2");
        let first = batches[0].1.input.rationale.clone().unwrap();
        let p: Vec<f32> = first.present.into_data().to_vec().unwrap();
        assert_eq!(p, [1.0, 0.0], "user 1 has no rationale");
    }
}
