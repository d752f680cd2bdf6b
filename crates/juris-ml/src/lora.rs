//! LoRA adapters (low-rank updates `W + (α/r)·B·A` of chosen linear layers): the adapter
//! itself ([`LoraAdapter`]: config, per-module `A`/`B`), reading and writing it in the PEFT
//! folder format (`adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.<module>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`), the
//! trainable form ([`LoraTrain`]: `A`/`B` as candle `Var`s, seeded init, dropout) and the
//! forward of one adapted layer ([`LoraTrain::apply`]). Merging into a model's weights is
//! done by the model (`BertModel::merge_lora`), which knows its module paths.
//!
//! Full fine-tuning of small encoders rides on the same seam: an adapter whose
//! `peft_type` is [`FULL_TYPE`] holds, per targeted linear layer, the whole update of its
//! weight `ΔW` `[out, in]` and bias `Δb` `[out]` (keys `<module>.full.weight` / `.bias`,
//! juris's own format, since PEFT has no full-update adapter); it trains, saves, loads and
//! merges (also into a Hugging Face folder any BERT loader reads) like a LoRA adapter.
//! Training the updates rather than the weights themselves gives the same gradients; AdamW's
//! decay then pulls the weights towards the base model's instead of towards zero.
//!
//! Module paths are those of the Hugging Face base model class (`AutoModel`), e.g.
//! `encoder.layer.0.attention.self.query`, and `target_modules` select modules the way PEFT
//! does: a module is adapted when its path equals a target or ends with `.` + target.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{MlError, Result};
use crate::train_ops;

/// Name of the adapter's config file in a PEFT folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of the adapter's weights file in a PEFT folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";
/// `peft_type` of a full-update adapter (see the module docs).
pub const FULL_TYPE: &str = "FULL";

/// Every linear layer of a BERT-family layer, as `target_modules` names them (the default
/// of retriever training).
pub const BERT_LORA_TARGETS: &[&str] = &[
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// The fields of PEFT's `adapter_config.json` that juris writes and reads (others are kept
/// out; PEFT fills its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// `LORA`, or [`FULL_TYPE`] for full updates of the targeted layers.
    pub peft_type: String,
    /// Rank of the update.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (suffixes of module paths) that get an adapter.
    pub target_modules: Vec<String>,
    /// `none`: biases are not trained.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// The base model the adapter belongs to (a path or an id).
    #[serde(default)]
    pub base_model_name_or_path: String,
    /// `FEATURE_EXTRACTION` for encoders.
    #[serde(default)]
    pub task_type: Option<String>,
    /// PEFT's switch for the rank-stabilized scale `α/√r`; juris supports only `false`.
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_bias() -> String {
    "none".into()
}

impl LoraConfig {
    /// A config for `targets` with rank `r`, scale `alpha / r` and `dropout`.
    pub fn new(r: usize, alpha: f64, dropout: f64, targets: &[&str], base: &str) -> Self {
        LoraConfig {
            peft_type: "LORA".into(),
            r,
            lora_alpha: alpha,
            lora_dropout: dropout,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            bias: "none".into(),
            base_model_name_or_path: base.into(),
            task_type: Some("FEATURE_EXTRACTION".into()),
            use_rslora: false,
        }
    }

    /// A full-update config for `targets` (see the module docs): every targeted layer's
    /// weight and bias train; r, alpha and dropout are 0.
    pub fn full(targets: &[&str], base: &str) -> Self {
        LoraConfig {
            peft_type: FULL_TYPE.into(),
            ..LoraConfig::new(0, 0.0, 0.0, targets, base)
        }
    }

    /// Whether the adapter holds full updates rather than low-rank ones.
    pub fn is_full(&self) -> bool {
        self.peft_type == FULL_TYPE
    }

    /// `lora_alpha / r`, the factor of `B·A`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r.max(1) as f64
    }

    /// Whether the module at `path` is adapted (PEFT's rule: equal to a target or ending
    /// with `.target`).
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| path == t || path.ends_with(&format!(".{t}")))
    }

    pub(crate) fn check(&self, path: &Path) -> Result<()> {
        let bad = |what: String| MlError::Corrupt {
            path: path.into(),
            what,
        };
        if self.peft_type != "LORA" && !self.is_full() {
            return Err(bad(format!(
                "peft_type is '{}'; only LORA adapters (and juris's {FULL_TYPE} updates) are \
                 supported",
                self.peft_type
            )));
        }
        if self.r == 0 && !self.is_full() {
            return Err(bad("r is 0; the rank must be at least 1".into()));
        }
        if self.bias != "none" {
            return Err(bad(format!(
                "bias is '{}'; only 'none' is supported",
                self.bias
            )));
        }
        if self.use_rslora {
            return Err(bad(
                "use_rslora is true; only the α/r scale is supported".into()
            ));
        }
        Ok(())
    }
}

/// One adapted module: `A` `[r, in]` and `B` `[out, r]`; in a full-update adapter
/// ([`LoraConfig::is_full`]) `a` is the weight update `ΔW` `[out, in]` and `b` the bias
/// update `Δb` `[out]`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Down projection `[r, in]` (full: `ΔW` `[out, in]`).
    pub a: Tensor,
    /// Up projection `[out, r]` (full: `Δb` `[out]`).
    pub b: Tensor,
}

/// A LoRA adapter: its config and one `A`/`B` pair per adapted module path.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// PEFT config.
    pub config: LoraConfig,
    /// Module path (`encoder.layer.0.attention.self.query`) → weights.
    pub modules: BTreeMap<String, LoraPair>,
}

impl LoraAdapter {
    /// The weight update `scale · B·A` (full: `ΔW`; `[out, in]`, in the tensors' dtype) of
    /// `path`, if adapted.
    pub fn delta(&self, path: &str) -> Result<Option<Tensor>> {
        let Some(p) = self.modules.get(path) else {
            return Ok(None);
        };
        if self.config.is_full() {
            return Ok(Some(p.a.clone()));
        }
        Ok(Some((p.b.matmul(&p.a)? * self.config.scale())?))
    }

    /// The bias update `Δb` `[out]` of `path` (only full-update adapters have one).
    pub fn bias_delta(&self, path: &str) -> Option<&Tensor> {
        match self.modules.get(path) {
            Some(p) if self.config.is_full() => Some(&p.b),
            _ => None,
        }
    }

    /// The expected shapes of module `path`'s two tensors for an `inp → out` layer.
    pub fn shapes(&self, inp: usize, out: usize) -> ([usize; 2], Vec<usize>) {
        if self.config.is_full() {
            ([out, inp], vec![out])
        } else {
            ([self.config.r, inp], vec![out, self.config.r])
        }
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (f32), each
    /// through a temporary file renamed into place.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| MlError::Io {
            path: dir.into(),
            source,
        })?;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (path, p) in &self.modules {
            let cpu = |t: &Tensor| -> Result<Tensor> {
                Ok(t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?)
            };
            let (ka, kb) = if self.config.is_full() {
                (".full.weight", ".full.bias")
            } else {
                (".lora_A.weight", ".lora_B.weight")
            };
            tensors.push((format!("{KEY_PREFIX}{path}{ka}"), cpu(&p.a)?));
            tensors.push((format!("{KEY_PREFIX}{path}{kb}"), cpu(&p.b)?));
        }
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
        candle_core::safetensors::save(
            &tensors
                .iter()
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect(),
            &tmp,
        )?;
        rename(&tmp, &weights)?;
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| MlError::Unsupported(format!("adapter config: {e}")))?;
        let cfg = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(|source| MlError::Io {
            path: tmp.clone(),
            source,
        })?;
        rename(&tmp, &cfg)
    }

    /// Reads a PEFT LoRA folder onto `device` as f32. Keys may carry PEFT's
    /// `base_model.model.` prefix and a `bert.`/`roberta.` model prefix; both are removed.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        for p in [&cfg_path, &weights_path] {
            if !p.is_file() {
                return Err(MlError::Missing {
                    path: p.clone(),
                    hint: "a LoRA adapter folder (PEFT format) needs adapter_config.json and \
                           adapter_model.safetensors"
                        .into(),
                });
            }
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| MlError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: LoraConfig = serde_json::from_str(&text).map_err(|e| MlError::Corrupt {
            path: cfg_path.clone(),
            what: format!("not a PEFT LoRA config ({e})"),
        })?;
        config.check(&cfg_path)?;
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
            MlError::Corrupt {
                path: weights_path.clone(),
                what: format!("not a valid safetensors file ({e})"),
            }
        })?;
        let mut a_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut b_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        for (key, t) in tensors {
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            let k = key.strip_prefix(KEY_PREFIX).unwrap_or(&key);
            let k = ["bert.", "roberta.", "model."]
                .iter()
                .find_map(|p| k.strip_prefix(p))
                .unwrap_or(k);
            // PEFT may name the adapter (`lora_A.default.weight`); accept both forms.
            let k = k.replace(".default.weight", ".weight");
            let (sa, sb) = if config.is_full() {
                (".full.weight", ".full.bias")
            } else {
                (".lora_A.weight", ".lora_B.weight")
            };
            if let Some(path) = k.strip_suffix(sa) {
                a_parts.insert(path.to_string(), t);
            } else if let Some(path) = k.strip_suffix(sb) {
                b_parts.insert(path.to_string(), t);
            } else {
                return Err(MlError::Corrupt {
                    path: weights_path.clone(),
                    what: format!(
                        "tensor '{key}' is not a{} weight (expected names ending in {sa} or {sb})",
                        if config.is_full() {
                            " full-update"
                        } else {
                            " LoRA A or B"
                        }
                    ),
                });
            }
        }
        let mut modules = BTreeMap::new();
        for (path, a) in a_parts {
            let b = b_parts.remove(&path).ok_or_else(|| MlError::Corrupt {
                path: weights_path.clone(),
                what: format!("module '{path}' has lora_A but no lora_B"),
            })?;
            if config.is_full() {
                let (out, _) = a.dims2()?;
                if b.dims() != [out] {
                    return Err(MlError::Corrupt {
                        path: weights_path.clone(),
                        what: format!(
                            "module '{path}': ΔW is {:?} and Δb {:?}; Δb must have ΔW's {out} rows",
                            a.dims(),
                            b.dims()
                        ),
                    });
                }
                modules.insert(path, LoraPair { a, b });
                continue;
            }
            let (ra, _) = a.dims2()?;
            let (_, rb) = b.dims2()?;
            if ra != config.r || rb != config.r {
                return Err(MlError::Corrupt {
                    path: weights_path.clone(),
                    what: format!(
                        "module '{path}': A has {ra} rows and B {rb} columns, config r is {}",
                        config.r
                    ),
                });
            }
            modules.insert(path, LoraPair { a, b });
        }
        if let Some(path) = b_parts.keys().next() {
            return Err(MlError::Corrupt {
                path: weights_path,
                what: format!("module '{path}' has lora_B but no lora_A"),
            });
        }
        Ok(LoraAdapter { config, modules })
    }

    /// SHA-256 (hex) of the adapter's weights and config as stored in `dir`; part of the
    /// fingerprint of an encoder that merged it.
    pub fn folder_digest(dir: &Path) -> Result<String> {
        let mut h = Sha256::new();
        for name in [CONFIG_FILE, WEIGHTS_FILE] {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).map_err(|source| MlError::Io { path: p, source })?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Writes `out` (which must not exist): a copy of the Hugging Face folder `base` whose
/// `model.safetensors` has the adapter in `adapter_dir` merged into its weights (each tensor
/// keeps its dtype), loadable by any BERT loader without PEFT.
pub fn merge_into_hf_dir(base: &Path, adapter_dir: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        return Err(MlError::Unsupported(format!(
            "{}: already exists; choose a new output folder",
            out.display()
        )));
    }
    let adapter = LoraAdapter::load(adapter_dir, &Device::Cpu)?;
    let weights_path = base.join("model.safetensors");
    if !weights_path.is_file() {
        return Err(MlError::Missing {
            path: weights_path,
            hint: "the base must be a Hugging Face folder with model.safetensors".into(),
        });
    }
    let mut tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
    let prefix = ["", "bert.", "roberta.", "model."]
        .into_iter()
        .find(|p| tensors.contains_key(&format!("{p}embeddings.word_embeddings.weight")))
        .unwrap_or("");
    for path in adapter.modules.keys() {
        let key = format!("{prefix}{path}.weight");
        let Some(w) = tensors.get(&key) else {
            return Err(MlError::Mismatch(format!(
                "{}: no tensor '{key}' for adapter module '{path}'; the adapter belongs to \
                 another model",
                weights_path.display()
            )));
        };
        let Some(delta) = adapter.delta(path)? else {
            continue;
        };
        if delta.dims() != w.dims() {
            return Err(MlError::Mismatch(format!(
                "adapter module '{path}' gives {:?}, the weight is {:?}",
                delta.dims(),
                w.dims()
            )));
        }
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        tensors.insert(key, merged);
        if let Some(db) = adapter.bias_delta(path) {
            let key = format!("{prefix}{path}.bias");
            let merged = match tensors.get(&key) {
                Some(bias) => (bias.to_dtype(DType::F32)? + db)?.to_dtype(bias.dtype())?,
                None => db.clone(),
            };
            tensors.insert(key, merged);
        }
    }
    let tmp = out.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|source| MlError::Io {
            path: tmp.clone(),
            source,
        })?;
    }
    copy_dir(base, &tmp, &|name| {
        name != "model.safetensors" && name != "pytorch_model.bin"
    })?;
    candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
    rename(&tmp, out)
}

fn copy_dir(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MlError::Io { path: p, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let src = entry.path();
        if src.is_dir() {
            if !name.starts_with('.') {
                copy_dir(&src, &to.join(&name), keep)?;
            }
        } else if keep(&name) {
            std::fs::copy(&src, to.join(&name)).map_err(io(&src))?;
        }
    }
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| MlError::Io {
        path: to.into(),
        source,
    })
}

/// SplitMix64: the small seeded generator used for LoRA init and dropout (and by training
/// for data order), so that a run is reproducible from its seed alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// A LoRA adapter being trained: `A` and `B` of each module as candle `Var`s, plus the
/// dropout seed. `A` starts Kaiming-uniform (bound `1/√in`, as PEFT's default init),
/// `B` at zero, so training starts from the base model exactly.
///
/// `Send + Sync` (the dropout seed sits behind a mutex) so that a decoder, which must
/// be `Sync`, can hold it in an `Arc` and apply it from inside its layers.
///
/// The variables keep the dtype they were made in (f32 in retriever training, also under
/// bf16 mixed precision: they are the master weights); a forward whose activations have
/// another dtype uses copies of them in that dtype, through which the gradients flow back
/// in the variables' dtype.
pub struct LoraTrain {
    /// Config written with the adapter.
    pub config: LoraConfig,
    /// Module path → (`A`, `B`).
    pub vars: BTreeMap<String, (Var, Var)>,
    dropout_seed: Mutex<Option<u64>>,
    /// Off while evaluating: the adapters then enter the forward pass as plain tensors, so
    /// candle records no graph and frees each activation as soon as it is used (with a
    /// graph, a whole evaluation batch's activations stay alive until its output is
    /// dropped: ~20 GB for 128 passages of 128 tokens through e5-small).
    recording: AtomicBool,
}

impl LoraTrain {
    /// Fresh adapters for `modules` (path, in, out) on `device` in `dtype`, seeded.
    pub fn init(
        config: LoraConfig,
        modules: &[(String, usize, usize)],
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = SplitMix64(seed);
        let mut vars = BTreeMap::new();
        let r = config.r;
        for (path, inp, out) in modules {
            if config.is_full() {
                // Full updates start at zero: training starts from the base model exactly.
                let dw = Tensor::zeros((*out, *inp), dtype, device)?;
                let db = Tensor::zeros(*out, dtype, device)?;
                vars.insert(
                    path.clone(),
                    (Var::from_tensor(&dw)?, Var::from_tensor(&db)?),
                );
                continue;
            }
            let bound = 1.0 / (*inp as f64).sqrt();
            let a: Vec<f64> = (0..r * inp)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) * bound)
                .collect();
            let a = Tensor::from_vec(a, (r, *inp), device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((*out, r), dtype, device)?;
            vars.insert(path.clone(), (Var::from_tensor(&a)?, Var::from_tensor(&b)?));
        }
        Ok(LoraTrain {
            config,
            vars,
            dropout_seed: Mutex::new(None),
            recording: AtomicBool::new(true),
        })
    }

    /// Trainable form of a loaded adapter (to continue training it).
    pub fn from_adapter(adapter: &LoraAdapter, dtype: DType) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (path, p) in &adapter.modules {
            vars.insert(
                path.clone(),
                (
                    Var::from_tensor(&p.a.to_dtype(dtype)?)?,
                    Var::from_tensor(&p.b.to_dtype(dtype)?)?,
                ),
            );
        }
        Ok(LoraTrain {
            config: adapter.config.clone(),
            vars,
            dropout_seed: Mutex::new(None),
            recording: AtomicBool::new(true),
        })
    }

    /// Whether the forward pass records a graph through the adapters (on by default; only
    /// [`LoraTrain::without_graph`] turns it off, and back on).
    fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    /// Runs `f` with graph recording off (evaluation, mining), then turns it back on, also
    /// when `f` fails.
    pub fn without_graph<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore<'a>(&'a LoraTrain);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set_recording(true);
            }
        }
        self.set_recording(false);
        let _restore = Restore(self);
        f()
    }

    /// Turns dropout on with masks drawn from `seed`, or off with `None` (evaluation). Each
    /// adapted module draws its mask from `seed` and its path
    /// ([`train_ops::sub_seed`]), so set a new seed for every forward pass (a module applied
    /// twice under one seed draws the same mask twice) and the same seed again to recompute
    /// a pass (gradient checkpointing); a resumed run that sets the same seeds draws the
    /// same masks.
    pub fn set_dropout_seed(&self, seed: Option<u64>) {
        *self.seed() = seed;
    }

    /// The trainable variables in a fixed order (by module path, `A` before `B`), with
    /// names `<path>.lora_A` / `<path>.lora_B` (full updates: `<path>.full_W` /
    /// `<path>.full_b`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let (na, nb) = if self.config.is_full() {
            ("full_W", "full_b")
        } else {
            ("lora_A", "lora_B")
        };
        let mut out = Vec::with_capacity(self.vars.len() * 2);
        for (path, (a, b)) in &self.vars {
            out.push((format!("{path}.{na}"), a.clone()));
            out.push((format!("{path}.{nb}"), b.clone()));
        }
        out
    }

    /// A snapshot as a plain adapter (tensors copied, detached from training).
    pub fn to_adapter(&self) -> Result<LoraAdapter> {
        let mut modules = BTreeMap::new();
        for (path, (a, b)) in &self.vars {
            modules.insert(
                path.clone(),
                LoraPair {
                    a: a.as_tensor().detach().copy()?,
                    b: b.as_tensor().detach().copy()?,
                },
            );
        }
        Ok(LoraAdapter {
            config: self.config.clone(),
            modules,
        })
    }

    fn seed(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        // A poisoned lock only means a panic elsewhere; the seed is a plain integer and
        // still valid.
        match self.dropout_seed.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `x Wᵀ (+ b)` of the frozen layer at `path` plus its adapter's update (none: the frozen
    /// layer alone). While recording a graph with a LoRA (not full) adapter, one node
    /// ([`crate::lora_linear`]) whose backward gives `x`, `A` and `B` one gradient each;
    /// otherwise the composed form of [`LoraTrain::apply`].
    pub fn linear(
        &self,
        path: &str,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        match self.vars.get(path) {
            Some((a, b)) if self.recording.load(Ordering::SeqCst) && !self.config.is_full() => {
                let p = self.config.lora_dropout;
                let dropout = match *self.seed() {
                    Some(seed) if p > 0.0 => Some((p, train_ops::sub_seed(seed, path))),
                    _ => None,
                };
                let layer = crate::lora_linear::LoraLinear {
                    weight,
                    bias,
                    scale: self.config.scale(),
                    dropout,
                };
                let (a, b) = (like(a.as_tensor(), x)?, like(b.as_tensor(), x)?);
                layer.forward(x, &a, &b)
            }
            _ => {
                let y = crate::frozen_linear::frozen_linear(x, weight, bias)?;
                self.apply(path, x, y)
            }
        }
    }

    /// `base_out + scale · dropout(x) Aᵀ Bᵀ` for the module at `path`; `base_out` unchanged
    /// when the module has no adapter.
    pub fn apply(&self, path: &str, x: &Tensor, base_out: Tensor) -> Result<Tensor> {
        self.apply_rows(path, x, base_out, None)
    }

    /// Like [`LoraTrain::apply`], with the rows of `B` (the output features) gathered by
    /// `rows` (u32 indices into `B`'s rows) first: for a base whose weight rows are stored
    /// in another order than the adapter's (llama.cpp permutes the q/k rows of `llama`
    /// files), so that the adapter keeps the Hugging Face layout it is saved in.
    pub fn apply_rows(
        &self,
        path: &str,
        x: &Tensor,
        base_out: Tensor,
        b_rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some((a, b)) = self.vars.get(path) else {
            return Ok(base_out);
        };
        let dims = x.dims().to_vec();
        let inp = dims.last().copied().unwrap_or(0);
        let rows = x.elem_count() / inp.max(1);
        let mut x2 = x.reshape((rows, inp))?;
        let p = self.config.lora_dropout;
        if p > 0.0 {
            if let Some(seed) = *self.seed() {
                // Each module draws its own mask from the pass's seed, so a block recomputed
                // for gradient checkpointing draws the masks of the first forward again.
                x2 = train_ops::dropout(&x2, p, train_ops::sub_seed(seed, path))?;
            }
        }
        let (a, b) = if self.recording.load(Ordering::SeqCst) {
            (a.as_tensor().clone(), b.as_tensor().clone())
        } else {
            (a.as_tensor().detach(), b.as_tensor().detach())
        };
        let (a, b) = (like(&a, &x2)?, like(&b, &x2)?);
        if self.config.is_full() {
            // x ΔWᵀ + Δb (`rows` reorders output features: also ΔW's rows and Δb).
            let (dw, db) = match b_rows {
                Some(r) => (a.index_select(r, 0)?, b.index_select(r, 0)?),
                None => (a, b),
            };
            let up = x2.matmul(&dw.t()?)?.broadcast_add(&db)?;
            let up = up.reshape(base_out.shape())?;
            return Ok((base_out + up)?);
        }
        let b = match b_rows {
            Some(r) => b.index_select(r, 0)?,
            None => b,
        };
        // The scale multiplies the rank-r intermediate, not the [rows, out] result: one
        // tensor of width r instead of width out kept for backward.
        let low = crate::lora_linear::scale(&x2.matmul(&a.t()?)?, self.config.scale())?
            .matmul(&b.t()?)?;
        let low = low.reshape(base_out.shape())?;
        Ok((base_out + low)?)
    }
}

/// An adapter variable as a forward over `x` uses it: the variable itself when `x` has its
/// dtype, otherwise (mixed precision: f32 master weights, bf16 activations) its copy in
/// `x`'s dtype, a graph node whose backward casts the gradient back to the variable's
/// dtype, so the optimizer receives f32 gradients of the f32 masters, as under PyTorch's
/// autocast.
fn like(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(v.to_dtype(x.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_peft_suffix_rule() {
        let c = LoraConfig::new(4, 8.0, 0.0, &["query", "output.dense"], "m");
        assert!(c.targets("encoder.layer.0.attention.self.query"));
        assert!(c.targets("encoder.layer.0.output.dense"));
        assert!(c.targets("encoder.layer.0.attention.output.dense"));
        assert!(!c.targets("encoder.layer.0.intermediate.dense"));
        assert!(!c.targets("encoder.layer.0.attention.self.key"));
        assert_eq!(c.scale(), 2.0);
    }

    #[test]
    fn shuffle_is_seeded() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        SplitMix64(7).shuffle(&mut a);
        SplitMix64(7).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
    }
}
