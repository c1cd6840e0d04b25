//! The popularity baseline: every user gets the same ranking, by `train_count`. A sanity
//! floor for the learned models; ties (equal counts) count against the positive like
//! everywhere else.

use super::data::Interactions;
use slim_shared::eval::{Buckets, Candidates, EvalReport, Evaluation, Popularity};

/// Scores of `candidates`: their train counts.
pub fn popularity_scores(popularity: &Popularity, candidates: &[u32]) -> Vec<f32> {
    candidates
        .iter()
        .map(|&i| popularity.count(i) as f32)
        .collect()
}

/// The baseline's metrics on `candidates` (rows in the order of `data.users`).
pub fn evaluate_popularity(
    data: &Interactions,
    candidates: &Candidates,
    buckets: Buckets,
) -> EvalReport {
    let popularity = data.popularity();
    let mut evaluation = Evaluation::new(buckets);
    for (r, user) in data.users.iter().enumerate().take(candidates.len()) {
        let row = candidates.row(r);
        evaluation.add_scores(
            user.history_length,
            row,
            &popularity_scores(&popularity, row),
            &popularity,
        );
    }
    evaluation.report()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slim_shared::eval::{CandidateSampler, Split};

    #[test]
    fn popular_positives_rank_first_and_unseen_ones_last() {
        // Item 0 is in every history: the most popular; items 100.. are never trained on.
        let sequences: Vec<Vec<u32>> = (0..10u32).map(|u| vec![0, 1 + u, 0, 150 + u]).collect();
        let data = Interactions::from_sequences(&sequences, 300).unwrap();
        let sampler = CandidateSampler::new(3, 300);
        let valid = sampler
            .candidates_for(data.user_items(), Split::Valid)
            .unwrap();
        let report = evaluate_popularity(&data, &valid, Buckets::default());
        assert_eq!(report.overall.users, 10);
        // Valid item 0 has the top count and no negative reaches it.
        assert_eq!(report.overall.metrics.ndcg10, 1.0);
        assert_eq!(report.overall.metrics.epc10, 0.0, "the most popular item");
        let test = sampler
            .candidates_for(data.user_items(), Split::Test)
            .unwrap();
        let report = evaluate_popularity(&data, &test, Buckets::default());
        assert_eq!(report.overall.metrics.hr20, 0.0, "count 0 ties lose");
    }
}
