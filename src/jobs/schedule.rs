//! Which segment a free slot of this replica runs next: jobs in creation order, each getting a
//! fair share of the fleet's slots (the job with the fewest segments running anywhere goes
//! first, the oldest among equals), and within a job the segments someone already started
//! before fresh ones, so interrupted work resumes first.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use super::durable::{io_err, StoreError};
use super::segment::Segment;
use super::store::JobStore;
use super::types::BatchStatus;

/// A claimed segment: its lease is ours and it is marked running in this process.
#[derive(Debug, Clone)]
pub struct Picked {
    pub batch_id: String,
    pub input: PathBuf,
    pub seg: Segment,
}

/// Segments this process runs right now, (job, segment index): local slots share one lease
/// holder name, so the lease alone cannot keep two of them off the same segment.
pub type LocalRunning = Mutex<HashSet<(String, usize)>>;

struct Candidates {
    batch_id: String,
    input: PathBuf,
    running: usize,
    free: Vec<(bool, Segment)>,
}

/// Claims the next segment for `me`, or None when there is nothing to run.
pub fn pick(
    store: &JobStore,
    me: &str,
    lease_secs: u64,
    local: &LocalRunning,
) -> Result<Option<Picked>, StoreError> {
    let mut jobs = Vec::new();
    for b in store.list_stored()? {
        if b.status != BatchStatus::InProgress {
            continue;
        }
        let Some(plan) = store.plan(&b.id)? else {
            continue;
        };
        let Ok(input) = store.file_path(&b.input_file_id) else {
            continue;
        };
        let mut c = Candidates {
            batch_id: b.id.clone(),
            input,
            running: 0,
            free: Vec::new(),
        };
        let mine = lock(local);
        for seg in &plan.segments {
            if store.segment_done(&b.id, *seg) {
                continue;
            }
            if mine.contains(&(b.id.clone(), seg.index)) {
                c.running += 1;
                continue;
            }
            match store.segment_dir(&b.id, *seg).lease().read() {
                Some(l) if l.blocks(me) => c.running += 1,
                started => c.free.push((started.is_some(), *seg)),
            }
        }
        drop(mine);
        if !c.free.is_empty() {
            // Started segments first (stable: index order within each group).
            c.free.sort_by_key(|(started, seg)| (!started, seg.index));
            jobs.push(c);
        }
    }
    // Fewest running first; `list_stored` is oldest first and the sort is stable.
    jobs.sort_by_key(|c| c.running);
    for c in jobs {
        for (_, seg) in c.free {
            let key = (c.batch_id.clone(), seg.index);
            if !lock(local).insert(key.clone()) {
                continue;
            }
            let dir = store.segment_dir(&c.batch_id, seg);
            std::fs::create_dir_all(&dir.dir).map_err(io_err(&dir.dir))?;
            let lease = dir.lease();
            if lease.claim(me, lease_secs) {
                if !store.segment_done(&c.batch_id, seg) {
                    return Ok(Some(Picked {
                        batch_id: c.batch_id,
                        input: c.input,
                        seg,
                    }));
                }
                lease.release(me)?;
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
    use crate::jobs::segment::plan_input;

    #[test]
    fn jobs_share_the_fleet_oldest_first_and_local_slots_never_share_a_segment() {
        let root = std::env::temp_dir().join(format!("spotinfer-sched-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = JobStore::open(&root).unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let tmp = store.upload_temp();
            std::fs::write(&tmp, "a\nb\nc\nd\n").unwrap();
            let f = store.add_file(&tmp, "in.jsonl", "batch").unwrap();
            let b = store
                .create_batch(&f.id, "/v1/embeddings", "24h", None)
                .unwrap();
            store.make_plan(&b, 1).unwrap();
            store
                .update_batch(&b.id, |b| {
                    b.status = BatchStatus::InProgress;
                    Ok(true)
                })
                .unwrap();
            ids.push(b.id);
        }
        assert_eq!(
            plan_input(
                &store
                    .file_path(&store.batch(&ids[0]).unwrap().input_file_id)
                    .unwrap(),
                1
            )
            .unwrap()
            .segments
            .len(),
            4
        );
        let (oldest, newest) = {
            let all = store.list_stored().unwrap();
            (all[0].id.clone(), all[1].id.clone())
        };
        let local = LocalRunning::default();
        let picks: Vec<(String, usize)> = (0..4)
            .map(|_| {
                let p = pick(&store, "a/1", 30, &local).unwrap().unwrap();
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
        let p = pick(&store, "b/2", 30, &other).unwrap().unwrap();
        assert_eq!((p.batch_id, p.seg.index), (oldest, 2));
        std::fs::remove_dir_all(&root).ok();
    }
}
