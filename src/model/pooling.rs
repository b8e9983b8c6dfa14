//! Pooling (token vectors to one vector) on the device, and the host-side finishing steps that
//! depend on the request: Matryoshka truncation and L2 normalisation.

use candle_core::{DType, Tensor};
use serde::Deserialize;

use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    Cls,
    Mean,
    LastToken,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::LastToken => "last-token",
        }
    }
}

impl From<crate::config::PoolingArg> for Pooling {
    fn from(p: crate::config::PoolingArg) -> Self {
        match p {
            crate::config::PoolingArg::Cls => Pooling::Cls,
            crate::config::PoolingArg::Mean => Pooling::Mean,
            crate::config::PoolingArg::LastToken => Pooling::LastToken,
        }
    }
}

/// Pools packed hidden states `[total_tokens, hidden]` of sequences laid end to end
/// (`offsets[i]..offsets[i+1]`) into `[n, hidden]` F32.
///
/// Mean pooling is a matrix product with a `[n, total_tokens]` averaging matrix built on the
/// host: one kernel on any device instead of one slice per sequence.
pub fn pool_packed(
    hidden: &Tensor,
    offsets: &[usize],
    pooling: Pooling,
) -> Result<Tensor, ModelError> {
    let n = offsets.len().saturating_sub(1);
    let total = offsets.last().copied().unwrap_or(0);
    let device = hidden.device();
    let pooled = match pooling {
        Pooling::Cls | Pooling::LastToken => {
            let rows: Vec<u32> = (0..n)
                .map(|i| {
                    if pooling == Pooling::Cls {
                        offsets[i] as u32
                    } else {
                        (offsets[i + 1] - 1) as u32
                    }
                })
                .collect();
            let idx = Tensor::from_vec(rows, n, device)?;
            hidden.index_select(&idx, 0)?.to_dtype(DType::F32)?
        }
        Pooling::Mean => {
            let mut weights = vec![0f32; n * total];
            for i in 0..n {
                let len = (offsets[i + 1] - offsets[i]).max(1);
                let w = 1.0 / len as f32;
                weights[i * total + offsets[i]..i * total + offsets[i + 1]].fill(w);
            }
            let avg = Tensor::from_vec(weights, (n, total), device)?;
            // Accumulate in F32 even for F16 activations: sums over 512 tokens lose digits in F16.
            avg.matmul(&hidden.to_dtype(DType::F32)?)?
        }
    };
    Ok(pooled)
}

/// Pools packed host hidden states `[total_tokens, hidden]` (row-major) into one vector per
/// sequence; the CPU path's counterpart of [`pool_packed`].
pub fn pool_host(hidden: &[f32], h: usize, offsets: &[usize], pooling: Pooling) -> Vec<Vec<f32>> {
    offsets
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0], w[1]);
            match pooling {
                Pooling::Cls => hidden[start * h..(start + 1) * h].to_vec(),
                Pooling::LastToken => hidden[(end - 1) * h..end * h].to_vec(),
                Pooling::Mean => {
                    let mut acc = vec![0f32; h];
                    for row in hidden[start * h..end * h].chunks_exact(h) {
                        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    let n = (end - start).max(1) as f32;
                    acc.iter_mut().for_each(|a| *a /= n);
                    acc
                }
            }
        })
        .collect()
}

/// Truncates to `dimensions` (Matryoshka) and then L2-normalises if asked, in place.
pub fn finish_embedding(mut v: Vec<f32>, dimensions: Option<usize>, normalize: bool) -> Vec<f32> {
    if let Some(d) = dimensions {
        v.truncate(d);
    }
    if normalize {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn hidden() -> Tensor {
        // Two sequences: 2 tokens then 3 tokens, hidden 2.
        let data = vec![1f32, 2., 3., 4., 10., 10., 20., 20., 30., 60.];
        Tensor::from_vec(data, (5, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn cls_mean_last_token_pick_the_right_rows() {
        let h = hidden();
        let offsets = [0, 2, 5];
        let cls = pool_packed(&h, &offsets, Pooling::Cls).unwrap();
        assert_eq!(
            cls.to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.], vec![10., 10.]]
        );
        let last = pool_packed(&h, &offsets, Pooling::LastToken).unwrap();
        assert_eq!(
            last.to_vec2::<f32>().unwrap(),
            vec![vec![3., 4.], vec![30., 60.]]
        );
        let mean = pool_packed(&h, &offsets, Pooling::Mean).unwrap();
        assert_eq!(
            mean.to_vec2::<f32>().unwrap(),
            vec![vec![2., 3.], vec![20., 30.]]
        );
    }

    #[test]
    fn host_pooling_matches_device_pooling() {
        let h = hidden();
        let host: Vec<f32> = h.flatten_all().unwrap().to_vec1().unwrap();
        let offsets = [0, 2, 5];
        for p in [Pooling::Cls, Pooling::Mean, Pooling::LastToken] {
            let dev = pool_packed(&h, &offsets, p)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(pool_host(&host, 2, &offsets, p), dev, "{p:?}");
        }
    }

    #[test]
    fn matryoshka_truncates_before_normalising() {
        let v = finish_embedding(vec![3.0, 4.0, 12.0], Some(2), true);
        assert_eq!(v, vec![0.6, 0.8]);
        let raw = finish_embedding(vec![3.0, 4.0, 12.0], None, false);
        assert_eq!(raw, vec![3.0, 4.0, 12.0]);
        let zero = finish_embedding(vec![0.0, 0.0], None, true);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}
