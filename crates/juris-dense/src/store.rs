//! The embedding store: one folder of document vectors per (index, model), its on-disk
//! layout, atomic writing, and incremental refresh.
//!
//! # Layout (format version [`STORE_FORMAT_VERSION`])
//!
//! A store is a folder, by convention `<index-dir>/embeddings/<name>/`, holding:
//!
//! | file | layout | meaning |
//! |---|---|---|
//! | `meta.json` | JSON, [`StoreMeta`] | format version, model name and fingerprint, `dim`, `dtype`, `count`, whether rows are unit length, a per-row content hash, a write id |
//! | `vectors.bin` | `count × dim` values, row-major, little-endian `f16` or `f32` | row `i` is the embedding of document `ids[i]`; no header, so the file is memory-mapped and read in place |
//! | `ids.txt` | UTF-8, one id per line, `\n` after every line | document ids in row order (ids never contain `\n` or `\r`) |
//! | `hnsw.bin` | optional, see [`crate::HnswIndex`] | an HNSW graph over this store's rows, tied to the store by `write_id` |
//!
//! Opening checks that `vectors.bin` is exactly `count × dim × bytes` long, that `ids.txt`
//! and `content_hashes` hold `count` entries each, and that the format version is known; each
//! failure names the file and the field.
//!
//! # Atomic replacement
//!
//! A write goes to a sibling folder `.<name>.tmp-<pid>-<nanos>/`; every file and the folder
//! are fsynced; an existing store is renamed aside to `.<name>.old-<pid>-<nanos>/`, the new
//! folder is renamed to `<name>/`, the parent is fsynced, and the old folder is removed. A
//! reader therefore sees either the old store or the new one, never a mix. A crash between
//! the two renames leaves no `<name>/` but a complete `.old-` folder, which [`EmbeddingStore::open`]
//! names in its error; stale `.tmp-` and `.old-` siblings are removed by the next write.
//! (Linux cannot rename a folder over a non-empty one, hence the rename aside.)

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::error::{DenseError, Result};

/// The store format this crate writes and reads.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Name of the metadata file inside a store folder.
pub const META_FILE: &str = "meta.json";
/// Name of the vector matrix file inside a store folder.
pub const VECTORS_FILE: &str = "vectors.bin";
/// Name of the id list inside a store folder.
pub const IDS_FILE: &str = "ids.txt";

/// Rows whose L2 norm is within this of 1 count as unit vectors.
const UNIT_TOLERANCE: f32 = 1e-3;

/// Element type of `vectors.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE half precision: half the disk and memory, ~3 significant digits, which is ample
    /// for ranking by cosine.
    F16,
    /// IEEE single precision.
    F32,
}

impl Dtype {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// What the caller decides about a store: which model, how it is identified, the vector
/// size and how values are stored. Everything else in [`StoreMeta`] follows from the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// Model name for people (`multilingual-e5-small`, a path, …).
    pub model: String,
    /// A string that changes whenever the vectors the model produces would change (weights
    /// hash, pooling, prefix, max length …). Rows are reused only under the same fingerprint.
    pub fingerprint: String,
    /// Vector dimension, ≥ 1.
    pub dim: usize,
    /// Element type on disk.
    pub dtype: Dtype,
}

/// The content of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// [`STORE_FORMAT_VERSION`] at write time.
    pub format_version: u32,
    /// See [`StoreSpec::model`].
    pub model: String,
    /// See [`StoreSpec::fingerprint`].
    pub fingerprint: String,
    /// Vector dimension.
    pub dim: usize,
    /// Element type of `vectors.bin`.
    pub dtype: Dtype,
    /// Number of rows (= documents).
    pub count: usize,
    /// True when every row's L2 norm is 1 within 1e-3 (checked at write time, after
    /// rounding to `dtype`), so inner product equals cosine.
    pub normalized: bool,
    /// Caller-supplied content hash of each row's document, in row order; drives
    /// [`refresh`].
    pub content_hashes: Vec<String>,
    /// A number unique to this write; files derived from the store (the HNSW graph) record
    /// it so that a stale derived file is detected.
    pub write_id: u64,
}

/// The matrix, mapped or (when empty or on big-endian machines) decoded into memory.
enum Matrix {
    Map(memmap2::Mmap),
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// A borrowed view of the whole matrix, row-major, `count × dim` values.
#[derive(Clone, Copy)]
pub(crate) enum MatrixView<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

/// An opened embedding store (read-only). Cheap to share behind an `Arc`; the search
/// indexes hold one.
///
/// Invariants: `ids().len() == meta().count`, `meta().content_hashes.len() == count`,
/// the matrix holds exactly `count × dim` values.
pub struct EmbeddingStore {
    dir: PathBuf,
    meta: StoreMeta,
    ids: Vec<String>,
    matrix: Matrix,
}

impl std::fmt::Debug for EmbeddingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingStore")
            .field("dir", &self.dir)
            .field("model", &self.meta.model)
            .field("dim", &self.meta.dim)
            .field("count", &self.meta.count)
            .finish()
    }
}

impl EmbeddingStore {
    /// Opens the store in `dir`, validating sizes (see the module docs). The vectors are
    /// memory-mapped, so opening costs O(count) for the ids only.
    pub fn open(dir: &Path) -> Result<EmbeddingStore> {
        let meta_path = dir.join(META_FILE);
        if !meta_path.exists() {
            let hint = find_sibling(dir, ".old-")
                .map(|p| {
                    format!(
                        "; an interrupted write left {}: rename it to {} or rebuild",
                        p.display(),
                        dir.display()
                    )
                })
                .unwrap_or_else(|| "; build the embeddings first".to_string());
            return Err(DenseError::io(
                &meta_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no store{hint}")),
            ));
        }
        let text =
            std::fs::read_to_string(&meta_path).map_err(|e| DenseError::io(&meta_path, e))?;
        let meta: StoreMeta = serde_json::from_str(&text)
            .map_err(|e| DenseError::corrupt(&meta_path, format!("invalid JSON: {e}")))?;
        if meta.format_version != STORE_FORMAT_VERSION {
            return Err(DenseError::corrupt(
                &meta_path,
                format!(
                    "format_version is {}, this build reads {STORE_FORMAT_VERSION}",
                    meta.format_version
                ),
            ));
        }
        if meta.dim == 0 {
            return Err(DenseError::corrupt(&meta_path, "dim is 0"));
        }
        if meta.content_hashes.len() != meta.count {
            return Err(DenseError::corrupt(
                &meta_path,
                format!(
                    "content_hashes has {} entries, count is {}",
                    meta.content_hashes.len(),
                    meta.count
                ),
            ));
        }

        let ids_path = dir.join(IDS_FILE);
        let ids_text =
            std::fs::read_to_string(&ids_path).map_err(|e| DenseError::io(&ids_path, e))?;
        let ids: Vec<String> = ids_text.lines().map(str::to_string).collect();
        if ids.len() != meta.count || (meta.count > 0 && !ids_text.ends_with('\n')) {
            return Err(DenseError::corrupt(
                &ids_path,
                format!(
                    "{} ids (lines), meta.json count is {}",
                    ids.len(),
                    meta.count
                ),
            ));
        }

        let vec_path = dir.join(VECTORS_FILE);
        let file = File::open(&vec_path).map_err(|e| DenseError::io(&vec_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| DenseError::io(&vec_path, e))?
            .len();
        let want = (meta.count as u128) * (meta.dim as u128) * (meta.dtype.bytes() as u128);
        if len as u128 != want {
            return Err(DenseError::corrupt(
                &vec_path,
                format!(
                    "size is {len} bytes, count {} × dim {} × {} bytes ({:?}) = {want}",
                    meta.count,
                    meta.dim,
                    meta.dtype.bytes(),
                    meta.dtype
                ),
            ));
        }
        let matrix = if len == 0 {
            match meta.dtype {
                Dtype::F16 => Matrix::F16(Vec::new()),
                Dtype::F32 => Matrix::F32(Vec::new()),
            }
        } else if cfg!(target_endian = "little") {
            // SAFETY: the file is only ever replaced by rename, never modified in place, so
            // the mapped bytes do not change under us (see the module docs).
            let map =
                unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DenseError::io(&vec_path, e))?;
            Matrix::Map(map)
        } else {
            let bytes = std::fs::read(&vec_path).map_err(|e| DenseError::io(&vec_path, e))?;
            match meta.dtype {
                Dtype::F16 => Matrix::F16(
                    bytes
                        .chunks_exact(2)
                        .map(|b| f16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                ),
                Dtype::F32 => Matrix::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
            }
        };
        Ok(EmbeddingStore {
            dir: dir.to_path_buf(),
            meta,
            ids,
            matrix,
        })
    }

    /// The folder the store was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `meta.json`.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// Document ids in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.meta.count
    }

    /// True when the store holds no rows.
    pub fn is_empty(&self) -> bool {
        self.meta.count == 0
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.meta.dim
    }

    /// Row `i` as `f32` values, or `None` when `i >= len()`.
    pub fn row(&self, i: usize) -> Option<Vec<f32>> {
        if i >= self.len() {
            return None;
        }
        let mut out = vec![0.0; self.dim()];
        self.row_into(i, &mut out);
        Some(out)
    }

    /// Copies row `i` (< len) into `out` (len dim) as f32.
    pub(crate) fn row_into(&self, i: usize, out: &mut [f32]) {
        let d = self.dim();
        match self.view() {
            MatrixView::F16(m) => m[i * d..(i + 1) * d].convert_to_f32_slice(out),
            MatrixView::F32(m) => out.copy_from_slice(&m[i * d..(i + 1) * d]),
        }
    }

    pub(crate) fn view(&self) -> MatrixView<'_> {
        match (&self.matrix, self.meta.dtype) {
            (Matrix::Map(m), Dtype::F16) => MatrixView::F16(bytemuck::cast_slice(&m[..])),
            (Matrix::Map(m), Dtype::F32) => MatrixView::F32(bytemuck::cast_slice(&m[..])),
            (Matrix::F16(v), _) => MatrixView::F16(v),
            (Matrix::F32(v), _) => MatrixView::F32(v),
        }
    }
}

/// Writes a store row by row into a temporary sibling folder; [`StoreWriter::finish`]
/// publishes it atomically (see the module docs). Dropping the writer without finishing
/// removes the temporary folder.
pub struct StoreWriter {
    dir: PathBuf,
    tmp: PathBuf,
    spec: StoreSpec,
    vectors: BufWriter<File>,
    ids: BufWriter<File>,
    hashes: Vec<String>,
    normalized: bool,
    count: usize,
    scratch: Vec<f32>,
    finished: bool,
}

impl StoreWriter {
    /// Starts writing the store that will live at `dir`. Removes stale temporary siblings
    /// left by interrupted writes. Fails when `spec.dim == 0`.
    pub fn create(dir: &Path, spec: &StoreSpec) -> Result<StoreWriter> {
        if spec.dim == 0 {
            return Err(DenseError::Invalid("store dim must be at least 1".into()));
        }
        let (parent, name) = split_dir(dir)?;
        std::fs::create_dir_all(&parent).map_err(|e| DenseError::io(&parent, e))?;
        remove_stale_siblings(&parent, &name);
        let tmp = parent.join(format!(".{name}.tmp-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir(&tmp).map_err(|e| DenseError::io(&tmp, e))?;
        let open = |file: &str| -> Result<BufWriter<File>> {
            let p = tmp.join(file);
            Ok(BufWriter::with_capacity(
                1 << 20,
                File::create(&p).map_err(|e| DenseError::io(&p, e))?,
            ))
        };
        Ok(StoreWriter {
            dir: dir.to_path_buf(),
            vectors: open(VECTORS_FILE)?,
            ids: open(IDS_FILE)?,
            tmp,
            spec: spec.clone(),
            hashes: Vec::new(),
            normalized: true,
            count: 0,
            scratch: Vec::new(),
            finished: false,
        })
    }

    /// Appends one row. `row.len()` must equal the spec's dim; `id` must not contain a line
    /// break; values must be finite.
    pub fn push(&mut self, id: &str, content_hash: &str, row: &[f32]) -> Result<()> {
        if row.len() != self.spec.dim {
            return Err(DenseError::Mismatch(format!(
                "row for document {id:?} has {} values, the store's dim is {}",
                row.len(),
                self.spec.dim
            )));
        }
        if id.contains(['\n', '\r']) {
            return Err(DenseError::Invalid(format!(
                "document id {id:?} contains a line break"
            )));
        }
        if let Some(v) = row.iter().find(|v| !v.is_finite()) {
            return Err(DenseError::Invalid(format!(
                "row for document {id:?} holds {v}"
            )));
        }
        let vpath = self.tmp.join(VECTORS_FILE);
        let norm2 = match self.spec.dtype {
            Dtype::F32 => {
                self.vectors
                    .write_all(bytemuck::cast_slice(&le_f32(row)))
                    .map_err(|e| DenseError::io(&vpath, e))?;
                row.iter().map(|&x| x * x).sum::<f32>()
            }
            Dtype::F16 => {
                let h: Vec<f16> = row.iter().map(|&x| f16::from_f32(x)).collect();
                let bytes: Vec<u8> = h.iter().flat_map(|x| x.to_le_bytes()).collect();
                self.vectors
                    .write_all(&bytes)
                    .map_err(|e| DenseError::io(&vpath, e))?;
                self.scratch.resize(h.len(), 0.0);
                h.convert_to_f32_slice(&mut self.scratch);
                self.scratch.iter().map(|&x| x * x).sum::<f32>()
            }
        };
        self.normalized &= (norm2.sqrt() - 1.0).abs() <= UNIT_TOLERANCE;
        let ipath = self.tmp.join(IDS_FILE);
        writeln!(self.ids, "{id}").map_err(|e| DenseError::io(&ipath, e))?;
        self.hashes.push(content_hash.to_string());
        self.count += 1;
        Ok(())
    }

    /// Appends row `i` of `store`, copying stored values bit for bit when the dtypes agree.
    fn push_from(&mut self, store: &EmbeddingStore, i: usize, id: &str, hash: &str) -> Result<()> {
        let mut row = std::mem::take(&mut self.scratch);
        row.resize(store.dim(), 0.0);
        store.row_into(i, &mut row);
        // f16 → f32 → f16 is exact, so rewriting through f32 preserves bits either way.
        let r = self.push(id, hash, &row);
        self.scratch = row;
        r
    }

    /// Rows written so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no row has been written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes `meta.json`, fsyncs everything and publishes the store at its final path.
    pub fn finish(mut self) -> Result<StoreMeta> {
        let meta = StoreMeta {
            format_version: STORE_FORMAT_VERSION,
            model: self.spec.model.clone(),
            fingerprint: self.spec.fingerprint.clone(),
            dim: self.spec.dim,
            dtype: self.spec.dtype,
            count: self.count,
            normalized: self.normalized,
            content_hashes: std::mem::take(&mut self.hashes),
            write_id: nanos() ^ ((std::process::id() as u64) << 48),
        };
        for (w, name) in [(&mut self.vectors, VECTORS_FILE), (&mut self.ids, IDS_FILE)] {
            let p = self.tmp.join(name);
            w.flush().map_err(|e| DenseError::io(&p, e))?;
            w.get_ref().sync_all().map_err(|e| DenseError::io(&p, e))?;
        }
        let meta_path = self.tmp.join(META_FILE);
        let json =
            serde_json::to_vec_pretty(&meta).map_err(|e| DenseError::Invalid(e.to_string()))?;
        write_synced(&meta_path, &json)?;
        sync_dir(&self.tmp)?;
        publish_dir(&self.tmp, &self.dir)?;
        self.finished = true;
        Ok(meta)
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Writes a whole store at once. `vectors` is row-major, `ids.len() × spec.dim` values;
/// `content_hashes` is parallel to `ids`.
pub fn write_store(
    dir: &Path,
    spec: &StoreSpec,
    ids: &[String],
    content_hashes: &[String],
    vectors: &[f32],
) -> Result<StoreMeta> {
    if content_hashes.len() != ids.len() || vectors.len() != ids.len() * spec.dim {
        return Err(DenseError::Mismatch(format!(
            "{} ids, {} content hashes and {} values (expected {} × dim {})",
            ids.len(),
            content_hashes.len(),
            vectors.len(),
            ids.len(),
            spec.dim
        )));
    }
    let mut w = StoreWriter::create(dir, spec)?;
    for (i, (id, h)) in ids.iter().zip(content_hashes).enumerate() {
        w.push(id, h, &vectors[i * spec.dim..(i + 1) * spec.dim])?;
    }
    w.finish()
}

/// What [`refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefreshStats {
    /// Rows copied from the previous store (same id, content hash and fingerprint).
    pub reused: usize,
    /// Rows produced by the encoder (new or changed documents, or all after a model change).
    pub encoded: usize,
    /// Rows of the previous store whose id is no longer among the documents.
    pub removed: usize,
}

/// How many documents [`refresh`] hands to the encoder at once.
pub const REFRESH_BATCH: usize = 256;

/// The encoder callback of [`refresh`]: given positions into `docs`, returns their vectors,
/// row-major, `positions.len() × dim` values.
pub type EncodeFn<'a> = dyn FnMut(&[usize]) -> std::result::Result<Vec<f32>, Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// Brings the store at `dir` up to date with `docs` (`(id, content_hash)` in the desired
/// row order) and publishes it atomically.
///
/// A previous row is reused when the previous store has the same fingerprint and dim and
/// holds the same id with the same content hash; everything else is passed to `encode` in
/// batches of at most [`REFRESH_BATCH`] positions (ascending). Ids must be unique. A
/// missing or unreadable previous store means everything is encoded.
pub fn refresh(
    dir: &Path,
    spec: &StoreSpec,
    docs: &[(String, String)],
    encode: &mut EncodeFn<'_>,
) -> Result<RefreshStats> {
    let mut seen = HashMap::with_capacity(docs.len());
    for (pos, (id, _)) in docs.iter().enumerate() {
        if let Some(first) = seen.insert(id.as_str(), pos) {
            return Err(DenseError::Invalid(format!(
                "document id {id:?} appears twice (positions {first} and {pos})"
            )));
        }
    }
    let old = EmbeddingStore::open(dir).ok();
    let mut stats = RefreshStats::default();
    // Position in `docs` → row in the old store, for reusable documents.
    let mut reuse: Vec<Option<usize>> = vec![None; docs.len()];
    if let Some(old) = &old {
        stats.removed = old
            .ids()
            .iter()
            .filter(|id| !seen.contains_key(id.as_str()))
            .count();
        let compatible = old.meta().fingerprint == spec.fingerprint && old.dim() == spec.dim;
        if compatible {
            let by_id: HashMap<&str, usize> = old
                .ids()
                .iter()
                .enumerate()
                .map(|(r, id)| (id.as_str(), r))
                .collect();
            for (pos, (id, hash)) in docs.iter().enumerate() {
                if let Some(&r) = by_id.get(id.as_str()) {
                    if old.meta().content_hashes[r] == *hash {
                        reuse[pos] = Some(r);
                    }
                }
            }
        }
    }
    let todo: Vec<usize> = (0..docs.len()).filter(|&p| reuse[p].is_none()).collect();
    let mut w = StoreWriter::create(dir, spec)?;
    // `encoded` holds the vectors of todo[batch_start..batch_start + batch_len].
    let (mut next_todo, mut batch_start, mut batch_len) = (0usize, 0usize, 0usize);
    let mut encoded: Vec<f32> = Vec::new();
    for (pos, (id, hash)) in docs.iter().enumerate() {
        if let (Some(r), Some(old)) = (reuse[pos], &old) {
            w.push_from(old, r, id, hash)?;
            stats.reused += 1;
            continue;
        }
        if next_todo >= batch_start + batch_len {
            let end = (next_todo + REFRESH_BATCH).min(todo.len());
            let batch = &todo[next_todo..end];
            encoded = encode(batch).map_err(DenseError::Encode)?;
            if encoded.len() != batch.len() * spec.dim {
                return Err(DenseError::Mismatch(format!(
                    "the encoder returned {} values for {} documents of dim {}",
                    encoded.len(),
                    batch.len(),
                    spec.dim
                )));
            }
            (batch_start, batch_len) = (next_todo, batch.len());
        }
        let k = next_todo - batch_start;
        w.push(id, hash, &encoded[k * spec.dim..(k + 1) * spec.dim])?;
        next_todo += 1;
        stats.encoded += 1;
    }
    drop(old);
    w.finish()?;
    Ok(stats)
}

fn le_f32(row: &[f32]) -> Vec<u32> {
    row.iter().map(|x| x.to_bits().to_le()).collect()
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn split_dir(dir: &Path) -> Result<(PathBuf, String)> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            DenseError::Invalid(format!(
                "{}: a store path must end in a UTF-8 folder name",
                dir.display()
            ))
        })?
        .to_string();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

fn find_sibling(dir: &Path, marker: &str) -> Option<PathBuf> {
    let (parent, name) = split_dir(dir).ok()?;
    let prefix = format!(".{name}{marker}");
    std::fs::read_dir(&parent)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
}

/// Removes `.<name>.tmp-*` and `.<name>.old-*` folders left by interrupted writes. Best
/// effort: a folder another process is writing right now would be removed too, which is
/// why two writers must not target one store at once (the index folder is single-writer).
fn remove_stale_siblings(parent: &Path, name: &str) {
    let tmp = format!(".{name}.tmp-");
    let old = format!(".{name}.old-");
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&tmp) || n.starts_with(&old))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Writes `bytes` to `path` and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| DenseError::io(path, e))?;
    f.write_all(bytes).map_err(|e| DenseError::io(path, e))?;
    f.sync_all().map_err(|e| DenseError::io(path, e))
}

/// Fsyncs a folder so that renames inside it are durable (no-op where unsupported).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let f = File::open(dir).map_err(|e| DenseError::io(dir, e))?;
        f.sync_all().map_err(|e| DenseError::io(dir, e))?;
    }
    let _ = dir;
    Ok(())
}

/// Replaces `dir` by the complete folder `tmp` (a sibling), as described in the module docs.
fn publish_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let (parent, name) = split_dir(dir)?;
    let aside = parent.join(format!(".{name}.old-{}-{}", std::process::id(), nanos()));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &aside).map_err(|e| DenseError::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| DenseError::io(dir, e))?;
    sync_dir(&parent)?;
    if had_old {
        let _ = std::fs::remove_dir_all(&aside);
    }
    Ok(())
}
