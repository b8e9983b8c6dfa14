//! The relative position bias (MPNet) as the attention kernels read it: a per-distance table
//! `[heads, 2 R + 1]` (R = `max_distance`), entry `h, (j - i) + R`, built on the host from the
//! checkpoint's `[buckets, heads]` table with the reference backend's own bucket function
//! ([`Buckets::bucket`]), so both backends add the same bias at every distance.
//!
//! Exact, not an approximation: every distance of `max_distance` or more is in the last bucket
//! of its direction, which is what the kernels' clamp to ±R reads.

use crate::model::layers::Buckets;

/// `table` is `[num_buckets, heads]` (row-major, as MPNet stores
/// `relative_attention_bias.weight`); returns `[heads, 2 * max_distance + 1]`.
pub fn per_distance(table: &[f32], heads: usize, buckets: Buckets) -> Result<Vec<f32>, String> {
    let nb = buckets.num_buckets;
    if table.len() != nb * heads || heads == 0 {
        return Err(format!(
            "relative bias table has {} values, expected {nb} buckets x {heads} heads",
            table.len()
        ));
    }
    if nb < 4 || buckets.max_distance < nb / 4 || buckets.max_distance > 1 << 20 {
        return Err(format!(
            "unsupported relative bias: {nb} buckets, max distance {}",
            buckets.max_distance
        ));
    }
    let r = buckets.max_distance as i64;
    let w = 2 * buckets.max_distance + 1;
    let mut out = vec![0f32; heads * w];
    for k in 0..w {
        let b = buckets.bucket(k as i64 - r);
        if b >= nb {
            return Err(format!("bucket {b} out of {nb}"));
        }
        for h in 0..heads {
            out[h * w + k] = table[b * heads + h];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernels read: the entry at the distance clamped to ±R.
    fn lookup(t: &[f32], r: usize, h: usize, rel: i64) -> f32 {
        let idx = rel.clamp(-(r as i64), r as i64) + r as i64;
        t[h * (2 * r + 1) + idx as usize]
    }

    #[test]
    fn every_distance_reads_the_reference_bucket() {
        let b = Buckets {
            num_buckets: 32,
            max_distance: 128,
        };
        let heads = 3;
        // Distinct values per (bucket, head).
        let table: Vec<f32> = (0..32 * heads).map(|i| i as f32).collect();
        let t = per_distance(&table, heads, b).unwrap();
        assert_eq!(t.len(), heads * 257);
        for rel in -1000i64..=1000 {
            for h in 0..heads {
                let want = table[b.bucket(rel) * heads + h];
                assert_eq!(lookup(&t, 128, h, rel), want, "rel {rel} head {h}");
            }
        }
    }

    #[test]
    fn agrees_with_the_kernel_reference_buckets_for_mpnet() {
        // The kernels' own reference (F32 log like PyTorch) and the reference backend's
        // bucket function (F64 log) give the same bucket for MPNet's parameters.
        use crate::model::cuda::oracle::attention::t5_bucket;
        let b = Buckets {
            num_buckets: 32,
            max_distance: 128,
        };
        for rel in -600i64..=600 {
            assert_eq!(b.bucket(rel), t5_bucket(rel, 32, 128), "rel {rel}");
        }
    }

    #[test]
    fn bad_tables_are_refused() {
        let b = Buckets {
            num_buckets: 32,
            max_distance: 128,
        };
        assert!(per_distance(&[0.0; 10], 4, b).is_err());
        let tiny = Buckets {
            num_buckets: 32,
            max_distance: 2,
        };
        assert!(per_distance(&[0.0; 64], 2, tiny).is_err());
    }
}
