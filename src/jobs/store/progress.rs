//! A job's segment plan and how far its segments got, read from the chunks committed under
//! each segment (headers cached: a committed chunk never changes).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{json, JobStore};
use crate::jobs::durable::StoreError;
use crate::jobs::segment::{
    chunk_key, plan_object, read_header, scan, ChunkHeader, Plan, Segment, SegmentKeys,
    SegmentProgress,
};

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
    pub fn add(&mut self, p: &SegmentProgress) {
        self.lines_done += p.lines_done;
        self.completed += p.completed;
        self.failed += p.failed;
        self.device_seconds += p.device_seconds;
        self.cost_dollars += p.cost_dollars;
    }
}

impl JobStore {
    /// The job's segment plan, once it was validated. A plan that does not parse is rebuilt
    /// from the input (the same input and spec give the same plan).
    pub async fn plan(&self, id: &str) -> Result<Option<Arc<Plan>>, StoreError> {
        if let Some(p) = self.lock_cache().plans.get(id) {
            return Ok(Some(p.clone()));
        }
        let key = format!("batches/{id}/plan.json");
        let plan = match self.blobs.get(&key).await? {
            None => return Ok(None),
            Some(b) => match self.parse::<Plan>(&key, &b) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(batch = %id, error = %e, "rebuilding an unreadable segment plan");
                    let plan = self.compute_plan(id).await?;
                    self.blobs.put(&key, json(&plan)?).await?;
                    plan
                }
            },
        };
        let plan = Arc::new(plan);
        self.lock_cache().plans.insert(id.to_string(), plan.clone());
        Ok(Some(plan))
    }

    async fn compute_plan(&self, id: &str) -> Result<Plan, StoreError> {
        let spec = self.spec(id).await?;
        plan_object(
            &self.blobs,
            &spec.input,
            spec.segment_lines,
            spec.chunk_lines,
        )
        .await
    }

    /// Cuts the job's input into segments and stores the plan (two replicas validating at
    /// once compute the same plan; the first write stands).
    pub async fn make_plan(&self, id: &str) -> Result<Arc<Plan>, StoreError> {
        if let Some(p) = self.plan(id).await? {
            return Ok(p);
        }
        let plan = self.compute_plan(id).await?;
        self.blobs
            .create(&format!("batches/{id}/plan.json"), json(&plan)?)
            .await?;
        let plan = Arc::new(plan);
        self.lock_cache().plans.insert(id.to_string(), plan.clone());
        Ok(plan)
    }

    /// Every segment's committed chunks and lease epoch, from one listing.
    pub async fn scan(&self, id: &str) -> Result<BTreeMap<usize, SegmentKeys>, StoreError> {
        scan(&self.blobs, id).await
    }

    async fn header(&self, key: &str, size: u64) -> Result<ChunkHeader, StoreError> {
        if let Some(h) = self.lock_cache().headers.get(key) {
            return Ok(h.clone());
        }
        let h = read_header(&self.blobs, key, size).await?;
        self.lock_cache().headers.insert(key.to_string(), h.clone());
        Ok(h)
    }

    /// A segment's committed prefix, from its chunks' headers (each read once per process).
    pub async fn segment_progress(
        &self,
        id: &str,
        seg: &Segment,
        keys: Option<&SegmentKeys>,
    ) -> Result<SegmentProgress, StoreError> {
        let mut p = SegmentProgress::start(seg);
        let Some(keys) = keys else {
            return Ok(p);
        };
        for k in 0..keys.committed() {
            let size = keys.chunks.get(&k).copied().unwrap_or(0);
            let h = self.header(&chunk_key(id, seg.index, k), size).await?;
            p.add(&h);
        }
        Ok(p)
    }

    /// The job's counts, device time and cost so far, summed over its segments.
    pub async fn job_totals(&self, id: &str, plan: &Plan) -> Result<Totals, StoreError> {
        let keys = self.scan(id).await?;
        let mut t = Totals::default();
        for seg in &plan.segments {
            let p = self.segment_progress(id, seg, keys.get(&seg.index)).await?;
            if p.is_done(seg) {
                t.segments_done += 1;
            }
            t.add(&p);
        }
        Ok(t)
    }
}
