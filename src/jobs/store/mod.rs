//! The job store: files and their records, batch objects (one create-only version per change,
//! so a cancel and a replica finishing the job never overwrite each other), a job's fixed
//! settings and segment plan, its live counts summed over its chunks, and the index of jobs
//! that can still run (so a tick reads only those).
//!
//! Here: the keys, batch objects and the index. `files.rs` keeps the file records,
//! `progress.rs` the segment plan and the counts read from committed chunks. Just over 500
//! lines on purpose: every compare-and-swap on a batch object is in this one file.
//!
//! Keys under `--state-dir` (a folder or a bucket prefix):
//! ```text
//! files/<file-id>.json                          file record ({"file": <OpenAI file>, "data": <key>})
//! files/<file-id>.jsonl                         uploaded content
//! active/<batch-id>                             present while the job is not final
//! final/<status>/<ended-at>-<batch-id>         present once it ended so (status gauge, clean-up)
//! batches/<batch-id>/spec.json                  input key, segment and chunk size (fixed)
//! batches/<batch-id>/state/<version>.json       the OpenAI batch object; the highest is current
//! batches/<batch-id>/plan.json                  segment plan (rebuilt identically if lost)
//! batches/<batch-id>/lease/<epoch>.json         who validates or assembles it
//! batches/<batch-id>/segments/<n>/chunks/<k>.jsonl   committed results of chunk k (segment.rs)
//! batches/<batch-id>/segments/<n>/lease/<epoch>.json who runs segment n
//! batches/<batch-id>/results/<nonce>/output.jsonl, errors.jsonl   the assembled results, in input
//!                                               order: one assembler's copy, named in the output
//!                                               file's record (the others are deleted)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::blob::{Blobs, Created};
use super::durable::{unix_now, StoreError};
use super::lease::LeaseKeys;
use super::segment::{lease_dir, ChunkHeader, Plan};
use super::types::{random_id, valid_id, BatchObject, BatchStatus};
use super::{lines, JobError};

mod files;
mod progress;

pub use progress::Totals;

/// A job's settings, fixed when it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    /// Key of the input's bytes (`abs:<key>` for an object outside the state prefix).
    pub input: String,
    pub segment_lines: u64,
    pub chunk_lines: u64,
}

/// Immutable facts read once: plans and specs never change, nor do committed chunks.
#[derive(Default)]
struct Cache {
    plans: HashMap<String, Arc<Plan>>,
    specs: HashMap<String, JobSpec>,
    headers: HashMap<String, ChunkHeader>,
}

/// The job store. Cheap to clone; every method is async and talks to the object store.
#[derive(Clone)]
pub struct JobStore {
    blobs: Blobs,
    cache: Arc<Mutex<Cache>>,
}

/// Versions of a batch object kept behind the newest.
const KEEP_VERSIONS: u64 = 2;
/// A compare-and-swap update that keeps losing to other writers gives up after this many tries.
const CAS_TRIES: usize = 32;

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Task(e.to_string()))
}

fn state_key(id: &str, version: u64) -> String {
    format!("batches/{id}/state/{version:010}.json")
}

fn version_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

impl JobStore {
    pub fn open(state_dir: &str) -> Result<Self, StoreError> {
        Ok(Self {
            blobs: Blobs::open(state_dir)?,
            cache: Arc::default(),
        })
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.blobs.describe(key),
            reason: e.to_string(),
        })
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.blobs.get(key).await? {
            Some(b) => Ok(Some(self.parse(key, &b)?)),
            None => Ok(None),
        }
    }

    // ---- batches ----

    /// Creates a job on an uploaded file, or on an object URL in the store's own bucket (a
    /// user's input that is already there, never copied).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_batch(
        &self,
        input_file_id: &str,
        endpoint: &str,
        completion_window: &str,
        metadata: Option<BTreeMap<String, String>>,
        segment_lines: u64,
        chunk_lines: u64,
    ) -> Result<BatchObject, JobError> {
        if !lines::ENDPOINTS.contains(&endpoint) {
            return Err(JobError::Invalid(format!(
                "endpoint must be /v1/embeddings (this server embeds), got `{endpoint}`"
            )));
        }
        let window = parse_window(completion_window)?;
        let input = if super::blob::is_url(input_file_id) {
            let key = self.blobs.key_of_url(input_file_id).ok_or_else(|| {
                JobError::Invalid(format!(
                    "input_file_id `{input_file_id}` is not in this server's bucket ({}); \
                     upload it with POST /v1/files or copy it into that bucket",
                    self.blobs.location()
                ))
            })?;
            if self.blobs.size(&key).await?.is_none() {
                return Err(JobError::Invalid(format!("no object at `{input_file_id}`")));
            }
            key
        } else {
            let input = self.file(input_file_id).await?;
            if input.purpose != "batch" {
                return Err(JobError::Invalid(format!(
                    "file {input_file_id} has purpose `{}`, not `batch`",
                    input.purpose
                )));
            }
            self.file_key(input_file_id).await?
        };
        let id = random_id("batch_");
        let spec = JobSpec {
            input,
            segment_lines: segment_lines.max(1),
            chunk_lines: chunk_lines.max(1),
        };
        let window = Some(unix_now() + window);
        let batch = new_batch(
            &id,
            input_file_id,
            endpoint,
            completion_window,
            window,
            metadata,
        );
        self.insert(&batch, &spec).await?;
        Ok(batch)
    }

    /// Creates a job under a fixed id, or joins the one already there (`spotinfer batch`
    /// processes given the same command). Returns the job as stored; the caller checks that a
    /// joined job is the one it meant (its spec and metadata).
    pub async fn create_or_join(
        &self,
        id: &str,
        input_url: &str,
        spec: &JobSpec,
        metadata: BTreeMap<String, String>,
    ) -> Result<(JobSpec, BatchObject), JobError> {
        let batch = new_batch(
            id,
            input_url,
            lines::ENDPOINTS[0],
            "7d",
            None,
            Some(metadata),
        );
        self.insert(&batch, spec).await?;
        let spec = self.spec(id).await?;
        let (_, b) = self.stored_batch(id).await?;
        Ok((spec, b))
    }

    /// Writes a new job's spec, first state version and index entry; each create-only, so a
    /// second writer of the same job id changes nothing.
    async fn insert(&self, batch: &BatchObject, spec: &JobSpec) -> Result<(), StoreError> {
        let id = &batch.id;
        self.blobs
            .create(&format!("batches/{id}/spec.json"), json(spec)?)
            .await?;
        if self.blobs.create(&state_key(id, 1), json(batch)?).await? == Created::Mine {
            // The job shows up in ticks once indexed; its state is already readable.
            self.blobs.put(&format!("active/{id}"), Vec::new()).await?;
        }
        Ok(())
    }

    /// Whether a job has state under this layout (an older release's job has none yet).
    pub async fn has_state(&self, id: &str) -> Result<bool, StoreError> {
        Ok(!self
            .blobs
            .list(&format!("batches/{id}/state"))
            .await?
            .is_empty())
    }

    /// Stores a job carried over from an older release (`legacy`): like a new one, indexed as
    /// final when it already ended.
    pub async fn adopt(&self, batch: &BatchObject, spec: &JobSpec) -> Result<(), StoreError> {
        self.insert(batch, spec).await?;
        if !batch.status.is_active() {
            let id = &batch.id;
            let key = format!("final/{}/{:012}-{id}", batch.status.as_str(), unix_now());
            self.blobs.put(&key, Vec::new()).await?;
            self.blobs.delete(&format!("active/{id}")).await?;
        }
        Ok(())
    }

    pub async fn spec(&self, id: &str) -> Result<JobSpec, StoreError> {
        if let Some(s) = self.lock_cache().specs.get(id) {
            return Ok(s.clone());
        }
        let key = format!("batches/{id}/spec.json");
        let spec: JobSpec = self.read(&key).await?.ok_or_else(|| StoreError::Corrupt {
            path: self.blobs.describe(&key),
            reason: "missing".into(),
        })?;
        self.lock_cache().specs.insert(id.to_string(), spec.clone());
        Ok(spec)
    }

    /// The current version of a batch object and its number. A version that does not parse
    /// is skipped for the one before it (its change is lost, the job goes on).
    async fn stored_batch(&self, id: &str) -> Result<(u64, BatchObject), StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "batch",
            id: id.to_string(),
        };
        if !valid_id(id, "batch_") {
            return Err(not_found());
        }
        let mut versions: Vec<u64> = self
            .blobs
            .list(&format!("batches/{id}/state"))
            .await?
            .iter()
            .filter_map(|l| version_of(&l.key))
            .collect();
        versions.sort_unstable();
        let newest = *versions.last().ok_or_else(not_found)?;
        let mut last_err = None;
        for v in versions.into_iter().rev() {
            let key = state_key(id, v);
            // None: deleted by a newer writer's clean-up between our list and get.
            if let Some(b) = self.blobs.get(&key).await? {
                match self.parse::<BatchObject>(&key, &b) {
                    Ok(obj) => {
                        if v != newest {
                            tracing::warn!(batch = %id, version = newest, "the newest batch state is unreadable; going on from the one before");
                        }
                        // The next write goes after the newest, readable or not.
                        return Ok((newest, obj));
                    }
                    Err(e) => last_err = Some(e),
                }
            }
        }
        Err(last_err.unwrap_or_else(not_found))
    }

    /// Compare-and-swap of a batch object: `f` says whether to save; the save creates the next
    /// version, and a writer that loses that race reads again and retries.
    pub async fn update_batch(
        &self,
        id: &str,
        mut f: impl FnMut(&mut BatchObject) -> Result<bool, JobError>,
    ) -> Result<BatchObject, JobError> {
        for _ in 0..CAS_TRIES {
            let (v, mut b) = self.stored_batch(id).await?;
            if !f(&mut b)? {
                return Ok(b);
            }
            if self.blobs.create(&state_key(id, v + 1), json(&b)?).await? == Created::Mine {
                if v > KEEP_VERSIONS {
                    let _ = self.blobs.delete(&state_key(id, v - KEEP_VERSIONS)).await;
                }
                if !b.status.is_active() {
                    let key = format!("final/{}/{:012}-{id}", b.status.as_str(), unix_now());
                    self.blobs.put(&key, Vec::new()).await?;
                    let _ = self.blobs.delete(&format!("active/{id}")).await;
                }
                return Ok(b);
            }
        }
        Err(JobError::Store(StoreError::Busy {
            path: self.blobs.describe(&format!("batches/{id}/state")),
            secs: 0,
        }))
    }

    /// The stored object with live counts (and device time and cost) from its chunks.
    pub async fn batch(&self, id: &str) -> Result<BatchObject, StoreError> {
        let (_, mut b) = self.stored_batch(id).await?;
        if b.status.is_active() {
            if let Some(plan) = self.plan(id).await? {
                let t = self.job_totals(id, &plan).await?;
                b.request_counts.completed = t.completed;
                b.request_counts.failed = t.failed;
                b.set_cost(t.device_seconds, t.cost_dollars);
            }
        }
        Ok(b)
    }

    /// All batches, newest first.
    pub async fn list_batches(&self) -> Result<Vec<BatchObject>, StoreError> {
        let mut out = Vec::new();
        for id in self.blobs.list_dirs("batches").await? {
            if let Ok(b) = self.batch(&id).await {
                out.push(b);
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// How many jobs ended in each final status, from the index (keys only, no job is read).
    pub async fn final_counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        let mut out: HashMap<String, i64> = HashMap::new();
        for l in self.blobs.list("final").await? {
            if let Some(status) = l.key.split('/').nth(1) {
                *out.entry(status.to_string()).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Deletes every job that ended `retention` ago or earlier: its state, chunks, results and
    /// their file records (its input stays: files are the user's). Reads nothing of the jobs
    /// it keeps. Returns how many it deleted.
    pub async fn collect_garbage(
        &self,
        retention: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let cutoff = unix_now().saturating_sub(retention.as_secs());
        let mut deleted = 0;
        for l in self.blobs.list("final").await? {
            let Some(name) = l.key.rsplit('/').next() else {
                continue;
            };
            let Some((ended, id)) = name.split_once('-') else {
                continue;
            };
            match ended.parse::<u64>() {
                Ok(t) if t <= cutoff && valid_id(id, "batch_") => {}
                _ => continue,
            }
            if let Ok((_, b)) = self.stored_batch(id).await {
                for f in [b.output_file_id, b.error_file_id].into_iter().flatten() {
                    self.blobs.delete(&Self::file_meta(&f)).await?;
                }
            }
            self.blobs.delete_all(&format!("batches/{id}")).await?;
            self.blobs.delete(&l.key).await?;
            self.forget(id);
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Ids of the jobs that are not final, from the index.
    pub async fn active_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .blobs
            .list("active")
            .await?
            .into_iter()
            .filter_map(|l| l.key.strip_prefix("active/").map(str::to_string))
            .filter(|id| valid_id(id, "batch_"))
            .collect())
    }

    /// The jobs that are not final, as stored (without live counts), oldest first: the order
    /// jobs are served in. A job whose state cannot be read is returned as an error beside
    /// the others, never instead of them.
    pub async fn list_active(
        &self,
    ) -> Result<Vec<Result<BatchObject, (String, StoreError)>>, StoreError> {
        let mut out = Vec::new();
        for id in self.active_ids().await? {
            match self.stored_batch(&id).await {
                Ok((_, b)) if !b.status.is_active() => {
                    // Final, but its index entry outlived it (a crash between the two).
                    let _ = self.blobs.delete(&format!("active/{id}")).await;
                }
                Ok((_, b)) => out.push(Ok(b)),
                Err(StoreError::NotFound { .. }) => {
                    let _ = self.blobs.delete(&format!("active/{id}")).await;
                }
                Err(e) => out.push(Err((id, e))),
            }
        }
        out.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => (a.created_at, &a.id).cmp(&(b.created_at, &b.id)),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err((a, _)), Err((b, _))) => a.cmp(b),
        });
        Ok(out)
    }

    /// Asks for a cancel; every replica running one of its segments stops, and one of them
    /// finishes the job with the outputs so far.
    pub async fn cancel(&self, id: &str) -> Result<BatchObject, JobError> {
        self.update_batch(id, |b| match b.status {
            BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {
                b.status = BatchStatus::Cancelling;
                b.cancelling_at = Some(unix_now());
                Ok(true)
            }
            BatchStatus::Cancelling => Ok(false),
            other => Err(JobError::Invalid(format!(
                "batch {id} is {} and cannot be cancelled",
                other.as_str()
            ))),
        })
        .await
    }

    /// The job-level lease: who validates or assembles it.
    pub fn lease(&self, id: &str) -> LeaseKeys<'_> {
        LeaseKeys {
            blobs: &self.blobs,
            dir: format!("batches/{id}/lease"),
        }
    }

    pub fn segment_lease(&self, id: &str, seg: usize) -> LeaseKeys<'_> {
        LeaseKeys {
            blobs: &self.blobs,
            dir: lease_dir(id, seg),
        }
    }

    /// Drops what is cached about a job that reached a final status.
    pub fn forget(&self, id: &str) {
        let mut c = self.lock_cache();
        c.specs.remove(id);
        if c.plans.remove(id).is_some() {
            let prefix = format!("batches/{id}/");
            c.headers.retain(|k, _| !k.starts_with(&prefix));
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding it cannot leave the maps half-updated: take them as they are.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new job in `validating`, as OpenAI shapes it.
fn new_batch(
    id: &str,
    input_file_id: &str,
    endpoint: &str,
    completion_window: &str,
    expires_at: Option<u64>,
    metadata: Option<BTreeMap<String, String>>,
) -> BatchObject {
    BatchObject {
        id: id.to_string(),
        object: "batch".into(),
        endpoint: endpoint.to_string(),
        errors: None,
        input_file_id: input_file_id.to_string(),
        completion_window: completion_window.to_string(),
        status: BatchStatus::Validating,
        output_file_id: None,
        error_file_id: None,
        created_at: unix_now(),
        in_progress_at: None,
        expires_at,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: Default::default(),
        metadata,
    }
}

/// OpenAI's only window is `24h`; any duration from one second to seven days is accepted too
/// (`90m`, `2h`, `30s`), for jobs that must end sooner.
fn parse_window(w: &str) -> Result<u64, JobError> {
    let bad = || {
        JobError::Invalid(format!(
            "completion_window must be `24h` (or a duration up to 7d such as `2h`), got `{w}`"
        ))
    };
    let d = humantime::parse_duration(w).map_err(|_| bad())?;
    let secs = d.as_secs();
    if secs == 0 || secs > 7 * 24 * 3600 {
        return Err(bad());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn store(name: &str) -> JobStore {
        let root =
            std::env::temp_dir().join(format!("spotinfer-jobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        JobStore::open(root.to_str().unwrap()).unwrap()
    }

    #[test]
    fn files_and_batches_round_trip() {
        let s = store("roundtrip");
        let b = s.blobs().clone();
        b.run(async {
            let (id, key) = s.new_upload();
            s.blobs
                .put(&key, b"{\"a\":1}\n\n{\"b\":2}\n".to_vec())
                .await
                .unwrap();
            let f = s.record_file(&id, &key, "in.jsonl", "batch").await.unwrap();
            assert_eq!(f.bytes, 17);
            assert_eq!(s.file(&f.id).await.unwrap(), f);
            assert!(s
                .create_batch(&f.id, "/v1/chat/completions", "24h", None, 1, 1)
                .await
                .is_err());
            assert!(s
                .create_batch(&f.id, "/v1/embeddings", "8d", None, 1, 1)
                .await
                .is_err());
            assert!(
                s.create_batch("s3://x/in.jsonl", "/v1/embeddings", "24h", None, 1, 1)
                    .await
                    .is_err(),
                "a URL outside the store's bucket"
            );
            let b = s
                .create_batch(&f.id, "/v1/embeddings", "2h", None, 1, 1)
                .await
                .unwrap();
            assert_eq!(b.expires_at, Some(b.created_at + 7200));
            assert_eq!(
                s.batch(&b.id).await.unwrap().status,
                BatchStatus::Validating
            );
            assert_eq!(s.list_batches().await.unwrap().len(), 1);
            assert_eq!(s.active_ids().await.unwrap(), std::slice::from_ref(&b.id));
            let plan = s.make_plan(&b.id).await.unwrap();
            assert_eq!((plan.total, plan.segments.len()), (2, 2));
            assert_eq!(s.plan(&b.id).await.unwrap().unwrap(), plan);
            // A corrupt plan is rebuilt identically.
            s.forget(&b.id);
            s.blobs
                .put(&format!("batches/{}/plan.json", b.id), b"garbage".to_vec())
                .await
                .unwrap();
            assert_eq!(s.plan(&b.id).await.unwrap().unwrap(), plan);
            let c = s.cancel(&b.id).await.unwrap();
            assert_eq!(c.status, BatchStatus::Cancelling);
            assert_eq!(
                s.cancel(&b.id).await.unwrap().status,
                BatchStatus::Cancelling
            );
            // A garbage newest version: the one before stands, and the next write goes after.
            s.blobs
                .put(&state_key(&b.id, 3), b"{".to_vec())
                .await
                .unwrap();
            let done = s
                .update_batch(&b.id, |b| {
                    b.status = BatchStatus::Cancelled;
                    Ok(true)
                })
                .await
                .unwrap();
            assert_eq!(done.status, BatchStatus::Cancelled);
            assert_eq!(s.stored_batch(&b.id).await.unwrap().0, 4);
            assert!(s.active_ids().await.unwrap().is_empty(), "final: unindexed");
            assert!(matches!(
                s.file("file-nope").await,
                Err(StoreError::NotFound { .. })
            ));
            s.delete_file(&f.id).await.unwrap();
            assert!(s.file(&f.id).await.is_err());
        });
        std::fs::remove_dir_all(s.blobs().location()).ok();
    }
}
