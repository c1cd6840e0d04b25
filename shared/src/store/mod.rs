//! One storage interface over a local directory and S3.
//!
//! A [`Store`] is rooted at a [`Location`] (`/data/out` or `s3://bucket/prefix`); keys are
//! relative, `/`-separated paths under it such as `demo/data/users.parquet`. Stages never know
//! which backend they write to.
//!
//! Invariant: a reader never sees a half-written object under its final key. The local backend
//! writes to a temporary file in the same directory and renames it; S3 makes an object visible
//! only when a PUT or a multipart upload completes.

pub mod local;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where data lives: a local path or an S3 URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    /// `s3://bucket/key`; `key` has no leading slash and may be empty.
    S3 {
        bucket: String,
        key: String,
    },
}

impl Location {
    /// Parses `s3://bucket/key` or a local path. Relative local paths are joined onto `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, StoreError> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::InvalidLocation {
                    location: text.to_string(),
                    message: "an s3:// URI needs a bucket name: s3://bucket/prefix".into(),
                });
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.trim_matches('/').to_string(),
            });
        }
        if text.contains("://") {
            return Err(StoreError::InvalidLocation {
                location: text.to_string(),
                message: "only local paths and s3:// URIs are supported".into(),
            });
        }
        let path = Path::new(text);
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        Ok(Location::Local(normalize(&joined)))
    }

    /// This location with `key` appended (`/`-separated).
    pub fn join(&self, key: &str) -> Location {
        match self {
            Location::Local(path) => Location::Local(
                key.split('/')
                    .filter(|p| !p.is_empty())
                    .fold(path.clone(), |p, part| p.join(part)),
            ),
            Location::S3 {
                bucket,
                key: prefix,
            } => Location::S3 {
                bucket: bucket.clone(),
                key: join_key(prefix, key),
            },
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Location::S3 { .. })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, key } if key.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Removes `.` and resolvable `..` components without touching the file system, so paths in
/// messages read `out/demo`, not `jobs/../out/demo`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Joins two `/`-separated key parts without doubling or leading slashes.
pub fn join_key(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let key = key.trim_matches('/');
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}/{key}"),
    }
}

/// How to reach S3. Secrets are never written here: only the names of the environment
/// variables that hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL for S3-compatible stores (Garage, MinIO). Falls back to `AWS_ENDPOINT_URL`;
    /// unset means AWS itself.
    pub endpoint: Option<String>,
    /// Region. Falls back to `AWS_REGION`, then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    /// Defaults to true when an endpoint is set.
    pub path_style: Option<bool>,
    /// Name of the environment variable holding the access key id.
    pub access_key_env: String,
    /// Name of the environment variable holding the secret access key.
    pub secret_key_env: String,
    /// Objects larger than this many MiB are uploaded in parts.
    pub multipart_threshold_mib: u64,
    /// Size of each part of a multipart upload, in MiB (S3's minimum is 5).
    pub part_size_mib: u64,
    /// Attempts per request before giving up (the SDK retries with backoff).
    pub max_attempts: u32,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            path_style: None,
            access_key_env: "AWS_ACCESS_KEY_ID".into(),
            secret_key_env: "AWS_SECRET_ACCESS_KEY".into(),
            multipart_threshold_mib: 16,
            part_size_mib: 8,
            max_attempts: 5,
        }
    }
}

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{uri}: not found")]
    NotFound { uri: String },
    #[error("{uri}: {source}")]
    Io {
        uri: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{uri}: {message}")]
    Remote { uri: String, message: String },
    #[error("{location}: {message}")]
    InvalidLocation { location: String, message: String },
    #[error("invalid key {key:?}: {message}")]
    InvalidKey { key: String, message: String },
}

/// An object found by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's root.
    pub key: String,
    pub size: u64,
}

/// Object storage rooted at one location. Keys are relative `/`-separated paths.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Writes `body` under `key`, replacing any previous object, atomically for readers.
    /// Large bodies go up in parts.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;

    /// Uploads a local file under `key`, streaming it (in parts when large).
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError>;

    /// Reads a whole object. [`StoreError::NotFound`] when absent.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Whether an object exists under `key`.
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;

    /// Objects whose key starts with `prefix` (a folder-like prefix such as `job/teacher/`),
    /// sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes an object; deleting an absent object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// The full location of `key`, for messages and for external readers.
    fn location(&self, key: &str) -> Location;
}

/// Opens the store rooted at `root`.
pub async fn open(root: &Location, s3: &S3Settings) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match root {
        Location::Local(path) => Arc::new(local::LocalStore::new(path.clone())),
        Location::S3 { bucket, key } => Arc::new(s3::S3Store::connect(bucket, key, s3).await?),
    })
}

/// Rejects keys that could escape the store's root or name nothing.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |message: &str| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            message: message.to_string(),
        })
    };
    if key.is_empty() {
        return bad("empty key");
    }
    if key.starts_with('/') {
        return bad("keys are relative to the store's root");
    }
    if key
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("empty, `.` or `..` path segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let base = Path::new("/jobs");
        assert_eq!(
            Location::parse("s3://bkt/a/b/", base).unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                key: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bkt", base).unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                key: "".into()
            }
        );
        assert_eq!(
            Location::parse("out", base).unwrap(),
            Location::Local("/jobs/out".into())
        );
        assert_eq!(
            Location::parse("/abs", base).unwrap(),
            Location::Local("/abs".into())
        );
        assert!(Location::parse("s3:///x", base).is_err());
        assert!(Location::parse("gs://bkt/x", base).is_err());
        let s3 = Location::parse("s3://bkt/p", base).unwrap();
        assert_eq!(
            s3.join("job/data/users.parquet").to_string(),
            "s3://bkt/p/job/data/users.parquet"
        );
    }

    #[test]
    fn rejects_escaping_keys() {
        assert!(check_key("job/data/x.parquet").is_ok());
        for key in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert!(check_key(key).is_err(), "{key}");
        }
    }
}
