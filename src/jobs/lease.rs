//! Expiring claims on shared work (a job's validation and assembly, each segment of its input).
//!
//! A lease is a sequence of create-only epochs, `<dir>/<epoch>.json`: whoever creates epoch
//! e + 1 after reading epoch e holds it, and two replicas that read the same epoch cannot both
//! create the next one. Renewing is creating the next epoch again, so an owner that finds an
//! epoch it did not write has lost the work (fencing) and stops. Leases only keep replicas from
//! doing the same work twice; what makes every line count once is the create-only chunk commit
//! (`segment.rs`). Expiry is judged by wall-clock time, so replica clocks must agree to well
//! within `--batch-lease-secs`; a skewed clock costs duplicate work, never a duplicate line.

use serde::{Deserialize, Serialize};

use super::blob::{Blobs, Created};
use super::durable::{unix_now, StoreError};

/// Who holds a piece of work, until when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub expires_at: u64,
    /// Given up by its holder: free at once.
    #[serde(default)]
    pub released: bool,
}

impl Lease {
    /// Held by someone else, still in force (a predecessor of this process in the same pod
    /// holds nothing: it is gone).
    pub fn blocks(&self, me: &str) -> bool {
        !self.released
            && self.holder != me
            && self.expires_at > unix_now()
            && !predecessor(&self.holder, me)
    }

    pub fn live(&self) -> bool {
        !self.released && self.expires_at > unix_now()
    }
}

/// Epochs kept behind the newest: enough for a reader that listed just before a renewal.
const KEEP_EPOCHS: u64 = 2;

/// The lease epochs under one folder of the store.
pub struct LeaseKeys<'a> {
    pub blobs: &'a Blobs,
    pub dir: String,
}

fn epoch_key(dir: &str, epoch: u64) -> String {
    format!("{dir}/{epoch:010}.json")
}

/// The epoch number of a lease key (`…/0000000007.json`).
pub fn epoch_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

impl LeaseKeys<'_> {
    /// The newest epoch and its lease. An unreadable lease counts as free (its epoch still
    /// orders the next claim).
    pub async fn latest(&self) -> Result<Option<(u64, Option<Lease>)>, StoreError> {
        let newest = self
            .blobs
            .list(&self.dir)
            .await?
            .iter()
            .filter_map(|l| epoch_of(&l.key))
            .max();
        match newest {
            None => Ok(None),
            Some(e) => Ok(Some((e, self.read(e).await?))),
        }
    }

    pub async fn read(&self, epoch: u64) -> Result<Option<Lease>, StoreError> {
        Ok(self
            .blobs
            .get(&epoch_key(&self.dir, epoch))
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn write(&self, epoch: u64, lease: &Lease) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(lease).map_err(|e| StoreError::Task(e.to_string()))?;
        let mine = self
            .blobs
            .create(&epoch_key(&self.dir, epoch), bytes)
            .await?
            == Created::Mine;
        if mine && epoch > KEEP_EPOCHS {
            // Best effort: old epochs only cost a listing entry.
            let _ = self
                .blobs
                .delete(&epoch_key(&self.dir, epoch - KEEP_EPOCHS - 1))
                .await;
        }
        Ok(mine)
    }

    /// Takes the lease for `holder` if it is free, expired or already ours; returns the epoch
    /// it now holds.
    pub async fn claim(&self, holder: &str, ttl_secs: u64) -> Result<Option<u64>, StoreError> {
        Ok(self.take(holder, ttl_secs).await?.map(|(epoch, _)| epoch))
    }

    /// [`Self::claim`], also returning the holder it took the work from: another holder whose
    /// lease ran out unreleased (it died or stalled), or an earlier incarnation of this pod.
    pub async fn take(
        &self,
        holder: &str,
        ttl_secs: u64,
    ) -> Result<Option<(u64, Option<String>)>, StoreError> {
        let (next, from) = match self.latest().await? {
            Some((_, Some(l))) if l.blocks(holder) => return Ok(None),
            Some((e, Some(l))) if !l.released && l.holder != holder => (e + 1, Some(l.holder)),
            Some((e, _)) => (e + 1, None),
            None => (1, None),
        };
        let lease = Lease {
            holder: holder.to_string(),
            expires_at: unix_now() + ttl_secs,
            released: false,
        };
        Ok(self.write(next, &lease).await?.then_some((next, from)))
    }

    /// Extends a lease held at `epoch`; None when someone else has written an epoch since
    /// (the work moved: stop).
    pub async fn renew(
        &self,
        holder: &str,
        ttl_secs: u64,
        epoch: u64,
    ) -> Result<Option<u64>, StoreError> {
        match self.latest().await? {
            Some((e, Some(l))) if e == epoch && l.holder == holder && !l.released => {}
            _ => return Ok(None),
        }
        let lease = Lease {
            holder: holder.to_string(),
            expires_at: unix_now() + ttl_secs,
            released: false,
        };
        Ok(self.write(epoch + 1, &lease).await?.then_some(epoch + 1))
    }

    /// Gives the lease up so another replica can take the work at once.
    pub async fn release(&self, holder: &str, epoch: u64) -> Result<(), StoreError> {
        if let Some((e, Some(l))) = self.latest().await? {
            if e == epoch && l.holder == holder {
                let lease = Lease {
                    holder: holder.to_string(),
                    expires_at: 0,
                    released: true,
                };
                self.write(epoch + 1, &lease).await?;
            }
        }
        Ok(())
    }
}

/// This process as a lease holder: where it runs and a random nonce drawn at start, so every
/// incarnation is distinct even when every replica is pid 1 and shares a host name. With
/// `POD_NAME` (the downward API; one live process per pod) it is `pod:<name>/<nonce>`, and a
/// restarted container takes its predecessor's leases at once; otherwise (`host:<HOSTNAME>`,
/// which replicas may share) they are waited out.
pub fn process_name() -> String {
    let nonce = rand::random::<u64>();
    match std::env::var("POD_NAME") {
        Ok(pod) if !pod.is_empty() => format!("pod:{pod}/{nonce:016x}"),
        _ => {
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            format!("host:{host}/{nonce:016x}")
        }
    }
}

/// `holder` is an earlier incarnation of `me` in the same pod, so it is dead.
fn predecessor(holder: &str, me: &str) -> bool {
    match (holder.rsplit_once('/'), me.rsplit_once('/')) {
        (Some((h, hn)), Some((m, mn))) => h.starts_with("pod:") && h == m && hn != mn,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_exclude_other_holders_until_expiry_or_release_and_fence_the_loser() {
        let d = std::env::temp_dir().join(format!("spotinfer-lease-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let blobs = Blobs::open(d.to_str().unwrap()).unwrap();
        let l = LeaseKeys {
            blobs: &blobs,
            dir: "x/lease".into(),
        };
        let e = blobs.run(l.claim("a", 60)).unwrap().unwrap();
        assert!(blobs.run(l.claim("b", 60)).unwrap().is_none());
        let e2 = blobs.run(l.renew("a", 60, e)).unwrap().unwrap();
        assert_eq!(e2, e + 1);
        assert!(
            blobs.run(l.renew("a", 60, e)).unwrap().is_none(),
            "a stale epoch is fenced"
        );
        blobs.run(l.release("a", e2)).unwrap();
        let (eb, from) = blobs.run(l.take("b", 0)).unwrap().unwrap();
        assert_eq!(from, None, "a released lease is free, not taken over");
        // Expired (ttl 0): anyone may take it, and b's renewal then fails.
        let (ea, from) = blobs.run(l.take("a", 60)).unwrap().unwrap();
        assert_eq!(from.as_deref(), Some("b"), "taken over from b");
        assert!(ea > eb);
        assert!(blobs.run(l.renew("b", 60, eb)).unwrap().is_none());
        let keys = blobs.run(blobs.list("x/lease")).unwrap();
        assert!(keys.len() <= 3, "old epochs are deleted: {keys:?}");
        // Garbage in the newest epoch: free, and the next claim goes past it.
        blobs
            .run(blobs.put(&epoch_key("x/lease", ea + 1), b"{".to_vec()))
            .unwrap();
        assert_eq!(blobs.run(l.claim("c", 60)).unwrap(), Some(ea + 2));
        assert_ne!(process_name(), process_name(), "unique per incarnation");
        // A restarted container (same pod) takes over at once; a shared host name does not.
        let old = Lease {
            holder: "pod:p-1/aaaa".into(),
            expires_at: unix_now() + 60,
            released: false,
        };
        assert!(!old.blocks("pod:p-1/bbbb"));
        assert!(old.blocks("pod:p-2/bbbb"));
        let shared = Lease {
            holder: "host:box/aaaa".into(),
            ..old
        };
        assert!(shared.blocks("host:box/bbbb"));
        std::fs::remove_dir_all(&d).ok();
    }
}
