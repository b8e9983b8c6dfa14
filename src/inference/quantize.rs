//! Embedding output types beyond float32: `int8`, `uint8`, `binary`, `ubinary` (bit-exact with
//! sentence-transformers' `quantize_embeddings` in float32) and `base64` (little-endian float32
//! bytes). Shared by the Cohere, TEI and OpenAI routes and by job lines.
//!
//! int8 / uint8, per dimension j, all in float32 arithmetic:
//!   step_j  = (max_j - min_j) / 255
//!   uint8_j = trunc((x_j - min_j) / step_j)         saturated to [0, 255]
//!   int8_j  = trunc((x_j - min_j) / step_j - 128)   saturated to [-128, 127]
//! with (min, max) from `--quantization-ranges` when given, else per vector
//! min_j = -m, max_j = m, m = max_j |x_j|. A dimension whose range is empty gives 0.
//! binary: `packbits(x > 0) - 128` as int8; ubinary: `packbits(x > 0)`. Bits are packed per
//! vector, most significant bit first, the last byte padded with zero bits.

use std::borrow::Cow;
use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};

/// One output type (Cohere's `embedding_types` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingType {
    Float,
    Int8,
    Uint8,
    Binary,
    Ubinary,
    Base64,
}

impl EmbeddingType {
    pub const ALL: [EmbeddingType; 6] = [
        Self::Float,
        Self::Int8,
        Self::Uint8,
        Self::Binary,
        Self::Ubinary,
        Self::Base64,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Float => "float",
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Binary => "binary",
            Self::Ubinary => "ubinary",
            Self::Base64 => "base64",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantizeError {
    #[error("cannot read quantization ranges {path}: {why}")]
    File { path: String, why: String },
    #[error("the quantization ranges cover {ranges} dimensions but the vectors have {vector}; int8/uint8 need ranges of the vectors' width")]
    Width { ranges: usize, vector: usize },
}

/// Per-dimension (min, max), as `quantize_embeddings`' `ranges` (shape (2, dims)).
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl Ranges {
    /// `[[min…], [max…]]` (`ranges.tolist()`) or `{"min": […], "max": […]}`; values are read
    /// as float32, as `np.array(ranges, dtype=np.float32)` does.
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Rows([Vec<f32>; 2]),
            Named { min: Vec<f32>, max: Vec<f32> },
        }
        let (min, max) = match serde_json::from_str::<Shape>(text).map_err(|e| {
            format!("expected [[min, …], [max, …]] or {{\"min\": […], \"max\": […]}}: {e}")
        })? {
            Shape::Rows([min, max]) => (min, max),
            Shape::Named { min, max } => (min, max),
        };
        if min.is_empty() || min.len() != max.len() {
            return Err(format!(
                "min and max need the same non-zero length, got {} and {}",
                min.len(),
                max.len()
            ));
        }
        if let Some(j) =
            (0..min.len()).find(|&j| min[j].is_nan() || max[j].is_nan() || min[j] > max[j])
        {
            return Err(format!(
                "dimension {j}: min {} is not <= max {}",
                min[j], max[j]
            ));
        }
        Ok(Self { min, max })
    }

    pub fn read(path: &Path) -> Result<Self, QuantizeError> {
        let err = |why: String| QuantizeError::File {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }
}

/// Float32 steps of `quantize_embeddings`: `(value - start) / step`, plus `offset`.
fn scaled(x: f32, min: f32, max: f32, offset: f32) -> f32 {
    let step = (max - min) / 255.0;
    if step == 0.0 {
        return 0.0;
    }
    (x - min) / step + offset
}

/// Per-dimension (min, max): the file's, or the vector's own symmetric range.
type Bounds<'a> = (Cow<'a, [f32]>, Cow<'a, [f32]>);

fn bounds<'a>(v: &[f32], ranges: Option<&'a Ranges>) -> Result<Bounds<'a>, QuantizeError> {
    match ranges {
        Some(r) if r.min.len() != v.len() => Err(QuantizeError::Width {
            ranges: r.min.len(),
            vector: v.len(),
        }),
        Some(r) => Ok((Cow::Borrowed(&r.min[..]), Cow::Borrowed(&r.max[..]))),
        None => {
            let m = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            Ok((Cow::Owned(vec![-m; v.len()]), Cow::Owned(vec![m; v.len()])))
        }
    }
}

/// `quantize_embeddings(v, "uint8", ranges)`; `as` truncates toward zero and saturates.
pub fn uint8(v: &[f32], ranges: Option<&Ranges>) -> Result<Vec<u8>, QuantizeError> {
    let (min, max) = bounds(v, ranges)?;
    Ok((0..v.len())
        .map(|j| scaled(v[j], min[j], max[j], 0.0) as u8)
        .collect())
}

/// `quantize_embeddings(v, "int8", ranges)`: the -128 is applied before truncation, as there.
pub fn int8(v: &[f32], ranges: Option<&Ranges>) -> Result<Vec<i8>, QuantizeError> {
    let (min, max) = bounds(v, ranges)?;
    Ok((0..v.len())
        .map(|j| scaled(v[j], min[j], max[j], -128.0) as i8)
        .collect())
}

/// `np.packbits(v > 0)`: most significant bit first, zero-padded.
pub fn ubinary(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (i, &x)| b | (u8::from(x > 0.0) << (7 - i)))
        })
        .collect()
}

/// `packbits(v > 0) - 128` as int8 (numpy's uint8 wrap-around then reinterpretation is the
/// same as flipping the top bit).
pub fn binary(v: &[f32]) -> Vec<i8> {
    ubinary(v).into_iter().map(|b| (b ^ 0x80) as i8).collect()
}

/// Little-endian float32 bytes, base64 (Cohere's and OpenAI's `base64`).
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One vector as JSON in type `ty`.
pub fn render(
    v: &[f32],
    ty: EmbeddingType,
    ranges: Option<&Ranges>,
) -> Result<Value, QuantizeError> {
    Ok(match ty {
        EmbeddingType::Float => json!(v),
        EmbeddingType::Int8 => json!(int8(v, ranges)?),
        EmbeddingType::Uint8 => json!(uint8(v, ranges)?),
        EmbeddingType::Binary => json!(binary(v)),
        EmbeddingType::Ubinary => json!(ubinary(v)),
        EmbeddingType::Base64 => Value::String(base64_f32(v)),
    })
}

/// Every vector in type `ty`.
pub fn render_all(
    vectors: &[Vec<f32>],
    ty: EmbeddingType,
    ranges: Option<&Ranges>,
) -> Result<Value, QuantizeError> {
    Ok(Value::Array(
        vectors
            .iter()
            .map(|v| render(v, ty, ranges))
            .collect::<Result<_, _>>()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_packs_msb_first_and_pads() {
        let v = [1.0, -1.0, 0.0, 2.0, 0.5, -0.1, 0.0, 3.0, 0.2];
        // bits 1001 1001 | 1000 0000
        assert_eq!(ubinary(&v), vec![0b1001_1001, 0b1000_0000]);
        assert_eq!(binary(&v), vec![(0b1001_1001u8 as i16 - 128) as i8, 0]);
        assert_eq!(binary(&[-1.0; 8]), vec![-128]);
        assert_eq!(binary(&[1.0; 8]), vec![127]);
    }

    #[test]
    fn int8_and_uint8_follow_the_ranges() {
        let r = Ranges {
            min: vec![-1.0, 0.0, 0.0],
            max: vec![1.0, 255.0, 0.0],
        };
        // step f32(2/255): 0 → 127.49999 → 127.
        let u = uint8(&[0.0, 100.7, 5.0], Some(&r)).unwrap();
        assert_eq!(u, vec![127, 100, 0]);
        // int8 subtracts 128 before truncating toward zero: 127.5 - 128 = -0.5 → 0.
        let i = int8(&[0.0, 100.7, 5.0], Some(&r)).unwrap();
        assert_eq!(i, vec![0, -27, 0]);
        // Out of range saturates.
        assert_eq!(
            uint8(&[-5.0, 999.0, 0.0], Some(&r)).unwrap(),
            vec![0, 255, 0]
        );
        assert_eq!(
            int8(&[-5.0, 999.0, 0.0], Some(&r)).unwrap(),
            vec![-128, 127, 0]
        );
        assert_eq!(
            uint8(&[0.0], Some(&r)).unwrap_err(),
            QuantizeError::Width {
                ranges: 3,
                vector: 1
            }
        );
    }

    #[test]
    fn default_range_is_symmetric_per_vector() {
        let v = [0.5, -0.25, 0.0, -0.5];
        // m = 0.5, step = f32(1/255), a hair above 1/255: 1.0 / step = 254.99998 → 254, as
        // numpy computes it.
        assert_eq!(uint8(&v, None).unwrap(), vec![254, 63, 127, 0]);
        assert_eq!(int8(&v, None).unwrap(), vec![126, -64, 0, -128]);
        assert_eq!(uint8(&[0.0, 0.0], None).unwrap(), vec![0, 0]);
        assert_eq!(int8(&[0.0, 0.0], None).unwrap(), vec![0, 0]);
    }

    #[test]
    fn ranges_files_in_both_shapes() {
        let a = Ranges::parse("[[-1, 0.5], [1, 2]]").unwrap();
        let b = Ranges::parse(r#"{"min": [-1, 0.5], "max": [1, 2]}"#).unwrap();
        assert_eq!(a, b);
        assert!(Ranges::parse("[[1], [0]]").is_err());
        assert!(Ranges::parse("[[1, 2], [3]]").is_err());
        assert!(Ranges::parse("[]").is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(
            render(&[1.0, -2.0], EmbeddingType::Float, None).unwrap(),
            json!([1.0, -2.0])
        );
        assert_eq!(
            EmbeddingType::parse("ubinary"),
            Some(EmbeddingType::Ubinary)
        );
        assert_eq!(EmbeddingType::parse("int4"), None);
    }
}
