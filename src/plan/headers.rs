//! Parameter counts and sizes from safetensors *headers*: a local file's first bytes, or two
//! HTTP range requests against the Hub. Never the weights.

use std::path::Path;

use serde::Serialize;

use crate::model::ModelError;

/// What the safetensors headers say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WeightsSummary {
    /// Floating-point parameters (integer buffers such as `position_ids` are not parameters).
    pub parameters: u64,
    /// Bytes of the files as stored (header + data): what the Hub cache holds.
    pub stored_bytes: u64,
    /// Largest single file: the mmaped pages the host holds at once while loading it.
    pub largest_file_bytes: u64,
    pub files: usize,
    pub stored_dtypes: Vec<String>,
    /// Parameters stored but never loaded: a causal LM's `lm_head` (an embedder skips it, a
    /// yes/no reranker reads two of its rows).
    pub unloaded_parameters: u64,
}

impl WeightsSummary {
    /// Parameters the server holds in memory.
    pub fn loaded_parameters(&self) -> u64 {
        self.parameters.saturating_sub(self.unloaded_parameters)
    }
}

/// Largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Adds one file's header (the JSON after the 8-byte length) to `sum`.
pub fn add_header(sum: &mut WeightsSummary, header_json: &[u8]) -> Result<(), String> {
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header_json).map_err(|e| format!("header is not JSON: {e}"))?;
    let mut data_end = 0u64;
    for (name, t) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("tensor {name} has no dtype"))?;
        let shape = t
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| format!("tensor {name} has no shape"))?;
        let elements = shape.iter().try_fold(1u64, |acc, d| {
            d.as_u64()
                .and_then(|d| acc.checked_mul(d))
                .ok_or_else(|| format!("tensor {name} has a bad shape"))
        })?;
        let end = t
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|o| o.get(1))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| format!("tensor {name} has no data_offsets"))?;
        data_end = data_end.max(end);
        if matches!(
            dtype,
            "F64" | "F32" | "F16" | "BF16" | "F8_E4M3" | "F8_E5M2"
        ) {
            sum.parameters += elements;
            if name.starts_with("lm_head.") {
                sum.unloaded_parameters += elements;
            }
        }
        if !sum.stored_dtypes.iter().any(|d| d == dtype) {
            sum.stored_dtypes.push(dtype.to_string());
        }
    }
    let file_bytes = 8 + header_json.len() as u64 + data_end;
    sum.stored_bytes += file_bytes;
    sum.largest_file_bytes = sum.largest_file_bytes.max(file_bytes);
    sum.files += 1;
    sum.stored_dtypes.sort();
    Ok(())
}

pub(super) fn header_len(first8: &[u8], file: &str) -> Result<u64, ModelError> {
    let bytes: [u8; 8] = first8
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(file, "shorter than 8 bytes"))?;
    let n = u64::from_le_bytes(bytes);
    if n == 0 || n > MAX_HEADER {
        return Err(corrupt(
            file,
            &format!("header length {n} is not plausible"),
        ));
    }
    Ok(n)
}

pub(super) fn corrupt(file: &str, reason: &str) -> ModelError {
    ModelError::Corrupt {
        file: file.to_string(),
        reason: reason.to_string(),
    }
}

/// Reads the header of a local safetensors file (the length and the JSON, nothing more).
pub fn read_local_header(path: &Path, sum: &mut WeightsSummary) -> Result<(), ModelError> {
    use std::io::Read;
    let name = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut first = [0u8; 8];
    f.read_exact(&mut first)
        .map_err(|e| ModelError::io(path, e))?;
    let n = header_len(&first, &name)?;
    let mut json = vec![0u8; n as usize];
    f.read_exact(&mut json)
        .map_err(|e| ModelError::io(path, e))?;
    add_header(sum, &json).map_err(|e| corrupt(&name, &e))
}

/// `len` bytes of `url` from `start`, with a Range request. A server that ignores Range gets
/// its body read only as far as needed, then dropped.
pub(super) async fn range(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    start: u64,
    len: u64,
) -> Result<Vec<u8>, ModelError> {
    let hub = |e: String| ModelError::Hub(format!("{url}: {e}"));
    let mut req = client.get(url).header(
        reqwest::header::RANGE,
        format!("bytes={start}-{}", start + len - 1),
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send().await.map_err(|e| hub(e.to_string()))?;
    let status = resp.status();
    let mut skip = match status.as_u16() {
        206 => 0,
        200 => start,
        401 | 403 => {
            return Err(hub(format!(
                "{status}: a gated or private repository needs HF_TOKEN"
            )))
        }
        _ => return Err(hub(status.to_string())),
    };
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let Some(chunk) = resp.chunk().await.map_err(|e| hub(e.to_string()))? else {
            break;
        };
        let mut chunk = &chunk[..];
        let dropped = skip.min(chunk.len() as u64);
        chunk = &chunk[dropped as usize..];
        skip -= dropped;
        let want = (len - out.len() as u64).min(chunk.len() as u64) as usize;
        out.extend_from_slice(&chunk[..want]);
    }
    if (out.len() as u64) < len {
        return Err(hub(format!("got {} of {len} header bytes", out.len())));
    }
    Ok(out)
}
