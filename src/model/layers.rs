//! The seam between model families and backends.
//!
//! A family (`families/*.rs`) is written once, as calls on [`Backend`]: load its weights into
//! the backend's types, then run the forward pass as embed → per layer (linear with an
//! epilogue, attention, linear, linear) → head. A backend (`cpu/` native F32 kernels,
//! `reference/` candle ops on any device and dtype, `cuda/` fused kernels) implements each
//! layer as fast as it can: the native CPU backend applies a linear layer's whole epilogue
//! (bias, activation, residual, norm) to each block of output rows while it is in cache; the
//! reference backend keeps attention per length bucket with the padding mask folded into Q·Kᵀ.
//!
//! Everything runs on **packed** activations: the tokens of every sequence of a device batch
//! laid end to end, `[tokens, width]`, never padded. The batch's layout (sequence offsets and
//! positions) is the backend's [`Backend::Plan`], made once per forward pass.

use super::batch::PackedBatch;
use super::device::DeviceMemory;
use super::weights::HostTensor;
use super::{ModelError, Pooling};

/// What a linear layer's output goes through after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh,
    Silu,
    Tanh,
    /// `log(1 + relu(x))`: SPLADE's term weights.
    Log1pRelu,
    /// Gated: the output is half as wide; `gate(first half) * second half` (GeGLU, SwiGLU).
    /// Families order the two halves of their weights at load so the gate comes first.
    Glu(Gate),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Gelu,
    GeluTanh,
    Silu,
}

impl Activation {
    /// From a config's `hidden_act` / `hidden_activation` string.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        Ok(match name {
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "activation `{other}` (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu, tanh)"
                )))
            }
        })
    }

    /// The gate of a GLU with this activation.
    pub fn as_gate(self) -> Result<Gate, ModelError> {
        Ok(match self {
            Activation::Gelu => Gate::Gelu,
            Activation::GeluTanh => Gate::GeluTanh,
            Activation::Silu => Gate::Silu,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "a gated MLP with {other:?} (supported gates: gelu, gelu_tanh, silu)"
                )))
            }
        })
    }

    /// Output width for a product `width` wide.
    pub fn out_width(self, width: usize) -> usize {
        match self {
            Activation::Glu(_) => width / 2,
            _ => width,
        }
    }
}

/// What happens after the activation: the skip connection and the norm, in the family's order.
pub enum Post<'a, B: Backend + ?Sized> {
    None,
    /// `y + r` (pre-norm models' residual stream).
    Residual(&'a B::Act),
    /// `norm(y)`.
    Norm(&'a B::Norm),
    /// `norm(y + r)`: post-norm encoders (BERT).
    ResidualNorm(&'a B::Act, &'a B::Norm),
    /// `r + norm(y)`: Gemma's sandwich norms.
    NormResidual(&'a B::Norm, &'a B::Act),
}

/// `post(activation(x · Wᵀ + b))`.
pub struct Epilogue<'a, B: Backend + ?Sized> {
    pub activation: Activation,
    pub post: Post<'a, B>,
}

impl<'a, B: Backend + ?Sized> Epilogue<'a, B> {
    pub fn plain() -> Self {
        Self {
            activation: Activation::None,
            post: Post::None,
        }
    }

    pub fn act(activation: Activation) -> Self {
        Self {
            activation,
            post: Post::None,
        }
    }

    pub fn post(post: Post<'a, B>) -> Self {
        Self {
            activation: Activation::None,
            post,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * w (+ b)`.
    Layer { eps: f32 },
    /// `x / sqrt(mean(x²) + eps) * w`; `offset` 1 for Gemma's `(1 + w)`.
    Rms { eps: f32, offset: f32 },
}

/// Which keys a query sees: key `j` of query `i` (positions in the same sequence) when
/// `i - left <= j <= i + right`; `None` is unbounded. Causal is `right = Some(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mask {
    pub left: Option<usize>,
    pub right: Option<usize>,
}

impl Mask {
    pub const FULL: Mask = Mask {
        left: None,
        right: None,
    };

    pub fn causal(window: Option<usize>) -> Self {
        Mask {
            left: window,
            right: Some(0),
        }
    }

    /// ±`half` around the query (ModernBERT's local layers).
    pub fn window(half: usize) -> Self {
        Mask {
            left: Some(half),
            right: Some(half),
        }
    }

    pub fn is_full(&self) -> bool {
        self.left.is_none() && self.right.is_none()
    }

    /// Keys `lo..hi` of query `i` in a sequence of `len` tokens.
    pub fn keys(&self, i: usize, len: usize) -> (usize, usize) {
        let lo = self.left.map_or(0, |l| i.saturating_sub(l));
        let hi = self.right.map_or(len, |r| (i + r + 1).min(len));
        (lo, hi)
    }
}

/// Rotary position embedding: angle `position * inv_freq[k]` on the first `rotary_dim`
/// features of each query and key head, computed on the host from the config (scaling rules
/// included) so every backend rotates alike.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub rotary_dim: usize,
    /// GPT-J pairs (2k, 2k+1) instead of NeoX halves (k, k + dim/2).
    pub interleaved: bool,
    /// Multiplies cos and sin (YaRN's attention factor); 1 otherwise.
    pub scaling: f32,
    /// Per-sequence base for sequences longer than the trained length (NomicBERT v1.5).
    pub dynamic: Option<DynamicNtk>,
}

/// Dynamic NTK scaling: a sequence of `len > trained` tokens rotates with the base
/// `base * (factor * len / trained - (factor - 1))^(dim / (dim - 2))`, as the model computes
/// it for that input alone (so a batch's outputs do not depend on its other inputs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynamicNtk {
    pub base: f64,
    pub factor: f64,
    pub trained: usize,
}

impl Rope {
    /// `1 / base^(2k/dim)` for `k < dim/2`.
    pub fn new(base: f64, rotary_dim: usize) -> Self {
        Self {
            inv_freq: Self::frequencies(base, rotary_dim),
            rotary_dim,
            interleaved: false,
            scaling: 1.0,
            dynamic: None,
        }
    }

    fn frequencies(base: f64, rotary_dim: usize) -> Vec<f32> {
        (0..rotary_dim / 2)
            .map(|k| (1.0 / base.powf(2.0 * k as f64 / rotary_dim as f64)) as f32)
            .collect()
    }

    /// The inverse frequencies a sequence of `len` tokens rotates with.
    pub fn inv_freq_for(&self, len: usize) -> std::borrow::Cow<'_, [f32]> {
        match self.dynamic {
            Some(d) if len > d.trained && self.rotary_dim > 2 => {
                let dim = self.rotary_dim as f64;
                let stretch = d.factor * len as f64 / d.trained as f64 - (d.factor - 1.0);
                let base = d.base * stretch.powf(dim / (dim - 2.0));
                std::borrow::Cow::Owned(Self::frequencies(base, self.rotary_dim))
            }
            _ => std::borrow::Cow::Borrowed(&self.inv_freq),
        }
    }

    /// (cos, sin) tables `[tokens, rotary_dim / 2]` of a packed batch: sequence `i` is
    /// `offsets[i]..offsets[i + 1]`, `positions` each token's. Both backends build theirs here.
    pub fn tables(&self, offsets: &[usize], positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for w in offsets.windows(2) {
            let inv = self.inv_freq_for(w[1] - w[0]);
            for &p in &positions[w[0]..w[1]] {
                for f in inv.iter() {
                    let a = p as f32 * f;
                    cos.push(a.cos() * self.scaling);
                    sin.push(a.sin() * self.scaling);
                }
            }
        }
        (cos, sin)
    }

    /// (cos, sin) of every angle of `position`, each `rotary_dim / 2` long.
    pub fn angles(&self, position: u32) -> impl Iterator<Item = (f32, f32)> + '_ {
        self.inv_freq.iter().map(move |f| {
            let a = position as f32 * f;
            (a.cos() * self.scaling, a.sin() * self.scaling)
        })
    }
}

/// T5-style bucketed relative position bias (MPNet): a `[buckets, heads]` table indexed by
/// the bucket of `key - query`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buckets {
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl Buckets {
    /// The bucket of `relative = key - query` (bidirectional, as T5 / MPNet).
    pub fn bucket(&self, relative: i64) -> usize {
        let half = self.num_buckets / 2;
        let mut ret = if relative > 0 { half } else { 0 };
        let n = relative.unsigned_abs() as usize;
        let max_exact = half / 2;
        if n < max_exact {
            ret += n;
        } else {
            let v = max_exact as f64
                + ((n as f64 / max_exact as f64).ln()
                    / (self.max_distance as f64 / max_exact as f64).ln()
                    * (half - max_exact) as f64);
            // torch truncates toward zero (`.to(torch.long)`).
            ret += (v as usize).min(half - 1);
        }
        ret
    }
}

/// Everything one attention call needs besides the fused QKV activations
/// `[tokens, (heads + 2 * kv_heads) * head_dim]` (queries, then keys, then values).
pub struct Attention<'a, B: Backend + ?Sized> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies Q·Kᵀ (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    pub mask: Mask,
    pub rope: Option<&'a B::Rope>,
    /// Per-head norms of queries and keys before the rotation (Qwen3, Gemma3).
    pub qk_norm: Option<(&'a B::Norm, &'a B::Norm)>,
    /// Added to the scaled scores (MPNet).
    pub bias: Option<&'a B::Bias>,
}

impl<B: Backend + ?Sized> Attention<'_, B> {
    /// Plain bidirectional multi-head attention.
    pub fn full(heads: usize, head_dim: usize) -> Self {
        Self {
            heads,
            kv_heads: heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            mask: Mask::FULL,
            rope: None,
            qk_norm: None,
            bias: None,
        }
    }

    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// A backend: where weights live and how each layer runs.
pub trait Backend: Send + Sync + 'static {
    /// Activations `[rows, width]` on the backend's device.
    type Act: Send;
    /// A loaded linear layer `y = x · Wᵀ + b`.
    type Linear: Send + Sync;
    type Norm: Send + Sync;
    /// An embedding table `[rows, width]`.
    type Table: Send + Sync;
    /// A batch's layout on the device (offsets, positions, attention plan), made once per pass.
    type Plan;
    /// RoPE angles for one plan's tokens.
    type Rope;
    /// A relative position bias table.
    type Bias: Send + Sync;

    /// `native-cpu`, `reference`, `fused-cuda`.
    fn name(&self) -> &'static str;
    /// The activation dtype (`float32`, `float16`, `bfloat16`).
    fn dtype_name(&self) -> &'static str;
    /// Whether a batch costs `inputs x longest input` (then the queue groups similar lengths).
    fn pads_to_longest(&self) -> bool;
    /// Bytes of the weights loaded so far, where the backend counts them; else the model
    /// summary estimates them from the files and the dtype.
    fn weight_bytes(&self) -> Option<usize> {
        None
    }

    /// From `[out_i, in]` matrices stacked along `out` (several for a fused QKV), and their
    /// biases (all or none).
    fn load_linear(
        &self,
        weights: &[HostTensor<'_>],
        bias: Option<&[HostTensor<'_>]>,
    ) -> Result<Self::Linear, ModelError>;
    /// `weight` `[width]` (absent: ones), `bias` `[width]` (absent: zeros).
    fn load_norm(
        &self,
        kind: NormKind,
        width: usize,
        weight: Option<HostTensor<'_>>,
        bias: Option<HostTensor<'_>>,
    ) -> Result<Self::Norm, ModelError>;
    fn load_table(&self, table: HostTensor<'_>) -> Result<Self::Table, ModelError>;
    /// `table` is `[buckets, heads]`.
    fn load_bias(&self, table: HostTensor<'_>, buckets: Buckets) -> Result<Self::Bias, ModelError>;

    fn plan(&self, batch: &PackedBatch) -> Result<Self::Plan, ModelError>;
    fn rope(&self, plan: &Self::Plan, rope: &Rope) -> Result<Self::Rope, ModelError>;

    /// Each token's row: the sum of one row per `(table, ids)` part (ids one per token), times
    /// `scale`, then `norm`.
    fn embed(
        &self,
        plan: &Self::Plan,
        parts: &[(&Self::Table, &[u32])],
        scale: Option<f32>,
        norm: Option<&Self::Norm>,
    ) -> Result<Self::Act, ModelError>;
    fn linear(
        &self,
        x: &Self::Act,
        w: &Self::Linear,
        epilogue: Epilogue<'_, Self>,
    ) -> Result<Self::Act, ModelError>;
    fn norm(&self, x: &Self::Act, norm: &Self::Norm) -> Result<Self::Act, ModelError>;
    /// Self-attention of every sequence over fused QKV (consumed: backends may rotate and
    /// normalise it in place), `[tokens, heads * head_dim]` out.
    fn attention(
        &self,
        qkv: Self::Act,
        plan: &Self::Plan,
        spec: &Attention<'_, Self>,
    ) -> Result<Self::Act, ModelError>;
    /// One row per sequence (`Pooling::Splade` pools like `Max`).
    fn pool(&self, x: &Self::Act, plan: &Self::Plan, how: Pooling)
        -> Result<Self::Act, ModelError>;
    /// Rows `start..end` (a chunk of sequences, for heads too wide to run on a whole batch).
    fn rows(&self, x: &Self::Act, start: usize, end: usize) -> Result<Self::Act, ModelError>;
    /// F32 on the host, row-major; with the width.
    fn to_host(&self, x: &Self::Act) -> Result<(Vec<f32>, usize), ModelError>;

    /// A GPU backend's memory, for the token-budget cap after the warm-up; `None` on the CPU.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
    /// Sizes the activation buffers for batches of up to `tokens` tokens (called once the
    /// budget is known; a no-op for backends that allocate per op).
    fn reserve_tokens(&self, _tokens: usize) -> Result<(), ModelError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_bound_the_keys() {
        assert_eq!(Mask::FULL.keys(3, 10), (0, 10));
        assert_eq!(Mask::causal(None).keys(3, 10), (0, 4));
        assert_eq!(Mask::causal(Some(2)).keys(3, 10), (1, 4));
        assert_eq!(Mask::window(2).keys(0, 10), (0, 3));
        assert_eq!(Mask::window(2).keys(9, 10), (7, 10));
    }

    #[test]
    fn t5_buckets_match_the_reference_table() {
        // MPNet: 32 buckets, max distance 128; values from transformers'
        // MPNetAttention relative_position_bucket for these distances.
        let b = Buckets {
            num_buckets: 32,
            max_distance: 128,
        };
        let want = [
            (-200, 15),
            (-128, 15),
            (-64, 14),
            (-9, 8),
            (-8, 8),
            (-7, 7),
            (-1, 1),
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (20, 26),
            (100, 31),
            (1000, 31),
        ];
        for (rel, bucket) in want {
            assert_eq!(b.bucket(rel), bucket, "relative {rel}");
        }
    }

    #[test]
    fn dynamic_ntk_rescales_only_long_sequences() {
        let mut r = Rope::new(1000.0, 8);
        r.dynamic = Some(DynamicNtk {
            base: 1000.0,
            factor: 2.0,
            trained: 4,
        });
        assert_eq!(&*r.inv_freq_for(4), &r.inv_freq[..]);
        // len 8: base 1000 * (2 * 8 / 4 - 1)^(8 / 6).
        let base = 1000.0 * 3f64.powf(8.0 / 6.0);
        let want = Rope::new(base, 8).inv_freq;
        assert_eq!(&*r.inv_freq_for(8), &want[..]);
        // Each sequence of a batch gets its own base: a 2-token and an 8-token sequence.
        let positions: Vec<u32> = (0..2).chain(0..8).collect();
        let (cos, sin) = r.tables(&[0, 2, 10], &positions);
        assert_eq!((cos.len(), sin.len()), (40, 40));
        let k = 3;
        assert!((sin[4 + k] - (r.inv_freq[k]).sin()).abs() < 1e-7);
        let t = 2 + 5; // position 5 of the long sequence
        assert!((cos[t * 4 + k] - (5.0 * want[k]).cos()).abs() < 1e-6);
    }

    #[test]
    fn rope_frequencies() {
        let r = Rope::new(10_000.0, 4);
        assert_eq!(r.inv_freq.len(), 2);
        assert!((r.inv_freq[0] - 1.0).abs() < 1e-7);
        assert!((r.inv_freq[1] - 0.01).abs() < 1e-7);
        let (c, s) = r.angles(2).nth(1).unwrap();
        assert!((c - 0.02f32.cos()).abs() < 1e-7 && (s - 0.02f32.sin()).abs() < 1e-7);
    }
}
