//! LoRA and QLoRA on the GGUF decoders (Llama/SmolLM2, Gemma 3, Qwen 2/3): a trainable
//! decoder ([`TrainableDecoder`]: base frozen, f32 or kept quantized, adapters as candle
//! `Var`s), inference with an adapter ([`load_decoder_with_adapter`]: merged into f32
//! weights, or applied unmerged on the quantized base), and export of the merged model as a
//! GGUF file that juris and llama.cpp load ([`export_merged_gguf`]) or as a Hugging Face folder
//! ([`export_merged_safetensors`]).
//!
//! Adapters are PEFT folders in the Hugging Face layout: module paths
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj` and `model.layers.{i}.mlp.{gate,up,down}_proj`,
//! `task_type` `CAUSAL_LM`, so that `PeftModel.from_pretrained` applies them to the
//! transformers model of the same weights. The one layout difference between a GGUF file and
//! Hugging Face — llama.cpp's converter permutes the q/k rows of `llama` files for its
//! interleaved rotary pairs — is handled inside the layers ([`Projection`] gathers `B`'s
//! rows), so adapters in memory and on disk are always in Hugging Face order.
//!
//! Design decision: the base is never re-quantized or copied for training. In
//! [`WeightMode::Quantized`] the gradient flows through the quantized layers by a custom op
//! ([`crate::models::qmatmul_grad`]) that dequantizes one matrix at a time in the backward
//! pass; in [`WeightMode::F32`] the dequantized base is used as is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::chat_template::ChatTemplate;
use crate::error::{MlError, Result};
use crate::gguf::GgufFile;
use crate::gguf_tokenizer::GgufTokenizer;
use crate::lora::{LoraAdapter, LoraConfig, LoraTrain, CONFIG_FILE};
use crate::models::decoder::{load_decoder, DecoderLm};
use crate::models::decoder_layers::{
    gguf_tensor_name, hf_module_path, llama_qk_rows, HeadShape, WeightMode,
};

/// The module names PEFT targets on these decoders by default: every linear layer of every
/// block (the QLoRA paper's choice).
pub const DECODER_LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// PEFT's task type for causal language models.
const CAUSAL_LM: &str = "CAUSAL_LM";

/// A GGUF decoder with a trainable LoRA adapter: the base stays frozen (f32 or quantized),
/// [`TrainableDecoder::model`]'s `forward_hidden` / `logits` are differentiable with respect
/// to the adapter's variables ([`TrainableDecoder::lora`]`.named_vars()`).
pub struct TrainableDecoder {
    model: Box<dyn DecoderLm>,
    lora: Arc<LoraTrain>,
    tokenizer: GgufTokenizer,
    template: Option<ChatTemplate>,
    path: PathBuf,
    mode: WeightMode,
}

impl std::fmt::Debug for TrainableDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainableDecoder")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("architecture", &self.model.architecture())
            .field("adapted_modules", &self.lora.vars.len())
            .field("r", &self.lora.config.r)
            .finish()
    }
}

impl TrainableDecoder {
    /// Loads `gguf` with its matrices in `base` (kept quantized for QLoRA) and a fresh
    /// adapter from `lora` (`A` seeded from `seed`, `B` zero: the model starts as the base).
    /// `lora.task_type` becomes `CAUSAL_LM`; an empty `base_model_name_or_path` becomes the
    /// file's name. Fails when a target module matches no layer of the model.
    pub fn new(
        gguf: &Path,
        base: WeightMode,
        lora: LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let g = GgufFile::open(gguf)?;
        let mut model = load_decoder(&g, base, device)?;
        let mut cfg = lora;
        cfg.check(gguf)?;
        if cfg.is_full() {
            return Err(full_unsupported(gguf));
        }
        cfg.task_type = Some(CAUSAL_LM.into());
        if cfg.base_model_name_or_path.is_empty() {
            cfg.base_model_name_or_path = gguf
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        let modules = target_modules(model.as_ref(), &cfg)?;
        let lora = Arc::new(LoraTrain::init(cfg, &modules, seed, DType::F32, device)?);
        attach(model.as_mut(), &lora)?;
        Self::finish(g, model, lora, base)
    }

    /// Loads `gguf` in `base` with the adapter saved in `adapter_dir` (PEFT folder) as the
    /// starting point of further training. Fails, naming the folder, when a module or a
    /// shape of the adapter does not fit the model.
    pub fn with_adapter(
        gguf: &Path,
        base: WeightMode,
        adapter_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let g = GgufFile::open(gguf)?;
        let mut model = load_decoder(&g, base, device)?;
        let adapter = load_decoder_adapter(adapter_dir, device)?;
        check_adapter(&adapter, &projection_shapes(model.as_ref()), adapter_dir)?;
        let lora = Arc::new(LoraTrain::from_adapter(&adapter, DType::F32)?);
        attach(model.as_mut(), &lora)?;
        Self::finish(g, model, lora, base)
    }

    fn finish(
        g: GgufFile,
        model: Box<dyn DecoderLm>,
        lora: Arc<LoraTrain>,
        mode: WeightMode,
    ) -> Result<Self> {
        let tokenizer = GgufTokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(MlError::Mismatch(format!(
                "{}: the tokenizer has {} tokens but the embedding only {} rows",
                g.path().display(),
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        Ok(TrainableDecoder {
            template: ChatTemplate::from_gguf(&g).ok(),
            path: g.path().to_path_buf(),
            model,
            lora,
            tokenizer,
            mode,
        })
    }

    /// The decoder with the adapter attached; its `forward_hidden` and `logits` record a
    /// graph through the adapter's variables (its KV-cache path `forward_step` works too,
    /// for sampling during training, and keeps no graph in the cache). Dropout applies
    /// whenever a dropout seed is set: call `lora().set_dropout_seed(None)` before
    /// evaluating or sampling.
    pub fn model(&self) -> &dyn DecoderLm {
        self.model.as_ref()
    }

    /// The adapter being trained (`named_vars()` for the optimizer, `set_dropout_seed()` per
    /// step, `to_adapter()` for a snapshot in Hugging Face layout).
    pub fn lora(&self) -> &LoraTrain {
        &self.lora
    }

    /// The tokenizer from the GGUF file.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The chat template from the GGUF metadata (or Gemma's turns for a Gemma 3 file), if
    /// any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The GGUF file of the base.
    pub fn gguf_path(&self) -> &Path {
        &self.path
    }

    /// How the base's matrices are held.
    pub fn weight_mode(&self) -> WeightMode {
        self.mode
    }

    /// Saves the adapter as a PEFT folder (Hugging Face layout). A new folder is written
    /// under a temporary name and renamed into place; in an existing folder each file is
    /// (written to a temporary file and renamed over the old one).
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        save_adapter_atomic(&self.lora.to_adapter()?, dir)
    }
}

/// Writes `adapter` to `dir` without ever leaving a half-written file under the final name.
fn save_adapter_atomic(adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    if dir.exists() {
        return adapter.save(dir);
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into());
    let tmp = dir.with_file_name(format!("{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|source| MlError::Io {
            path: tmp.clone(),
            source,
        })?;
    }
    adapter.save(&tmp)?;
    std::fs::rename(&tmp, dir).map_err(|source| MlError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// `(path, in, out)` of every projection `cfg` targets; an error when a target matches none.
fn target_modules(model: &dyn DecoderLm, cfg: &LoraConfig) -> Result<Vec<(String, usize, usize)>> {
    let projections = model.projections();
    if projections.is_empty() {
        return Err(MlError::Unsupported(format!(
            "the {} decoder exposes no layers for LoRA",
            model.architecture()
        )));
    }
    for t in &cfg.target_modules {
        let one = LoraConfig {
            target_modules: vec![t.clone()],
            ..cfg.clone()
        };
        if !projections.iter().any(|p| one.targets(p.path())) {
            return Err(MlError::Mismatch(format!(
                "LoRA target '{t}' matches no layer of the {} decoder; targets are module names \
                 such as {}",
                model.architecture(),
                DECODER_LORA_TARGETS.join(", ")
            )));
        }
    }
    Ok(projections
        .iter()
        .filter(|p| cfg.targets(p.path()))
        .map(|p| {
            let [out, inp] = p.out_in();
            (p.path().to_string(), inp, out)
        })
        .collect())
}

fn attach(model: &mut dyn DecoderLm, lora: &Arc<LoraTrain>) -> Result<()> {
    for p in model.projections_mut() {
        p.set_lora(Some(lora.clone()))?;
    }
    Ok(())
}

/// Module path → `[out, in]` of every projection of `model`.
fn projection_shapes(model: &dyn DecoderLm) -> BTreeMap<String, [usize; 2]> {
    model
        .projections()
        .iter()
        .map(|p| (p.path().to_string(), p.out_in()))
        .collect()
}

/// Reads a PEFT folder written for a decoder, with module paths restored to the Hugging
/// Face form (`model.layers.{i}...`; [`LoraAdapter::load`] drops a leading `model.`).
pub fn load_decoder_adapter(dir: &Path, device: &Device) -> Result<LoraAdapter> {
    let mut adapter = LoraAdapter::load(dir, device)?;
    if adapter.config.is_full() {
        return Err(full_unsupported(&dir.join(CONFIG_FILE)));
    }
    adapter.modules = std::mem::take(&mut adapter.modules)
        .into_iter()
        .map(|(p, pair)| {
            let p = if p.starts_with("layers.") {
                format!("model.{p}")
            } else {
                p
            };
            (p, pair)
        })
        .collect();
    Ok(adapter)
}

/// Full updates are trained for BERT-family encoders only: a decoder LLM's full weights
/// would not fit the memory LoRA is there to save.
fn full_unsupported(path: &Path) -> MlError {
    MlError::Unsupported(format!(
        "{}: full fine-tuning ([lora] full = true) is for BERT-family encoders; decoder LLMs \
         train LoRA adapters",
        path.display()
    ))
}

/// Checks that every module of `adapter` is a layer in `shapes` with matching `A` `[r, in]`
/// and `B` `[out, r]`.
fn check_adapter(
    adapter: &LoraAdapter,
    shapes: &BTreeMap<String, [usize; 2]>,
    dir: &Path,
) -> Result<()> {
    let cfg = dir.join(CONFIG_FILE);
    if adapter.modules.is_empty() {
        return Err(MlError::Corrupt {
            path: dir.join(crate::lora::WEIGHTS_FILE),
            what: "the adapter has no modules".into(),
        });
    }
    for (path, pair) in &adapter.modules {
        let Some(&[out, inp]) = shapes.get(path) else {
            return Err(MlError::Mismatch(format!(
                "{}: adapter module '{path}' is not a layer of this model (layers are named \
                 like 'model.layers.0.self_attn.q_proj'); the adapter belongs to another model",
                cfg.display()
            )));
        };
        let (_, a_in) = pair.a.dims2()?;
        let (b_out, _) = pair.b.dims2()?;
        if a_in != inp || b_out != out {
            return Err(MlError::Mismatch(format!(
                "{}: adapter module '{path}' maps {a_in} → {b_out} features, the layer {inp} → \
                 {out}; the adapter belongs to another model",
                cfg.display()
            )));
        }
    }
    Ok(())
}

/// Loads the decoder in `g` for inference with the PEFT adapter in `adapter_dir` (none:
/// plain [`load_decoder`]). In [`WeightMode::F32`] (and [`WeightMode::Bf16`]) the adapter is
/// merged into the dense weights (no cost per token); in [`WeightMode::Quantized`] it is applied unmerged on top
/// of the quantized base (merging would need a re-quantization that loses the adapter's
/// small update in the rounding).
pub fn load_decoder_with_adapter(
    g: &GgufFile,
    mode: WeightMode,
    adapter_dir: Option<&Path>,
    device: &Device,
) -> Result<Box<dyn DecoderLm>> {
    let mut model = load_decoder(g, mode, device)?;
    let Some(dir) = adapter_dir else {
        return Ok(model);
    };
    let adapter = load_decoder_adapter(dir, device)?;
    check_adapter(&adapter, &projection_shapes(model.as_ref()), dir)?;
    let scale = adapter.config.scale();
    for p in model.projections_mut() {
        let Some(pair) = adapter.modules.get(p.path()) else {
            continue;
        };
        match mode {
            WeightMode::F32 | WeightMode::Bf16 => {
                let delta = (pair.b.matmul(&pair.a)? * scale)?;
                p.merge(&delta)?;
            }
            WeightMode::Quantized => p.set_frozen(&pair.a, &pair.b, scale)?,
        }
    }
    Ok(model)
}

/// Tensor types of a merged GGUF export.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Every tensor f32.
    F32,
    /// Matrices f16, vectors f32.
    F16,
    /// Matrices Q8_0 (8-bit blocks of 32), vectors f32.
    Q8_0,
    /// Matrices Q4_0 (4-bit blocks of 32), vectors f32.
    Q4_0,
}

impl ExportFormat {
    /// The ggml type of the matrices.
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            ExportFormat::F32 => GgmlDType::F32,
            ExportFormat::F16 => GgmlDType::F16,
            ExportFormat::Q8_0 => GgmlDType::Q8_0,
            ExportFormat::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_Q8_0`,
    /// `MOSTLY_Q4_0`).
    pub fn file_type(self) -> u32 {
        match self {
            ExportFormat::F32 => 0,
            ExportFormat::F16 => 1,
            ExportFormat::Q8_0 => 7,
            ExportFormat::Q4_0 => 2,
        }
    }

    /// Lower-case name as accepted by [`ExportFormat::from_str`] (`f32`, `f16`, `q8_0`,
    /// `q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::F32 => "f32",
            ExportFormat::F16 => "f16",
            ExportFormat::Q8_0 => "q8_0",
            ExportFormat::Q4_0 => "q4_0",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = MlError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => ExportFormat::F32,
            "f16" => ExportFormat::F16,
            "q8_0" | "q8" => ExportFormat::Q8_0,
            "q4_0" | "q4" => ExportFormat::Q4_0,
            other => {
                return Err(MlError::Unsupported(format!(
                    "export format '{other}' is not supported; choose f32, f16, q8_0 or q4_0"
                )))
            }
        })
    }
}

/// The Hugging Face row of each stored row of GGUF matrix `name` (`blk.{i}.attn_q`, without
/// `.weight`), when the file stores it permuted (q/k of `llama` files).
fn stored_hf_rows(g: &GgufFile, name: &str) -> Result<Option<Vec<u32>>> {
    if g.architecture()? != "llama" {
        return Ok(None);
    }
    let heads = HeadShape::from_gguf(g, "llama")?;
    Ok(if name.ends_with(".attn_q") {
        Some(llama_qk_rows(heads.heads, heads.head_dim))
    } else if name.ends_with(".attn_k") {
        Some(llama_qk_rows(heads.kv_heads, heads.head_dim))
    } else {
        None
    })
}

/// The base's matrices with the adapter merged: GGUF tensor name (with `.weight`) → merged
/// f32 weight in the file's row order, for every adapted layer.
fn merged_weights(
    g: &GgufFile,
    adapter: &LoraAdapter,
    adapter_dir: &Path,
) -> Result<BTreeMap<String, Tensor>> {
    let cpu = Device::Cpu;
    let mut shapes = BTreeMap::new();
    for name in g.tensor_names() {
        if let Some(base) = name.strip_suffix(".weight") {
            if let Some(path) = hf_module_path(base) {
                let s = g.tensor_shape(name)?;
                if let [out, inp] = s[..] {
                    shapes.insert(path, [out, inp]);
                }
            }
        }
    }
    check_adapter(adapter, &shapes, adapter_dir)?;
    let mut out = BTreeMap::new();
    for path in adapter.modules.keys() {
        let Some(delta) = adapter.delta(path)? else {
            continue;
        };
        let name = gguf_tensor_name(path).ok_or_else(|| {
            MlError::Mismatch(format!("adapter module '{path}' has no GGUF counterpart"))
        })?;
        let mut delta = delta.to_dtype(DType::F32)?;
        if let Some(rows) = stored_hf_rows(g, &name)? {
            let idx = Tensor::from_vec(rows, delta.dim(0)?, &cpu)?;
            delta = delta.index_select(&idx, 0)?;
        }
        let wname = format!("{name}.weight");
        let w = g.tensor_f32(&wname, &cpu)?;
        out.insert(wname, (w + delta)?);
    }
    Ok(out)
}

/// The type a matrix of the export is stored in: `format`'s, except that with Q4_0 the
/// output projection (`output.weight`, or the token embedding when the file ties them)
/// is stored Q8_0 — 4-bit logits cost far more quality than 4-bit blocks elsewhere, which is
/// why llama.cpp's own Q4_0 keeps it at 6 bits (Q6_K; its 256-wide blocks do not divide
/// widths such as 576 or 640, Q8_0's 32-wide ones do). A matrix whose rows do not split
/// into the type's blocks is stored f32.
fn matrix_dtype(format: ExportFormat, name: &str, has_output: bool, row: usize) -> GgmlDType {
    let is_head = name == "output.weight" || (!has_output && name == "token_embd.weight");
    let dtype = match format {
        ExportFormat::Q4_0 if is_head => GgmlDType::Q8_0,
        f => f.ggml_dtype(),
    };
    if row.is_multiple_of(dtype.block_size()) {
        dtype
    } else {
        GgmlDType::F32
    }
}

/// Writes `out`: the GGUF `base_gguf` with the PEFT adapter in `adapter_dir` merged into its
/// matrices, every matrix stored in `format` (with Q4_0, the output projection Q8_0; vectors
/// — norms, biases, rotary factors — stay f32, as llama.cpp expects; a matrix whose rows do
/// not split into the format's blocks is stored f32). All metadata (architecture, hyper-parameters, tokenizer, chat template) is
/// copied; `general.file_type` says the new type. Matrices the adapter does not touch and
/// that are already in `format` are copied bit for bit. The file is written under a
/// temporary name next to `out` and renamed into place.
pub fn export_merged_gguf(
    base_gguf: &Path,
    adapter_dir: &Path,
    out: &Path,
    format: ExportFormat,
) -> Result<()> {
    let g = GgufFile::open(base_gguf)?;
    let adapter = load_decoder_adapter(adapter_dir, &Device::Cpu)?;
    let mut merged = merged_weights(&g, &adapter, adapter_dir)?;
    let cpu = Device::Cpu;
    let has_output = g.has_tensor("output.weight");
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for name in g.tensor_names() {
        let shape = g.tensor_shape(name)?;
        let q = g.qtensor(name, &cpu)?;
        let row = shape.last().copied().unwrap_or(0);
        let qt = if shape.len() < 2 {
            if q.dtype() == GgmlDType::F32 {
                q
            } else {
                QTensor::quantize(&q.dequantize(&cpu)?, GgmlDType::F32)?
            }
        } else {
            let dtype = matrix_dtype(format, name, has_output, row);
            match merged.remove(name) {
                Some(w) => QTensor::quantize(&w, dtype)?,
                None if q.dtype() == dtype => q,
                None => QTensor::quantize(&q.dequantize(&cpu)?.to_dtype(DType::F32)?, dtype)?,
            }
        };
        tensors.push((name.to_string(), qt));
    }
    let mut meta: Vec<(String, Value)> = g
        .metadata()
        .iter()
        // candle's writer aligns tensor data to 32 bytes; another alignment key would lie.
        .filter(|(k, _)| k.as_str() != "general.alignment" && k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.push(("general.file_type".into(), Value::U32(format.file_type())));
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    write_gguf_atomic(out, &meta, &tensors)
}

fn write_gguf_atomic(
    out: &Path,
    meta: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    let tmp = out.with_file_name(format!("{name}.tmp-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MlError::Io { path: p, source }
    };
    let write = || -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::new(file);
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        candle_core::quantized::gguf_file::write(&mut w, &meta_refs, &t_refs)?;
        use std::io::Write;
        w.flush().map_err(io(&tmp))?;
        Ok(())
    };
    if let Err(e) = write() {
        // A partial file under the temporary name is useless; the error is what matters.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(io(out))
}

/// The Hugging Face name (without `.weight` / `.bias`) of GGUF tensor `base` in a model of
/// architecture `arch`, as transformers' `LlamaForCausalLM`, `Qwen2ForCausalLM`,
/// `Qwen3ForCausalLM` and `Gemma3ForCausalLM` name their parameters.
fn hf_tensor_name(arch: &str, base: &str) -> Option<String> {
    match base {
        "token_embd" => return Some("model.embed_tokens".into()),
        "output_norm" => return Some("model.norm".into()),
        "output" => return Some("lm_head".into()),
        _ => {}
    }
    if let Some(p) = hf_module_path(base) {
        return Some(p);
    }
    let rest = base.strip_prefix("blk.")?;
    let (i, part) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let module = match (part, arch == "gemma3") {
        ("attn_norm", _) => "input_layernorm",
        ("ffn_norm", false) => "post_attention_layernorm",
        ("ffn_norm", true) => "pre_feedforward_layernorm",
        ("post_attention_norm", true) => "post_attention_layernorm",
        ("post_ffw_norm", true) => "post_feedforward_layernorm",
        ("attn_q_norm", _) => "self_attn.q_norm",
        ("attn_k_norm", _) => "self_attn.k_norm",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{module}"))
}

/// `config.json` for the transformers class of the model in `g`.
fn hf_config(g: &GgufFile) -> Result<serde_json::Value> {
    use serde_json::json;
    let arch = g.architecture()?.to_string();
    let tied = !g.has_tensor("output.weight");
    let token = |k: &str| -> Result<Option<usize>> { g.usize_opt(&format!("tokenizer.ggml.{k}")) };
    let (bos, eos, pad) = (
        token("bos_token_id")?,
        token("eos_token_id")?,
        token("padding_token_id")?,
    );
    let mut cfg = if arch == "gemma3" {
        let c = crate::models::gemma3::Gemma3Config::from_gguf(g)?;
        let layer_types: Vec<&str> = (0..c.layers)
            .map(|i| {
                if c.is_sliding(i) {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        let mut full = json!({"rope_type": "default", "rope_theta": c.rope_global});
        if c.rope_global_linear != 1.0 {
            full = json!({"rope_type": "linear", "rope_theta": c.rope_global,
                          "factor": c.rope_global_linear});
        }
        json!({
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "hidden_size": c.dims.hidden,
            "intermediate_size": c.ffn,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads.heads,
            "num_key_value_heads": c.heads.kv_heads,
            "head_dim": c.heads.head_dim,
            "rms_norm_eps": c.eps,
            "rope_theta": c.rope_global,
            "rope_local_base_freq": c.rope_local,
            "rope_parameters": {
                "full_attention": full,
                "sliding_attention": {"rope_type": "default", "rope_theta": c.rope_local},
            },
            "sliding_window": c.sliding_window,
            "sliding_window_pattern": c.sliding_pattern,
            "layer_types": layer_types,
            // transformers' config class types it as an integer.
            "query_pre_attn_scalar": c.query_pre_attn_scalar.round() as u64,
            "max_position_embeddings": c.dims.context,
            "vocab_size": c.dims.vocab,
            "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null,
        })
    } else {
        let c = crate::models::llama::LlamaConfig::from_gguf(g, &arch)?;
        let class = match arch.as_str() {
            "llama" => "LlamaForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            other => {
                return Err(MlError::Unsupported(format!(
                    "{}: no Hugging Face class for architecture '{other}'",
                    g.path().display()
                )))
            }
        };
        if c.rope_dim != c.heads.head_dim {
            return Err(MlError::Unsupported(format!(
                "{}: partial rotary ({} of {} channels) has no field in the exported config",
                g.path().display(),
                c.rope_dim,
                c.heads.head_dim
            )));
        }
        let mut rope = json!({"rope_type": "default", "rope_theta": c.rope_theta});
        let mut legacy_scaling = serde_json::Value::Null;
        if c.rope_linear != 1.0 {
            rope = json!({"rope_type": "linear", "rope_theta": c.rope_theta,
                          "factor": c.rope_linear});
            legacy_scaling = json!({"type": "linear", "factor": c.rope_linear});
        }
        json!({
            "architectures": [class],
            "model_type": arch,
            "hidden_size": c.dims.hidden,
            "intermediate_size": c.ffn,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads.heads,
            "num_key_value_heads": c.heads.kv_heads,
            "head_dim": c.heads.head_dim,
            "rms_norm_eps": c.eps,
            "rope_theta": c.rope_theta,
            "rope_scaling": legacy_scaling,
            "rope_parameters": rope,
            "max_position_embeddings": c.dims.context,
            "vocab_size": c.dims.vocab,
            "hidden_act": "silu",
            "attention_bias": c.qkv_bias,
            "mlp_bias": false,
        })
    };
    let obj = cfg.as_object_mut().expect("a JSON object");
    obj.insert("tie_word_embeddings".into(), json!(tied));
    obj.insert("bos_token_id".into(), json!(bos));
    obj.insert("eos_token_id".into(), json!(eos));
    obj.insert("pad_token_id".into(), json!(pad));
    obj.insert("torch_dtype".into(), json!("float32"));
    Ok(cfg)
}

/// Writes the folder `out_dir` (which must not exist): the GGUF `base_gguf` with the PEFT
/// adapter in `adapter_dir` merged, as a Hugging Face model — `model.safetensors` (f32, the
/// transformers parameter names, `llama` q/k rows back in Hugging Face order, Gemma's norm
/// weights without the `+1` the GGUF converter folded in) and a `config.json` that
/// `AutoModelForCausalLM.from_pretrained` loads. The tokenizer is not converted:
/// transformers reads it from the GGUF (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`).
/// Written under a temporary name and renamed into place.
pub fn export_merged_safetensors(
    base_gguf: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
) -> Result<()> {
    if out_dir.exists() {
        return Err(MlError::Unsupported(format!(
            "{}: already exists; choose a new output folder",
            out_dir.display()
        )));
    }
    let g = GgufFile::open(base_gguf)?;
    let arch = g.architecture()?.to_string();
    if g.has_tensor("rope_freqs.weight") {
        return Err(MlError::Unsupported(format!(
            "{}: Llama 3 rotary frequency factors (rope_freqs.weight) cannot be written back as \
             a Hugging Face rope_scaling; export a GGUF instead",
            base_gguf.display()
        )));
    }
    let config = hf_config(&g)?;
    let adapter = load_decoder_adapter(adapter_dir, &Device::Cpu)?;
    let mut merged = merged_weights(&g, &adapter, adapter_dir)?;
    let cpu = Device::Cpu;
    let mut tensors: std::collections::HashMap<String, Tensor> = Default::default();
    for name in g.tensor_names() {
        let (base, suffix) = name.rsplit_once('.').unwrap_or((name, "weight"));
        let hf = hf_tensor_name(&arch, base).ok_or_else(|| {
            MlError::Unsupported(format!(
                "{}: tensor '{name}' has no Hugging Face counterpart known to juris",
                base_gguf.display()
            ))
        })?;
        let mut w = match merged.remove(name) {
            Some(w) => w,
            None => g.tensor_f32(name, &cpu)?,
        };
        if let Some(rows) = stored_hf_rows(&g, base)? {
            // Stored row g holds Hugging Face row rows[g]; put each back in its place.
            let mut inverse = vec![0u32; rows.len()];
            for (stored, &hf_row) in rows.iter().enumerate() {
                inverse[hf_row as usize] = stored as u32;
            }
            let idx = Tensor::from_vec(inverse, rows.len(), &cpu)?;
            w = w.index_select(&idx, 0)?;
        }
        if arch == "gemma3" && base.ends_with("_norm") {
            // Gemma's RMSNorm multiplies by (1 + w); llama.cpp's converter stored 1 + w.
            w = (w - 1.0)?;
        }
        tensors.insert(format!("{hf}.{suffix}"), w.contiguous()?);
    }
    let name = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = out_dir.with_file_name(format!("{name}.tmp-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MlError::Io { path: p, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let write = || -> Result<()> {
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| MlError::Unsupported(format!("config.json: {e}")))?;
        std::fs::write(tmp.join("config.json"), text).map_err(io(&tmp.join("config.json")))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out_dir).map_err(io(out_dir))
}
