//! Documents and the readers that produce them: BEIR `corpus.jsonl`, generic JSONL with
//! configurable fields, and folders of `.txt`/`.md` law files split into articles by legal
//! structure (第N条, المادة N, Article N). Queries (`queries.jsonl` or `qid<TAB>text`) are read
//! here too, with the same line-level error reporting.
//!
//! Every reader yields `Result<Document, CorpusError>` one document at a time, so a corpus is
//! never held in memory twice, and every error names the file, the 1-based line and the field.

use juris_text::{structure, Lang};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One retrievable unit: an article of a law (or a whole document when it has no structure).
/// Invariant: `id` is non-empty and unique within a corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Document {
    /// Stable identifier, e.g. `civil-code:90` or a BEIR `_id`.
    pub id: String,
    /// Title or caption; may be empty.
    #[serde(default)]
    pub title: String,
    /// Body text.
    pub text: String,
    /// Legal-structure metadata, where known.
    #[serde(default)]
    pub meta: DocMeta,
}

/// Where a document sits in the body of law.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DocMeta {
    /// Name of the law (file stem for folders, or a JSONL field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub law: Option<String>,
    /// Article number as written in the law, normalized to ASCII (`"3-2"`, `"154"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub article: Option<String>,
    /// Number of paragraphs found in the article, when split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paragraphs: Option<u32>,
    /// Language code (`en`, `ja`, `ar`, `other`) given in the input or detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
}

/// A query to run against an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Query id, as in the qrels.
    pub id: String,
    /// Query text.
    pub text: String,
    /// Language given in the input (`lang` field), if any.
    pub lang: Option<String>,
}

/// An input problem, located as precisely as the input allows.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The file or folder could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File or folder involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A problem on one line (or in one field of one line).
    #[error("{path}:{line}: {}{message}", field.as_ref().map(|f| format!("field \"{f}\": ")).unwrap_or_default())]
    Line {
        /// File involved.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Field involved, if the problem is in one field.
        field: Option<String>,
        /// What is wrong and what to do.
        message: String,
    },
    /// The input held no document (or no query).
    #[error("{path}: no {what} found: {hint}")]
    Empty {
        /// File or folder involved.
        path: PathBuf,
        /// "documents" or "queries".
        what: &'static str,
        /// What the reader looked for.
        hint: String,
    },
}

/// Which fields of a JSONL record hold what. Each list is tried in order; the first field
/// present wins, so BEIR (`_id`), Pyserini (`id`, `contents`) and similar layouts all work
/// with the defaults.
#[derive(Debug, Clone)]
pub struct JsonlFields {
    /// Candidate id fields.
    pub id: Vec<String>,
    /// Candidate title fields (optional in the record).
    pub title: Vec<String>,
    /// Candidate text fields.
    pub text: Vec<String>,
    /// Candidate language fields (optional).
    pub lang: Vec<String>,
    /// Candidate law-name fields (optional).
    pub law: Vec<String>,
    /// Candidate article-number fields (optional).
    pub article: Vec<String>,
}

impl Default for JsonlFields {
    fn default() -> Self {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        JsonlFields {
            id: v(&["_id", "id", "docid", "doc_id"]),
            title: v(&["title"]),
            text: v(&["text", "contents", "body"]),
            lang: v(&["lang", "language"]),
            law: v(&["law"]),
            article: v(&["article"]),
        }
    }
}

impl JsonlFields {
    /// Replaces the candidates with exactly the given field names (from `--id-field` etc.).
    pub fn with_overrides(
        mut self,
        id: Option<&str>,
        title: Option<&str>,
        text: Option<&str>,
    ) -> Self {
        if let Some(f) = id {
            self.id = vec![f.to_string()];
        }
        if let Some(f) = title {
            self.title = vec![f.to_string()];
        }
        if let Some(f) = text {
            self.text = vec![f.to_string()];
        }
        self
    }
}

/// How to read a corpus path.
#[derive(Debug, Clone, Default)]
pub struct CorpusOptions {
    /// Field mapping for JSONL input.
    pub fields: JsonlFields,
    /// Language of law files in a folder (`None`: detected per file). JSONL records without a
    /// language field get no hint and are detected at analysis time.
    pub lang: Option<Lang>,
}

/// Opens `path` as a corpus: a folder of law files, or a JSONL file (BEIR or generic).
/// The returned iterator yields documents in input order and stops after the first error.
pub fn read_corpus(
    path: &Path,
    options: &CorpusOptions,
) -> Result<Box<dyn Iterator<Item = Result<Document, CorpusError>> + Send>, CorpusError> {
    let meta = std::fs::metadata(path).map_err(|source| CorpusError::Io {
        path: path.to_path_buf(),
        source: annotate_not_found(source, "check the --corpus path"),
    })?;
    if meta.is_dir() {
        Ok(Box::new(FolderReader::new(path, options.lang)?))
    } else {
        Ok(Box::new(JsonlDocs::open(path, options.fields.clone())?))
    }
}

/// Reads a whole corpus into memory, checking that it is non-empty and ids are unique.
pub fn read_corpus_all(path: &Path, options: &CorpusOptions) -> Result<Vec<Document>, CorpusError> {
    let docs: Vec<Document> = read_corpus(path, options)?.collect::<Result<_, _>>()?;
    if docs.is_empty() {
        return Err(CorpusError::Empty {
            path: path.to_path_buf(),
            what: "documents",
            hint: "expected JSONL records with an id and a text, or .txt/.md law files".into(),
        });
    }
    Ok(docs)
}

fn annotate_not_found(e: std::io::Error, hint: &str) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        std::io::Error::new(e.kind(), format!("{e} ({hint})"))
    } else {
        e
    }
}

/// Reads lines as UTF-8 text with 1-based numbers, rejecting invalid UTF-8 and NUL bytes with
/// the line and byte position, skipping blank lines and a leading byte-order mark.
struct TextLines {
    path: PathBuf,
    reader: BufReader<Box<dyn Read + Send>>,
    line: usize,
    buf: Vec<u8>,
}

impl TextLines {
    fn open(path: &Path) -> Result<Self, CorpusError> {
        let file = File::open(path).map_err(|source| CorpusError::Io {
            path: path.to_path_buf(),
            source: annotate_not_found(source, "check the path"),
        })?;
        let mut lines = TextLines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, Box::new(file)),
            line: 0,
            buf: Vec::new(),
        };
        lines.reject_binary()?;
        Ok(lines)
    }

    /// Text files have no NUL bytes; binary files and UTF-16 text have them early. Looking at
    /// the first block says "binary" where a line-by-line read would first trip over
    /// whatever invalid UTF-8 precedes the first NUL.
    fn reject_binary(&mut self) -> Result<(), CorpusError> {
        let head = self.reader.fill_buf().map_err(|source| CorpusError::Io {
            path: self.path.clone(),
            source,
        })?;
        let limit = head.len().min(8192);
        if let Some(pos) = head[..limit].iter().position(|&b| b == 0) {
            let line = head[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(CorpusError::Line {
                path: self.path.clone(),
                line,
                field: None,
                message: format!(
                    "NUL byte at byte {} of the file: this is a binary (or UTF-16) file, not UTF-8 text",
                    pos + 1
                ),
            });
        }
        Ok(())
    }

    /// The next non-blank line, as (line number, text).
    fn next_line(&mut self) -> Option<Result<(usize, String), CorpusError>> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => {
                    return Some(Err(CorpusError::Io {
                        path: self.path.clone(),
                        source,
                    }))
                }
            }
            self.line += 1;
            let mut bytes: &[u8] = &self.buf;
            if self.line == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
                bytes = &bytes[3..];
            }
            if let Some(pos) = bytes.iter().position(|&b| b == 0) {
                return Some(Err(self.line_error(
                    None,
                    format!(
                        "NUL byte at column {}: this looks like a binary file, not UTF-8 text",
                        pos + 1
                    ),
                )));
            }
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(self.line_error(
                        None,
                        format!(
                            "invalid UTF-8 at byte {} of the line: convert the file to UTF-8 \
                             (e.g. iconv -f SHIFT_JIS -t UTF-8, or -f CP1256 for Arabic)",
                            e.valid_up_to() + 1
                        ),
                    )))
                }
            };
            let text = text.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            return Some(Ok((self.line, text.to_string())));
        }
    }

    fn line_error(&self, field: Option<&str>, message: String) -> CorpusError {
        CorpusError::Line {
            path: self.path.clone(),
            line: self.line,
            field: field.map(str::to_string),
            message,
        }
    }
}

/// Parses one JSONL line into an object, or says why not.
fn parse_object(
    lines: &TextLines,
    text: &str,
) -> Result<serde_json::Map<String, Value>, CorpusError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(lines.line_error(
            None,
            format!("expected a JSON object, found {}", json_kind(&other)),
        )),
        Err(e) => Err(lines.line_error(None, format!("invalid JSON: {e}"))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Looks up the first present candidate field. Strings are taken as they are, numbers are
/// turned into their decimal text (some corpora use integer ids), null counts as absent.
fn field(
    lines: &TextLines,
    map: &serde_json::Map<String, Value>,
    candidates: &[String],
    required: bool,
) -> Result<Option<String>, CorpusError> {
    for name in candidates {
        match map.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(other) => {
                return Err(lines.line_error(
                    Some(name),
                    format!("expected a string, found {}", json_kind(other)),
                ))
            }
        }
    }
    if required {
        let shown = candidates.join("\" or \"");
        return Err(lines.line_error(
            Some(candidates.first().map(String::as_str).unwrap_or("?")),
            format!(
                "missing (looked for \"{shown}\"; set the field name with --id-field/--text-field)"
            ),
        ));
    }
    Ok(None)
}

/// Documents from a JSONL file, checking ids for emptiness and uniqueness.
struct JsonlDocs {
    lines: TextLines,
    fields: JsonlFields,
    seen: HashMap<String, usize>,
    done: bool,
}

impl JsonlDocs {
    fn open(path: &Path, fields: JsonlFields) -> Result<Self, CorpusError> {
        Ok(JsonlDocs {
            lines: TextLines::open(path)?,
            fields,
            seen: HashMap::new(),
            done: false,
        })
    }

    fn parse(&mut self, line_no: usize, text: &str) -> Result<Document, CorpusError> {
        let map = parse_object(&self.lines, text)?;
        let l = &self.lines;
        let id = field(l, &map, &self.fields.id, true)?.unwrap_or_default();
        let id_field = self.fields.id.first().map(String::as_str);
        if id.trim().is_empty() {
            return Err(l.line_error(id_field, "is empty: every document needs an id".into()));
        }
        let text = field(l, &map, &self.fields.text, true)?.unwrap_or_default();
        let title = field(l, &map, &self.fields.title, false)?.unwrap_or_default();
        let lang = match field(l, &map, &self.fields.lang, false)? {
            Some(code) => match Lang::parse(&code) {
                Ok(lang) => Some(lang.code().to_string()),
                Err(e) => {
                    return Err(
                        l.line_error(self.fields.lang.first().map(String::as_str), e.to_string())
                    )
                }
            },
            None => None,
        };
        let law = field(l, &map, &self.fields.law, false)?;
        let article = field(l, &map, &self.fields.article, false)?;
        if let Some(first) = self.seen.insert(id.clone(), line_no) {
            return Err(l.line_error(
                id_field,
                format!("duplicate id {id:?} (first seen on line {first})"),
            ));
        }
        Ok(Document {
            id,
            title,
            text,
            meta: DocMeta {
                law,
                article,
                paragraphs: None,
                lang,
            },
        })
    }
}

impl Iterator for JsonlDocs {
    type Item = Result<Document, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.lines.next_line()? {
            Ok((line_no, text)) => self.parse(line_no, &text),
            Err(e) => Err(e),
        };
        self.done = item.is_err();
        Some(item)
    }
}

/// Law files in a folder (recursively, in sorted path order), each split into articles.
struct FolderReader {
    root: PathBuf,
    files: std::vec::IntoIter<PathBuf>,
    lang: Option<Lang>,
    pending: std::vec::IntoIter<Document>,
    seen: HashMap<String, PathBuf>,
    done: bool,
}

impl FolderReader {
    fn new(root: &Path, lang: Option<Lang>) -> Result<Self, CorpusError> {
        let mut files = Vec::new();
        collect_law_files(root, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(CorpusError::Empty {
                path: root.to_path_buf(),
                what: "documents",
                hint: "the folder has no .txt or .md files".into(),
            });
        }
        Ok(FolderReader {
            root: root.to_path_buf(),
            files: files.into_iter(),
            lang,
            pending: Vec::new().into_iter(),
            seen: HashMap::new(),
            done: false,
        })
    }

    /// The law name of a file: its path below the root without extension, `/`-separated.
    fn law_name(&self, path: &Path) -> String {
        let rel = path
            .strip_prefix(&self.root)
            .unwrap_or(path)
            .with_extension("");
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn read_file(&mut self, path: &Path) -> Result<Vec<Document>, CorpusError> {
        let bytes = std::fs::read(path).map_err(|source| CorpusError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = decode_law_file(path, &bytes)?;
        let law = self.law_name(path);
        let lang = self.lang.unwrap_or_else(|| juris_text::detect_lang(&text));
        let split = structure::split_law(&text, lang);
        let mut docs = Vec::with_capacity(split.articles.len().max(1));
        if split.articles.is_empty() {
            if text.trim().is_empty() {
                return Ok(docs);
            }
            docs.push(Document {
                id: law.clone(),
                title: String::new(),
                text: text.trim().to_string(),
                meta: DocMeta {
                    law: Some(law),
                    article: None,
                    paragraphs: None,
                    lang: Some(lang.code().into()),
                },
            });
            return Ok(docs);
        }
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for art in split.articles {
            if let Some(prev) = first_line.insert(art.number.clone(), art.line) {
                return Err(CorpusError::Line {
                    path: path.to_path_buf(),
                    line: art.line,
                    field: Some("article".into()),
                    message: format!(
                        "article {} appears twice (first on line {prev}): give each article one \
                         heading, or split the file",
                        art.number
                    ),
                });
            }
            docs.push(Document {
                id: format!("{law}:{}", art.number),
                title: art.heading.unwrap_or_default(),
                text: art.text,
                meta: DocMeta {
                    law: Some(law.clone()),
                    article: Some(art.number),
                    paragraphs: Some(art.paragraphs),
                    lang: Some(lang.code().into()),
                },
            });
        }
        Ok(docs)
    }
}

/// Checks a law file is UTF-8 text, naming the line of the first bad byte otherwise.
fn decode_law_file(path: &Path, bytes: &[u8]) -> Result<String, CorpusError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let line_of = |pos: usize| bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(CorpusError::Line {
            path: path.to_path_buf(),
            line: line_of(pos),
            field: None,
            message: "NUL byte: this looks like a binary file, not UTF-8 text".into(),
        });
    }
    match std::str::from_utf8(bytes) {
        Ok(t) => Ok(t.replace("\r\n", "\n")),
        Err(e) => Err(CorpusError::Line {
            path: path.to_path_buf(),
            line: line_of(e.valid_up_to()),
            field: None,
            message: "invalid UTF-8: convert the file to UTF-8 (e.g. iconv -f SHIFT_JIS -t UTF-8, \
                      or -f CP1256 for Arabic)"
                .into(),
        }),
    }
}

fn collect_law_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CorpusError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CorpusError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| CorpusError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(|source| CorpusError::Io {
            path: path.clone(),
            source,
        })?;
        if ft.is_dir() {
            collect_law_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("txt" | "md")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

impl Iterator for FolderReader {
    type Item = Result<Document, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(doc) = self.pending.next() {
                return Some(Ok(doc));
            }
            let path = self.files.next()?;
            match self.read_file(&path) {
                Ok(docs) => {
                    for d in &docs {
                        if let Some(other) = self.seen.insert(d.id.clone(), path.clone()) {
                            self.done = true;
                            return Some(Err(CorpusError::Line {
                                path: path.clone(),
                                line: 1,
                                field: Some("id".into()),
                                message: format!(
                                    "document id {:?} also comes from {}: rename one of the files",
                                    d.id,
                                    other.display()
                                ),
                            }));
                        }
                    }
                    self.pending = docs.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Reads queries: JSONL records (`_id`/`id` and `text`/`query`, optional `lang`) or, for a
/// `.tsv`/`.txt` file, `qid<TAB>text` lines. Fails on an empty file or a duplicate id.
pub fn read_queries(path: &Path) -> Result<Vec<Query>, CorpusError> {
    let mut lines = TextLines::open(path)?;
    let tsv = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("tsv" | "txt")
    );
    let ids: Vec<String> = ["_id", "id", "qid", "query_id"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let texts: Vec<String> = ["text", "query", "question"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let langs: Vec<String> = vec!["lang".into()];
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Some(item) = lines.next_line() {
        let (line_no, text) = item?;
        let (id, qtext, lang) = if tsv {
            match text.split_once('\t') {
                Some((id, t)) => (id.trim().to_string(), t.to_string(), None),
                None => {
                    return Err(lines.line_error(None, "expected `qid<TAB>text`".into()));
                }
            }
        } else {
            let map = parse_object(&lines, &text)?;
            let id = field(&lines, &map, &ids, true)?.unwrap_or_default();
            let qtext = field(&lines, &map, &texts, true)?.unwrap_or_default();
            let lang = field(&lines, &map, &langs, false)?;
            (id, qtext, lang)
        };
        if id.trim().is_empty() {
            return Err(lines.line_error(Some("_id"), "is empty: every query needs an id".into()));
        }
        if let Some(first) = seen.insert(id.clone(), line_no) {
            return Err(lines.line_error(
                Some("_id"),
                format!("duplicate query id {id:?} (first on line {first})"),
            ));
        }
        out.push(Query {
            id,
            text: qtext,
            lang,
        });
    }
    if out.is_empty() {
        return Err(CorpusError::Empty {
            path: path.to_path_buf(),
            what: "queries",
            hint: "expected JSONL records {\"_id\": …, \"text\": …} or qid<TAB>text lines".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn read_err(path: &Path) -> String {
        match read_corpus(path, &CorpusOptions::default()) {
            Err(e) => e.to_string(),
            Ok(it) => it
                .collect::<Result<Vec<_>, _>>()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no error".into()),
        }
    }

    #[test]
    fn reads_beir_and_generic_fields() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "c.jsonl",
            "\u{feff}{\"_id\":\"90\",\"title\":\"Public Policy\",\"text\":\"void\"}\n\n{\"id\":7,\"contents\":\"x\",\"lang\":\"ja_JP\",\"title\":null}\r\n"
                .as_bytes(),
        );
        let docs = read_corpus_all(&p, &CorpusOptions::default()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "90");
        assert_eq!(docs[0].title, "Public Policy");
        assert_eq!(docs[1].id, "7");
        assert_eq!(docs[1].text, "x");
        assert_eq!(docs[1].meta.lang.as_deref(), Some("ja"));
    }

    #[test]
    fn custom_fields_override_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "c.jsonl",
            b"{\"key\":\"a\",\"body_text\":\"hello\",\"text\":\"ignored\"}\n",
        );
        let opts = CorpusOptions {
            fields: JsonlFields::default().with_overrides(Some("key"), None, Some("body_text")),
            lang: None,
        };
        let docs = read_corpus_all(&p, &opts).unwrap();
        assert_eq!(docs[0].id, "a");
        assert_eq!(docs[0].text, "hello");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let cases: &[(&str, &[u8], &str)] = &[
            (
                "malformed.jsonl",
                b"{\"_id\":\"a\",\"text\":\"x\"}\n{\"_id\": \"b\", \"text\": \n",
                "malformed.jsonl:2: invalid JSON",
            ),
            (
                "missing.jsonl",
                b"{\"_id\":\"a\"}\n",
                "missing.jsonl:1: field \"text\": missing",
            ),
            (
                "type.jsonl",
                b"{\"_id\":\"a\",\"text\":[1]}\n",
                "type.jsonl:1: field \"text\": expected a string, found an array",
            ),
            (
                "emptyid.jsonl",
                b"{\"_id\":\" \",\"text\":\"x\"}\n",
                "emptyid.jsonl:1: field \"_id\": is empty",
            ),
            (
                "dup.jsonl",
                b"{\"_id\":\"a\",\"text\":\"x\"}\n{\"_id\":\"a\",\"text\":\"y\"}\n",
                "dup.jsonl:2: field \"_id\": duplicate id \"a\" (first seen on line 1)",
            ),
            (
                "utf8.jsonl",
                b"{\"_id\":\"a\",\"text\":\"x\"}\n{\"_id\":\"b\",\"text\":\"\x93\xfa\x96\x7b\"}\n",
                "utf8.jsonl:2: invalid UTF-8 at byte 20",
            ),
            (
                "binary.jsonl",
                b"\x7fELF\x02\x01\x01\x00\x00",
                "binary.jsonl:1: NUL byte at byte 8 of the file",
            ),
            (
                "array.jsonl",
                b"[1,2]\n",
                "array.jsonl:1: expected a JSON object, found an array",
            ),
            (
                "lang.jsonl",
                b"{\"_id\":\"a\",\"text\":\"x\",\"lang\":\"xx\"}\n",
                "lang.jsonl:1: field \"lang\": unknown language \"xx\"",
            ),
        ];
        for (name, bytes, want) in cases {
            let p = write(d.path(), name, bytes);
            let got = read_err(&p);
            assert!(
                got.contains(want),
                "{name}: got {got:?}, want it to contain {want:?}"
            );
        }
        let empty = write(d.path(), "empty.jsonl", b"\n  \n");
        let err = read_corpus_all(&empty, &CorpusOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty.jsonl: no documents found"), "{err}");
        let err = read_err(&d.path().join("absent.jsonl"));
        assert!(
            err.contains("absent.jsonl") && err.contains("check the --corpus path"),
            "{err}"
        );
    }

    #[test]
    fn folder_of_laws_is_split_into_articles() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "civil.txt",
            "民法\n（意思能力）\n第三条の二　法律行為の当事者が意思表示をした時に意思能力を有しなかったときは、その法律行為は、無効とする。\n第九十条　公の秩序又は善良の風俗に反する法律行為は、無効とする。\n".as_bytes(),
        );
        write(
            d.path(),
            "jo/labour.md",
            "قانون العمل\nالمادة ١\nيسمى هذا القانون قانون العمل.\nمادة (2)\nتطبق أحكام هذا القانون.\n".as_bytes(),
        );
        write(
            d.path(),
            "notes.txt",
            b"A note without any article heading.\n",
        );
        write(d.path(), ".hidden.txt", b"Article 1 hidden\n");
        let docs = read_corpus_all(d.path(), &CorpusOptions::default()).unwrap();
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "civil:3-2",
                "civil:90",
                "jo/labour:1",
                "jo/labour:2",
                "notes"
            ]
        );
        assert_eq!(docs[0].title, "意思能力");
        assert_eq!(docs[0].meta.lang.as_deref(), Some("ja"));
        assert_eq!(docs[2].meta.law.as_deref(), Some("jo/labour"));
        assert_eq!(docs[2].meta.article.as_deref(), Some("1"));
        assert_eq!(docs[4].meta.article, None);
    }

    #[test]
    fn folder_errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.txt",
            b"Article 1\nfine\nArticle 2\nbad \xff byte\n",
        );
        let err = read_err(d.path());
        assert!(err.contains("a.txt:4: invalid UTF-8"), "{err}");
        let e = tempfile::tempdir().unwrap();
        write(e.path(), "b.txt", b"Article 1\none\nArticle 1\nagain\n");
        let err = read_err(e.path());
        assert!(
            err.contains("b.txt:3: field \"article\": article 1 appears twice (first on line 1)"),
            "{err}"
        );
        let f = tempfile::tempdir().unwrap();
        let err = read_err(f.path());
        assert!(err.contains("no documents found"), "{err}");
    }

    #[test]
    fn queries_jsonl_and_tsv() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "q.jsonl",
            b"{\"_id\":\"q1\",\"text\":\"void act\",\"lang\":\"en\"}\n",
        );
        let q = read_queries(&p).unwrap();
        assert_eq!(q[0].id, "q1");
        assert_eq!(q[0].lang.as_deref(), Some("en"));
        let p = write(d.path(), "q.tsv", "q1\t公序良俗\nq2\tvoid\n".as_bytes());
        let q = read_queries(&p).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].text, "公序良俗");
        let p = write(d.path(), "bad.tsv", b"q1 no tab\n");
        assert!(read_queries(&p)
            .unwrap_err()
            .to_string()
            .contains("bad.tsv:1: expected `qid<TAB>text`"));
        let p = write(
            d.path(),
            "dupq.jsonl",
            b"{\"_id\":\"q\",\"text\":\"a\"}\n{\"_id\":\"q\",\"text\":\"b\"}\n",
        );
        assert!(read_queries(&p)
            .unwrap_err()
            .to_string()
            .contains("dupq.jsonl:2: field \"_id\": duplicate query id"));
    }
}
