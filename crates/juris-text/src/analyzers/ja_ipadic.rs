//! `ja-ipadic`: Japanese morphological analysis with `vibrato` and the MeCab IPADIC
//! dictionary, emitting base forms of content words.
//!
//! **Dictionary.** juris ships no dictionary. On first use it compiles one from the IPADIC
//! sources of Debian's `mecab-ipadic` package (EUC-JP `*.csv`, `matrix.def`, `char.def`,
//! `unk.def`) found in `$JURIS_IPADIC_DIR` or [`DEFAULT_IPADIC_DIR`], and caches the compiled
//! form (vibrato's own serialization behind a small checksummed header) in
//! `$JURIS_CACHE_DIR`, else `$XDG_CACHE_HOME/juris`, else `~/.cache/juris`, as
//! `ipadic-<fingerprint>.vibrato`. The fingerprint covers the source file names and sizes
//! and the vibrato version, so a different dictionary never loads a stale cache.
//! The cache is written to a temporary file in the same folder and renamed into place, so
//! concurrent or interrupted builds never leave a broken file; a cache that fails its
//! checksum or does not deserialize is rebuilt. A cache folder that cannot be written is
//! not an error: the dictionary is then rebuilt by every process.
//!
//! **Cost.** Measured on the 2-core development machine (dependencies at `opt-level = 2`,
//! see `examples/ipadic_build_time.rs`): the first build (read + transcode 52 MB of
//! sources, compile, write the cache) takes about 2.5–3 s wall time at ~230 MB peak
//! memory; the cache file is about 48 MB and later processes load it in about 0.6 s.
//! One tokenizer is shared by every `ja-ipadic` analyzer of the process.
//!
//! **Terms.** Input is NFKC-normalized and lowercased, cut into sentences (and at most
//! [`MAX_CHUNK_CHARS`] characters) so that huge inputs never build huge lattices, and
//! tokenized with MeCab-compatible settings (spaces ignored, unknown words grouped up to 24
//! characters). Kept, as base form (IPADIC feature 7, or the surface when it is `*`):
//! - nouns (名詞), except 非自立 (こと, もの), 代名詞 (これ), 数 (numerals, which IPADIC
//!   splits digit by digit), 特殊 and counter suffixes (接尾,助数詞: 条, 個); other suffixes
//!   such as 権 and 者 are kept, they carry meaning in law (所有権, 債務者);
//! - independent verbs (動詞,自立) — not auxiliary-like 非自立/接尾 verbs (いる, れる),
//!   and not the light verbs する, ある, いる, なる, おる (`無効とする`);
//! - independent adjectives (形容詞,自立);
//! - adverbs (副詞).
//!
//! Particles, auxiliaries, symbols, prefixes, conjunctions, adnominals and interjections
//! are dropped, as is any term without a letter or digit (IPADIC tags unknown symbols as
//! nouns).

use crate::normalize::{is_word_char, nfkc_lower};
use crate::{Analyzer, TextError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vibrato::{Dictionary, SystemDictionaryBuilder, Tokenizer};

/// Where Debian's `mecab-ipadic` package puts the IPADIC sources.
pub const DEFAULT_IPADIC_DIR: &str = "/usr/share/mecab/dic/ipadic";

/// Longest piece of text handed to the tokenizer at once, in characters.
pub const MAX_CHUNK_CHARS: usize = 2048;

/// Header of the cache file: magic, then format version, payload length and checksum.
const CACHE_MAGIC: &[u8; 12] = b"JURISIPADIC\0";
const CACHE_FORMAT: u32 = 1;

/// The folder the IPADIC sources are read from: `$JURIS_IPADIC_DIR`, else
/// [`DEFAULT_IPADIC_DIR`] when it holds them, else the copy that `scripts/install-deps.sh`
/// unpacks under the cache folder (see [`cache_dir`]) when it could not install the package.
pub fn ipadic_source_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("JURIS_IPADIC_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let system = PathBuf::from(DEFAULT_IPADIC_DIR);
    if system.join("matrix.def").is_file() {
        return system;
    }
    // Where scripts/install-deps.sh unpacks the Debian package when it cannot install it.
    let unpacked = cache_dir().map(|c| {
        c.join("mecab-ipadic")
            .join(DEFAULT_IPADIC_DIR.trim_start_matches('/'))
    });
    match unpacked {
        Some(d) if d.join("matrix.def").is_file() => d,
        _ => system,
    }
}

/// The juris cache folder: `$JURIS_CACHE_DIR`, else `$XDG_CACHE_HOME/juris`, else
/// `$HOME/.cache/juris`; `None` when none of these is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("JURIS_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("juris")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("juris")))
}

/// The IPADIC sources in `source_dir`: the sorted lexicon CSVs and the three definition
/// files, or the "install mecab-ipadic" error.
struct Sources {
    csvs: Vec<PathBuf>,
    matrix: PathBuf,
    char_def: PathBuf,
    unk_def: PathBuf,
}

fn find_sources(source_dir: &Path) -> Result<Sources, TextError> {
    let missing = || TextError::Dictionary {
        message: format!(
            "IPADIC sources not found in {}: install Debian's mecab-ipadic package \
             (apt-get install mecab-ipadic) or set JURIS_IPADIC_DIR to a folder with the \
             IPADIC *.csv, matrix.def, char.def and unk.def files",
            source_dir.display()
        ),
    };
    let entries = std::fs::read_dir(source_dir).map_err(|_| missing())?;
    let mut csvs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv")) && p.is_file())
        .collect();
    csvs.sort();
    let (matrix, char_def, unk_def) = (
        source_dir.join("matrix.def"),
        source_dir.join("char.def"),
        source_dir.join("unk.def"),
    );
    if csvs.is_empty() || !matrix.is_file() || !char_def.is_file() || !unk_def.is_file() {
        return Err(missing());
    }
    Ok(Sources {
        csvs,
        matrix,
        char_def,
        unk_def,
    })
}

/// The cache file for the sources in `source_dir`, under [`cache_dir`]; `None` without a
/// cache folder. Fails like the analyzer when the sources are missing.
pub fn ipadic_cache_path(source_dir: &Path) -> Result<Option<PathBuf>, TextError> {
    let sources = find_sources(source_dir)?;
    Ok(cache_dir().map(|d| d.join(cache_file_name(&sources))))
}

fn cache_file_name(s: &Sources) -> String {
    let mut h = Fnv::default();
    h.write(b"vibrato-0.5");
    h.write(&CACHE_FORMAT.to_le_bytes());
    for p in s.csvs.iter().chain([&s.matrix, &s.char_def, &s.unk_def]) {
        h.write(
            p.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        h.write(&len.to_le_bytes());
    }
    format!("ipadic-{:016x}.vibrato", h.0)
}

/// 64-bit FNV-1a, for the cache fingerprint and checksum (no dependency, stable across
/// Rust versions, unlike `DefaultHasher`).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Checksum of the cache payload: FNV-1a over 8-byte words (8× faster than bytewise on
/// ~100 MB; only corruption detection is needed).
fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    for b in chunks.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Reads a source file as UTF-8: IPADIC ships EUC-JP, but a folder already converted to
/// UTF-8 is accepted too (EUC-JP Japanese is practically never valid UTF-8).
fn read_source(path: &Path) -> Result<String, TextError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let bytes = e.into_bytes();
            let (text, _, _) = encoding_rs::EUC_JP.decode(&bytes);
            Ok(text.into_owned())
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> TextError {
    TextError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn dict_err(what: &str, e: impl std::fmt::Display) -> TextError {
    TextError::Dictionary {
        message: format!("{what}: {e}"),
    }
}

/// Compiles the IPADIC sources of `source_dir` into a vibrato dictionary (no cache).
pub fn build_ipadic_dictionary(source_dir: &Path) -> Result<Dictionary, TextError> {
    let s = find_sources(source_dir)?;
    build_from_sources(&s)
}

fn build_from_sources(s: &Sources) -> Result<Dictionary, TextError> {
    let mut lex = String::new();
    for p in &s.csvs {
        lex.push_str(&read_source(p)?);
        if !lex.ends_with('\n') {
            lex.push('\n');
        }
    }
    let matrix = read_source(&s.matrix)?;
    let char_def = read_source(&s.char_def)?;
    let unk_def = read_source(&s.unk_def)?;
    SystemDictionaryBuilder::from_readers(
        lex.as_bytes(),
        matrix.as_bytes(),
        char_def.as_bytes(),
        unk_def.as_bytes(),
    )
    .map_err(|e| {
        dict_err(
            &format!(
                "cannot compile IPADIC from {}",
                s.matrix.parent().unwrap_or(Path::new("")).display()
            ),
            e,
        )
    })
}

/// Loads the dictionary from the cache file at `cache`, if it is there and intact.
fn read_cache(cache: &Path) -> Option<Dictionary> {
    let mut f = std::fs::File::open(cache).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let payload = check_cache_bytes(&bytes)?;
    Dictionary::read(payload).ok()
}

/// The payload of cache file contents `bytes` when header, length and checksum agree.
fn check_cache_bytes(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
    if rest.len() < 20 {
        return None;
    }
    let (head, payload) = rest.split_at(20);
    let format = u32::from_le_bytes(head[0..4].try_into().ok()?);
    let len = u64::from_le_bytes(head[4..12].try_into().ok()?);
    let sum = u64::from_le_bytes(head[12..20].try_into().ok()?);
    (format == CACHE_FORMAT && len == payload.len() as u64 && sum == checksum(payload))
        .then_some(payload)
}

/// Serializes `payload` with the cache header.
fn cache_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 32);
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&CACHE_FORMAT.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes `dict` to `cache` atomically: a unique temporary file in the same folder, synced,
/// then renamed over `cache`.
fn write_cache(cache: &Path, dict: &Dictionary) -> Result<(), TextError> {
    let dir = cache.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut payload = Vec::new();
    dict.write(&mut payload)
        .map_err(|e| dict_err("cannot serialize dictionary", e))?;
    let bytes = cache_bytes(&payload);
    drop(payload);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        cache
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("ipadic"),
        std::process::id(),
        nanos
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, cache)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(cache, e));
    }
    Ok(())
}

/// Loads the compiled IPADIC from `cache` when it is there and intact, otherwise compiles it
/// from `source_dir` and (if `cache` is given) writes the cache. A cache that cannot be
/// written is reported on stderr and otherwise ignored.
pub fn load_or_build_ipadic(
    source_dir: &Path,
    cache: Option<&Path>,
) -> Result<Dictionary, TextError> {
    let sources = find_sources(source_dir)?;
    if let Some(dict) = cache.and_then(read_cache) {
        return Ok(dict);
    }
    let dict = build_from_sources(&sources)?;
    if let Some(cache) = cache {
        if let Err(e) = write_cache(cache, &dict) {
            eprintln!("juris: warning: cannot cache the compiled IPADIC dictionary: {e}");
        }
    }
    Ok(dict)
}

/// Wraps a dictionary in a tokenizer with MeCab-compatible settings.
fn tokenizer_from(dict: Dictionary) -> Result<Tokenizer, TextError> {
    Ok(Tokenizer::new(dict)
        .ignore_space(true)
        .map_err(|e| dict_err("IPADIC char.def has no SPACE category", e))?
        .max_grouping_len(24))
}

/// The process-wide IPADIC tokenizer, loaded (or built, see the module doc) on first call
/// from [`ipadic_source_dir`] and the cache under [`cache_dir`]. Errors are not remembered:
/// a later call tries again.
pub fn ipadic_tokenizer() -> Result<Arc<Tokenizer>, TextError> {
    static SHARED: Mutex<Option<Arc<Tokenizer>>> = Mutex::new(None);
    // Holding the lock while building makes concurrent first users wait for one build.
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = slot.as_ref() {
        return Ok(t.clone());
    }
    let source_dir = ipadic_source_dir();
    let cache = ipadic_cache_path(&source_dir)?;
    let dict = load_or_build_ipadic(&source_dir, cache.as_deref())?;
    let t = Arc::new(tokenizer_from(dict)?);
    *slot = Some(t.clone());
    Ok(t)
}

/// The `ja-ipadic` analyzer.
#[derive(Clone)]
pub struct JaIpadic {
    tokenizer: Arc<Tokenizer>,
}

impl std::fmt::Debug for JaIpadic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JaIpadic")
    }
}

impl JaIpadic {
    /// The analyzer on the process-wide tokenizer ([`ipadic_tokenizer`]).
    pub fn new() -> Result<Self, TextError> {
        Ok(JaIpadic {
            tokenizer: ipadic_tokenizer()?,
        })
    }

    /// An analyzer on its own dictionary, e.g. one from [`load_or_build_ipadic`].
    pub fn from_dictionary(dict: Dictionary) -> Result<Self, TextError> {
        Ok(JaIpadic {
            tokenizer: Arc::new(tokenizer_from(dict)?),
        })
    }
}

/// Independent verbs so light that they are noise in every legal sentence (`無効とする`,
/// `…がある`, `…となる`), dropped like stopwords. できる is kept (ability matters in law).
const LIGHT_VERBS: &[&str] = &["する", "ある", "いる", "なる", "おる"];

/// The term `ja-ipadic` emits for a token with IPADIC `feature` and `surface`, if any.
fn content_term<'a>(surface: &'a str, feature: &'a str) -> Option<&'a str> {
    let mut f = feature.split(',');
    let pos = f.next().unwrap_or("");
    let pos1 = f.next().unwrap_or("");
    let pos2 = f.next().unwrap_or("");
    let keep = match pos {
        "名詞" => {
            let junk = matches!(pos1, "非自立" | "代名詞" | "数" | "特殊");
            let counter = pos1 == "接尾" && pos2 == "助数詞";
            !(junk || counter)
        }
        "動詞" | "形容詞" => pos1 == "自立",
        "副詞" => true,
        _ => false,
    };
    if !keep {
        return None;
    }
    let base = f
        .nth(3)
        .filter(|b| !b.is_empty() && *b != "*")
        .unwrap_or(surface);
    if pos == "動詞" && LIGHT_VERBS.contains(&base) {
        return None;
    }
    base.chars().any(is_word_char).then_some(base)
}

/// Cuts `text` into pieces at sentence ends and line breaks, and at most
/// [`MAX_CHUNK_CHARS`] characters.
fn for_each_chunk(text: &str, mut f: impl FnMut(&str)) {
    let mut start = 0;
    let mut chars = 0;
    for (i, c) in text.char_indices() {
        chars += 1;
        let end = i + c.len_utf8();
        if matches!(c, '\n' | '\r' | '。' | '!' | '?' | '！' | '？') || chars >= MAX_CHUNK_CHARS
        {
            if end > start {
                f(&text[start..end]);
            }
            start = end;
            chars = 0;
        }
    }
    if start < text.len() {
        f(&text[start..]);
    }
}

impl Analyzer for JaIpadic {
    fn name(&self) -> &str {
        "ja-ipadic"
    }

    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        let norm = nfkc_lower(text);
        let mut worker = self.tokenizer.new_worker();
        for_each_chunk(&norm, |chunk| {
            worker.reset_sentence(chunk);
            worker.tokenize();
            for i in 0..worker.num_tokens() {
                let t = worker.token(i);
                if let Some(term) = content_term(t.surface(), t.feature()) {
                    sink(term);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_filter() {
        let f = |s, feat| content_term(s, feat);
        assert_eq!(
            f("秩序", "名詞,一般,*,*,*,*,秩序,チツジョ,チツジョ"),
            Some("秩序")
        );
        assert_eq!(
            f(
                "反する",
                "動詞,自立,*,*,サ変・－スル,基本形,反する,ハンスル,ハンスル"
            ),
            Some("反する")
        );
        assert_eq!(f("し", "動詞,自立,*,*,サ変・スル,連用形,する,シ,シ"), None);
        assert_eq!(
            f(
                "反し",
                "動詞,自立,*,*,サ変・－スル,連用形,反する,ハンシ,ハンシ"
            ),
            Some("反する")
        );
        assert_eq!(f("は", "助詞,係助詞,*,*,*,*,は,ハ,ワ"), None);
        assert_eq!(f("こと", "名詞,非自立,一般,*,*,*,こと,コト,コト"), None);
        assert_eq!(f("条", "名詞,接尾,助数詞,*,*,*,条,ジョウ,ジョー"), None);
        assert_eq!(f("権", "名詞,接尾,一般,*,*,*,権,ケン,ケン"), Some("権"));
        assert_eq!(
            f("いる", "動詞,非自立,*,*,一段,基本形,いる,イル,イル"),
            None
        );
        // Unknown words: base form `*` → surface; symbols-as-nouns dropped.
        assert_eq!(f("npo", "名詞,固有名詞,組織,*,*,*,*"), Some("npo"));
        assert_eq!(f("§", "名詞,サ変接続,*,*,*,*,*"), None);
        assert_eq!(f("", ""), None);
    }

    #[test]
    fn chunks() {
        let mut v = Vec::new();
        for_each_chunk("あ。い\nう", |c| v.push(c.to_string()));
        assert_eq!(v, ["あ。", "い\n", "う"]);
        let long = "あ".repeat(MAX_CHUNK_CHARS * 2 + 1);
        let mut n = Vec::new();
        for_each_chunk(&long, |c| n.push(c.chars().count()));
        assert_eq!(n, [MAX_CHUNK_CHARS, MAX_CHUNK_CHARS, 1]);
    }

    #[test]
    fn cache_header_detects_corruption() {
        let payload = b"some dictionary bytes".to_vec();
        let bytes = cache_bytes(&payload);
        assert_eq!(check_cache_bytes(&bytes), Some(payload.as_slice()));
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(check_cache_bytes(&bad), None);
        assert_eq!(check_cache_bytes(&bytes[..bytes.len() - 1]), None);
        assert_eq!(check_cache_bytes(b""), None);
        assert_eq!(check_cache_bytes(CACHE_MAGIC), None);
        // A file with a valid header around garbage passes the checksum but not vibrato.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.vibrato");
        std::fs::write(&p, cache_bytes(b"garbage")).unwrap();
        assert!(read_cache(&p).is_none());
        assert!(read_cache(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn missing_sources_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = match load_or_build_ipadic(dir.path(), None) {
            Ok(_) => panic!("built a dictionary from an empty folder"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("IPADIC sources not found in"), "{err}");
        assert!(err.contains("apt-get install mecab-ipadic"), "{err}");
        assert!(err.contains("JURIS_IPADIC_DIR"), "{err}");
    }
}
