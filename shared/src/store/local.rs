//! The local-directory backend.
//!
//! Objects are plain files under the root; a key's `/` separators become directories. Writes go
//! to a temporary file in the destination directory, are fsynced, then renamed over the final
//! path, so a reader sees either the old object or the new one, never a partial file. A crash
//! can leave a temporary file behind; [`LocalStore::list`] never reports those.

use super::{ObjectInfo, Store, StoreError, check_key};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// File-name prefix of in-flight writes. Files starting with it are never listed, and keys whose
/// last segment starts with it are refused.
pub const TEMP_PREFIX: &str = ".slim-tmp-";

/// A [`Store`] over a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`. The directory is created on the first write.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The directory this store is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file path of a (checked) key.
    fn path_of(&self, key: &str) -> PathBuf {
        key.split('/')
            .fold(self.root.clone(), |path, part| path.join(part))
    }

    /// Checks a key for use as an object name.
    fn checked(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        if key
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with(TEMP_PREFIX))
        {
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                message: format!(
                    "names starting with {TEMP_PREFIX:?} are reserved for temporary files"
                ),
            });
        }
        Ok(self.path_of(key))
    }

    fn io_error(path: &Path, source: io::Error) -> StoreError {
        StoreError::Io {
            uri: path.display().to_string(),
            source,
        }
    }

    /// Writes whatever `fill` produces to a temporary file next to `path`, fsyncs it and renames
    /// it onto `path`. On any error the temporary file is removed and `path` is untouched.
    fn write_atomically(
        path: &Path,
        fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let parent = path.parent().ok_or_else(|| {
            Self::io_error(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"),
            )
        })?;
        fs::create_dir_all(parent).map_err(|e| Self::io_error(parent, e))?;
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(parent)
            .map_err(|e| Self::io_error(parent, e))?;
        fill(temp.as_file_mut()).map_err(|e| Self::io_error(path, e))?;
        temp.as_file_mut()
            .flush()
            .map_err(|e| Self::io_error(path, e))?;
        temp.as_file()
            .sync_all()
            .map_err(|e| Self::io_error(path, e))?;
        temp.persist(path)
            .map_err(|e| Self::io_error(path, e.error))?;
        // Make the rename itself durable. Not every filesystem supports fsync on a directory.
        if let Ok(dir) = fs::File::open(parent)
            && let Err(e) = dir.sync_all()
        {
            tracing::debug!(dir = %parent.display(), error = %e, "fsync of directory failed");
        }
        Ok(())
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io {
            uri: path.display().to_string(),
            source: io::Error::other(format!("filesystem task failed: {e}")),
        })?
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory
    )
}

/// Collects the files under `dir` whose key (relative to the store root, `key_dir` being the key
/// of `dir` itself) starts with `prefix`.
fn walk(
    dir: &Path,
    key_dir: &str,
    prefix: &str,
    out: &mut Vec<ObjectInfo>,
) -> Result<(), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(LocalStore::io_error(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| LocalStore::io_error(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let key = if key_dir.is_empty() {
            name
        } else {
            format!("{key_dir}/{name}")
        };
        let file_type = entry
            .file_type()
            .map_err(|e| LocalStore::io_error(&path, e))?;
        if file_type.is_dir() {
            // Only descend where keys below could still match the prefix.
            let below = format!("{key}/");
            if below.starts_with(prefix) || prefix.starts_with(&below) {
                walk(&path, &key, prefix, out)?;
            }
            continue;
        }
        if !key.starts_with(prefix) {
            continue;
        }
        // Follows symlinks to files; a dangling link or a link to a directory is not an object.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => out.push(ObjectInfo {
                key,
                size: meta.len(),
            }),
            Ok(_) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(LocalStore::io_error(&path, e)),
        }
    }
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.checked(key)?;
        tracing::debug!(path = %path.display(), bytes = body.len(), "writing object");
        let target = path.clone();
        blocking(&path, move || {
            Self::write_atomically(&target, |file| file.write_all(&body))
        })
        .await
    }

    async fn put_file(&self, key: &str, source: &Path) -> Result<(), StoreError> {
        let path = self.checked(key)?;
        tracing::debug!(path = %path.display(), source = %source.display(), "copying file in");
        let source = source.to_path_buf();
        let target = path.clone();
        blocking(&path, move || {
            let mut input = fs::File::open(&source).map_err(|e| Self::io_error(&source, e))?;
            Self::write_atomically(&target, |file| {
                io::copy(&mut input, file).map(drop).map_err(|e| {
                    io::Error::new(e.kind(), format!("copying from {}: {e}", source.display()))
                })
            })
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.checked(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if is_missing(&e) => Err(StoreError::NotFound {
                uri: path.display().to_string(),
            }),
            Err(e) => Err(Self::io_error(&path, e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.checked(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(Self::io_error(&path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        if !prefix.is_empty() {
            check_key(prefix.strip_suffix('/').unwrap_or(prefix))?;
        }
        // Start the walk at the deepest directory the prefix names in full.
        let key_dir = prefix
            .rsplit_once('/')
            .map_or("", |(dir, _)| dir)
            .to_string();
        let dir = if key_dir.is_empty() {
            self.root.clone()
        } else {
            self.path_of(&key_dir)
        };
        let prefix = prefix.to_string();
        let mut objects = blocking(&dir.clone(), move || {
            let mut out = Vec::new();
            walk(&dir, &key_dir, &prefix, &mut out)?;
            Ok(out)
        })
        .await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.checked(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                Ok(())
            }
            Err(e) => Err(Self::io_error(&path, e)),
        }
    }

    fn location(&self, key: &str) -> super::Location {
        super::Location::Local(self.path_of(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_reserved_names_and_skips_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let err = store
            .put(&format!("a/{TEMP_PREFIX}x"), Bytes::from_static(b"x"))
            .await;
        assert!(matches!(err, Err(StoreError::InvalidKey { .. })), "{err:?}");

        store.put("a/b", Bytes::from_static(b"b")).await.unwrap();
        // A temporary file left behind by a crashed writer.
        fs::write(
            dir.path().join("a").join(format!("{TEMP_PREFIX}crash")),
            b"half",
        )
        .unwrap();
        let keys: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["a/b"]);
    }

    #[tokio::test]
    async fn location_joins_the_key() {
        let store = LocalStore::new(PathBuf::from("/data/out"));
        assert_eq!(
            store.location("job/data/x.parquet"),
            super::super::Location::Local(PathBuf::from("/data/out/job/data/x.parquet"))
        );
    }
}
