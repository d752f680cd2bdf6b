//! Helpers shared by the binary's end-to-end tests: running `juris`, asserting success or a
//! clean failure, and the small multilingual corpus they index.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The checkout's models folder (filled by scripts/fetch-models.sh).
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// The fetched tiny random decoder (`models/tinycoder/tiny.gguf`), or `None` after saying
/// that the test is skipped.
pub fn tiny_model() -> Option<PathBuf> {
    let p = models_dir().join("tinycoder/tiny.gguf");
    if p.exists() {
        Some(p)
    } else {
        println!(
            "skipped: {} missing; run bash scripts/fetch-models.sh",
            p.display()
        );
        None
    }
}

/// Runs `juris` with the words of `line` as arguments (for commands whose arguments hold no
/// spaces; paths of temporary folders do not) and returns stdout; panics on failure.
pub fn ok_line(line: &str) -> String {
    ok(&line.split_whitespace().collect::<Vec<_>>())
}

/// [`fails`] for a command given as one line of words.
pub fn fails_line(line: &str) -> String {
    fails(&line.split_whitespace().collect::<Vec<_>>())
}

pub fn juris(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_juris"))
        .arg("--quiet")
        .args(args)
        .env("JURIS_MODELS_DIR", models_dir())
        .output()
        .expect("run juris")
}

pub fn ok(args: &[&str]) -> String {
    let out = juris(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "juris {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail cleanly; returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = juris(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "juris {args:?} should exit 2; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "juris {args:?} panicked: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "juris {args:?}: {stderr}");
    stderr
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub const CORPUS: &str = r#"{"_id": "civil:90", "title": "Public Policy", "text": "A juristic act contrary to public order or good morals is void."}
{"_id": "civil:5", "title": "Minors", "text": "A minor must obtain the consent of a legal representative to perform a juristic act."}
{"_id": "civil:612", "title": "Sublease", "text": "A lessee may not sublease the leased thing without the consent of the lessor."}
{"_id": "labour:3", "title": "", "text": "يستحق العامل إجازة سنوية بأجر كامل مدتها أربعة عشر يوما."}
{"_id": "minpo:90", "title": "公序良俗", "text": "公の秩序又は善良の風俗に反する法律行為は、無効とする。"}
"#;

/// Judgments for the four sample questions (one relevant article each).
pub const QRELS: &str = "query-id\tcorpus-id\tscore\nq1\tcivil:90\t1\nq2\tcivil:612\t1\nq3\tlabour:3\t1\nq4\tminpo:90\t1\n";

/// Writes corpus.jsonl, queries.jsonl (the given questions) and qrels.tsv into `root`.
pub fn write_inputs(root: &Path, queries: &str) {
    std::fs::write(root.join("corpus.jsonl"), CORPUS).unwrap();
    std::fs::write(root.join("queries.jsonl"), queries).unwrap();
    std::fs::write(root.join("qrels.tsv"), QRELS).unwrap();
}
