//! The storage interface, run against both backends: a local directory and a real S3 server
//! (Garage, started by `scripts/garage.sh start`). One suite, so both behave the same.

use bytes::Bytes;
use slim_shared::data::source::LineReader;
use slim_shared::store::local::LocalStore;
use slim_shared::store::s3::{S3Store, blocking_object_reader};
use slim_shared::store::{self, Location, ObjectInfo, S3Settings, Store, StoreError};
use slim_shared::testkit;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

const MIB: usize = 1024 * 1024;

/// Bytes that differ with position (no short period), so swapped or repeated parts show up.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn keys(objects: &[ObjectInfo]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, key: &str) {
    match result {
        Err(StoreError::NotFound { uri }) => assert!(uri.contains(key), "{uri} should name {key}"),
        other => panic!("expected NotFound for {key}, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::InvalidKey { .. })),
        "{what}: {result:?}"
    );
}

/// The whole contract of [`Store`]; `scratch` is a local directory for source files.
async fn suite(store: Arc<dyn Store>, scratch: &Path) {
    // Round trip, including an empty object.
    store
        .put("a/one.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(store.get("a/one.txt").await.unwrap(), "hello");
    store.put("a/empty", Bytes::new()).await.unwrap();
    assert_eq!(store.get("a/empty").await.unwrap(), "");

    // Overwrite replaces the content entirely, longer then shorter.
    store
        .put("a/one.txt", Bytes::from_static(b"goodbye, world"))
        .await
        .unwrap();
    assert_eq!(store.get("a/one.txt").await.unwrap(), "goodbye, world");
    store
        .put("a/one.txt", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    assert_eq!(store.get("a/one.txt").await.unwrap(), "hi");

    // Missing objects; a "directory" is not an object.
    assert_not_found(store.get("a/missing").await, "a/missing");
    assert_not_found(store.get("a").await, "a");
    assert!(store.exists("a/one.txt").await.unwrap());
    assert!(store.exists("a/empty").await.unwrap());
    assert!(!store.exists("a/missing").await.unwrap());
    assert!(!store.exists("a").await.unwrap());
    assert!(!store.exists("nowhere/at/all").await.unwrap());

    // Listing: string-prefix semantics, sorted, keys relative to the root, nested.
    for (key, body) in [
        ("job/teacher/0002.jsonl", "22"),
        ("job/teacher/0001.jsonl", "1"),
        ("job/teacher/sub/deep/x", "xyz"),
        ("job/teachers.txt", "t"),
        ("job/data/users.parquet", "users"),
        ("jobx/y", "y"),
    ] {
        store.put(key, Bytes::from(body)).await.unwrap();
    }
    let teacher = store.list("job/teacher/").await.unwrap();
    assert_eq!(
        teacher,
        vec![
            ObjectInfo {
                key: "job/teacher/0001.jsonl".into(),
                size: 1
            },
            ObjectInfo {
                key: "job/teacher/0002.jsonl".into(),
                size: 2
            },
            ObjectInfo {
                key: "job/teacher/sub/deep/x".into(),
                size: 3
            },
        ]
    );
    assert_eq!(
        keys(&store.list("job/te").await.unwrap()),
        [
            "job/teacher/0001.jsonl",
            "job/teacher/0002.jsonl",
            "job/teacher/sub/deep/x",
            "job/teachers.txt"
        ]
    );
    assert_eq!(
        keys(&store.list("job/").await.unwrap()),
        [
            "job/data/users.parquet",
            "job/teacher/0001.jsonl",
            "job/teacher/0002.jsonl",
            "job/teacher/sub/deep/x",
            "job/teachers.txt"
        ]
    );
    assert_eq!(
        keys(&store.list("job").await.unwrap()).last(),
        Some(&"jobx/y")
    );
    assert_eq!(
        keys(&store.list("job/teacher/sub/deep/x").await.unwrap()),
        ["job/teacher/sub/deep/x"]
    );
    assert!(store.list("nothing/").await.unwrap().is_empty());
    assert!(store.list("job/teacher/0003").await.unwrap().is_empty());
    assert_eq!(
        keys(&store.list("").await.unwrap()),
        [
            "a/empty",
            "a/one.txt",
            "job/data/users.parquet",
            "job/teacher/0001.jsonl",
            "job/teacher/0002.jsonl",
            "job/teacher/sub/deep/x",
            "job/teachers.txt",
            "jobx/y"
        ]
    );

    // Delete, and deleting what is absent is fine.
    store.delete("job/teacher/0002.jsonl").await.unwrap();
    assert!(!store.exists("job/teacher/0002.jsonl").await.unwrap());
    assert_not_found(
        store.get("job/teacher/0002.jsonl").await,
        "job/teacher/0002.jsonl",
    );
    assert_eq!(
        keys(&store.list("job/teacher/").await.unwrap()),
        ["job/teacher/0001.jsonl", "job/teacher/sub/deep/x"]
    );
    store.delete("job/teacher/0002.jsonl").await.unwrap();
    store.delete("never/was/here").await.unwrap();
    assert_eq!(store.get("job/teacher/0001.jsonl").await.unwrap(), "1");

    // Keys that could escape the root or name nothing are refused by every operation.
    for key in ["", "/abs", "a/../b", "a//b", "./a", "a/", ".."] {
        assert_invalid(store.put(key, Bytes::from_static(b"x")).await, key);
        assert_invalid(store.get(key).await, key);
        assert_invalid(store.exists(key).await, key);
        assert_invalid(store.delete(key).await, key);
        assert_invalid(store.put_file(key, &scratch.join("nope")).await, key);
    }
    for prefix in ["/", "/a", "../", "a/../b", "a//"] {
        assert_invalid(store.list(prefix).await, prefix);
    }

    // The location names the key under the root.
    let location = store.location("job/teacher/0001.jsonl").to_string();
    assert!(location.ends_with("/job/teacher/0001.jsonl"), "{location}");

    // Large bodies and files: multipart on S3 (the S3 store under test uses 5 MiB parts).
    let big = pattern(12 * MIB + 12_345, 7);
    store.put("big/body.bin", big.clone()).await.unwrap();
    let back = store.get("big/body.bin").await.unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "multipart body came back different");

    let file_content = pattern(12 * MIB + 777, 9);
    let file = scratch.join("upload.bin");
    std::fs::write(&file, &file_content).unwrap();
    store.put_file("big/file.bin", &file).await.unwrap();
    let back = store.get("big/file.bin").await.unwrap();
    assert_eq!(back.len(), file_content.len());
    assert!(back == file_content, "multipart file came back different");

    let small = scratch.join("small.txt");
    std::fs::write(&small, "small file\n").unwrap();
    store.put_file("big/small.txt", &small).await.unwrap();
    assert_eq!(store.get("big/small.txt").await.unwrap(), "small file\n");
    assert_eq!(
        store.list("big/").await.unwrap(),
        vec![
            ObjectInfo {
                key: "big/body.bin".into(),
                size: big.len() as u64
            },
            ObjectInfo {
                key: "big/file.bin".into(),
                size: file_content.len() as u64
            },
            ObjectInfo {
                key: "big/small.txt".into(),
                size: 11
            },
        ]
    );

    // A file that cannot be read uploads nothing and keeps the previous object.
    let missing = scratch.join("does-not-exist.bin");
    assert!(matches!(
        store.put_file("big/small.txt", &missing).await,
        Err(StoreError::Io { .. })
    ));
    assert!(store.put_file("big/none.bin", &missing).await.is_err());
    assert!(!store.exists("big/none.bin").await.unwrap());
    assert_eq!(store.get("big/small.txt").await.unwrap(), "small file\n");

    concurrent_overwrites_are_atomic(store).await;
}

/// Readers racing a writer only ever see a complete old or complete new object, and listing
/// shows the final key alone (no temporary objects).
async fn concurrent_overwrites_are_atomic(store: Arc<dyn Store>) {
    const ROUNDS: usize = 12;
    let len = 3 * MIB;
    let versions = [Bytes::from(vec![b'a'; len]), Bytes::from(vec![b'b'; len])];
    store.put("race/obj", versions[0].clone()).await.unwrap();

    let writer = {
        let store = store.clone();
        let versions = versions.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                store
                    .put("race/obj", versions[(round + 1) % 2].clone())
                    .await
                    .unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads < 5 {
        let body = store.get("race/obj").await.unwrap();
        assert_eq!(body.len(), len, "a reader saw a partial object");
        assert!(
            body == versions[0] || body == versions[1],
            "a reader saw mixed content"
        );
        assert_eq!(keys(&store.list("race/").await.unwrap()), ["race/obj"]);
        reads += 1;
    }
    writer.await.unwrap();
    // The last round wrote version ROUNDS % 2.
    assert!(
        store.get("race/obj").await.unwrap() == versions[ROUNDS % 2],
        "the last write did not win"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = store::open(
        &Location::Local(root.path().join("out")),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    suite(store, scratch.path()).await;
}

/// A write that fails half-way leaves neither the final key nor a temporary file behind, and
/// an old object under the key survives.
#[tokio::test]
async fn local_failed_write_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::new(root.path().to_path_buf());
    store
        .put("job/keep", Bytes::from_static(b"old"))
        .await
        .unwrap();

    // Opening a directory succeeds but reading it fails: the copy dies after the temporary
    // file was created.
    let unreadable = tempfile::tempdir().unwrap();
    let err = store
        .put_file("job/new", unreadable.path())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    let err = store
        .put_file("job/keep", unreadable.path())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");

    assert!(!store.exists("job/new").await.unwrap());
    assert_eq!(store.get("job/keep").await.unwrap(), "old");
    assert_eq!(keys(&store.list("").await.unwrap()), ["job/keep"]);
    let on_disk: Vec<_> = std::fs::read_dir(root.path().join("job"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(on_disk, ["keep"], "temporary files were left behind");
}

/// The Garage store under a fresh prefix, with 5 MiB parts so that 12 MiB goes up in three.
async fn garage_store(name: &str) -> (S3Store, S3Settings, String) {
    let (root, mut settings) = testkit::garage();
    settings.multipart_threshold_mib = 5;
    settings.part_size_mib = 5;
    let Location::S3 { bucket, .. } = &root else {
        panic!("testkit::garage returned {root}")
    };
    let prefix = testkit::unique_prefix(name);
    let store = S3Store::connect(bucket, &prefix, &settings).await.unwrap();
    (store, settings, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_s3_store() {
    let started = std::time::Instant::now();
    let (s3, settings, prefix) = garage_store("store-suite").await;
    let bucket = s3.bucket().to_string();
    let scratch = tempfile::tempdir().unwrap();

    // The suite goes through `store::open`, like the stages do.
    let root = Location::S3 {
        bucket: bucket.clone(),
        key: prefix.clone(),
    };
    let store = store::open(&root, &settings).await.unwrap();
    suite(store.clone(), scratch.path()).await;

    // Locations are full S3 URIs under the prefix.
    assert_eq!(
        store.location("a/one.txt").to_string(),
        format!("s3://{bucket}/{prefix}/a/one.txt")
    );

    // The 12 MiB objects really went up in 5 MiB parts (a multipart ETag ends in -<parts>),
    // and no upload was left open.
    for key in ["big/body.bin", "big/file.bin"] {
        let head = s3
            .client()
            .head_object()
            .bucket(&bucket)
            .key(s3.object_key(key))
            .send()
            .await
            .unwrap();
        let etag = head
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        assert!(
            etag.ends_with("-3"),
            "{key}: ETag {etag} is not from a 3-part upload"
        );
    }
    let small = s3
        .client()
        .head_object()
        .bucket(&bucket)
        .key(s3.object_key("big/small.txt"))
        .send()
        .await
        .unwrap();
    assert!(
        !small.e_tag().unwrap_or_default().contains('-'),
        "small files go up in one PUT"
    );
    let open = s3
        .client()
        .list_multipart_uploads()
        .bucket(&bucket)
        .prefix(format!("{prefix}/"))
        .send()
        .await
        .unwrap();
    assert!(
        open.uploads().is_empty(),
        "multipart uploads left open: {:?}",
        open.uploads()
    );

    // Pagination: two keys a page gives the same listing.
    let paged = S3Store::connect(&bucket, &prefix, &settings)
        .await
        .unwrap()
        .with_list_page_size(2);
    let all = store.list("").await.unwrap();
    assert!(all.len() > 4, "{all:?}");
    assert_eq!(paged.list("").await.unwrap(), all);
    assert_eq!(
        paged.list("job/").await.unwrap(),
        store.list("job/").await.unwrap()
    );

    // A sibling prefix sharing our name's start is not listed.
    let sibling = S3Store::connect(&bucket, &format!("{prefix}x"), &settings)
        .await
        .unwrap();
    sibling.put("leak", Bytes::from_static(b"x")).await.unwrap();
    assert!(!keys(&store.list("").await.unwrap()).contains(&"leak"));
    assert!(
        keys(&store.list("").await.unwrap())
            .iter()
            .all(|k| !k.starts_with('/'))
    );
    sibling.delete("leak").await.unwrap();

    // Clean up, which also checks that deleting everything leaves nothing.
    for object in store.list("").await.unwrap() {
        store.delete(&object.key).await.unwrap();
    }
    assert!(store.list("").await.unwrap().is_empty());
    eprintln!(
        "garage store suite: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_streams_objects_to_blocking_readers() {
    let (s3, settings, _prefix) = garage_store("store-reader").await;
    let content = pattern(7 * MIB + 3, 11);
    s3.put("stream/blob.bin", content.clone()).await.unwrap();
    s3.put(
        "stream/lines.txt",
        Bytes::from_static(b"first\nsecond\r\nthird"),
    )
    .await
    .unwrap();

    let blob = s3.location("stream/blob.bin");
    let lines = s3.location("stream/lines.txt");
    let missing = s3.location("stream/missing.bin");
    let (read, text, missing_error) = tokio::task::spawn_blocking({
        let settings = settings.clone();
        move || {
            // Read in small chunks, as a streaming consumer does.
            let mut reader = blocking_object_reader(&blob, &settings).unwrap();
            let mut read = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&chunk[..n]);
            }

            let mut line_reader = LineReader::open(&lines, &settings).unwrap();
            let mut text = Vec::new();
            while let Some(line) = line_reader.next_line().unwrap() {
                text.push(line.to_string());
            }

            let missing_error = format!(
                "{:#}",
                blocking_object_reader(&missing, &settings).err().unwrap()
            );
            (read, text, missing_error)
        }
    })
    .await
    .unwrap();

    assert_eq!(read.len(), content.len());
    assert!(read == content, "streamed object differs");
    assert_eq!(text, ["first", "second", "third"]);
    assert!(missing_error.contains("not found"), "{missing_error}");
    let missing_uri = s3.location("stream/missing.bin").to_string();
    assert!(missing_error.contains(&missing_uri), "{missing_error}");

    for key in ["stream/blob.bin", "stream/lines.txt"] {
        s3.delete(key).await.unwrap();
    }
}

#[tokio::test]
async fn garage_errors_name_the_uri() {
    let (root, settings) = testkit::garage();
    let Location::S3 { bucket, .. } = root else {
        unreachable!()
    };
    // A bucket that does not exist is an error, not a missing object.
    let nobucket = format!("{bucket}-does-not-exist");
    let store = S3Store::connect(&nobucket, "p", &settings).await.unwrap();
    let err = store.get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Remote { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("s3://{nobucket}/p/k")),
        "{err}"
    );

    // Wrong credentials are refused, and the message names the object.
    // (The access key id doubles as a wrong secret, so no environment variable is changed.)
    let wrong = S3Settings {
        secret_key_env: settings.access_key_env.clone(),
        ..settings.clone()
    };
    let store = S3Store::connect(&bucket, "p", &wrong).await.unwrap();
    let err = store.put("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Remote { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("s3://{bucket}/p/k")),
        "{err}"
    );

    // Unset credential variables are named, and no client is built.
    let unset = S3Settings {
        access_key_env: "SLIM_TEST_STORE_UNSET_ACCESS_KEY".into(),
        ..settings
    };
    let err = S3Store::connect(&bucket, "p", &unset).await.unwrap_err();
    assert!(
        err.to_string().contains("SLIM_TEST_STORE_UNSET_ACCESS_KEY"),
        "{err}"
    );
}

/// A multipart upload that is cancelled half-way (its future dropped) is aborted on the
/// server: no upload stays open and no object appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_cancelled_multipart_upload_is_aborted() {
    let (s3, _settings, prefix) = garage_store("store-cancel").await;
    let s3 = Arc::new(s3);
    let open_uploads = |s3: Arc<S3Store>| {
        let prefix = format!("{prefix}/");
        async move {
            s3.client()
                .list_multipart_uploads()
                .bucket(s3.bucket())
                .prefix(prefix)
                .send()
                .await
                .unwrap()
                .uploads()
                .len()
        }
    };
    let body = pattern(40 * MIB, 5);
    let mut cancelled = false;
    for _attempt in 0..3 {
        let upload = tokio::spawn({
            let (s3, body) = (s3.clone(), body.clone());
            async move { s3.put("cancel/big.bin", body).await }
        });
        // Cancel as soon as the server has the upload open.
        while !upload.is_finished() && open_uploads(s3.clone()).await == 0 {
            tokio::task::yield_now().await;
        }
        if upload.is_finished() {
            // Too fast to catch this time: clean up and try again.
            upload.await.unwrap().unwrap();
            s3.delete("cancel/big.bin").await.unwrap();
            continue;
        }
        upload.abort();
        assert!(upload.await.unwrap_err().is_cancelled());
        cancelled = true;
        break;
    }
    assert!(
        cancelled,
        "the upload always finished before it could be cancelled"
    );

    // The abort runs in the background; give it a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while open_uploads(s3.clone()).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled upload was never aborted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!s3.exists("cancel/big.bin").await.unwrap());
}
