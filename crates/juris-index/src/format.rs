//! The on-disk index format, version [`FORMAT_VERSION`].
//!
//! An index is a folder holding a small JSON manifest, [`MANIFEST`] (`juris-index.json`),
//! and one generation folder `gen-N/` named by the manifest's `generation`. Every number in
//! the binary files is **little-endian**; arrays are plain packed arrays with no header, so
//! the files are memory-mapped and read in place (on little-endian machines; elsewhere they
//! are decoded into memory at open).
//!
//! | file (in `gen-N/`) | layout | meaning |
//! |---|---|---|
//! | `terms.dat` | bytes | every term's UTF-8 bytes, terms sorted bytewise, concatenated |
//! | `terms.off` | `u64 × (T+1)` | term `i` is `terms.dat[off[i]..off[i+1]]`; `off[0] = 0`, `off[T]` = file size |
//! | `postings.off` | `u64 × (T+1)` | term `i`'s postings are entries `off[i]..off[i+1]`; `df = off[i+1] − off[i]`; `off[T] = P` |
//! | `postings.doc` | `u32 × P` | document numbers, ascending within each term |
//! | `postings.tf` | `u32 × P` | occurrences of the term in that document (≥ 1) |
//! | `postings.imp` | `f32 × P` | `impact − absent` of the posting under the manifest's scorer (see [`crate::scoring`]) |
//! | `postings.skip` | `u32 × (⌊P/16⌋ + T)` | skip table: term `t`'s postings `a..b` form blocks of [`SKIP_BLOCK`] (the last may be shorter); the largest document of its block `j` is entry `⌊a/16⌋ + t + j` ([`skip_start`]); entries no term uses hold 0 |
//! | `terms.w` | `f32 × 2T` | per term: `absent_t`, then the largest `postings.imp` value of the term (MaxScore bound) |
//! | `docs.len` | `u32 × D` | document length in terms |
//! | `ids.dat` | bytes | document ids (UTF-8), in document-number order, concatenated |
//! | `ids.off` | `u64 × (D+1)` | id of document `d` is `ids.dat[off[d]..off[d+1]]` |
//! | `ids.sort` | `u32 × D` | document numbers ordered by id bytes (binary search for id → number) |
//! | `store.dat` | JSON lines | one [`Document`](crate::corpus::Document) per line, `meta.lang` filled in |
//! | `store.off` | `u64 × (D+1)` | document `d` is `store.dat[off[d]..off[d+1]]` (newline included) |
//!
//! `T` terms, `P` postings and `D` documents are recorded in the manifest, together with the
//! size and a 64-bit checksum ([`checksum`]) of every file. Opening checks that every file
//! exists with the size the counts imply and that every offsets table is monotone and ends
//! at the size of the file it indexes (O(T + D)); postings' document numbers are checked as
//! they are read, and [`crate::Index::verify`] checks everything, checksums included.
//!
//! **Atomic replacement.** A new generation is written to `gen-N.tmp-<pid>-<nanos>/` inside
//! the index folder, every file and the folder are fsynced, the folder is renamed to
//! `gen-N/`, then the manifest is written to `juris-index.json.tmp-<pid>`, fsynced and
//! renamed over `juris-index.json`. Only then are older generations removed. A crash at any
//! point leaves the manifest naming a complete generation.

use crate::error::IndexError;
use crate::scoring::ScorerConfig;
use juris_text::AnalyzerSpec;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest file name.
pub const MANIFEST: &str = "juris-index.json";
/// The `format` field of every manifest.
pub const FORMAT_NAME: &str = "juris-index";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;

/// Postings per block of the skip table, `postings.skip` (new in version 2). With 16
/// entries a block's document numbers fill one cache line: a search that jumps far ahead
/// in a long list finds the block in the small table, then reads one line of the list
/// instead of galloping and binary-searching across many.
pub const SKIP_BLOCK: usize = 16;

/// Where term `t`'s blocks start in the skip table when its postings start at entry `a`.
/// Term `t` needs `⌈df/16⌉` blocks and the next term starts at `⌊b/16⌋ + t + 1`, which is
/// at least `⌊a/16⌋ + t + ⌈df/16⌉`: the terms' block ranges never overlap and no offsets
/// table is needed, at the cost of at most one unused entry per term.
pub fn skip_start(a: usize, t: usize) -> usize {
    a / SKIP_BLOCK + t
}

/// Entries of the skip table of `p` postings and `t` terms.
pub fn skip_len(p: u64, t: u64) -> u64 {
    p / SKIP_BLOCK as u64 + t
}

/// The skip table of postings `post_doc` split into terms by the offsets `post_off` (as in
/// `postings.off`), or `None` when the offsets do not fit the postings.
pub fn build_skips(post_off: &[u64], post_doc: &[u32]) -> Option<Vec<u32>> {
    let n_terms = post_off.len().checked_sub(1)?;
    let mut skips = vec![0u32; skip_len(post_doc.len() as u64, n_terms as u64) as usize];
    for (t, w) in post_off.windows(2).enumerate() {
        let (a, b) = (usize::try_from(w[0]).ok()?, usize::try_from(w[1]).ok()?);
        let docs = post_doc.get(a..b)?;
        let start = skip_start(a, t);
        let out = skips.get_mut(start..start + docs.len().div_ceil(SKIP_BLOCK))?;
        for (slot, block) in out.iter_mut().zip(docs.chunks(SKIP_BLOCK)) {
            *slot = block.last().copied().unwrap_or(0);
        }
    }
    Some(skips)
}

/// File names of one generation.
pub mod files {
    /// Term bytes.
    pub const TERMS_DAT: &str = "terms.dat";
    /// Term byte offsets.
    pub const TERMS_OFF: &str = "terms.off";
    /// Per-term `(absent, max impact)`.
    pub const TERMS_W: &str = "terms.w";
    /// Per-term postings offsets.
    pub const POSTINGS_OFF: &str = "postings.off";
    /// Postings document numbers.
    pub const POSTINGS_DOC: &str = "postings.doc";
    /// Postings term frequencies.
    pub const POSTINGS_TF: &str = "postings.tf";
    /// Postings impacts.
    pub const POSTINGS_IMP: &str = "postings.imp";
    /// Skip table of the postings (largest document per block).
    pub const POSTINGS_SKIP: &str = "postings.skip";

    /// Document lengths.
    pub const DOCS_LEN: &str = "docs.len";
    /// Document id bytes.
    pub const IDS_DAT: &str = "ids.dat";
    /// Document id offsets.
    pub const IDS_OFF: &str = "ids.off";
    /// Document numbers sorted by id.
    pub const IDS_SORT: &str = "ids.sort";
    /// Document store (JSON lines).
    pub const STORE_DAT: &str = "store.dat";
    /// Document store offsets.
    pub const STORE_OFF: &str = "store.off";
    /// Every file of a generation.
    pub const ALL: [&str; 14] = [
        TERMS_DAT,
        TERMS_OFF,
        TERMS_W,
        POSTINGS_OFF,
        POSTINGS_DOC,
        POSTINGS_TF,
        POSTINGS_IMP,
        POSTINGS_SKIP,
        DOCS_LEN,
        IDS_DAT,
        IDS_OFF,
        IDS_SORT,
        STORE_DAT,
        STORE_OFF,
    ];
}

/// One file of a generation as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside `gen-N/`.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// [`checksum`] of the contents, 16 hex digits.
    pub checksum: String,
}

/// The manifest, `juris-index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u64,
    /// Which `gen-N/` folder holds the data.
    pub generation: u64,
    /// The analyzers documents were (and queries must be) analyzed with.
    pub analyzer: AnalyzerSpec,
    /// The scorer `postings.imp` and `terms.w` were computed for.
    pub scorer: ScorerConfig,
    /// Documents `D`.
    pub n_docs: u64,
    /// Distinct terms `T`.
    pub n_terms: u64,
    /// Postings `P`.
    pub n_postings: u64,
    /// Sum of document lengths.
    pub total_terms: u64,
    /// The program that wrote the index.
    pub created_by: String,
    /// Every file of the generation.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The generation folder's name.
    pub fn gen_dir_name(&self) -> String {
        gen_dir_name(self.generation)
    }

    /// The entry of `name`, if listed.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Reads and checks the manifest of the index in `dir`.
    pub fn read(dir: &Path) -> Result<Manifest, IndexError> {
        let path = dir.join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.is_dir() {
                    IndexError::NotAnIndex {
                        path: dir.to_path_buf(),
                    }
                } else {
                    IndexError::io(dir, e)
                })
            }
            Err(e) => return Err(IndexError::io(&path, e)),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| IndexError::corrupt(&path, format!("not valid JSON: {e}")))?;
        if value.get("format").and_then(|v| v.as_str()) != Some(FORMAT_NAME) {
            return Err(IndexError::corrupt(
                &path,
                format!("\"format\" is not {FORMAT_NAME:?}"),
            ));
        }
        let version = value
            .get("version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| IndexError::corrupt(&path, "\"version\" is missing or not a number"))?;
        if version != u64::from(FORMAT_VERSION) {
            return Err(IndexError::Version {
                path,
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| {
            IndexError::corrupt(&path, format!("unexpected manifest contents: {e}"))
        })?;
        m.scorer
            .validate()
            .map_err(|e| IndexError::corrupt(&path, e.to_string()))?;
        if m.n_docs > u64::from(u32::MAX) {
            return Err(IndexError::corrupt(&path, "n_docs exceeds 2^32 − 1"));
        }
        Ok(m)
    }

    /// Writes the manifest atomically (temp file, fsync, rename, fsync of the folder).
    pub fn write_atomic(&self, dir: &Path) -> Result<(), IndexError> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!("{MANIFEST}.tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| IndexError::io(&tmp, std::io::Error::other(e)))?;
        {
            let mut f = File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
            f.write_all(&json).map_err(|e| IndexError::io(&tmp, e))?;
            f.write_all(b"\n").map_err(|e| IndexError::io(&tmp, e))?;
            f.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| IndexError::io(&path, e))?;
        sync_dir(dir)
    }
}

/// `gen-N`.
pub fn gen_dir_name(generation: u64) -> String {
    format!("gen-{generation}")
}

/// Fsyncs a folder so that renames inside it are durable (no-op where unsupported).
pub fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    #[cfg(unix)]
    {
        let f = File::open(dir).map_err(|e| IndexError::io(dir, e))?;
        f.sync_all().map_err(|e| IndexError::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A fast 64-bit checksum of `bytes` (word-wise multiply–rotate; detects truncation,
/// bit flips and swapped blocks, not adversarial changes).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut s = Checksum::default();
    s.update(bytes);
    s.finish()
}

/// Streaming form of [`checksum`]: `update` may be called with any split of the input.
#[derive(Debug, Clone, Default)]
pub struct Checksum {
    h: u64,
    len: u64,
    pending: [u8; 8],
    n_pending: usize,
}

impl Checksum {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(Self::K);
    }

    /// Adds bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.n_pending > 0 {
            let take = (8 - self.n_pending).min(bytes.len());
            self.pending[self.n_pending..self.n_pending + take].copy_from_slice(&bytes[..take]);
            self.n_pending += take;
            bytes = &bytes[take..];
            if self.n_pending < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.word(w);
            self.n_pending = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.word(u64::from_le_bytes(a));
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.n_pending = rest.len();
    }

    /// The checksum of everything added.
    pub fn finish(&self) -> u64 {
        let mut s = self.clone();
        if s.n_pending > 0 {
            let mut a = [0u8; 8];
            a[..s.n_pending].copy_from_slice(&s.pending[..s.n_pending]);
            s.word(u64::from_le_bytes(a));
        }
        let len = s.len;
        s.word(len);
        s.h ^ (s.h >> 29)
    }
}

/// Writes a file of a generation, counting its size and checksum; fsyncs on `finish`.
pub(crate) struct FileWriter {
    path: PathBuf,
    name: String,
    out: std::io::BufWriter<File>,
    sum: Checksum,
}

impl FileWriter {
    pub(crate) fn create(dir: &Path, name: &str) -> Result<Self, IndexError> {
        let path = dir.join(name);
        let f = File::create(&path).map_err(|e| IndexError::io(&path, e))?;
        Ok(FileWriter {
            path,
            name: name.to_string(),
            out: std::io::BufWriter::with_capacity(1 << 20, f),
            sum: Checksum::default(),
        })
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), IndexError> {
        self.sum.update(bytes);
        self.out
            .write_all(bytes)
            .map_err(|e| IndexError::io(&self.path, e))
    }

    pub(crate) fn bytes_written(&self) -> u64 {
        self.sum.len
    }

    pub(crate) fn write_u32s(&mut self, v: &[u32]) -> Result<(), IndexError> {
        self.write_le(v, u32::to_le_bytes)
    }

    pub(crate) fn write_u64s(&mut self, v: &[u64]) -> Result<(), IndexError> {
        self.write_le(v, u64::to_le_bytes)
    }

    pub(crate) fn write_f32s(&mut self, v: &[f32]) -> Result<(), IndexError> {
        self.write_le(v, f32::to_le_bytes)
    }

    /// Writes `v` little-endian, in 64 Ki-element chunks so the buffer stays small.
    fn write_le<T: Copy, const N: usize>(
        &mut self,
        v: &[T],
        to_le: fn(T) -> [u8; N],
    ) -> Result<(), IndexError> {
        let mut buf = Vec::with_capacity(v.len().min(1 << 16) * N);
        for chunk in v.chunks(1 << 16) {
            buf.clear();
            for &x in chunk {
                buf.extend_from_slice(&to_le(x));
            }
            self.write(&buf)?;
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<FileEntry, IndexError> {
        let FileWriter {
            path,
            name,
            out,
            sum,
        } = self;
        let f = out
            .into_inner()
            .map_err(|e| IndexError::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| IndexError::io(&path, e))?;
        Ok(FileEntry {
            name,
            bytes: sum.len,
            checksum: format!("{:016x}", sum.finish()),
        })
    }
}

/// A little-endian scalar stored in index files.
pub(crate) trait LeScalar: Copy + Default + Send + Sync + 'static {
    const SIZE: usize;
    fn from_le(b: &[u8]) -> Self;
}

impl LeScalar for u32 {
    const SIZE: usize = 4;
    fn from_le(b: &[u8]) -> Self {
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        u32::from_le_bytes(a)
    }
}

impl LeScalar for u64 {
    const SIZE: usize = 8;
    fn from_le(b: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    }
}

impl LeScalar for f32 {
    const SIZE: usize = 4;
    fn from_le(b: &[u8]) -> Self {
        f32::from_bits(<u32 as LeScalar>::from_le(b))
    }
}

/// The bytes of one file: memory-mapped, or empty.
pub(crate) struct Bytes {
    map: Option<memmap2::Mmap>,
}

impl Bytes {
    /// Maps `path`, checking its size is `expected` bytes.
    pub(crate) fn open(path: &Path, expected: u64) -> Result<Bytes, IndexError> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexError::corrupt(path, "file is missing"))
            }
            Err(e) => return Err(IndexError::io(path, e)),
        };
        let len = f.metadata().map_err(|e| IndexError::io(path, e))?.len();
        if len != expected {
            return Err(IndexError::corrupt(
                path,
                format!("size is {len} bytes, expected {expected} (truncated or overwritten)"),
            ));
        }
        if len == 0 {
            return Ok(Bytes { map: None });
        }
        // SAFETY: the index files are never modified in place: writers create new
        // generations and rename them. Mapping a file someone else truncates is the one
        // hazard of mmap, and juris never does that to a published generation.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| IndexError::io(path, e))?;
        Ok(Bytes { map: Some(map) })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match &self.map {
            Some(m) => m,
            None => &[],
        }
    }
}

/// A packed little-endian array file, viewed in place on little-endian machines.
pub(crate) struct Column<T: LeScalar> {
    bytes: Bytes,
    owned: Option<Vec<T>>,
}

impl<T: LeScalar> Column<T> {
    /// Maps `path`, which must hold exactly `n` values.
    pub(crate) fn open(path: &Path, n: u64) -> Result<Column<T>, IndexError> {
        let expected = n
            .checked_mul(T::SIZE as u64)
            .ok_or_else(|| IndexError::corrupt(path, "element count overflows"))?;
        let bytes = Bytes::open(path, expected)?;
        let mut col = Column { bytes, owned: None };
        let aligned = {
            let raw = col.bytes.as_slice();
            // SAFETY: u32, u64 and f32 are plain data: every bit pattern is a valid value.
            let (pre, mid, post) = unsafe { raw.align_to::<T>() };
            pre.is_empty() && post.is_empty() && mid.len() as u64 == n
        };
        if cfg!(target_endian = "big") || !aligned {
            let v: Vec<T> = col
                .bytes
                .as_slice()
                .chunks_exact(T::SIZE)
                .map(T::from_le)
                .collect();
            col.owned = Some(v);
            col.bytes = Bytes { map: None };
        }
        Ok(col)
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        if let Some(v) = &self.owned {
            return v;
        }
        let raw = self.bytes.as_slice();
        // SAFETY: checked aligned and exactly sized in `open`; plain-data element type.
        let (_, mid, _) = unsafe { raw.align_to::<T>() };
        mid
    }
}

/// Checks an offsets table: starts at 0, never decreases, ends at `end`.
pub(crate) fn check_offsets(path: &Path, off: &[u64], end: u64) -> Result<(), IndexError> {
    match off.first() {
        Some(0) => {}
        Some(x) => {
            return Err(IndexError::corrupt(
                path,
                format!("first offset is {x}, expected 0"),
            ))
        }
        None => return Err(IndexError::corrupt(path, "offsets table is empty")),
    }
    if let Some(i) = off.windows(2).position(|w| w[0] > w[1]) {
        return Err(IndexError::corrupt(
            path,
            format!(
                "offsets decrease at entry {} ({} > {})",
                i + 1,
                off[i],
                off[i + 1]
            ),
        ));
    }
    match off.last() {
        Some(&last) if last == end => Ok(()),
        Some(&last) => Err(IndexError::corrupt(
            path,
            format!("last offset is {last}, expected {end} (the size of the data it indexes)"),
        )),
        None => Err(IndexError::corrupt(path, "offsets table is empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_streaming_matches_oneshot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let one = checksum(&data);
        for split in [0, 1, 3, 8, 9, 500, 999, 1000] {
            let mut s = Checksum::default();
            s.update(&data[..split]);
            s.update(&data[split..]);
            assert_eq!(s.finish(), one, "split {split}");
        }
        let mut flipped = data.clone();
        flipped[17] ^= 1;
        assert_ne!(checksum(&flipped), one);
        assert_ne!(checksum(&data[..999]), one);
    }
}
