//! The GPUs plan sizes for: one row per card or MIG profile, the figures a plan needs and the
//! cloud node types that carry the card.
//!
//! Sources, per figure:
//! - memory: what `nvidia-smi` reports as total (ECC on, as clouds ship them); for MIG profiles
//!   what `nvidia-smi mig -lgip` reports for the profile (the smallest figure across driver
//!   releases, which move it by a few hundred MiB);
//! - peaks: dense (no 2:4 sparsity) FP16 and BF16 tensor-core TFLOP/s from NVIDIA's datasheets
//!   (their headline figures for A100 and later are with sparsity: halved here); the A10G has no
//!   NVIDIA datasheet and takes the figure AWS-facing comparisons give;
//! - MIG: NVIDIA's MIG user guide profile tables; a profile gets `slices / 7` of its card's
//!   compute and its own memory, isolated: no time-slicing on it;
//! - node types: the providers' GPU instance pages (a GPU count after a type when it is not one).

use serde::Serialize;

use super::{DTypeArg, MIB};

/// A MIG profile: part of a card, with its own memory and `compute_slices` of 7.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mig {
    /// NVIDIA's profile name, e.g. `1g.10gb` (the node's `nvidia.com/mig-1g.10gb` resource).
    pub profile: &'static str,
    /// `--gpu` name of the whole card.
    pub parent: &'static str,
    pub compute_slices: u32,
}

/// Cloud node (instance) types that carry a card; empty where the provider has none.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Nodes {
    pub aws: &'static [&'static str],
    pub gcp: &'static [&'static str],
    pub azure: &'static [&'static str],
}

/// One row of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gpu {
    /// The `--gpu` value.
    pub id: &'static str,
    /// Other spellings `--gpu` accepts.
    #[serde(skip)]
    pub aliases: &'static [&'static str],
    pub name: &'static str,
    pub memory_mib: u64,
    /// Dense FP16 tensor-core rate, TFLOP/s (a MIG profile's share of its card's).
    pub fp16_tflops: f64,
    /// Dense BF16 tensor-core rate; None: the card has no BF16 (Turing).
    pub bf16_tflops: Option<f64>,
    pub mig: Option<Mig>,
    pub nodes: Nodes,
}

const NONE: &[&str] = &[];

// Dense tensor peaks, TFLOP/s, from the datasheets.
const T4_FP16: f64 = 65.0; // "Mixed Precision (FP16/FP32) 65 TFLOPS"; no BF16
const A10_FP16: f64 = 125.0; // "BF16/FP16 Tensor Core 125 | 250*" (* sparsity)
const A10G_FP16: f64 = 70.0; // no NVIDIA datasheet: half the A10's per-SM tensor rate
const L4_FP16: f64 = 121.0; // "FP16/BF16 Tensor Core 242*" with sparsity
const L40S_FP16: f64 = 362.05; // "BF16/FP16 Tensor Core 362.05 | 733*"
const A100_FP16: f64 = 312.0; // "BF16/FP16 Tensor Core 312 | 624*" (40 and 80 GB, SXM and PCIe)
const H100_FP16: f64 = 989.5; // H100 SXM "BF16/FP16 Tensor Core 1,979*" with sparsity
const H200_FP16: f64 = 989.5; // H200 SXM, the same GH100 compute as the H100 SXM
const B200_FP16: f64 = 2250.0; // HGX B200 "FP16/BF16 36 PFLOPS*" for 8 GPUs with sparsity

// Node types, shared by a card's MIG profiles.
const T4_NODES: Nodes = Nodes {
    aws: &[
        "g4dn.xlarge",
        "g4dn.2xlarge",
        "g4dn.4xlarge",
        "g4dn.8xlarge",
        "g4dn.16xlarge",
        "g4dn.12xlarge (4)",
        "g4dn.metal (8)",
    ],
    gcp: &["n1-standard-4 (or any N1) + nvidia-tesla-t4 (1, 2 or 4)"],
    azure: &[
        "Standard_NC4as_T4_v3",
        "Standard_NC8as_T4_v3",
        "Standard_NC16as_T4_v3",
        "Standard_NC64as_T4_v3 (4)",
    ],
};
const A10_NODES: Nodes = Nodes {
    aws: NONE,
    gcp: NONE,
    // NV6/12/18ads_A10_v5 carry a sixth, a third or half of an A10 (vGPU), not a whole card.
    azure: &["Standard_NV36ads_A10_v5", "Standard_NV72ads_A10_v5 (2)"],
};
const A10G_NODES: Nodes = Nodes {
    aws: &[
        "g5.xlarge",
        "g5.2xlarge",
        "g5.4xlarge",
        "g5.8xlarge",
        "g5.16xlarge",
        "g5.12xlarge (4)",
        "g5.24xlarge (4)",
        "g5.48xlarge (8)",
    ],
    gcp: NONE,
    azure: NONE,
};
const L4_NODES: Nodes = Nodes {
    aws: &[
        "g6.xlarge",
        "g6.2xlarge",
        "g6.4xlarge",
        "g6.8xlarge",
        "g6.16xlarge",
        "gr6.4xlarge",
        "gr6.8xlarge",
        "g6.12xlarge (4)",
        "g6.24xlarge (4)",
        "g6.48xlarge (8)",
    ],
    gcp: &[
        "g2-standard-4",
        "g2-standard-8",
        "g2-standard-12",
        "g2-standard-16",
        "g2-standard-32",
        "g2-standard-24 (2)",
        "g2-standard-48 (4)",
        "g2-standard-96 (8)",
    ],
    azure: NONE,
};
const L40S_NODES: Nodes = Nodes {
    aws: &[
        "g6e.xlarge",
        "g6e.2xlarge",
        "g6e.4xlarge",
        "g6e.8xlarge",
        "g6e.16xlarge",
        "g6e.12xlarge (4)",
        "g6e.24xlarge (4)",
        "g6e.48xlarge (8)",
    ],
    gcp: NONE,
    azure: NONE,
};
const A100_40_NODES: Nodes = Nodes {
    aws: &["p4d.24xlarge (8)"],
    gcp: &[
        "a2-highgpu-1g",
        "a2-highgpu-2g (2)",
        "a2-highgpu-4g (4)",
        "a2-highgpu-8g (8)",
        "a2-megagpu-16g (16)",
    ],
    azure: &["Standard_ND96asr_v4 (8)"],
};
const A100_80_NODES: Nodes = Nodes {
    aws: &["p4de.24xlarge (8)"],
    gcp: &[
        "a2-ultragpu-1g",
        "a2-ultragpu-2g (2)",
        "a2-ultragpu-4g (4)",
        "a2-ultragpu-8g (8)",
    ],
    azure: &[
        "Standard_NC24ads_A100_v4 (PCIe)",
        "Standard_NC48ads_A100_v4 (2, PCIe)",
        "Standard_NC96ads_A100_v4 (4, PCIe)",
        "Standard_ND96amsr_A100_v4 (8)",
    ],
};
const H100_NODES: Nodes = Nodes {
    aws: &["p5.4xlarge", "p5.48xlarge (8)"],
    gcp: &[
        "a3-highgpu-1g",
        "a3-highgpu-2g (2)",
        "a3-highgpu-4g (4)",
        "a3-highgpu-8g (8)",
        "a3-megagpu-8g (8)",
        "a3-edgegpu-8g (8)",
    ],
    azure: &["Standard_ND96isr_H100_v5 (8)"],
};
const H200_NODES: Nodes = Nodes {
    aws: &["p5e.48xlarge (8)", "p5en.48xlarge (8)"],
    gcp: &["a3-ultragpu-8g (8)"],
    azure: &["Standard_ND96isr_H200_v5 (8)"],
};
const B200_NODES: Nodes = Nodes {
    aws: &["p6-b200.48xlarge (8)"],
    gcp: &["a4-highgpu-8g (8)"],
    // Azure's Blackwell VMs (ND GB200 v6) carry GB200 superchips, not this HGX card.
    azure: NONE,
};

/// A whole card.
const fn card(
    id: &'static str,
    aliases: &'static [&'static str],
    name: &'static str,
    memory_mib: u64,
    fp16_tflops: f64,
    bf16: bool,
    nodes: Nodes,
) -> Gpu {
    Gpu {
        id,
        aliases,
        name,
        memory_mib,
        fp16_tflops,
        bf16_tflops: if bf16 { Some(fp16_tflops) } else { None },
        mig: None,
        nodes,
    }
}

/// A MIG profile of the card `parent` (whose dense peak is `card_tflops`).
#[allow(clippy::too_many_arguments)]
const fn mig(
    id: &'static str,
    aliases: &'static [&'static str],
    name: &'static str,
    parent: &'static str,
    profile: &'static str,
    compute_slices: u32,
    memory_mib: u64,
    card_tflops: f64,
    nodes: Nodes,
) -> Gpu {
    let share = card_tflops * compute_slices as f64 / 7.0;
    Gpu {
        id,
        aliases,
        name,
        memory_mib,
        fp16_tflops: share,
        bf16_tflops: Some(share),
        mig: Some(Mig {
            profile,
            parent,
            compute_slices,
        }),
        nodes,
    }
}

/// Every card and MIG profile `--gpu` accepts. MIG memory is `nvidia-smi mig -lgip`'s GiB
/// figure in MiB (4.75 GiB = 4864 MiB).
#[rustfmt::skip]
pub const CATALOGUE: &[Gpu] = &[
    card("t4", &[], "NVIDIA T4", 15_109, T4_FP16, false, T4_NODES),
    card("a10", &[], "NVIDIA A10", 23_028, A10_FP16, true, A10_NODES),
    card("a10g", &[], "NVIDIA A10G", 23_028, A10G_FP16, true, A10G_NODES),
    card("l4", &[], "NVIDIA L4", 23_034, L4_FP16, true, L4_NODES),
    card("l40s", &[], "NVIDIA L40S", 46_068, L40S_FP16, true, L40S_NODES),
    card("a100-40gb", &[], "NVIDIA A100 40GB", 40_960, A100_FP16, true, A100_40_NODES),
    card("a100-80gb", &[], "NVIDIA A100 80GB", 81_920, A100_FP16, true, A100_80_NODES),
    card("h100-80gb", &["h100"], "NVIDIA H100 80GB", 81_559, H100_FP16, true, H100_NODES),
    card("h200", &["h200-141gb"], "NVIDIA H200", 143_771, H200_FP16, true, H200_NODES),
    card("b200", &["b200-180gb"], "NVIDIA B200", 183_359, B200_FP16, true, B200_NODES),
    // A100-SXM4-40GB profiles.
    mig("a100-40gb-1g.5gb", &[], "NVIDIA A100 40GB MIG 1g.5gb", "a100-40gb", "1g.5gb", 1, 4_864, A100_FP16, A100_40_NODES),
    mig("a100-40gb-1g.10gb", &[], "NVIDIA A100 40GB MIG 1g.10gb", "a100-40gb", "1g.10gb", 1, 9_856, A100_FP16, A100_40_NODES),
    mig("a100-40gb-2g.10gb", &[], "NVIDIA A100 40GB MIG 2g.10gb", "a100-40gb", "2g.10gb", 2, 9_856, A100_FP16, A100_40_NODES),
    mig("a100-40gb-3g.20gb", &[], "NVIDIA A100 40GB MIG 3g.20gb", "a100-40gb", "3g.20gb", 3, 19_968, A100_FP16, A100_40_NODES),
    mig("a100-40gb-4g.20gb", &[], "NVIDIA A100 40GB MIG 4g.20gb", "a100-40gb", "4g.20gb", 4, 19_968, A100_FP16, A100_40_NODES),
    mig("a100-40gb-7g.40gb", &[], "NVIDIA A100 40GB MIG 7g.40gb", "a100-40gb", "7g.40gb", 7, 40_192, A100_FP16, A100_40_NODES),
    // A100-SXM4-80GB profiles.
    mig("a100-80gb-1g.10gb", &[], "NVIDIA A100 80GB MIG 1g.10gb", "a100-80gb", "1g.10gb", 1, 9_728, A100_FP16, A100_80_NODES),
    mig("a100-80gb-1g.20gb", &[], "NVIDIA A100 80GB MIG 1g.20gb", "a100-80gb", "1g.20gb", 1, 19_968, A100_FP16, A100_80_NODES),
    mig("a100-80gb-2g.20gb", &[], "NVIDIA A100 80GB MIG 2g.20gb", "a100-80gb", "2g.20gb", 2, 19_968, A100_FP16, A100_80_NODES),
    mig("a100-80gb-3g.40gb", &[], "NVIDIA A100 80GB MIG 3g.40gb", "a100-80gb", "3g.40gb", 3, 40_192, A100_FP16, A100_80_NODES),
    mig("a100-80gb-4g.40gb", &[], "NVIDIA A100 80GB MIG 4g.40gb", "a100-80gb", "4g.40gb", 4, 40_192, A100_FP16, A100_80_NODES),
    mig("a100-80gb-7g.80gb", &[], "NVIDIA A100 80GB MIG 7g.80gb", "a100-80gb", "7g.80gb", 7, 80_896, A100_FP16, A100_80_NODES),
    // H100 80GB (SXM5) profiles.
    mig("h100-80gb-1g.10gb", &["h100-1g.10gb"], "NVIDIA H100 80GB MIG 1g.10gb", "h100-80gb", "1g.10gb", 1, 9_856, H100_FP16, H100_NODES),
    mig("h100-80gb-1g.20gb", &["h100-1g.20gb"], "NVIDIA H100 80GB MIG 1g.20gb", "h100-80gb", "1g.20gb", 1, 20_096, H100_FP16, H100_NODES),
    mig("h100-80gb-2g.20gb", &["h100-2g.20gb"], "NVIDIA H100 80GB MIG 2g.20gb", "h100-80gb", "2g.20gb", 2, 20_096, H100_FP16, H100_NODES),
    mig("h100-80gb-3g.40gb", &["h100-3g.40gb"], "NVIDIA H100 80GB MIG 3g.40gb", "h100-80gb", "3g.40gb", 3, 40_448, H100_FP16, H100_NODES),
    mig("h100-80gb-4g.40gb", &["h100-4g.40gb"], "NVIDIA H100 80GB MIG 4g.40gb", "h100-80gb", "4g.40gb", 4, 40_448, H100_FP16, H100_NODES),
    mig("h100-80gb-7g.80gb", &["h100-7g.80gb"], "NVIDIA H100 80GB MIG 7g.80gb", "h100-80gb", "7g.80gb", 7, 81_152, H100_FP16, H100_NODES),
];

impl Gpu {
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * MIB
    }

    /// The dense tensor peak at `dtype` (float32 runs on the same tensor cores as TF32 at
    /// best: the FP16 figure stays an upper bound).
    pub fn peak_tflops(&self, dtype: DTypeArg) -> f64 {
        match dtype {
            DTypeArg::Bfloat16 => self.bf16_tflops.unwrap_or(self.fp16_tflops),
            DTypeArg::Float16 | DTypeArg::Float32 => self.fp16_tflops,
        }
    }

    /// The extended resource a pod requests: a whole GPU, or a MIG profile as the NVIDIA device
    /// plugin advertises it under the `mixed` MIG strategy.
    pub fn resource(&self) -> String {
        match &self.mig {
            Some(m) => format!("nvidia.com/mig-{}", m.profile),
            None => "nvidia.com/gpu".to_string(),
        }
    }

    /// The node types, one line: `AWS a, b; GCP c; Azure none`.
    pub fn nodes_line(&self) -> String {
        format!(
            "AWS {}; GCP {}; Azure {}",
            node_list(self.nodes.aws),
            node_list(self.nodes.gcp),
            node_list(self.nodes.azure)
        )
    }
}

/// One provider's node types for people: comma separated, or `none`.
pub fn node_list(v: &[&str]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// What a plan says of its GPU (the `gpu` object of `--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct GpuSpec {
    /// The `--gpu` value.
    pub id: &'static str,
    pub name: &'static str,
    /// Memory as `nvidia-smi` reports it (a MIG profile's own).
    pub memory_bytes: u64,
    pub fp16_tflops: f64,
    /// None: no BF16 on this card.
    pub bf16_tflops: Option<f64>,
    /// The dense peak at the plan's dtype (what the throughput estimate uses).
    pub peak_tflops: f64,
    pub mig: Option<Mig>,
    /// The extended resource a pod requests.
    pub resource: String,
    pub nodes: Nodes,
}

impl GpuSpec {
    pub fn new(g: &Gpu, dtype: DTypeArg) -> Self {
        Self {
            id: g.id,
            name: g.name,
            memory_bytes: g.memory_bytes(),
            fp16_tflops: g.fp16_tflops,
            bf16_tflops: g.bf16_tflops,
            peak_tflops: g.peak_tflops(dtype),
            mig: g.mig,
            resource: g.resource(),
            nodes: g.nodes,
        }
    }
}

/// The row `--gpu` names (case-insensitive, ids or aliases).
pub fn find(name: &str) -> Option<&'static Gpu> {
    let want = name.trim().to_ascii_lowercase();
    CATALOGUE
        .iter()
        .find(|g| g.id == want || g.aliases.contains(&want.as_str()))
}

/// Every valid `--gpu` id, comma separated (for errors).
pub fn ids() -> String {
    CATALOGUE
        .iter()
        .map(|g| g.id)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--gpu list`: the catalogue as a table.
pub fn render_list() -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:>10} {:>9} {:>9}  {:<24} node types",
        "--gpu", "memory", "FP16 TF", "BF16 TF", "resource"
    );
    for g in CATALOGUE {
        let _ = writeln!(
            s,
            "{:<20} {:>6} MiB {:>9.1} {:>9}  {:<24} {}",
            g.id,
            g.memory_mib,
            g.fp16_tflops,
            g.bf16_tflops
                .map_or("none".to_string(), |t| format!("{t:.1}")),
            g.resource(),
            g.nodes_line()
        );
    }
    let _ = writeln!(
        s,
        "\nPeaks are dense tensor-core TFLOP/s; a MIG profile (<card>-<profile>) has slices/7 of \
         its card's and its own memory, and is requested as nvidia.com/mig-<profile> (the NVIDIA \
         device plugin's mixed strategy)."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_row_has_positive_figures_and_node_types() {
        for g in CATALOGUE {
            assert!(g.memory_mib > 0, "{}", g.id);
            assert!(g.fp16_tflops > 0.0, "{}", g.id);
            assert!(g.bf16_tflops.is_none_or(|t| t > 0.0), "{}", g.id);
            let n = &g.nodes;
            assert!(
                !(n.aws.is_empty() && n.gcp.is_empty() && n.azure.is_empty()),
                "{} has no node type",
                g.id
            );
        }
    }

    #[test]
    fn only_the_t4_lacks_bf16() {
        let no_bf16: Vec<_> = CATALOGUE
            .iter()
            .filter(|g| g.bf16_tflops.is_none())
            .map(|g| g.id)
            .collect();
        assert_eq!(no_bf16, ["t4"]);
    }

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = HashSet::new();
        for g in CATALOGUE {
            for n in std::iter::once(&g.id).chain(g.aliases) {
                assert!(seen.insert(*n), "{n} twice");
                assert_eq!(find(n).map(|f| f.id), Some(g.id));
                assert_eq!(find(&n.to_ascii_uppercase()).map(|f| f.id), Some(g.id));
            }
        }
        assert!(find("v100").is_none());
        assert!(find("").is_none());
    }

    #[test]
    fn mig_profiles_fit_inside_their_card() {
        for g in CATALOGUE {
            let Some(m) = g.mig else { continue };
            let parent = find(m.parent).expect("the parent card is catalogued");
            assert!(parent.mig.is_none(), "{}", g.id);
            assert!(g.memory_mib <= parent.memory_mib, "{}", g.id);
            assert!((1..=7).contains(&m.compute_slices), "{}", g.id);
            let share = parent.fp16_tflops * m.compute_slices as f64 / 7.0;
            assert!((g.fp16_tflops - share).abs() < 1e-9, "{}", g.id);
            assert!(g.fp16_tflops <= parent.fp16_tflops, "{}", g.id);
            // NVIDIA's names: <slices>g.<memory>gb, and the id is <card>-<profile>.
            assert!(
                m.profile.starts_with(&format!("{}g.", m.compute_slices)),
                "{}",
                g.id
            );
            assert_eq!(g.id, format!("{}-{}", m.parent, m.profile));
            // The profile's nominal GB is within 15 % of what the driver gives it.
            let nominal: f64 = m
                .profile
                .split('.')
                .nth(1)
                .and_then(|s| s.strip_suffix("gb"))
                .and_then(|s| s.parse().ok())
                .expect("profile memory");
            let gb = g.memory_bytes() as f64 / 1e9;
            assert!(
                (nominal * 0.85..nominal * 1.15).contains(&gb),
                "{}: {gb}",
                g.id
            );
            assert_eq!(g.nodes, parent.nodes, "{}", g.id);
            assert_eq!(g.resource(), format!("nvidia.com/mig-{}", m.profile));
        }
    }

    #[test]
    fn the_asked_for_cards_and_profiles_are_there() {
        for id in [
            "t4",
            "a10",
            "a10g",
            "l4",
            "l40s",
            "a100-40gb",
            "a100-80gb",
            "h100-80gb",
            "h200",
            "b200",
            "a100-40gb-1g.5gb",
            "a100-40gb-2g.10gb",
            "a100-40gb-3g.20gb",
            "a100-40gb-7g.40gb",
            "a100-80gb-1g.10gb",
            "a100-80gb-2g.20gb",
            "a100-80gb-3g.40gb",
            "a100-80gb-7g.80gb",
            "h100-80gb-1g.10gb",
            "h100-80gb-1g.20gb",
            "h100-80gb-2g.20gb",
            "h100-80gb-3g.40gb",
            "h100-80gb-4g.40gb",
            "h100-80gb-7g.80gb",
            "h100-1g.10gb",
        ] {
            assert!(find(id).is_some(), "{id}");
        }
        assert_eq!(
            find("a10g").map(|g| g.resource()).as_deref(),
            Some("nvidia.com/gpu")
        );
        assert!(render_list().contains("h100-80gb-1g.10gb"));
    }
}
