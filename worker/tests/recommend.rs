//! The recommenders learn: on synthetic sequences whose next item is a fixed function of the
//! previous one, and on a slice of the real Video Games sample prepared by the real prepare
//! stage, ranked with the 100-negative protocol against the popularity baseline.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slim_shared::eval::{self, Buckets, Split};
use slim_shared::manifest::LoadedManifest;
use slim_shared::store::local::LocalStore;
use slim_worker::backend;
use slim_worker::recommend::{
    BackboneConfig, Interactions, ItemRepresentation, ModelConfig, TextTable, TrainBackend,
    TrainConfig, TrainReport, UserText, eval_candidates, evaluate_popularity, train,
    train_with_rationales, write_reference_inputs,
};
use std::path::PathBuf;
use std::sync::Arc;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Users walking a fixed random permutation of `items`: each next item is `next[previous]`.
fn permutation_walks(users: usize, items: u32, seed: u64) -> Interactions {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut next: Vec<u32> = (0..items).collect();
    next.shuffle(&mut rng);
    let sequences: Vec<Vec<u32>> = (0..users)
        .map(|_| {
            let len = rng.random_range(5..12);
            let mut seq = vec![rng.random_range(0..items)];
            while seq.len() < len {
                seq.push(next[*seq.last().unwrap() as usize]);
            }
            seq
        })
        .collect();
    Interactions::from_sequences(&sequences, items).unwrap()
}

fn small(mut model: ModelConfig) -> ModelConfig {
    model.hidden = 32;
    model.max_len = 20;
    if let BackboneConfig::SasRec(c) = &mut model.backbone {
        c.blocks = 1;
        c.dropout = 0.1;
    }
    if let BackboneConfig::Gru4Rec(c) = &mut model.backbone {
        c.state = 32;
        c.dropout = 0.1;
    }
    model
}

fn summary(report: &TrainReport) -> String {
    let m = report.test.overall.metrics;
    format!(
        "{} seed {}: best epoch {} of {}, {:.2} s/epoch, {:.1} s in all, test NDCG@10 {:.4} HR@10 {:.4} HR@20 {:.4}",
        report.model,
        report.seed,
        report.best_epoch,
        report.epochs.len(),
        report.seconds_per_epoch,
        report.total_seconds,
        m.ndcg10,
        m.hr10,
        m.hr20
    )
}

#[test]
fn every_backbone_learns_a_deterministic_successor() {
    let data = permutation_walks(600, 300, 7);
    let config = TrainConfig {
        epochs: 60,
        batch_size: 64,
        learning_rate: 5e-3,
        patience: 3,
        seed: 3,
        ..TrainConfig::default()
    };
    let test = eval_candidates(&data, config.candidate_seed, 100, Split::Test).unwrap();
    let popularity = evaluate_popularity(&data, &test, Buckets::default());
    let pop = popularity.overall.metrics.ndcg10;
    eprintln!("popularity: test NDCG@10 {pop:.4}");
    for model in [
        ModelConfig::sasrec(),
        ModelConfig::gru4rec(),
        ModelConfig::srgnn(),
    ] {
        let report =
            train::<TrainBackend>(&data, &small(model), None, &config, &backend::device()).unwrap();
        eprintln!("{}", summary(&report));
        let ndcg = report.test.overall.metrics.ndcg10;
        assert!(ndcg > 0.6, "{}", summary(&report));
        assert!(ndcg > pop + 0.4, "{} vs popularity {pop}", summary(&report));
        // The kept epoch is the best validated one and the loss went down.
        let best = report.epochs[report.best_epoch - 1].valid_ndcg10.unwrap();
        assert_eq!(best, report.valid.overall.metrics.ndcg10);
        assert!(report.epochs.last().unwrap().loss < report.epochs[0].loss);
    }
}

/// Items in clusters whose text vectors name the cluster; each next item is a random member
/// of the cluster that follows the previous item's. Too few interactions per item to learn
/// the clusters from IDs alone, but the text gives them away.
fn clustered_walks(users: usize, clusters: u32, per_cluster: u32) -> (Interactions, TextTable) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut next: Vec<u32> = (0..clusters).collect();
    next.shuffle(&mut rng);
    let items = clusters * per_cluster;
    let sequences: Vec<Vec<u32>> = (0..users)
        .map(|_| {
            let len = rng.random_range(5..10);
            let mut seq = vec![rng.random_range(0..items)];
            while seq.len() < len {
                let cluster = next[(*seq.last().unwrap() / per_cluster) as usize];
                seq.push(cluster * per_cluster + rng.random_range(0..per_cluster));
            }
            seq
        })
        .collect();
    let text: Vec<Vec<f32>> = (0..items)
        .map(|i| {
            let mut v = vec![0.0; clusters as usize + 4];
            v[(i / per_cluster) as usize] = 1.0;
            for x in &mut v[clusters as usize..] {
                *x = rng.random_range(-1.0..1.0);
            }
            v
        })
        .collect();
    (
        Interactions::from_sequences(&sequences, items).unwrap(),
        TextTable::from_rows(&text).unwrap(),
    )
}

#[test]
fn sasrec_plus_learns_from_item_text_what_ids_cannot() {
    let (data, text) = clustered_walks(300, 25, 16);
    let config = TrainConfig {
        epochs: 30,
        batch_size: 64,
        learning_rate: 5e-3,
        patience: 3,
        seed: 5,
        ..TrainConfig::default()
    };
    let id = small(ModelConfig::sasrec());
    let mut plus = id.clone();
    plus.items = ItemRepresentation::IdPlusText { text_dim: 16 };
    let device = backend::device();
    let id = train::<TrainBackend>(&data, &id, None, &config, &device).unwrap();
    let plus = train::<TrainBackend>(&data, &plus, Some(&text), &config, &device).unwrap();
    eprintln!("{}\n{}", summary(&id), summary(&plus));
    assert_eq!(plus.model, "sasrec+");
    let (id, plus) = (id.test.overall.metrics, plus.test.overall.metrics);
    assert!(plus.ndcg10 > id.ndcg10 + 0.1, "{plus:?} vs {id:?}");
}

/// Users with a taste: each user likes one cluster of items; a history item comes from that
/// cluster half of the time (else from anywhere), the validation and test items always do.
/// Item text vectors name their cluster (plus noise); each user's rationale vector names the
/// user's cluster (plus a little noise), as "this user likes X" would. A short history shows
/// the taste only faintly, the rationale plainly.
///
/// With `cold` > 0, the last `cold` items of each cluster never occur in a history or as a
/// validation item: they are the test item of every other user (cold-start targets).
struct Tastes {
    data: Interactions,
    items: TextTable,
    users: UserText,
}

fn taste_walks(users: usize, clusters: u32, per_cluster: u32, cold: u32) -> Tastes {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let warm = per_cluster - cold;
    let dim = clusters as usize + 4;
    let warm_item = |c: u32, rng: &mut ChaCha8Rng| c * per_cluster + rng.random_range(0..warm);
    let mut sequences = Vec::new();
    let mut rationales = Vec::new();
    for u in 0..users {
        let taste = rng.random_range(0..clusters);
        let len = rng.random_range(3..6);
        let mut seq: Vec<u32> = (0..len)
            .map(|_| {
                let c = if rng.random_bool(0.5) {
                    taste
                } else {
                    rng.random_range(0..clusters)
                };
                warm_item(c, &mut rng)
            })
            .collect();
        seq.push(warm_item(taste, &mut rng));
        seq.push(if cold > 0 && u % 2 == 0 {
            taste * per_cluster + warm + rng.random_range(0..cold)
        } else {
            warm_item(taste, &mut rng)
        });
        sequences.push(seq);
        let mut r: Vec<f32> = (0..dim).map(|_| rng.random_range(-0.1..0.1)).collect();
        r[taste as usize] += 1.0;
        rationales.push(Some(r));
    }
    let text: Vec<Vec<f32>> = (0..clusters * per_cluster)
        .map(|i| {
            let mut v = vec![0.0; dim];
            v[(i / per_cluster) as usize] = 1.0;
            for x in &mut v[clusters as usize..] {
                *x = rng.random_range(-1.0..1.0);
            }
            v
        })
        .collect();
    Tastes {
        data: Interactions::from_sequences(&sequences, clusters * per_cluster).unwrap(),
        items: TextTable::from_rows(&text).unwrap(),
        users: UserText::from_rows(&rationales).unwrap(),
    }
}

fn taste_config() -> TrainConfig {
    TrainConfig {
        epochs: 80,
        batch_size: 64,
        learning_rate: 5e-3,
        patience: 5,
        seed: 4,
        ..TrainConfig::default()
    }
}

fn slim_agnostic_small() -> ModelConfig {
    let mut m = ModelConfig::slim_agnostic();
    m.hidden = 32;
    m.max_len = 20;
    m
}

/// Measured with this data and these settings (seed 4; Flex has one global random stream, so
/// tests running beside each other move the numbers by a few points): SASRec 0.16 test
/// NDCG@10, SASRec+ 0.53, SLIM (SASRec) 0.55, SLIM (GRU4Rec) 0.49 (0.15 with every user on the
/// default vector), ID-agnostic SLIM 0.60 to 0.67 (its ceiling is near 0.66: about four
/// negatives share the user's cluster). Before `g_f` started as the identity on its state
/// half, SLIM (SASRec) got only 0.33 to 0.39 here: the randomly initialised linear fusion after
/// SASRec's final layer norm cost more than the rationale brought.
#[test]
fn slim_models_use_the_rationale_that_ids_and_item_text_only_hint_at() {
    let t = taste_walks(400, 25, 16, 0);
    let config = taste_config();
    let device = backend::device();
    let id = small(ModelConfig::sasrec());
    let mut plus = id.clone();
    plus.items = ItemRepresentation::IdPlusText { text_dim: 16 };
    let slim = small(ModelConfig::slim(id.backbone.clone()));
    let gru_slim = small(ModelConfig::slim(ModelConfig::gru4rec().backbone));
    let id = train::<TrainBackend>(&t.data, &id, None, &config, &device).unwrap();
    let plus = train::<TrainBackend>(&t.data, &plus, Some(&t.items), &config, &device).unwrap();
    let run = |m: &ModelConfig, users: &UserText| {
        train_with_rationales::<TrainBackend>(
            &t.data,
            m,
            Some(&t.items),
            Some(users),
            &config,
            &device,
        )
        .unwrap()
    };
    // Every user on the learned default vector: what the fusion gets without rationales.
    let mut absent = t.users.clone();
    absent.present.iter_mut().for_each(|p| *p = false);
    absent.values.iter_mut().for_each(|v| *v = 0.0);
    let blind = run(&gru_slim, &absent);
    let slim = run(&slim, &t.users);
    let gru_slim = run(&gru_slim, &t.users);
    let agnostic = run(&slim_agnostic_small(), &t.users);
    for (name, r) in [
        ("id", &id),
        ("plus", &plus),
        ("slim (gru4rec), no rationales", &blind),
        ("slim (sasrec)", &slim),
        ("slim (gru4rec)", &gru_slim),
        ("slim_agnostic", &agnostic),
    ] {
        eprintln!("{name}: {}", summary(r));
    }
    let ndcg = |r: &TrainReport| r.test.overall.metrics.ndcg10;
    assert!(
        ndcg(&gru_slim) > ndcg(&blind) + 0.1,
        "the rationale helps: {} vs {}",
        summary(&gru_slim),
        summary(&blind)
    );
    assert!(ndcg(&slim) > ndcg(&id) + 0.2, "{}", summary(&slim));
    assert!(ndcg(&gru_slim) > ndcg(&id) + 0.2, "{}", summary(&gru_slim));
    assert!(
        ndcg(&agnostic) > ndcg(&plus) + 0.03,
        "{} vs {}",
        summary(&agnostic),
        summary(&plus)
    );
    assert!(
        agnostic.test.overall.metrics.hr10 > 0.85,
        "{}",
        summary(&agnostic)
    );
}

#[test]
fn the_id_agnostic_model_ranks_cold_start_items_from_their_text() {
    let t = taste_walks(400, 25, 16, 4);
    let config = taste_config();
    let device = backend::device();
    let id = train::<TrainBackend>(
        &t.data,
        &small(ModelConfig::sasrec()),
        None,
        &config,
        &device,
    )
    .unwrap();
    let agnostic = train_with_rationales::<TrainBackend>(
        &t.data,
        &slim_agnostic_small(),
        Some(&t.items),
        Some(&t.users),
        &config,
        &device,
    )
    .unwrap();
    let (id_cold, cold) = (&id.test.cold_start, &agnostic.test.cold_start);
    eprintln!(
        "cold-start ({} users): sasrec NDCG@10 {:.4}, slim_agnostic {:.4}; overall {:.4} vs {:.4}",
        cold.users,
        id_cold.metrics.ndcg10,
        cold.metrics.ndcg10,
        id.test.overall.metrics.ndcg10,
        agnostic.test.overall.metrics.ndcg10
    );
    // Every other user's test item is cold, and now and then a warm one was never drawn
    // into a history either.
    assert!((200..220).contains(&cold.users), "{cold:?}");
    assert_eq!(
        id_cold.users, cold.users,
        "the group depends on the data only"
    );
    assert!(cold.metrics.ndcg10 > 0.3, "{cold:?}");
    assert!(
        cold.metrics.ndcg10 > id_cold.metrics.ndcg10 + 0.2,
        "{cold:?} vs {id_cold:?}"
    );
    // Never-trained items are maximally novel: every cold hit has EPC 1.
    assert!((cold.metrics.epc10 - cold.metrics.ndcg10).abs() < 1e-9);
}

/// The Video Games sample through the real prepare stage, cut to a dense corner that trains in
/// seconds: only the `items` most popular items are kept in each sequence (in order), and the
/// first `users` users with at least three of them. Items are re-indexed densely.
fn video_games_slice(items: usize, users: usize) -> Interactions {
    video_games_slice_with_text(items, users).0
}

/// [`video_games_slice`] and each (re-indexed) item's `text` from items.parquet.
fn video_games_slice_with_text(items: usize, users: usize) -> (Interactions, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    // The whole sample, prepared as the demo job prepared it before it was cut to 600 users
    // (so the recorded numbers stay comparable).
    let data = std::env::var_os("SLIM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/amazon"))
        .join("Video_Games");
    let manifest = format!(
        r#"
[job]
id = "demo"
output = "{out}"
stages = ["prepare"]
[data]
format = "recbole"
reviews = "{reviews}"
meta = "{meta}"
[prepare]
k_core = 5
max_history = 50
teacher_sample = 64
seed = 42
users_per_shard = 1000
"#,
        out = dir.path().display(),
        reviews = data.join("Games-6k.test.inter").display(),
        meta = data.join("Games.item").display(),
    );
    let loaded = LoadedManifest::from_str(&manifest, "<test>", dir.path().to_path_buf())
        .map_err(|p| p.to_string())
        .unwrap();
    let store = Arc::new(LocalStore::new(dir.path().to_path_buf()));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(slim_shared::data::prepare::run(&loaded, store, false))
        .unwrap();
    let all = Interactions::load(&dir.path().join("demo/data")).unwrap();
    assert_eq!(all.users.len(), 50335);
    assert_eq!(all.num_items, 16428);
    let mut by_count: Vec<u32> = (0..all.num_items).collect();
    by_count.sort_by_key(|&i| std::cmp::Reverse(all.train_count[i as usize]));
    let mut kept = vec![false; all.num_items as usize];
    for &i in &by_count[..items] {
        kept[i as usize] = true;
    }
    let sequences: Vec<Vec<u32>> = all
        .users
        .iter()
        .map(|u| {
            let whole = u.history.iter().chain([&u.valid_item, &u.test_item]);
            whole
                .copied()
                .filter(|&i| kept[i as usize])
                .collect::<Vec<_>>()
        })
        .filter(|s| s.len() >= 3)
        .take(users)
        .collect();
    let (slice, original) = Interactions::from_sequences(&sequences, all.num_items)
        .unwrap()
        .head(users);
    let rows = slim_shared::schema::read_items(
        std::fs::read(dir.path().join("demo/data/items.parquet"))
            .unwrap()
            .into(),
        "items.parquet",
    )
    .unwrap();
    let mut text = vec![String::new(); rows.len()];
    for row in rows {
        text[row.item_index as usize] = row.text;
    }
    let text = original.iter().map(|&i| text[i as usize].clone()).collect();
    (slice, text)
}

/// The slice and settings of the real-data test, shared with the reference export.
fn slice_setup() -> (Interactions, ModelConfig, TrainConfig) {
    let data = video_games_slice(2000, 6000);
    let mut model = ModelConfig::sasrec();
    model.hidden = 32;
    let config = TrainConfig {
        epochs: 20,
        batch_size: 128,
        learning_rate: 4e-3,
        patience: 2,
        eval_every: 2,
        seed: 1,
        ..TrainConfig::default()
    };
    (data, model, config)
}

#[test]
fn sasrec_beats_popularity_far_on_a_video_games_slice() {
    let (data, model, config) = slice_setup();
    let test = eval_candidates(&data, config.candidate_seed, 100, Split::Test).unwrap();
    let popularity = evaluate_popularity(&data, &test, Buckets::default());
    let pop = popularity.overall.metrics;
    eprintln!(
        "popularity: {} users, {} items, test NDCG@10 {:.4} HR@10 {:.4} HR@20 {:.4}",
        data.users.len(),
        data.num_items,
        pop.ndcg10,
        pop.hr10,
        pop.hr20
    );
    let report = train::<TrainBackend>(&data, &model, None, &config, &backend::device()).unwrap();
    eprintln!("{}", summary(&report));
    let m = report.test.overall.metrics;
    assert!(
        m.ndcg10 > 1.5 * pop.ndcg10,
        "{} vs popularity {}",
        summary(&report),
        pop.ndcg10
    );
    assert!(m.hr10 > pop.hr10);
    // Every bucket's users add up to the whole.
    let users: usize = report.test.buckets.iter().map(|b| b.users).sum();
    assert_eq!(users, data.users.len());
    // The candidates are the protocol's: 101 per user, never one of the user's items.
    assert_eq!(test.width, 1 + eval::NEGATIVES);
    for (r, user) in data.users.iter().enumerate() {
        let row = test.row(r);
        assert_eq!(row[0], user.test_item);
        assert!(row[1..].iter().all(|i| !user.history.contains(i)));
    }
}

/// By hand: writes the slice, its candidates and slim's SASRec result for
/// `benches/sasrec_reference.py` (folder `$SLIM_REFERENCE_DIR`, default
/// `target/sasrec-reference`), and prints GRU4Rec, SRGNN and popularity on the same slice.
#[test]
#[ignore = "run by hand for the PyTorch comparison"]
fn reference_inputs_and_slim_results() {
    let dir = std::env::var_os("SLIM_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/sasrec-reference"));
    let (data, model, config) = slice_setup();
    write_reference_inputs(&data, &config, &dir).unwrap();
    let bytes = std::fs::read(dir.join("candidates-test.parquet")).unwrap();
    let exported = eval::read_candidates(bytes.into(), "candidates-test.parquet").unwrap();
    let test = eval_candidates(&data, config.candidate_seed, 100, Split::Test).unwrap();
    assert_eq!(exported.len(), data.users.len());
    assert_eq!(exported[7].2, test.row(7));
    let popularity = evaluate_popularity(&data, &test, Buckets::default());
    eprintln!("popularity: {:?}", popularity.overall.metrics);
    let mut results = serde_json::Map::new();
    let mut gru = ModelConfig::gru4rec();
    gru.hidden = model.hidden;
    if let BackboneConfig::Gru4Rec(c) = &mut gru.backbone {
        c.state = model.hidden;
    }
    let mut srgnn = ModelConfig::srgnn();
    srgnn.hidden = model.hidden;
    for m in [model, gru, srgnn] {
        let report = train::<TrainBackend>(&data, &m, None, &config, &backend::device()).unwrap();
        eprintln!("{}", summary(&report));
        results.insert(report.model.clone(), serde_json::to_value(&report).unwrap());
    }
    std::fs::write(
        dir.join("slim.json"),
        serde_json::to_vec_pretty(&results).unwrap(),
    )
    .unwrap();
}

/// By hand, the acceptance run "with text embeddings of item titles, SASRec+ beats SASRec on
/// the same split (mean of 5 seeds)": the slice and settings of the real-data test, each
/// item's text (title, brand, category) embedded by the real all-MiniLM-L6-v2, SASRec and
/// SASRec+ (half ID, half projected text, as the train stage builds it) over seeds 1 to 5 on
/// the same candidates. Prints the table recorded in benches/results/sasrec_plus.md.
#[test]
#[ignore = "run by hand: ten training runs take minutes"]
fn sasrec_plus_with_minilm_item_text_beats_sasrec_over_five_seeds() {
    use slim_worker::encoder::TextEncoder;
    let (data, texts) = video_games_slice_with_text(2000, 6000);
    let (_, model, config) = slice_setup();
    let device = backend::device();
    let started = std::time::Instant::now();
    let encoder = TextEncoder::<backend::Backend>::load(
        &repo().join("models/all-minilm-l6-v2"),
        256,
        &device,
    )
    .unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let text = TextTable::from_rows(&encoder.encode(&refs, 64).unwrap()).unwrap();
    eprintln!(
        "{} items embedded ({} wide) in {:.1} s",
        text.items(),
        text.dim,
        started.elapsed().as_secs_f64()
    );
    let mut plus = model.clone();
    plus.items = ItemRepresentation::IdPlusText {
        text_dim: model.hidden / 2,
    };
    let mut table = Vec::new();
    for (m, text) in [(&model, None), (&plus, Some(&text))] {
        let mut runs = Vec::new();
        for seed in 1..=5 {
            let config = TrainConfig {
                seed,
                ..config.clone()
            };
            let report = train::<TrainBackend>(&data, m, text, &config, &device).unwrap();
            eprintln!("{}", summary(&report));
            runs.push(report.test.overall.metrics);
        }
        table.push((m.name(), eval::across_runs(&runs)));
    }
    eprintln!("| model | NDCG@10 | HR@10 | HR@20 |\n|---|---|---|---|");
    for (name, metrics) in &table {
        let cell = |i: usize| {
            format!(
                "{:.2} ± {:.2}",
                100.0 * metrics[i].1.mean,
                100.0 * metrics[i].1.std
            )
        };
        eprintln!("| {name} | {} | {} | {} |", cell(0), cell(1), cell(2));
    }
    let (id, plus) = (table[0].1[0].1.mean, table[1].1[0].1.mean);
    assert!(plus > id, "SASRec+ {plus:.4} vs SASRec {id:.4}");
}

/// By hand, a measurement of the SLIM models on real data before real rationales exist here:
/// the slice and settings of the real-data test, item text embedded by the real
/// all-MiniLM-L6-v2, and as each user's "rationale" a **proxy**: the same encoder's vector of
/// the titles of the user's last ten training items (no LLM wrote it; it shows what the
/// fusion does with a user-level text vector, not what the student's rationales are worth).
/// Prints SASRec, SASRec+, SLIM (SASRec) and the ID-agnostic SLIM over the seeds in
/// `$SLIM_SEEDS` (default `1`), on the same candidates. Recorded in
/// benches/results/slim_proxy.md.
#[test]
#[ignore = "run by hand: encodes 8,000 texts and trains for minutes"]
fn slim_with_proxy_rationales_on_a_video_games_slice() {
    use slim_worker::encoder::TextEncoder;
    let (data, texts) = video_games_slice_with_text(2000, 6000);
    let (_, model, config) = slice_setup();
    let device = backend::device();
    let seeds: Vec<u64> = std::env::var("SLIM_SEEDS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let started = std::time::Instant::now();
    let encoder = TextEncoder::<backend::Backend>::load(
        &repo().join("models/all-minilm-l6-v2"),
        256,
        &device,
    )
    .unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let items = cached("items", || encoder.encode(&refs, 64).unwrap());
    let items = TextTable::from_rows(&items).unwrap();
    let title = |i: u32| {
        let t = &texts[i as usize];
        t.split(". ").next().unwrap_or(t).to_string()
    };
    let proxies: Vec<String> = data
        .users
        .iter()
        .map(|u| {
            let h = &u.history;
            let recent: Vec<String> = h[h.len().saturating_sub(10)..]
                .iter()
                .map(|&i| title(i))
                .collect();
            format!("The user bought: {}", recent.join("; "))
        })
        .collect();
    let refs: Vec<&str> = proxies.iter().map(String::as_str).collect();
    let users: Vec<Option<Vec<f32>>> = cached("users", || encoder.encode(&refs, 64).unwrap())
        .into_iter()
        .map(Some)
        .collect();
    let users = UserText::from_rows(&users).unwrap();
    eprintln!(
        "{} items and {} users embedded in {:.1} s; first proxy: {}",
        items.items(),
        users.users(),
        started.elapsed().as_secs_f64(),
        proxies[0]
    );
    let mut plus = model.clone();
    plus.items = ItemRepresentation::IdPlusText {
        text_dim: model.hidden / 2,
    };
    let mut slim = ModelConfig::slim(model.backbone.clone());
    slim.hidden = model.hidden;
    let mut agnostic = ModelConfig::slim_agnostic();
    agnostic.hidden = model.hidden;
    let candidates = [
        ("SASRec", &model, None, None),
        ("SASRec+", &plus, Some(&items), None),
        ("SLIM (SASRec), proxy", &slim, Some(&items), Some(&users)),
        (
            "SLIM (ID-agnostic), proxy",
            &agnostic,
            Some(&items),
            Some(&users),
        ),
    ];
    let mut table = Vec::new();
    for (name, m, text, rationales) in candidates {
        let mut runs = Vec::new();
        for &seed in &seeds {
            let config = TrainConfig {
                seed,
                ..config.clone()
            };
            let report =
                train_with_rationales::<TrainBackend>(&data, m, text, rationales, &config, &device)
                    .unwrap();
            eprintln!("{name}: {}", summary(&report));
            runs.push(report.test.overall.metrics);
        }
        table.push((name, eval::across_runs(&runs)));
    }
    eprintln!("| model | NDCG@10 | HR@10 | HR@20 | EPC@10 |\n|---|---|---|---|---|");
    for (name, metrics) in &table {
        let cell = |i: usize| {
            format!(
                "{:.2} ± {:.2}",
                100.0 * metrics[i].1.mean,
                100.0 * metrics[i].1.std
            )
        };
        eprintln!(
            "| {name} | {} | {} | {} | {:.4} |",
            cell(0),
            cell(1),
            cell(2),
            metrics[4].1.mean
        );
    }
}

/// Vectors kept under `target/slim-proxy-cache/{name}.f32` between by-hand runs (encoding
/// them takes minutes on two cores): rows, width, then the values, little-endian.
fn cached(name: &str, compute: impl FnOnce() -> Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let path = repo().join(format!("target/slim-proxy-cache/{name}.f32"));
    if let Ok(bytes) = std::fs::read(&path) {
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        let (rows, dim) = (word(0) as usize, word(1) as usize);
        let values: Vec<f32> = bytes[16..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values.len(), rows * dim, "{}", path.display());
        return values.chunks(dim).map(<[f32]>::to_vec).collect();
    }
    let vectors = compute();
    let dim = vectors.first().map_or(0, Vec::len);
    let mut bytes = Vec::with_capacity(16 + vectors.len() * dim * 4);
    bytes.extend((vectors.len() as u64).to_le_bytes());
    bytes.extend((dim as u64).to_le_bytes());
    for v in vectors.iter().flatten() {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    vectors
}
