//! The Files API records in the job store: uploads and job outputs (`files/<id>.json` names the
//! bytes' key), created once and read by id.

use super::{json, JobStore};
use crate::jobs::blob::Created;
use crate::jobs::durable::{unix_now, StoreError};
use crate::jobs::types::{random_id, valid_id, FileObject, FileRecord};

impl JobStore {
    pub(super) fn file_meta(id: &str) -> String {
        format!("files/{id}.json")
    }

    /// A new file id and the key its upload streams to.
    pub fn new_upload(&self) -> (String, String) {
        let id = random_id("file-");
        let key = format!("files/{id}.jsonl");
        (id, key)
    }

    /// Records an upload (or a job's output) already written under `key`.
    pub async fn record_file(
        &self,
        id: &str,
        key: &str,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, StoreError> {
        let bytes = self
            .blobs
            .size(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "object",
                id: self.blobs.describe(key),
            })?;
        let file = FileObject {
            id: id.to_string(),
            object: "file".into(),
            bytes,
            created_at: unix_now(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            status: "processed".into(),
        };
        let rec = FileRecord {
            file: file.clone(),
            data: key.to_string(),
        };
        // Create-only: a second assembler registering the same output finds the first record.
        match self.blobs.create(&Self::file_meta(id), json(&rec)?).await? {
            Created::Mine => Ok(file),
            Created::Taken => self.file(id).await,
        }
    }

    async fn file_record(&self, id: &str) -> Result<FileRecord, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "file",
            id: id.to_string(),
        };
        if !valid_id(id, "file-") {
            return Err(not_found());
        }
        self.read(&Self::file_meta(id)).await?.ok_or_else(not_found)
    }

    pub async fn file(&self, id: &str) -> Result<FileObject, StoreError> {
        Ok(self.file_record(id).await?.file)
    }

    /// The key of a file's bytes (an older release's record names a path).
    pub async fn file_key(&self, id: &str) -> Result<String, StoreError> {
        Ok(self.file_record(id).await?.key(self.blobs.location()))
    }

    pub async fn list_files(&self) -> Result<Vec<FileObject>, StoreError> {
        let mut out = Vec::new();
        for l in self.blobs.list("files").await? {
            let Some(id) = l
                .key
                .strip_prefix("files/")
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            if let Ok(f) = self.file(id).await {
                out.push(f);
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// Deletes an upload. Job outputs stay with their job; only their record goes.
    pub async fn delete_file(&self, id: &str) -> Result<(), StoreError> {
        let rec = self.file_record(id).await?;
        self.blobs.delete(&Self::file_meta(id)).await?;
        if rec.data.starts_with("files/") {
            self.blobs.delete(&rec.data).await?;
        }
        Ok(())
    }
}
