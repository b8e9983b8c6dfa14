//! The OpenAI objects a job is made of, as stored and as returned: files, batches, their
//! statuses and counts, and the ids that name them (ids are file names, so only ids we could
//! have made are accepted).

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
    pub status: String,
}

/// A file's metadata record: the OpenAI object and where its bytes are.
#[derive(Serialize, Deserialize)]
pub struct FileRecord {
    pub file: FileObject,
    /// The key of its bytes in the store (an upload, a job's assembled output, or a user's
    /// object in the store's bucket).
    pub data: String,
}

impl FileRecord {
    /// The store key of the bytes: `data`, or for a record an older release wrote (an
    /// absolute path on the writer's filesystem), the part from the store's own `files/` or
    /// `batches/` folder on. `location` is the store's folder as given.
    pub fn key(&self, location: &str) -> String {
        let data = &self.data;
        if !data.starts_with('/') {
            return data.clone();
        }
        if let Some(rest) = data.strip_prefix(&format!("{}/", location.trim_end_matches('/'))) {
            return rest.to_string();
        }
        // The folder was mounted elsewhere when the record was written.
        ["/files/", "/batches/"]
            .iter()
            .filter_map(|dir| data.rfind(dir))
            .max()
            .map_or_else(|| data.clone(), |i| data[i + 1..].to_string())
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Still has work for a runner.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            BatchStatus::Validating
                | BatchStatus::InProgress
                | BatchStatus::Finalizing
                | BatchStatus::Cancelling
        )
    }
}

/// The OpenAI batch object, as stored and as returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BatchObject {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Metadata keys the server adds to a job (OpenAI metadata values are strings).
pub const META_DEVICE_SECONDS: &str = "spotinfer_device_seconds";
pub const META_COST: &str = "spotinfer_cost_usd";

impl BatchObject {
    /// Writes the job's device time and cost into its metadata, beside the caller's keys.
    pub fn set_cost(&mut self, device_seconds: f64, cost_dollars: f64) {
        let m = self.metadata.get_or_insert_with(BTreeMap::new);
        m.insert(META_DEVICE_SECONDS.into(), format!("{device_seconds:.3}"));
        m.insert(META_COST.into(), format!("{cost_dollars:.6}"));
    }
}

pub fn random_id(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Ids are used as file names: only ids we could have made are accepted.
pub fn valid_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|t| {
        !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_releases_absolute_paths_become_keys() {
        let rec = |data: &str| FileRecord {
            file: FileObject {
                id: "file-a".into(),
                object: "file".into(),
                bytes: 0,
                created_at: 0,
                filename: "a".into(),
                purpose: "batch".into(),
                status: "processed".into(),
            },
            data: data.into(),
        };
        assert_eq!(rec("files/f.jsonl").key("/state"), "files/f.jsonl");
        assert_eq!(rec("/state/files/f.jsonl").key("/state/"), "files/f.jsonl");
        assert_eq!(
            rec("/var/lib/x/batches/batch_a/output.jsonl").key("/mnt/new"),
            "batches/batch_a/output.jsonl"
        );
    }

    #[test]
    fn ids_are_checked_before_touching_the_filesystem() {
        assert!(valid_id("file-abc123", "file-"));
        assert!(!valid_id("file-../../etc", "file-"));
        assert!(!valid_id("file-", "file-"));
        assert!(!valid_id("batch_x", "file-"));
        let id = random_id("batch_");
        assert!(valid_id(&id, "batch_"), "{id}");
    }

    #[test]
    fn cost_goes_into_string_metadata_beside_the_callers() {
        let mut b: BatchObject = serde_json::from_value(serde_json::json!({
            "id": "batch_x", "object": "batch", "endpoint": "/v1/embeddings", "errors": null,
            "input_file_id": "file-x", "completion_window": "24h", "status": "in_progress",
            "output_file_id": null, "error_file_id": null, "created_at": 1, "in_progress_at": null,
            "expires_at": null, "finalizing_at": null, "completed_at": null, "failed_at": null,
            "expired_at": null, "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": {"suite": "x"}
        }))
        .unwrap();
        b.set_cost(1.5, 0.000504);
        let m = b.metadata.unwrap();
        assert_eq!(m["suite"], "x");
        assert_eq!(m[META_DEVICE_SECONDS], "1.500");
        assert_eq!(m[META_COST], "0.000504");
    }
}
