//! The local-directory backend.
//!
//! Objects are plain files under the root; a key's `/` separators become directories. Writes go
//! to a temporary file in the destination directory, are fsynced, then renamed over the final
//! path, so a reader sees either the old object or the new one, never a partial file; the
//! directory is then fsynced so the rename survives a power loss too. A crash can leave a
//! temporary file behind; [`LocalStore::list`] never reports those.
//!
//! Each fsync waits for a journal commit (milliseconds on a disk), and many small writes land in
//! one directory (a stage's task markers), so concurrent writers share directory fsyncs
//! ([`GroupSync`]): a write returns once an fsync of its directory that began after its rename
//! has finished, whoever ran it.

use super::{ObjectInfo, Store, StoreError, check_key};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};

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
        // Make the rename itself durable, in an fsync shared with concurrent writers.
        DIRECTORY_SYNCS.sync(parent);
        Ok(())
    }
}

/// Every directory's [`GroupSync`], for the writes of this process.
static DIRECTORY_SYNCS: LazyLock<DirectorySyncs> = LazyLock::new(DirectorySyncs::default);

/// The [`GroupSync`] of each directory being written to; an entry lives while someone uses it.
#[derive(Default)]
struct DirectorySyncs {
    by_dir: Mutex<HashMap<PathBuf, Arc<GroupSync>>>,
}

impl DirectorySyncs {
    /// Returns once an fsync of `dir` that began after this call has finished.
    fn sync(&self, dir: &Path) {
        let group = lock(&self.by_dir)
            .entry(dir.to_path_buf())
            .or_default()
            .clone();
        group.sync(|| {
            // Not every filesystem supports fsync on a directory.
            if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
                tracing::debug!(dir = %dir.display(), error = %e, "fsync of directory failed");
            }
        });
        let mut by_dir = lock(&self.by_dir);
        // Clones are only taken under this lock, so a count of 2 (the map's and ours) means
        // nobody else holds it.
        if Arc::strong_count(&group) == 2 {
            by_dir.remove(dir);
        }
    }
}

/// Group commit for one fsync target: callers that arrive while a sync runs wait for it and
/// then share the next one, so N concurrent callers cost about two syncs, not N.
#[derive(Default)]
struct GroupSync {
    state: Mutex<GroupState>,
    finished_one: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Syncs begun so far (they run one at a time, in order).
    started: u64,
    /// The number of the last sync that has finished.
    finished: u64,
    running: bool,
}

impl GroupSync {
    /// Returns once a run of `sync` that began after this call has finished: the caller's own,
    /// or one another caller started meanwhile.
    fn sync(&self, sync: impl FnOnce()) {
        let mut state = lock(&self.state);
        // A sync already running may have begun before the caller's write: it needs the next.
        let needed = state.started + 1;
        while state.finished < needed {
            if state.running {
                state = self
                    .finished_one
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.running = true;
            state.started += 1;
            let this_run = state.started;
            drop(state);
            // Ends the run even if `sync` panics, so waiters are never stranded.
            let _end = EndRun {
                group: self,
                run: this_run,
            };
            sync();
            return;
        }
    }
}

/// Marks a [`GroupSync`] run finished and wakes its waiters when dropped.
struct EndRun<'a> {
    group: &'a GroupSync,
    run: u64,
}

impl Drop for EndRun<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.group.state);
        state.running = false;
        state.finished = self.run;
        self.group.finished_one.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
        // Anything else is described by its entry, without resolving its path again.
        let metadata = if file_type.is_symlink() {
            fs::metadata(&path)
        } else {
            entry.metadata()
        };
        match metadata {
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

    #[test]
    fn a_group_sync_covers_every_write_made_before_the_call() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let group = GroupSync::default();
        // Writes made so far, and how many of them the last finished sync covers.
        let written = AtomicU64::new(0);
        let durable = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                        group.sync(|| {
                            let covered = written.load(Ordering::SeqCst);
                            std::thread::yield_now();
                            durable.fetch_max(covered, Ordering::SeqCst);
                        });
                        assert!(durable.load(Ordering::SeqCst) >= mine);
                    }
                });
            }
        });
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
