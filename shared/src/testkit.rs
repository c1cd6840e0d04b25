//! Helpers for tests across the workspace that need the real S3 server (Garage).
//!
//! Garage is started by `scripts/garage.sh start` (or `make test`), which writes `.garage/env`
//! at the repository root. [`garage`] reads the connection from the environment
//! (`SLIM_S3_ENDPOINT`, `SLIM_S3_REGION`, `SLIM_S3_BUCKET`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`) or, when `SLIM_S3_ENDPOINT` is unset, from that file.

use crate::store::{Location, S3Settings};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const NOT_RUNNING: &str =
    "Garage is not running: start it with `scripts/garage.sh start` (or `make test`)";

/// The variables `.garage/env` defines, in the order they are applied.
const VARS: [&str; 5] = [
    "SLIM_S3_ENDPOINT",
    "SLIM_S3_REGION",
    "SLIM_S3_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

/// The test bucket on Garage and settings to reach it. The settings read the credentials from
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, which this sets from `.garage/env` when the
/// environment does not already point at a server (so child processes see them too).
///
/// Panics when Garage is not configured: tests that need S3 fail loudly rather than skip.
pub fn garage() -> (Location, S3Settings) {
    static LOADED: OnceLock<()> = OnceLock::new();
    LOADED.get_or_init(load_env_file);

    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let endpoint = var("SLIM_S3_ENDPOINT").unwrap_or_else(|| panic!("{NOT_RUNNING}"));
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(var(name).is_some(), "{name} is not set. {NOT_RUNNING}");
    }
    let settings = S3Settings {
        endpoint: Some(endpoint),
        region: Some(var("SLIM_S3_REGION").unwrap_or_else(|| "garage".into())),
        path_style: Some(true),
        access_key_env: "AWS_ACCESS_KEY_ID".into(),
        secret_key_env: "AWS_SECRET_ACCESS_KEY".into(),
        ..S3Settings::default()
    };
    let bucket = var("SLIM_S3_BUCKET").unwrap_or_else(|| "slim-test".into());
    (
        Location::S3 {
            bucket,
            key: String::new(),
        },
        settings,
    )
}

/// The team's Amazon data folder: `SLIM_DATA_DIR`, else `../shared/data/amazon` beside the
/// checkout. Panics when it is missing: tests on real data fail loudly rather than skip.
pub fn amazon_data_dir() -> PathBuf {
    let dir = match std::env::var_os("SLIM_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/amazon"),
    };
    assert!(
        dir.is_dir(),
        "no Amazon data folder at {} (set SLIM_DATA_DIR)",
        dir.display()
    );
    dir
}

/// A key prefix no other test run uses: `name-<pid>-<nanoseconds>-<counter>`.
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{name}-{}-{nanos}-{count}", std::process::id())
}

/// When the environment names no endpoint, applies `.garage/env` (found by walking up from the
/// current directory) to this process's environment.
fn load_env_file() {
    if std::env::var_os("SLIM_S3_ENDPOINT").is_some_and(|v| !v.is_empty()) {
        return;
    }
    let Ok(cwd) = std::env::current_dir() else {
        return;
    };
    let Some(path) = find_env_file(&cwd) else {
        return;
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}. {NOT_RUNNING}", path.display()));
    let vars = parse_env(&text);
    for name in VARS {
        if let Some(value) = vars.get(name) {
            // SAFETY: runs once (under the OnceLock), from test code, before any S3 client is
            // built from these variables. std serialises its own environment access; nothing in
            // these tests reads the environment from C code at the same time.
            unsafe { std::env::set_var(name, value) };
        }
    }
}

fn find_env_file(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(".garage").join("env"))
        .find(|path| path.is_file())
}

/// Parses `export NAME=value` / `NAME=value` lines; values may be single- or double-quoted.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((name.trim().to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_env_file() {
        let vars = parse_env(
            "# written by scripts/garage.sh\nexport SLIM_S3_ENDPOINT=http://127.0.0.1:3900\n\
             export SLIM_S3_REGION='garage'\nAWS_ACCESS_KEY_ID=\"GKabc\"\n\n",
        );
        assert_eq!(vars["SLIM_S3_ENDPOINT"], "http://127.0.0.1:3900");
        assert_eq!(vars["SLIM_S3_REGION"], "garage");
        assert_eq!(vars["AWS_ACCESS_KEY_ID"], "GKabc");
        assert_eq!(vars.len(), 3);
    }

    #[test]
    fn finds_the_env_file_in_an_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".garage")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join(".garage/env"), "x").unwrap();
        assert_eq!(
            find_env_file(&dir.path().join("a/b")),
            Some(dir.path().join(".garage/env"))
        );
    }

    #[test]
    fn unique_prefixes_differ() {
        let a = unique_prefix("store test");
        let b = unique_prefix("store test");
        assert_ne!(a, b);
        assert!(a.starts_with("store-test-"), "{a}");
        assert!(crate::store::check_key(&a).is_ok());
    }
}
