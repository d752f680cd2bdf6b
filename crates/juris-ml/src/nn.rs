//! Shared building blocks for our transformer files: a named weight store ([`Weights`],
//! loaded from safetensors or filled by a custom reader such as the E5S1 one), [`Linear`],
//! [`LayerNorm`], [`Embedding`], activations, and the choice of candle device.
//!
//! `Linear` is a small struct of our own rather than `candle_nn::Linear` so that LoRA adapters
//! can wrap or replace it later and training can read its weight directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::encoder::DeviceChoice;
use crate::error::{MlError, Result};

/// Turns the user's device choice into a candle device, failing clearly when CUDA was asked
/// for but this build cannot provide it.
pub fn device_for(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(ordinal) => Ok(Device::new_cuda(ordinal)?),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(ordinal) => Err(MlError::Unsupported(format!(
            "CUDA device {ordinal} requested, but juris-ml was built without the `cuda` feature; \
             rebuild with `--features cuda` or use the CPU"
        ))),
    }
}

/// Memory-maps a model file read-only. Callers copy what they keep out of the map before
/// dropping it, so the map never outlives one load.
pub fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|source| MlError::Io {
        path: path.into(),
        source,
    })?;
    // SAFETY: the map is read-only. A file truncated by another process while mapped could
    // fault, as with any mmap reader; model files are not rewritten in place.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| MlError::Io {
        path: path.into(),
        source,
    })
}

/// Named f32 tensors of one model, remembering the file they came from so that every error
/// names it.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    tables: HashMap<String, Embedding>,
    device: Device,
}

impl Weights {
    /// An empty store for tensors read from `path` by a custom reader.
    pub fn new(path: &Path, device: &Device) -> Self {
        Weights {
            path: path.to_path_buf(),
            tensors: HashMap::new(),
            tables: HashMap::new(),
            device: device.clone(),
        }
    }

    /// Reads every tensor of a safetensors file (memory-mapped), converting F16/BF16/F32 to
    /// f32 on `device`.
    pub fn from_safetensors(path: &Path, device: &Device) -> Result<Self> {
        let map = map_file(path)?;
        let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| MlError::Corrupt {
            path: path.into(),
            what: format!("not a valid safetensors file ({e}); re-fetch the model"),
        })?;
        let mut weights = Weights::new(path, device);
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                // Integer tensors (e.g. HF's `position_ids` buffer) are not weights we use.
                _ => continue,
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, &shape, &Device::Cpu)
                .map_err(|e| MlError::Corrupt {
                    path: path.into(),
                    what: format!("tensor '{name}': {e}"),
                })?
                .to_dtype(DType::F32)?
                .to_device(device)?;
            weights.tensors.insert(name, t);
        }
        Ok(weights)
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Adds a lookup table kept in a compact form (see [`Embedding::Q4Rows`]).
    pub fn insert_table(&mut self, name: impl Into<String>, table: Embedding) {
        self.tables.insert(name.into(), table);
    }

    /// Whether a tensor or table of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.tables.contains_key(name)
    }

    /// The lookup table `name` with `rows` rows of width `dim`.
    pub fn embedding(&self, name: &str, rows: usize, dim: usize) -> Result<Embedding> {
        if let Some(t) = self.tables.get(name) {
            if t.rows() != rows {
                return Err(MlError::Corrupt {
                    path: self.path.clone(),
                    what: format!(
                        "table '{name}' has {} rows, the config implies {rows}",
                        t.rows()
                    ),
                });
            }
            return Ok(t.clone());
        }
        Ok(Embedding::Dense(self.get(name, &[rows, dim])?))
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| MlError::Corrupt {
            path: self.path.clone(),
            what: format!("tensor '{name}' is missing; the file does not match its config"),
        })?;
        if t.dims() != shape {
            return Err(MlError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "tensor '{name}' has shape {:?}, the config implies {shape:?}",
                    t.dims()
                ),
            });
        }
        Ok(t.clone())
    }
}

/// `y = x W^T + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, as PyTorch stores it.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` (`[out, in]`) and `{prefix}.bias` (`[out]`, optional).
    pub fn load(w: &Weights, prefix: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias_name = format!("{prefix}.bias");
        let bias = if w.contains(&bias_name) {
            Some(w.get(&bias_name, &[out_dim])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Applies the layer to `x` of shape `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One 2-D matmul over all tokens: the weight is streamed once per batch. Under a
        // training graph the frozen weight gets no gradient (see `frozen_linear`).
        crate::frozen_linear::frozen_linear(x, &self.weight, self.bias.as_ref())
    }

    /// The layer with its weight and bias in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Linear {
            weight: self.weight.to_dtype(dtype)?,
            bias: self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?,
        })
    }
}

/// Layer normalization over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale, `[dim]`.
    pub weight: Tensor,
    /// Shift, `[dim]`.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`; also accepts the old BERT names
    /// `gamma`/`beta` found in some converted checkpoints.
    pub fn load(w: &Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        let (wn, bn) = if w.contains(&format!("{prefix}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.{wn}"), &[dim])?,
            bias: w.get(&format!("{prefix}.{bn}"), &[dim])?,
            eps: eps as f32,
        })
    }

    /// The norm with its weight and bias in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(LayerNorm {
            weight: self.weight.to_dtype(dtype)?,
            bias: self.bias.to_dtype(dtype)?,
            eps: self.eps,
        })
    }

    /// Normalizes `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(candle_nn::ops::layer_norm(
            &x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

/// A lookup table `[n, dim]`, stored as f32 or kept 4-bit (GGML Q4_0 rows, dequantized only
/// for the ids looked up: a 250k-token multilingual table stays 54 MB instead of 384 MB).
#[derive(Debug, Clone)]
pub enum Embedding {
    /// An f32 table on the model's device.
    Dense(Tensor),
    /// Q4_0 rows (`dim / 32` blocks of 18 bytes each per row).
    Q4Rows {
        /// The blocks, row after row.
        data: Vec<u8>,
        /// Number of rows.
        rows: usize,
        /// Values per row.
        dim: usize,
        /// Where looked-up rows are placed.
        device: Device,
    },
}

impl Embedding {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.dims().first().copied().unwrap_or(0),
            Embedding::Q4Rows { rows, .. } => *rows,
        }
    }

    /// The table in `dtype` (a dense one converted; 4-bit rows stay 4-bit and are looked up
    /// as f32, which the caller converts).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(match self {
            Embedding::Dense(t) => Embedding::Dense(t.to_dtype(dtype)?),
            q4 @ Embedding::Q4Rows { .. } => q4.clone(),
        })
    }

    /// Rows of the table for `ids` (any shape of u32), giving `ids.shape + [dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(table) => {
                let mut dims = ids.dims().to_vec();
                dims.push(table.dim(1)?);
                let flat = ids.flatten_all()?;
                Ok(table.index_select(&flat, 0)?.reshape(dims)?)
            }
            Embedding::Q4Rows {
                data,
                rows,
                dim,
                device,
            } => {
                let list: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                let row_bytes = dim / Q4_0_BLOCK * Q4_0_BYTES;
                let mut out = vec![0f32; list.len() * dim];
                for (o, &id) in out.chunks_exact_mut(*dim).zip(&list) {
                    let id = id as usize;
                    if id >= *rows {
                        return Err(MlError::Mismatch(format!(
                            "token id {id} is outside the embedding table ({rows} rows)"
                        )));
                    }
                    dequantize_q4_0(&data[id * row_bytes..(id + 1) * row_bytes], o);
                }
                let mut dims = ids.dims().to_vec();
                dims.push(*dim);
                Ok(Tensor::from_vec(out, dims, device)?)
            }
        }
    }
}

/// Values per GGML Q4_0 block.
pub const Q4_0_BLOCK: usize = 32;
/// Bytes per GGML Q4_0 block: an f16 scale and 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 18;

/// Expands GGML Q4_0 blocks into `out` (`out.len() / 32` blocks are read). In each block,
/// byte `j` holds value `j` in its low nibble and value `j + 16` in its high nibble; a value
/// is `(nibble - 8) * scale`.
pub fn dequantize_q4_0(blocks: &[u8], out: &mut [f32]) {
    for (block, o) in blocks
        .chunks_exact(Q4_0_BYTES)
        .zip(out.chunks_exact_mut(Q4_0_BLOCK))
    {
        let d = half::f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
        for (j, &q) in block[2..].iter().enumerate() {
            o[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Feed-forward activations that the supported configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the exact erf (HF `gelu`).
    GeluErf,
    /// GELU with the tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// ReLU.
    Relu,
}

impl Activation {
    /// Parses an HF `hidden_act` value.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// Applies the activation element-wise.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            // Under a training graph: one node whose backward is one op (`train_grads`).
            Activation::GeluErf if x.track_op() => crate::train_ops::gelu_erf(x)?,
            Activation::GeluErf => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Relu => x.relu()?,
        })
    }
}

/// Runs `f` on the f32 values of a CPU tensor without copying them (a contiguous view of its
/// storage); other tensors are copied out first. The fast CPU paths read matmul outputs this
/// way so that bias, activation, residual and normalization happen in one pass each.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[start..end]));
        }
    }
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(f(&v))
}

/// `e^x` for f32, vectorizable (no libm call): `2^n · p(r)` with `x = n ln 2 + r`, `|r| ≤ ln2/2`
/// and a degree-6 polynomial; relative error below 2e-7 on `[-87, 88]`, 0 below −87 (so −∞
/// gives 0), saturating above. Softmax and GELU spent ~6% of the encoder's time in libm's
/// `expf`/`erff`, which LLVM cannot vectorize.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2^23 trick: `f32::round` is a libm call (3.5% of the
    // encoder's time) that blocks vectorization.
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    // ln 2 split in a part exact in f32 and the rest (Cody–Waite).
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    let v = p * f32::from_bits(bits);
    if x <= -87.0 {
        0.0
    } else {
        v
    }
}

/// Folds `xs` with `f` in 8 independent lanes, so that the loop vectorizes (a single
/// accumulator is a serial dependency chain that LLVM may not reorder for floats).
#[inline(always)]
pub fn lanes_reduce(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = f(*a, *x);
        }
    }
    let mut r = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    for a in acc {
        r = f(r, a);
    }
    r
}

/// `erf(x)` (Abramowitz & Stegun 7.1.26 refined: absolute error below 1.5e-7), built on
/// [`fast_exp`] so a loop over it vectorizes.
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * fast_exp(-a * a);
    y.copysign(x)
}

/// Exact-erf GELU, `x/2 · (1 + erf(x/√2))`, with [`fast_erf`].
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `m[i] = gelu_erf(m[i] + bias[i % bias.len()])` over whole rows, 16 lanes at a time with
/// AVX-512F: [`gelu_erf`]'s formulas with the reciprocal as `rcp14` plus one Newton step (no
/// division) and `2^n` applied by `scalef` (no clamping). The generic loop of the AVX2 build
/// was 6 % of encoding time, a tenth of the matmul that feeds it.
///
/// # Safety
/// The CPU must have AVX-512F; `m.len()` a multiple of `bias.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn bias_gelu_erf_avx512(m: &mut [f32], bias: &[f32]) {
    use std::arch::x86_64::*;
    let n = bias.len();
    assert!(n > 0 && m.len().is_multiple_of(n));
    let full = n / 16 * 16;
    let tail: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
    let one = _mm512_set1_ps(1.0);
    let gelu = |x: __m512| -> __m512 {
        // z = |x| / √2; erf(z) = 1 − t·poly(t)·e^{−z²}, t = 1 / (1 + p·z).
        let z = _mm512_mul_ps(
            _mm512_abs_ps(x),
            _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        );
        let d = _mm512_fmadd_ps(_mm512_set1_ps(0.327_591_1), z, one);
        let r0 = _mm512_rcp14_ps(d);
        let t = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.0)));
        let mut poly = _mm512_set1_ps(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
        }
        poly = _mm512_mul_ps(poly, t);
        // e^{−z²} = 2^k · q(r), k = round(−z² log2 e), r = −z² − k ln 2.
        let w = _mm512_mul_ps(_mm512_mul_ps(z, z), _mm512_set1_ps(-1.0));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(w, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_145_75), w);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut q = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(c));
        }
        let e = _mm512_scalef_ps(q, k);
        let erf_abs = _mm512_fnmadd_ps(poly, e, one);
        // erf takes x's sign; gelu = x/2 · (1 + erf).
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), sign));
        _mm512_mul_ps(
            _mm512_mul_ps(_mm512_set1_ps(0.5), x),
            _mm512_add_ps(one, erf),
        )
    };
    for row in m.chunks_exact_mut(n) {
        let (rp, bp) = (row.as_mut_ptr(), bias.as_ptr());
        for j in (0..full).step_by(16) {
            // SAFETY: j + 16 ≤ full ≤ n, the row's and the bias's length.
            unsafe {
                let x = _mm512_add_ps(_mm512_loadu_ps(rp.add(j)), _mm512_loadu_ps(bp.add(j)));
                _mm512_storeu_ps(rp.add(j), gelu(x));
            }
        }
        if full < n {
            // SAFETY: the mask covers the n − full values left.
            unsafe {
                let x = _mm512_add_ps(
                    _mm512_maskz_loadu_ps(tail, rp.add(full)),
                    _mm512_maskz_loadu_ps(tail, bp.add(full)),
                );
                _mm512_mask_storeu_ps(rp.add(full), tail, gelu(x));
            }
        }
    }
}

/// One row of LayerNorm: `out = (v - mean) / sqrt(var + eps) * w + b`, two-pass variance as
/// candle computes it.
#[inline]
pub fn layer_norm_row(v: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = v.len() as f32;
    let mean = v.iter().sum::<f32>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((x, w), b) in v.iter_mut().zip(w).zip(b) {
        *x = (*x - mean) * inv * w + b;
    }
}

/// Whether this CPU runs AVX2 with FMA (x86-64 only; cached by std after the first call).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn avx512_bias_gelu_matches_scalar() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        // Widths around the 16-lane step (masked tails), values across GELU's range
        // (deep negative: exp underflow; large positive: identity).
        for &n in &[1usize, 15, 16, 17, 37, 384] {
            let rows = 3;
            let bias: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 0.5).collect();
            let m: Vec<f32> = (0..rows * n)
                .map(|i| ((i as f32 * 0.731).sin() * 12.0) - 1.0)
                .collect();
            let mut got = m.clone();
            // SAFETY: AVX-512F checked above; the length is rows · n.
            unsafe { bias_gelu_erf_avx512(&mut got, &bias) };
            for (i, (&g, &x)) in got.iter().zip(&m).enumerate() {
                let want = gelu_erf(x + bias[i % n]);
                assert!(
                    (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "n {n} at {i}: x {} gives {g}, scalar {want}",
                    x + bias[i % n]
                );
            }
        }
    }
}
