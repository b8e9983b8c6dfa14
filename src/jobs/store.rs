//! The state dir's files and job metadata: uploads and their records, batch objects (updated
//! under a per-job lock so a cancel and a replica finishing the job never overwrite each
//! other), a job's segment plan, and its live counts summed over its segments.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::durable::{io_err, read_json, unix_now, write_json, StoreError};
use super::lease::{lock_waiting, LeaseFile};
use super::segment::{plan_input, Plan, Segment, SegmentDir, SegmentProgress};
use super::types::{random_id, valid_id, BatchObject, BatchStatus, FileObject, FileRecord};
use super::{lines, JobError};

/// What a job's segments add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub lines_done: u64,
    pub completed: u64,
    pub failed: u64,
    pub device_seconds: f64,
    pub cost_dollars: f64,
    pub segments_done: usize,
}

impl Totals {
    fn add(&mut self, p: &SegmentProgress) {
        self.lines_done += p.lines_done;
        self.completed += p.completed;
        self.failed += p.failed;
        self.device_seconds += p.device_seconds;
        self.cost_dollars += p.cost_dollars;
    }
}

/// Immutable facts read once: plans never change, and neither does a finished segment.
#[derive(Default)]
struct Cache {
    plans: HashMap<String, Arc<Plan>>,
    done: HashMap<(String, usize), SegmentProgress>,
}

/// The state dir: files and batch metadata. Cheap to clone. Every method does blocking file
/// I/O: call it from a blocking thread (`tokio::task::spawn_blocking`).
#[derive(Clone)]
pub struct JobStore {
    root: PathBuf,
    cache: Arc<Mutex<Cache>>,
}

/// A replica that waits longer than this for a job's lock reports the job busy.
const LOCK_WAIT: Duration = Duration::from_secs(10);

impl JobStore {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["files", "batches"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            cache: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file_meta(&self, id: &str) -> PathBuf {
        self.root.join("files").join(format!("{id}.json"))
    }

    pub fn batch_dir(&self, id: &str) -> PathBuf {
        self.root.join("batches").join(id)
    }

    /// A temp path for an upload being streamed in (inside the state dir, so the final rename
    /// stays on one filesystem).
    pub fn upload_temp(&self) -> PathBuf {
        self.root
            .join("files")
            .join(format!(".upload-{}", rand::random::<u64>()))
    }

    /// Stores an upload that was streamed to `tmp` (inside the state dir) under a new id.
    pub fn add_file(
        &self,
        tmp: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, StoreError> {
        let id = random_id("file-");
        let data = self.root.join("files").join(format!("{id}.jsonl"));
        std::fs::File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(tmp))?;
        std::fs::rename(tmp, &data).map_err(io_err(&data))?;
        self.record_file(id, &data, filename, purpose)
    }

    /// Registers an existing file (a job's output) without copying it.
    pub fn register_file(
        &self,
        data: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, StoreError> {
        self.record_file(random_id("file-"), data, filename, purpose)
    }

    fn record_file(
        &self,
        id: String,
        data: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, StoreError> {
        let file = FileObject {
            id: id.clone(),
            object: "file".into(),
            bytes: std::fs::metadata(data).map_err(io_err(data))?.len(),
            created_at: unix_now(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            status: "processed".into(),
        };
        write_json(
            &self.file_meta(&id),
            &FileRecord {
                file: file.clone(),
                data: data.to_path_buf(),
            },
        )?;
        Ok(file)
    }

    fn file_record(&self, id: &str) -> Result<FileRecord, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "file",
            id: id.to_string(),
        };
        if !valid_id(id, "file-") {
            return Err(not_found());
        }
        let p = self.file_meta(id);
        if !p.exists() {
            return Err(not_found());
        }
        read_json(&p)
    }

    pub fn file(&self, id: &str) -> Result<FileObject, StoreError> {
        Ok(self.file_record(id)?.file)
    }

    pub fn file_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.file_record(id)?.data)
    }

    pub fn list_files(&self) -> Result<Vec<FileObject>, StoreError> {
        let dir = self.root.join("files");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(id) = name.strip_suffix(".json") {
                if let Ok(f) = self.file(id) {
                    out.push(f);
                }
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// Deletes an upload. Job outputs stay with their job; only their record goes.
    pub fn delete_file(&self, id: &str) -> Result<(), StoreError> {
        let rec = self.file_record(id)?;
        let meta = self.file_meta(id);
        std::fs::remove_file(&meta).map_err(io_err(&meta))?;
        if rec.data.starts_with(self.root.join("files")) {
            let _ = std::fs::remove_file(&rec.data);
        }
        Ok(())
    }

    pub fn create_batch(
        &self,
        input_file_id: &str,
        endpoint: &str,
        completion_window: &str,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<BatchObject, JobError> {
        if !lines::ENDPOINTS.contains(&endpoint) {
            return Err(JobError::Invalid(format!(
                "endpoint must be /v1/embeddings (this server embeds), got `{endpoint}`"
            )));
        }
        if completion_window != "24h" {
            return Err(JobError::Invalid(format!(
                "completion_window must be `24h`, got `{completion_window}`"
            )));
        }
        let input = self.file(input_file_id)?;
        if input.purpose != "batch" {
            return Err(JobError::Invalid(format!(
                "file {input_file_id} has purpose `{}`, not `batch`",
                input.purpose
            )));
        }
        let id = random_id("batch_");
        let dir = self.batch_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let now = unix_now();
        let batch = BatchObject {
            id: id.clone(),
            object: "batch".into(),
            endpoint: endpoint.to_string(),
            errors: None,
            input_file_id: input_file_id.to_string(),
            completion_window: completion_window.to_string(),
            status: BatchStatus::Validating,
            output_file_id: None,
            error_file_id: None,
            created_at: now,
            in_progress_at: None,
            expires_at: Some(now + 24 * 3600),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: Default::default(),
            metadata,
        };
        self.save_batch(&batch)?;
        Ok(batch)
    }

    fn save_batch(&self, b: &BatchObject) -> Result<(), StoreError> {
        write_json(&self.batch_dir(&b.id).join("batch.json"), b)
    }

    fn stored_batch(&self, id: &str) -> Result<BatchObject, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "batch",
            id: id.to_string(),
        };
        if !valid_id(id, "batch_") {
            return Err(not_found());
        }
        let p = self.batch_dir(id).join("batch.json");
        if !p.exists() {
            return Err(not_found());
        }
        read_json(&p)
    }

    /// Read-modify-write of a batch object under its lock: `f` says whether to save.
    pub fn update_batch(
        &self,
        id: &str,
        f: impl FnOnce(&mut BatchObject) -> Result<bool, JobError>,
    ) -> Result<BatchObject, JobError> {
        let mut b = self.stored_batch(id)?;
        let _guard = lock_waiting(&self.batch_dir(id).join("batch.lock"), LOCK_WAIT)?;
        b = self.stored_batch(&b.id)?;
        if f(&mut b)? {
            self.save_batch(&b)?;
        }
        Ok(b)
    }

    /// The stored object with live counts (and device time and cost) from its segments.
    pub fn batch(&self, id: &str) -> Result<BatchObject, StoreError> {
        let mut b = self.stored_batch(id)?;
        if b.status.is_active() {
            if let Some(plan) = self.plan(id)? {
                let t = self.job_totals(id, &plan)?;
                b.request_counts.completed = t.completed;
                b.request_counts.failed = t.failed;
                b.set_cost(t.device_seconds, t.cost_dollars);
            }
        }
        Ok(b)
    }

    /// All batches, newest first.
    pub fn list_batches(&self) -> Result<Vec<BatchObject>, StoreError> {
        let dir = self.root.join("batches");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if let Ok(b) = self.batch(&entry.file_name().to_string_lossy()) {
                out.push(b);
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// All batch objects as stored (without live counts), oldest first: the order jobs are
    /// served in.
    pub fn list_stored(&self) -> Result<Vec<BatchObject>, StoreError> {
        let dir = self.root.join("batches");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if let Ok(b) = self.stored_batch(&entry.file_name().to_string_lossy()) {
                out.push(b);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Asks for a cancel; every replica running one of its segments stops, and one of them
    /// finishes the job with the outputs so far.
    pub fn cancel(&self, id: &str) -> Result<BatchObject, JobError> {
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
    }

    /// The job-level lease: who validates or assembles it.
    pub fn lease(&self, id: &str) -> LeaseFile {
        LeaseFile::new(&self.batch_dir(id))
    }

    fn plan_path(&self, id: &str) -> PathBuf {
        self.batch_dir(id).join("segments.json")
    }

    /// The job's segment plan, once it was validated.
    pub fn plan(&self, id: &str) -> Result<Option<Arc<Plan>>, StoreError> {
        if let Some(p) = self.lock_cache().plans.get(id) {
            return Ok(Some(p.clone()));
        }
        let path = self.plan_path(id);
        if !path.exists() {
            return Ok(None);
        }
        let plan = Arc::new(read_json::<Plan>(&path)?);
        self.lock_cache().plans.insert(id.to_string(), plan.clone());
        Ok(Some(plan))
    }

    /// Cuts the job's input into segments and stores the plan (the same input always gives the
    /// same plan, so two replicas validating at once agree).
    pub fn make_plan(&self, b: &BatchObject, segment_lines: u64) -> Result<Arc<Plan>, StoreError> {
        if let Some(p) = self.plan(&b.id)? {
            return Ok(p);
        }
        let input = self.file_path(&b.input_file_id)?;
        let plan = plan_input(&input, segment_lines)?;
        write_json(&self.plan_path(&b.id), &plan)?;
        let plan = Arc::new(plan);
        self.lock_cache().plans.insert(b.id.clone(), plan.clone());
        Ok(plan)
    }

    pub fn segment_dir(&self, id: &str, seg: Segment) -> SegmentDir {
        SegmentDir::new(&self.batch_dir(id), seg)
    }

    /// A segment's most advanced checkpoint; finished segments are read once.
    pub fn segment_progress(&self, id: &str, seg: Segment) -> Result<SegmentProgress, StoreError> {
        let key = (id.to_string(), seg.index);
        if let Some(p) = self.lock_cache().done.get(&key) {
            return Ok(p.clone());
        }
        let p = self.segment_dir(id, seg).latest()?;
        if p.is_done(&seg) {
            self.lock_cache().done.insert(key, p.clone());
        }
        Ok(p)
    }

    pub fn segment_done(&self, id: &str, seg: Segment) -> bool {
        self.lock_cache()
            .done
            .contains_key(&(id.to_string(), seg.index))
            || self.segment_dir(id, seg).is_done()
    }

    /// The job's counts, device time and cost so far, summed over its segments.
    pub fn job_totals(&self, id: &str, plan: &Plan) -> Result<Totals, StoreError> {
        let mut t = Totals::default();
        for seg in &plan.segments {
            let p = self.segment_progress(id, *seg)?;
            if p.is_done(seg) {
                t.segments_done += 1;
            }
            t.add(&p);
        }
        Ok(t)
    }

    /// Drops what is cached about a job that reached a final status.
    pub fn forget(&self, id: &str) {
        let mut c = self.lock_cache();
        // Segments are only cached for jobs whose plan is: most calls stop here.
        if c.plans.remove(id).is_some() {
            c.done.retain(|(job, _), _| job != id);
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding it cannot leave the maps half-updated: take them as they are.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts the non-empty lines of a JSONL file.
pub fn count_lines(path: &Path) -> Result<u64, StoreError> {
    Ok(plan_input(path, u64::MAX)?.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_batches_round_trip() {
        let root = std::env::temp_dir().join(format!("spotinfer-jobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = JobStore::open(&root).unwrap();
        let tmp = root.join("upload.tmp");
        std::fs::write(&tmp, b"{\"a\":1}\n\n{\"b\":2}\n").unwrap();
        let f = store.add_file(&tmp, "in.jsonl", "batch").unwrap();
        assert_eq!(f.bytes, 17);
        assert_eq!(store.file(&f.id).unwrap(), f);
        assert_eq!(count_lines(&store.file_path(&f.id).unwrap()).unwrap(), 2);
        assert!(store
            .create_batch(&f.id, "/v1/chat/completions", "24h", None)
            .is_err());
        let b = store
            .create_batch(&f.id, "/v1/embeddings", "24h", None)
            .unwrap();
        assert_eq!(store.batch(&b.id).unwrap().status, BatchStatus::Validating);
        assert_eq!(store.list_batches().unwrap().len(), 1);
        let plan = store.make_plan(&b, 1).unwrap();
        assert_eq!((plan.total, plan.segments.len()), (2, 2));
        assert_eq!(store.plan(&b.id).unwrap().unwrap(), plan);
        let c = store.cancel(&b.id).unwrap();
        assert_eq!(c.status, BatchStatus::Cancelling);
        assert_eq!(store.cancel(&b.id).unwrap().status, BatchStatus::Cancelling);
        assert!(matches!(
            store.file("file-nope"),
            Err(StoreError::NotFound { .. })
        ));
        store.delete_file(&f.id).unwrap();
        assert!(store.file(&f.id).is_err());
        std::fs::remove_dir_all(&root).ok();
    }
}
