//! Expiring claims on shared work (a job's validation and assembly, each segment of its input)
//! and the short O_EXCL locks that serialise updates of one file across replicas.
//!
//! Leases only keep replicas from doing the same work twice; what makes every line count once
//! is elsewhere (segment checkpoints describe whole prefixes, see `segment.rs`). A lease is
//! judged by wall-clock time, so replica clocks must agree to well within `--batch-lease-secs`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::durable::{fsync_dir, io_err, parent_dir, read_json, unix_now, write_json, StoreError};

/// Who holds a piece of work, until when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub expires_at: u64,
}

impl Lease {
    /// Held by someone else who is still alive.
    pub fn blocks(&self, me: &str) -> bool {
        self.holder != me && self.expires_at > unix_now() && !holder_is_dead(self, me)
    }
}

/// A lock file older than this belongs to a replica that died inside the critical section
/// (critical sections are a few file operations). Shorter than any lease, so a lock left by a
/// SIGKILL never holds work up longer than the lease would.
const STALE_LOCK_SECS: u64 = 10;

/// Exclusive claims through a lease file and an O_EXCL lock around its update.
pub struct LeaseFile {
    path: PathBuf,
    lock: PathBuf,
}

impl LeaseFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("lease.json"),
            lock: dir.join("lease.lock"),
        }
    }

    pub fn read(&self) -> Option<Lease> {
        read_json(&self.path).ok()
    }

    /// Takes or renews the lease for `holder` if it is free, expired or already ours.
    pub fn acquire(&self, holder: &str, ttl_secs: u64) -> Result<bool, StoreError> {
        self.acquire_or_steal(holder, ttl_secs, |_| false)
    }

    /// Like `acquire`, but also takes a live lease whose holder `is_dead` says has died (a
    /// process on this host that no longer exists), instead of waiting for it to expire.
    pub fn acquire_or_steal(
        &self,
        holder: &str,
        ttl_secs: u64,
        is_dead: impl Fn(&Lease) -> bool,
    ) -> Result<bool, StoreError> {
        let Some(_guard) = try_lock(&self.lock)? else {
            return Ok(false);
        };
        let now = unix_now();
        match self.read() {
            Some(l) if l.holder != holder && l.expires_at > now && !is_dead(&l) => Ok(false),
            _ => {
                write_json(
                    &self.path,
                    &Lease {
                        holder: holder.to_string(),
                        expires_at: now + ttl_secs,
                    },
                )?;
                Ok(true)
            }
        }
    }

    /// Takes the lease unless a live replica holds it (dead holders on this host lose it).
    pub fn claim(&self, holder: &str, ttl_secs: u64) -> bool {
        matches!(
            self.acquire_or_steal(holder, ttl_secs, |l| holder_is_dead(l, holder)),
            Ok(true)
        )
    }

    /// Gives the lease up so another replica can take the work at once.
    pub fn release(&self, holder: &str) -> Result<(), StoreError> {
        let _guard = try_lock(&self.lock)?;
        if self.read().is_some_and(|l| l.holder == holder) {
            fs::remove_file(&self.path).map_err(io_err(&self.path))?;
            fsync_dir(parent_dir(&self.path))?;
        }
        Ok(())
    }

    pub fn held_by(&self, holder: &str) -> bool {
        self.read()
            .is_some_and(|l| l.holder == holder && l.expires_at > unix_now())
    }
}

/// This process as a lease or lock holder: the pod name (Kubernetes sets HOSTNAME to it) and
/// the process id, so a restarted container never mistakes its predecessor's lease for its
/// own.
pub fn process_name() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "local".into());
    format!("{host}/{}", std::process::id())
}

/// A lease holder that ran on this host and is gone.
pub fn holder_is_dead(lease: &Lease, me: &str) -> bool {
    is_dead(&lease.holder, me)
}

/// `host/pid` of a holder that ran on this host and is gone. A restarted container usually
/// gets the same pid (1) and so the same holder name, which `acquire` already treats as its
/// own; this covers processes outside containers.
pub fn is_dead(holder: &str, me: &str) -> bool {
    let (Some((host, pid)), Some((my_host, _))) = (holder.rsplit_once('/'), me.rsplit_once('/'))
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    host == my_host
        && pid > 0
        && unsafe { libc::kill(pid, 0) } != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Removes its lock file when dropped.
pub struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Creates `lock` exclusively, naming this process in it; None if someone else holds it. A
/// lock whose holder died (on this host, or judged by age) is broken first. Two replicas
/// breaking the same dead lock at once may both get in: only leases take that risk often
/// enough to matter, and leases only save work, they never decide what a line's result is.
pub fn try_lock(lock: &Path) -> Result<Option<LockGuard>, StoreError> {
    let me = process_name();
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(lock) {
            Ok(mut f) => {
                // Best effort: an empty lock file is judged by its age alone.
                let _ = f.write_all(me.as_bytes());
                return Ok(Some(LockGuard(lock.to_path_buf())));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let holder = fs::read_to_string(lock).unwrap_or_default();
                let age = fs::metadata(lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if age < STALE_LOCK_SECS && !is_dead(&holder, &me) {
                    return Ok(None);
                }
                let _ = fs::remove_file(lock);
            }
            Err(e) => return Err(io_err(lock)(e)),
        }
    }
    Ok(None)
}

/// Waits (a few milliseconds at a time) for `lock`, up to `limit`. Blocking: call it from a
/// blocking thread.
pub fn lock_waiting(lock: &Path, limit: Duration) -> Result<LockGuard, StoreError> {
    let started = Instant::now();
    loop {
        if let Some(g) = try_lock(lock)? {
            return Ok(g);
        }
        if started.elapsed() > limit {
            return Err(StoreError::Busy {
                path: lock.display().to_string(),
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spotinfer-lease-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn leases_exclude_other_holders_until_expiry_or_release() {
        let d = tmp("lease");
        let l = LeaseFile::new(&d);
        assert!(l.acquire("a", 60).unwrap());
        assert!(!l.acquire("b", 60).unwrap());
        assert!(l.acquire("a", 60).unwrap(), "renewal");
        assert!(l.held_by("a") && !l.held_by("b"));
        l.release("a").unwrap();
        assert!(l.acquire("b", 0).unwrap());
        // Expired (ttl 0): anyone may take it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(l.acquire("a", 60).unwrap());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_dead_local_holder_loses_its_lease_at_once() {
        let d = tmp("dead");
        let l = LeaseFile::new(&d);
        // pid 0x7ffffff0 does not exist.
        assert!(l.acquire("host/2147483632", 60).unwrap());
        let me = format!("host/{}", std::process::id());
        assert!(!l.read().unwrap().blocks(&me));
        assert!(l.claim(&me, 60));
        assert!(l.read().unwrap().blocks("otherhost/1"));
        assert!(
            !l.claim("otherhost/1", 60),
            "a holder on another host is never judged dead"
        );
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn locks_wait_for_each_other() {
        let d = tmp("lock");
        let p = d.join("x.lock");
        let g = lock_waiting(&p, Duration::from_secs(1)).unwrap();
        assert!(try_lock(&p).unwrap().is_none());
        assert!(matches!(
            lock_waiting(&p, Duration::from_millis(20)),
            Err(StoreError::Busy { .. })
        ));
        drop(g);
        assert!(try_lock(&p).unwrap().is_some());
        // Left behind by a process of this host that died inside its critical section.
        let host = process_name().rsplit_once('/').unwrap().0.to_string();
        fs::write(&p, format!("{host}/2147483632")).unwrap();
        assert!(
            try_lock(&p).unwrap().is_some(),
            "a dead holder's lock is broken at once"
        );
        fs::remove_dir_all(&d).ok();
    }
}
