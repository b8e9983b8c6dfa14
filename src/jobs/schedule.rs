//! Which segment a free slot of this replica runs next: jobs in creation order, each getting a
//! fair share of the fleet's slots (the job with the fewest segments running anywhere goes
//! first, the oldest among equals), and within a job the segments someone already started
//! before fresh ones, so interrupted work resumes first.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::durable::{unix_now, StoreError};
use super::segment::{Plan, Segment};
use super::store::JobStore;
use super::types::BatchStatus;

/// A claimed segment: its lease is ours (at `epoch`) and it is marked running in this process.
#[derive(Debug, Clone)]
pub struct Picked {
    pub batch_id: String,
    /// The key of the job's input.
    pub input: String,
    pub plan: Arc<Plan>,
    pub seg: Segment,
    pub epoch: u64,
    /// When the claim was sent: the lease holds from no earlier.
    pub asked: Instant,
    /// The holder whose unreleased lease ran out and was taken over, if any.
    pub took_over: Option<String>,
}

/// Segments this process runs right now, (job, segment index): local slots share one lease
/// holder name, so the lease alone cannot keep two of them off the same segment.
pub type LocalRunning = Mutex<HashSet<(String, usize)>>;

struct Candidates {
    batch_id: String,
    input: String,
    plan: Arc<Plan>,
    running: usize,
    free: Vec<(bool, Segment)>,
}

/// Claims the next segment for `me`, or None when there is nothing to run.
pub async fn pick(
    store: &JobStore,
    me: &str,
    lease_secs: u64,
    local: &LocalRunning,
) -> Result<Option<Picked>, StoreError> {
    let mut jobs = Vec::new();
    let now = unix_now();
    for b in store.list_active().await?.into_iter().flatten() {
        if b.status != BatchStatus::InProgress || b.expires_at.is_some_and(|t| t <= now) {
            continue;
        }
        // One job's trouble never keeps this replica from the others.
        let found = async {
            let Some(plan) = store.plan(&b.id).await? else {
                return Ok(None);
            };
            let spec = store.spec(&b.id).await?;
            let keys = store.scan(&b.id).await?;
            let mut c = Candidates {
                batch_id: b.id.clone(),
                input: spec.input,
                plan: plan.clone(),
                running: 0,
                free: Vec::new(),
            };
            for seg in &plan.segments {
                let k = keys.get(&seg.index);
                let committed = k.map_or(0, |k| k.committed());
                if plan.lines_in(seg, committed) >= seg.lines {
                    continue;
                }
                if lock(local).contains(&(b.id.clone(), seg.index)) {
                    c.running += 1;
                    continue;
                }
                let lease = match k.and_then(|k| k.lease_epoch) {
                    Some(e) => store.segment_lease(&b.id, seg.index).read(e).await?,
                    None => None,
                };
                match lease {
                    Some(l) if l.blocks(me) => c.running += 1,
                    _ => c.free.push((committed > 0, *seg)),
                }
            }
            Ok::<_, StoreError>(Some(c))
        }
        .await;
        match found {
            Ok(Some(mut c)) if !c.free.is_empty() => {
                // Started segments first (stable: index order within each group).
                c.free.sort_by_key(|(started, seg)| (!started, seg.index));
                jobs.push(c);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(batch = %b.id, error = %e, "skipping a batch job this round"),
        }
    }
    // Fewest running first; `list_active` is oldest first and the sort is stable.
    jobs.sort_by_key(|c| c.running);
    for c in jobs {
        for (_, seg) in c.free {
            let key = (c.batch_id.clone(), seg.index);
            if !lock(local).insert(key.clone()) {
                continue;
            }
            let asked = Instant::now();
            match store
                .segment_lease(&c.batch_id, seg.index)
                .take(me, lease_secs)
                .await
            {
                Ok(Some((epoch, took_over))) => {
                    return Ok(Some(Picked {
                        batch_id: c.batch_id,
                        input: c.input,
                        plan: c.plan,
                        seg,
                        epoch,
                        asked,
                        took_over,
                    }))
                }
                Ok(None) => {}
                Err(e) => {
                    lock(local).remove(&key);
                    return Err(e);
                }
            }
            lock(local).remove(&key);
        }
    }
    Ok(None)
}

pub fn lock(local: &LocalRunning) -> std::sync::MutexGuard<'_, HashSet<(String, usize)>> {
    local.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_share_the_fleet_oldest_first_and_local_slots_never_share_a_segment() {
        let root = std::env::temp_dir().join(format!("spotinfer-sched-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = JobStore::open(root.to_str().unwrap()).unwrap();
        let blobs = store.blobs().clone();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let b = blobs.run(async {
                let (id, key) = store.new_upload();
                blobs.put(&key, b"a\nb\nc\nd\n".to_vec()).await.unwrap();
                let f = store
                    .record_file(&id, &key, "in.jsonl", "batch")
                    .await
                    .unwrap();
                let b = store
                    .create_batch(&f.id, "/v1/embeddings", "24h", None, 1, 1)
                    .await
                    .unwrap();
                assert_eq!(store.make_plan(&b.id).await.unwrap().segments.len(), 4);
                store
                    .update_batch(&b.id, |b| {
                        b.status = BatchStatus::InProgress;
                        Ok(true)
                    })
                    .await
                    .unwrap()
            });
            ids.push(b.id);
        }
        let (oldest, newest) = {
            let all: Vec<_> = blobs
                .run(store.list_active())
                .unwrap()
                .into_iter()
                .flatten()
                .collect();
            (all[0].id.clone(), all[1].id.clone())
        };
        let local = LocalRunning::default();
        let picks: Vec<(String, usize)> = (0..4)
            .map(|_| {
                let p = blobs.run(pick(&store, "a/1", 30, &local)).unwrap().unwrap();
                (p.batch_id, p.seg.index)
            })
            .collect();
        assert_eq!(
            picks,
            [
                (oldest.clone(), 0),
                (newest.clone(), 0),
                (oldest.clone(), 1),
                (newest.clone(), 1)
            ]
        );
        // Another replica sees the same running counts through the leases.
        let other = LocalRunning::default();
        let p = blobs.run(pick(&store, "b/2", 30, &other)).unwrap().unwrap();
        assert_eq!((p.batch_id, p.seg.index), (oldest, 2));
        std::fs::remove_dir_all(&root).ok();
    }
}
