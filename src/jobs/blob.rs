//! The job store's storage: one object store behind `--state-dir` — a local folder, or an
//! `s3://`, `gs://` or `az://` bucket URL — seen as keys under a prefix. Every protocol step of
//! the job store is one of: read, list, create-if-absent, overwrite (only for objects whose
//! content is fixed by their key, so two writers write the same bytes) and delete. Exactly
//! once rests on create-if-absent alone (S3 `If-None-Match: *`, GCS generation 0, Azure
//! `If-None-Match: *`, a hard link on a filesystem), never on a lock or a clock.
//!
//! The store's API is async; the job store calls it from blocking threads through
//! [`Blobs::run`], so its callers keep one synchronous view of it.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload};

use super::durable::StoreError;

/// What a create-if-absent write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call wrote the object.
    Mine,
    /// Someone else's object was already there; ours was discarded.
    Taken,
}

/// A listed object: its key relative to the store's prefix, its size and when it was written.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// An object store under a prefix. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Where the state is, as the user gave it (for messages).
    location: String,
    /// The bucket URL (`s3://bucket`) when the store is one: inputs given as URLs must be in it.
    bucket: Option<String>,
    handle: tokio::runtime::Handle,
    /// A runtime of our own when opened outside one (tests, tools); kept alive with the store.
    _runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location)
    }
}

/// Create-if-absent writes that find an object they cannot see back (S3's 409
/// ConditionalRequestConflict while another create of the key is in flight), or whose answer
/// was lost, retry this often.
const CREATE_RETRIES: u32 = 8;

pub fn is_url(state_dir: &str) -> bool {
    ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://"]
        .iter()
        .any(|s| state_dir.starts_with(s))
}

fn store_err(location: &str, what: &str, e: object_store::Error) -> StoreError {
    StoreError::Object {
        path: format!("{location}/{what}"),
        cause: e.to_string(),
    }
}

impl Blobs {
    /// Opens `state_dir`: a bucket URL (credentials, region and endpoint from the standard
    /// environment of each cloud) or a local folder, created if missing.
    pub fn open(state_dir: &str) -> Result<Self, StoreError> {
        let (handle, runtime) = match tokio::runtime::Handle::try_current() {
            Ok(h) => (h, None),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Task(e.to_string()))?;
                (rt.handle().clone(), Some(Arc::new(rt)))
            }
        };
        let bad = |cause: String| StoreError::Object {
            path: state_dir.to_string(),
            cause,
        };
        let (store, prefix, bucket): (Arc<dyn ObjectStore>, String, Option<String>) =
            if is_url(state_dir) {
                let (scheme, rest) = state_dir.split_once("://").unwrap_or(("", state_dir));
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("the URL names no bucket".into()));
                }
                let root = format!("{scheme}://{bucket}");
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" | "s3a" => Arc::new(
                        object_store::aws::AmazonS3Builder::from_env()
                            .with_url(&root)
                            .build()
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                    "gs" => Arc::new(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(&root)
                            .build()
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                    _ => Arc::new(
                        object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(&root)
                            .build()
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                };
                (store, prefix.trim_matches('/').to_string(), Some(root))
            } else {
                let dir = std::path::Path::new(state_dir);
                std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), String::new(), None)
            };
        Ok(Self {
            store,
            prefix,
            location: state_dir.trim_end_matches('/').to_string(),
            bucket,
            handle,
            _runtime: runtime,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs a store call to its end from a blocking thread (never from an async worker).
    pub fn run<F: Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    fn key(&self, key: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }

    fn relative(&self, k: &Key) -> String {
        let s = k.as_ref();
        match self.prefix.is_empty() {
            true => s.to_string(),
            false => s
                .strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| s.to_string()),
        }
    }

    fn err(&self, key: &str, e: object_store::Error) -> StoreError {
        store_err(&self.location, key, e)
    }

    /// The key (relative to the prefix) of an object URL in this store's bucket, or None when
    /// `url` is not in it. With a local folder, URLs never are.
    pub fn key_of_url(&self, url: &str) -> Option<String> {
        let bucket = self.bucket.as_deref()?;
        let rest = url
            .strip_prefix(bucket)
            .or_else(|| url.strip_prefix(&bucket.replacen("s3a://", "s3://", 1)))?;
        let path = rest.strip_prefix('/')?;
        if path.is_empty() {
            return None;
        }
        // Keys are relative to the prefix; an input elsewhere in the bucket is reached with
        // `..`-free absolute keys through `abs:`.
        Some(format!("abs:{path}"))
    }

    /// Keys are relative to the prefix, except `abs:<key>`: a key in the bucket's root (a
    /// user's input that sits outside the state prefix).
    fn resolve(&self, key: &str) -> Key {
        match key.strip_prefix("abs:") {
            Some(abs) => Key::from(abs),
            None => self.key(key),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(&self.resolve(key)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(key, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        match self.store.get_range(&self.resolve(key), range).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound {
                kind: "object",
                id: format!("{}/{key}", self.location),
            }),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Size of an object, None when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.store.head(&self.resolve(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Streams an object's bytes.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, object_store::Error>>, StoreError>
    {
        match self.store.get(&self.resolve(key)).await {
            Ok(r) => Ok(r.into_stream()),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound {
                kind: "object",
                id: format!("{}/{key}", self.location),
            }),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Writes an object whose content is fixed by its key (two writers write the same bytes).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.store
            .put(&self.key(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.err(key, e))
    }

    /// Writes `bytes` under `key` only if nothing is there. On a conflict the object found is
    /// read back: if it holds our bytes (our own earlier attempt whose answer was lost) the
    /// write is ours; if nothing can be read (a create still in flight elsewhere) it retries.
    pub async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<Created, StoreError> {
        let k = self.key(key);
        let payload = Bytes::from(bytes);
        let mut wait = Duration::from_millis(20);
        // Why the last try failed, when it did not just find a create in flight.
        let mut last: Option<String> = None;
        for _ in 0..CREATE_RETRIES {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&k, PutPayload::from(payload.clone()), opts)
                .await
            {
                Ok(_) => return Ok(Created::Mine),
                Err(object_store::Error::AlreadyExists { .. }) => match self.get(key).await? {
                    Some(found) if found == payload => return Ok(Created::Mine),
                    Some(_) => return Ok(Created::Taken),
                    None => last = None,
                },
                // The network failed after the store's own retries: the write may or may not
                // have landed. Writing again tells: our bytes found there are ours.
                // (A folder's errors, a read-only or full disk among them, are generic too.)
                Err(e @ object_store::Error::Generic { .. }) => {
                    tracing::debug!(key, error = %e, "a create-only write failed; trying again");
                    last = Some(e.to_string());
                }
                Err(e) => return Err(self.err(key, e)),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        Err(StoreError::Object {
            path: format!("{}/{key}", self.location),
            cause: match last {
                // The cause must reach the log: "conflicting" would hide a read-only store.
                Some(e) => format!("a create-if-absent write kept failing: {e}"),
                None => {
                    "a create-if-absent write kept conflicting with one that never appeared".into()
                }
            },
        })
    }

    /// Every object under `dir/` (recursively), sorted by key.
    pub async fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let prefix = self.key(dir.trim_end_matches('/'));
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(dir, e))?;
        let mut out: Vec<Listed> = metas
            .iter()
            .map(|m| Listed {
                key: self.relative(&m.location),
                size: m.size,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The names of the "folders" right under `dir/`.
    pub async fn list_dirs(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let prefix = self.key(dir.trim_end_matches('/'));
        let r = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.err(dir, e))?;
        let mut out: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Copies an object inside the bucket (either key may be `abs:`), server-side.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.store
            .copy(&self.resolve(from), &self.resolve(to))
            .await
            .map_err(|e| self.err(to, e))
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&self.key(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Deletes every object under `dir/`.
    pub async fn delete_all(&self, dir: &str) -> Result<(), StoreError> {
        let keys = self.list(dir).await?;
        futures::stream::iter(keys)
            .map(|l| async move { self.delete(&l.key).await })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// A streaming writer for a large object (uploads, assembled outputs): multipart on a
    /// bucket, a staged file renamed into place on a folder. Nothing is visible under `key`
    /// until [`object_store::buffered::BufWriter`]'s shutdown completes it.
    pub fn writer(&self, key: &str) -> object_store::buffered::BufWriter {
        object_store::buffered::BufWriter::with_capacity(self.store.clone(), self.key(key), 8 << 20)
    }

    pub fn describe(&self, key: &str) -> String {
        match key.strip_prefix("abs:") {
            Some(abs) => format!("{}/{abs}", self.bucket.as_deref().unwrap_or("")),
            None => format!("{}/{key}", self.location),
        }
    }

    /// The store error a failed streaming write reports.
    pub fn write_err(&self, key: &str, e: std::io::Error) -> StoreError {
        StoreError::Object {
            path: format!("{}/{key}", self.location),
            cause: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_lists_and_deletes_on_a_folder() {
        let d = std::env::temp_dir().join(format!("spotinfer-blob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let b = Blobs::open(d.to_str().unwrap()).unwrap();
        assert_eq!(
            b.run(b.create("a/1.json", b"x".to_vec())).unwrap(),
            Created::Mine
        );
        assert_eq!(
            b.run(b.create("a/1.json", b"x".to_vec())).unwrap(),
            Created::Mine,
            "our own bytes found again: ours"
        );
        assert_eq!(
            b.run(b.create("a/1.json", b"y".to_vec())).unwrap(),
            Created::Taken
        );
        b.run(b.put("a/b/2.json", b"zz".to_vec())).unwrap();
        let keys: Vec<_> = b
            .run(b.list("a"))
            .unwrap()
            .into_iter()
            .map(|l| (l.key, l.size))
            .collect();
        assert_eq!(
            keys,
            [("a/1.json".to_string(), 1), ("a/b/2.json".to_string(), 2)]
        );
        assert_eq!(b.run(b.list_dirs("a")).unwrap(), ["b"]);
        assert_eq!(
            b.run(b.get_range("a/b/2.json", 1..2)).unwrap().as_ref(),
            b"z"
        );
        b.run(b.delete_all("a")).unwrap();
        assert!(b.run(b.get("a/1.json")).unwrap().is_none());
        assert!(b.key_of_url("s3://x/y").is_none(), "a folder has no bucket");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_create_that_keeps_failing_reports_why() {
        let d = std::env::temp_dir().join(format!("spotinfer-blob-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let b = Blobs::open(d.to_str().unwrap()).unwrap();
        b.run(b.put("a", b"file".to_vec())).unwrap();
        // Under a file: every try fails with the filesystem's error, which must be told.
        let e = b.run(b.create("a/1.json", b"x".to_vec())).unwrap_err();
        assert!(e.to_string().contains("Not a directory"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }
}
