//! Checkpoint tensors by name, straight from mmaped safetensors (one file or shards): each
//! header is parsed once into a name index, and a tensor is a borrowed view of its bytes until a
//! backend copies it where it belongs. Torch pickles (`*.pt`, bge-m3's extra heads) are read
//! through candle into owned F32 tensors.
//!
//! Why views and `release`: a backend that moves weights to the GPU touches each tensor once;
//! `release` drops its pages from the mapping right after, so the host's resident memory stays
//! near one tensor, not the whole model (a 7B model is 14 GB at FP16).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ModelError;

/// One tensor as the checkpoint stores it: row-major bytes of `dtype`.
#[derive(Debug, Clone)]
pub struct HostTensor<'a> {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl HostTensor<'_> {
    /// An owned F32 tensor (heads read from pickles, or built by a family).
    pub fn from_f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
    ) -> HostTensor<'static> {
        HostTensor {
            name: name.into(),
            dtype: safetensors::Dtype::F32,
            shape,
            data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Rows `r0..r1` of the first dimension, without copying.
    pub fn rows(&self, r0: usize, r1: usize) -> Result<HostTensor<'_>, ModelError> {
        let first = self.shape.first().copied().unwrap_or(0);
        if r0 > r1 || r1 > first {
            return Err(ModelError::Corrupt {
                file: self.name.clone(),
                reason: format!("rows {r0}..{r1} of a tensor with {first}"),
            });
        }
        let row_bytes = self.data.len() / first.max(1);
        let mut shape = self.shape.clone();
        shape[0] = r1 - r0;
        Ok(HostTensor {
            name: self.name.clone(),
            dtype: self.dtype,
            shape,
            data: Cow::Borrowed(&self.data[r0 * row_bytes..r1 * row_bytes]),
        })
    }

    /// The values as F32 (F32, F16 and BF16 checkpoints).
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let b = &self.data;
        Ok(match self.dtype {
            safetensors::Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tensor {} has dtype {other:?}; F32, F16 and BF16 are supported",
                    self.name
                )))
            }
        })
    }

    /// The candle dtype of the stored bytes.
    pub fn candle_dtype(&self) -> Result<candle_core::DType, ModelError> {
        Ok(match self.dtype {
            safetensors::Dtype::F32 => candle_core::DType::F32,
            safetensors::Dtype::F16 => candle_core::DType::F16,
            safetensors::Dtype::BF16 => candle_core::DType::BF16,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tensor {} has dtype {other:?}; F32, F16 and BF16 are supported",
                    self.name
                )))
            }
        })
    }
}

struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of a checkpoint, by name.
pub struct Weights {
    maps: Vec<memmap2::Mmap>,
    paths: Vec<PathBuf>,
    index: HashMap<String, Entry>,
    /// Tensors added from other files (pickled heads), owned.
    extra: HashMap<String, HostTensor<'static>>,
    /// Prepended to every name looked up (`bert.`, `roberta.`, `model.`): the family's choice.
    prefix: String,
}

impl Weights {
    /// Maps every file and indexes its header (a truncated file is a clear error naming it).
    pub fn open(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let file = std::fs::File::open(p).map_err(|e| ModelError::io(p, e))?;
            // SAFETY: a read-only map of a file we never write; the Hub cache replaces files by
            // writing new blobs, not by changing these.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(p, e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&map).map_err(|e| ModelError::Corrupt {
                    file: p.display().to_string(),
                    reason: format!("{e}; delete it and download again"),
                })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if base + e > map.len() {
                    return Err(ModelError::Corrupt {
                        file: p.display().to_string(),
                        reason: format!(
                            "tensor {name} ends past the end of the file; delete it and download again"
                        ),
                    });
                }
                index.insert(
                    name,
                    Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            maps.push(map);
        }
        Ok(Self {
            maps,
            paths: paths.to_vec(),
            index,
            extra: HashMap::new(),
            prefix: String::new(),
        })
    }

    /// No files: tensors come from [`Weights::add_pickle`] only.
    pub fn empty() -> Self {
        Self {
            maps: Vec::new(),
            paths: Vec::new(),
            index: HashMap::new(),
            extra: HashMap::new(),
            prefix: String::new(),
        }
    }

    /// Bytes per element of the stored tensors (the first one's dtype; 4 when empty).
    pub fn element_bytes(&self) -> usize {
        self.index
            .values()
            .next()
            .map_or(4, |e| e.dtype.bitsize() / 8)
    }

    /// Adds the tensors of a torch pickle (e.g. bge-m3's `sparse_linear.pt`) under `prefix.`.
    pub fn add_pickle(&mut self, path: &Path, prefix: &str) -> Result<(), ModelError> {
        let tensors = candle_core::pickle::read_all(path).map_err(|e| ModelError::Corrupt {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        for (name, t) in tensors {
            let shape = t.dims().to_vec();
            let values: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            let full = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            self.extra
                .insert(full.clone(), HostTensor::from_f32(full, shape, &values));
        }
        Ok(())
    }

    /// Picks the first of `prefixes` under which `probe` exists (`""` means none) and uses it
    /// for every later lookup. Returns false if none matches.
    pub fn use_prefix(&mut self, prefixes: &[&str], probe: &str) -> bool {
        for p in prefixes {
            let full = format!("{p}{probe}");
            if self.index.contains_key(&full) || self.extra.contains_key(&full) {
                self.prefix = (*p).to_string();
                return true;
            }
        }
        false
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` under the prefix, or as written when only that exists (heads such as
    /// `classifier.*` sit beside a prefixed backbone).
    fn full(&self, name: &str) -> String {
        let prefixed = format!("{}{name}", self.prefix);
        if self.prefix.is_empty() || self.contains_exact(&prefixed) || !self.contains_exact(name) {
            prefixed
        } else {
            name.to_string()
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.contains_exact(&self.full(name))
    }

    /// Looks a name up without the family prefix (heads saved beside the backbone).
    pub fn contains_exact(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.extra.contains_key(name)
    }

    /// The tensor `name` (under the prefix), checked against `shape` when given.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor<'_>, ModelError> {
        self.get_exact(&self.full(name), shape)
    }

    /// The tensor `name` (under the prefix) whatever its shape.
    pub fn get_any_shape(&self, name: &str) -> Result<HostTensor<'_>, ModelError> {
        self.lookup(&self.full(name))
    }

    /// The first of `names` that exists (old checkpoints say gamma/beta for weight/bias).
    pub fn get_first(&self, names: &[&str], shape: &[usize]) -> Result<HostTensor<'_>, ModelError> {
        for n in names {
            if self.contains(n) {
                return self.get(n, shape);
            }
        }
        self.get(names.first().copied().unwrap_or_default(), shape)
    }

    /// The tensor `name` exactly as named in the file (no prefix).
    pub fn get_exact(&self, name: &str, shape: &[usize]) -> Result<HostTensor<'_>, ModelError> {
        let t = self.lookup(name)?;
        if t.shape != shape {
            return Err(ModelError::Corrupt {
                file: self.file_of(name),
                reason: format!(
                    "{name} has shape {:?}, the config implies {shape:?}",
                    t.shape
                ),
            });
        }
        Ok(t)
    }

    fn lookup(&self, name: &str) -> Result<HostTensor<'_>, ModelError> {
        if let Some(t) = self.extra.get(name) {
            return Ok(HostTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: Cow::Borrowed(&t.data),
            });
        }
        let e = self.index.get(name).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor {name} is missing from the checkpoint (not a checkpoint of this architecture?)"
            ))
        })?;
        Ok(HostTensor {
            name: name.to_string(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            data: Cow::Borrowed(&self.maps[e.file][e.start..e.end]),
        })
    }

    fn file_of(&self, name: &str) -> String {
        self.index
            .get(name)
            .map(|e| self.paths[e.file].display().to_string())
            .unwrap_or_else(|| name.to_string())
    }

    /// Tells the kernel the pages of `name` are not needed any more (the backend has copied the
    /// tensor): resident memory stays near one tensor while a model moves to the GPU.
    pub fn release(&self, name: &str) {
        if let Some(e) = self.index.get(&self.full(name)) {
            let page = 4096;
            let start = e.start.next_multiple_of(page);
            if e.end > start {
                // SAFETY: the map is private and read-only; DONTNEED on it drops clean pages,
                // which a later read would fetch from the file again. Best effort.
                let _ = unsafe {
                    self.maps[e.file].unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        (e.end - start) / page * page,
                    )
                };
            }
        }
    }

    /// Bytes of every tensor in the safetensors files.
    pub fn stored_bytes(&self) -> usize {
        self.index.values().map(|e| e.end - e.start).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_st(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn names_prefixes_shapes_and_rows() {
        let dir = std::env::temp_dir().join(format!("spotinfer-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.safetensors");
        let b = dir.join("b.safetensors");
        write_st(
            &a,
            &[("bert.x.weight", vec![3, 2], vec![1., 2., 3., 4., 5., 6.])],
        );
        write_st(&b, &[("bert.y.bias", vec![2], vec![7., 8.])]);
        let mut w = Weights::open(&[a, b]).unwrap();
        assert!(!w.contains("x.weight"));
        assert!(w.use_prefix(&["", "bert."], "x.weight"));
        assert_eq!(w.prefix(), "bert.");
        let x = w.get("x.weight", &[3, 2]).unwrap();
        assert_eq!(
            x.rows(1, 3).unwrap().to_f32().unwrap(),
            vec![3., 4., 5., 6.]
        );
        assert_eq!(
            w.get("y.bias", &[2]).unwrap().to_f32().unwrap(),
            vec![7., 8.]
        );
        let err = w.get("x.weight", &[2, 3]).unwrap_err().to_string();
        assert!(err.contains("has shape [3, 2]"), "{err}");
        assert!(w
            .get("z", &[1])
            .unwrap_err()
            .to_string()
            .contains("missing"));
        w.release("x.weight");
        assert_eq!(w.get("x.weight", &[3, 2]).unwrap().to_f32().unwrap()[5], 6.);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn truncated_files_are_clear_errors() {
        let p = std::env::temp_dir().join(format!(
            "spotinfer-trunc-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        let err = Weights::open(std::slice::from_ref(&p))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("is not valid") && err.contains("download again"),
            "{err}"
        );
        std::fs::remove_file(&p).ok();
    }
}
