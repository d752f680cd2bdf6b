//! Reading GGUF files (llama.cpp's single-file model format) for the decoder models: the
//! header and metadata through candle's `gguf_file` reader, typed metadata access whose
//! errors name the file and the key, and tensors loaded either dequantized to f32 (best
//! parity with reference implementations) or kept quantized for [`candle_core::quantized::QMatMul`].
//!
//! Design decision: every tensor's extent is checked against the file size when the file is
//! opened, so a truncated download fails at once with one clear message instead of deep
//! inside model construction.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::error::{MlError, Result};

/// What to tell a user whose model file is damaged.
const REFETCH: &str = "re-download it (bash scripts/fetch-models.sh) or convert it again";

/// An open GGUF file: parsed header and metadata, tensor directory, and a handle to read
/// tensor data on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file_len: u64,
    file: Mutex<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .field("metadata", &self.content.metadata.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path`; fails with [`MlError::Corrupt`] when the header cannot be
    /// read or a tensor lies (partly) beyond the end of the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                MlError::Missing {
                    path: path.to_path_buf(),
                    hint: "run bash scripts/fetch-models.sh or give the path of a .gguf file"
                        .into(),
                }
            } else {
                MlError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| MlError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        // Buffered: the header is read a few bytes at a time (each of a vocabulary's 262k
        // token strings is a length and its bytes), one system call each without a buffer
        // (a quarter of Gemma-3-270M's load time). Tensor reads seek first, so the buffer's
        // read-ahead does not matter afterwards.
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let content = Content::read(&mut reader).map_err(|e| MlError::Corrupt {
            path: path.to_path_buf(),
            what: format!(
                "not a readable GGUF file (truncated or damaged header, {file_len} bytes): {e}; {REFETCH}"
            ),
        })?;
        let file = reader.into_inner();
        let gguf = GgufFile {
            path: path.to_path_buf(),
            content,
            file_len,
            file: Mutex::new(file),
        };
        gguf.check_extents()?;
        Ok(gguf)
    }

    /// Every tensor's data must lie inside the file; a short file means a truncated copy.
    fn check_extents(&self) -> Result<()> {
        for (name, info) in &self.content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if !elems.is_multiple_of(block) {
                return Err(self.corrupt(format!(
                    "tensor '{name}' has {elems} elements, not a multiple of the {:?} block size {block}; {REFETCH}",
                    info.ggml_dtype
                )));
            }
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = self
                .content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes);
            if end > self.file_len {
                return Err(self.corrupt(format!(
                    "truncated: tensor '{name}' needs bytes up to offset {end} but the file has {} bytes; {REFETCH}",
                    self.file_len
                )));
            }
        }
        Ok(())
    }

    fn corrupt(&self, what: String) -> MlError {
        MlError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// All metadata entries.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// `general.architecture` ("llama", "gemma3", ...).
    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture")
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn missing_key(&self, key: &str) -> MlError {
        self.corrupt(format!(
            "metadata key '{key}' is missing; the file was written by a converter juris does not know, {REFETCH}"
        ))
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> MlError {
        self.corrupt(format!(
            "metadata key '{key}' is {:?}, expected {want}; {REFETCH}",
            got.value_type()
        ))
    }

    /// Integer metadata of any integer width, as u64; `None` when absent.
    pub fn u64_opt(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.map(Some)
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// Required integer metadata as usize.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.missing_key(key))
    }

    /// Optional integer metadata as usize.
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        Ok(self.u64_opt(key)?.map(|n| n as usize))
    }

    /// Optional float metadata (f32 or f64, integers accepted), as f64.
    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v {
            Value::F32(x) => Ok(Some(*x as f64)),
            Value::F64(x) => Ok(Some(*x)),
            _ => match self.u64_opt(key) {
                Ok(n) => Ok(n.map(|n| n as f64)),
                Err(_) => Err(self.wrong_type(key, "a number", v)),
            },
        }
    }

    /// Required float metadata.
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.f64_opt(key)?.ok_or_else(|| self.missing_key(key))
    }

    /// Optional boolean metadata.
    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a boolean", v)),
        }
    }

    /// Optional string metadata.
    pub fn string_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// Required string metadata.
    pub fn string(&self, key: &str) -> Result<&str> {
        self.string_opt(key)?.ok_or_else(|| self.missing_key(key))
    }

    fn array_opt(&self, key: &str) -> Result<Option<&Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    /// Optional array of strings.
    pub fn string_array_opt(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(a) = self.array_opt(key)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(a.len());
        for (i, v) in a.iter().enumerate() {
            match v {
                Value::String(s) => out.push(s.as_str()),
                other => return Err(self.wrong_type(&format!("{key}[{i}]"), "a string", other)),
            }
        }
        Ok(Some(out))
    }

    /// Required array of strings.
    pub fn string_array(&self, key: &str) -> Result<Vec<&str>> {
        self.string_array_opt(key)?
            .ok_or_else(|| self.missing_key(key))
    }

    /// Optional array of numbers (any numeric type), as f32.
    pub fn f32_array_opt(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(a) = self.array_opt(key)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(a.len());
        for (i, v) in a.iter().enumerate() {
            let x = match v {
                Value::F32(x) => *x,
                Value::F64(x) => *x as f32,
                Value::I32(x) => *x as f32,
                Value::U32(x) => *x as f32,
                Value::I8(x) => *x as f32,
                Value::U8(x) => *x as f32,
                Value::I16(x) => *x as f32,
                Value::U16(x) => *x as f32,
                Value::I64(x) => *x as f32,
                Value::U64(x) => *x as f32,
                other => return Err(self.wrong_type(&format!("{key}[{i}]"), "a number", other)),
            };
            out.push(x);
        }
        Ok(Some(out))
    }

    /// Optional array of integers, as i64.
    pub fn int_array_opt(&self, key: &str) -> Result<Option<Vec<i64>>> {
        Ok(self
            .f32_array_opt(key)?
            .map(|v| v.into_iter().map(|x| x as i64).collect()))
    }

    /// Whether the file holds tensor `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(|s| s.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// The logical shape of tensor `name` in candle's order (rows last-to-first as GGUF
    /// stores them reversed: a weight of `out x in` reads as `[out, in]`).
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        match self.content.tensor_infos.get(name) {
            Some(info) => Ok(info.shape.dims().to_vec()),
            None => Err(self.missing_tensor(name)),
        }
    }

    fn missing_tensor(&self, name: &str) -> MlError {
        let arch = self.architecture().unwrap_or("?");
        self.corrupt(format!(
            "tensor '{name}' is missing (architecture '{arch}', {} tensors in the file); the file is incomplete or not a {arch} model; {REFETCH}",
            self.content.tensor_infos.len()
        ))
    }

    /// Reads tensor `name` as stored (quantized or not) onto `device`.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(self.missing_tensor(name));
        };
        // A poisoned lock only means another reader panicked mid-read; the file handle
        // itself is still usable because every read seeks first.
        let mut file = match self.file.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        info.read(&mut *file, self.content.tensor_data_offset, device)
            .map_err(|e| self.corrupt(format!("reading tensor '{name}' failed: {e}; {REFETCH}")))
    }

    /// Reads tensor `name` dequantized to f32.
    pub fn tensor_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        let q = self.qtensor(name, device)?;
        Ok(q.dequantize(device)?.to_dtype(DType::F32)?)
    }

    /// Reads tensor `name` dequantized to f32 and checks its shape.
    pub fn tensor_f32_shaped(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        let got = self.tensor_shape(name)?;
        if got != shape {
            return Err(self.corrupt(format!(
                "tensor '{name}' has shape {got:?}, the metadata implies {shape:?}; {REFETCH}"
            )));
        }
        self.tensor_f32(name, device)
    }

    /// Checks that tensor `name` has `shape` (used before loading it quantized).
    pub fn expect_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let got = self.tensor_shape(name)?;
        if got != shape {
            return Err(self.corrupt(format!(
                "tensor '{name}' has shape {got:?}, the metadata implies {shape:?}; {REFETCH}"
            )));
        }
        Ok(())
    }
}
