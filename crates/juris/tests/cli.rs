//! End-to-end tests of the `juris` binary: the happy path (index → search → eval, update,
//! delete) and every kind of bad input the CLI promises to handle: a clear error naming the
//! file, line and field, exit status 2, no panic, and an existing index left untouched.

mod common;

use common::{fails, juris, ok, s, write_inputs};
use std::fs;
use std::path::PathBuf;

const QUERIES: &str = r#"{"_id": "q1", "text": "Is a contract against public order void?"}
{"_id": "q2", "text": "Can a tenant sublet without the landlord's consent?"}
{"_id": "q3", "text": "كم مدة الإجازة السنوية؟"}
{"_id": "q4", "text": "公序良俗に反する契約は有効か"}
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    index: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        write_inputs(&root, QUERIES);
        let index = root.join("index");
        ok(&[
            "index",
            "--corpus",
            s(&root.join("corpus.jsonl")),
            "--out",
            s(&index),
        ]);
        Fixture {
            _dir: dir,
            root,
            index,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    /// Every file of the index with its bytes, to prove a failed command changed nothing.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut stack = vec![self.index.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push((p.clone(), fs::read(&p).unwrap()));
                }
            }
        }
        files.sort();
        files
    }

    /// `juris search` of queries.jsonl into the run `out`, top 10, with `extra` arguments.
    fn search_batch(&self, out: &str, extra: &[&str]) -> std::process::Output {
        let (index, queries, run) = (
            self.index.clone(),
            self.path("queries.jsonl"),
            self.path(out),
        );
        let mut args = vec![
            "search",
            "--index",
            s(&index),
            "--queries",
            s(&queries),
            "--output",
            s(&run),
            "-k",
            "10",
        ];
        args.extend_from_slice(extra);
        juris(&args)
    }

    fn search_run(&self) -> String {
        let out = self.search_batch("run.trec", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read_to_string(self.path("run.trec")).unwrap()
    }
}

#[test]
fn index_search_eval_round_trip() {
    let f = Fixture::new();
    let run = f.search_run();
    let first: Vec<&str> = run
        .lines()
        .filter(|l| l.contains(" 1 "))
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(
        first,
        ["civil:90", "civil:612", "labour:3", "minpo:90"],
        "{run}"
    );
    let report = ok(&[
        "eval",
        "--run",
        s(&f.path("run.trec")),
        "--qrels",
        s(&f.path("qrels.tsv")),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["means"]["mrr@10"], 1.0, "{report}");
    assert_eq!(v["n_queries"], 4);
    let hits = ok(&[
        "search",
        "--index",
        s(&f.index),
        "--json",
        "-k",
        "2",
        "公序良俗",
    ]);
    let top: serde_json::Value = serde_json::from_str(hits.lines().next().unwrap()).unwrap();
    assert_eq!(top["id"], "minpo:90");
    assert_eq!(top["title"], "公序良俗");
}

/// `--passes 3` runs the batch three times, writes the same run as one pass and says that
/// its time is a median; `--passes 0` is refused.
#[test]
fn search_passes_repeat_the_batch() {
    let f = Fixture::new();
    let once = f.search_run();
    let out = f.search_batch("run3.trec", &["--passes", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("median of 3 passes"), "{stderr}");
    assert_eq!(fs::read_to_string(f.path("run3.trec")).unwrap(), once);
    let out = f.search_batch("run0.trec", &["--passes", "0"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}

#[test]
fn update_and_delete_without_rebuild() {
    let f = Fixture::new();
    let add = f.write("add.jsonl", br#"{"_id": "civil:709", "text": "A person who intentionally or negligently infringes the rights of others is liable for damages."}"#);
    ok(&[
        "index",
        "--corpus",
        s(&add),
        "--out",
        s(&f.index),
        "--update",
    ]);
    let hits = ok(&[
        "search",
        "--index",
        s(&f.index),
        "--json",
        "negligently infringes rights damages",
    ]);
    assert!(hits.lines().next().unwrap().contains("civil:709"), "{hits}");
    let del = f.write("del.txt", b"civil:709\n");
    ok(&["index", "--out", s(&f.index), "--delete", s(&del)]);
    let hits = ok(&[
        "search",
        "--index",
        s(&f.index),
        "--json",
        "negligently infringes rights damages",
    ]);
    assert!(!hits.contains("civil:709"), "{hits}");
}

#[test]
fn bad_corpus_lines_name_file_line_and_field_and_leave_the_index_untouched() {
    let f = Fixture::new();
    let before = f.snapshot();
    let run_before = f.search_run();
    let cases: &[(&str, &[u8], &str)] = &[
        ("malformed.jsonl", b"{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\", \"text\": \n", "malformed.jsonl:2: invalid JSON"),
        ("missing.jsonl", b"{\"_id\": \"a\", \"title\": \"t\"}\n", "missing.jsonl:1: field \"text\": missing"),
        ("wrongtype.jsonl", b"{\"_id\": \"a\", \"text\": 42.5e400}\n", "wrongtype.jsonl:1"),
        ("utf8.jsonl", b"{\"_id\": \"a\", \"text\": \"ok\"}\n{\"_id\": \"b\", \"text\": \"\x96\x9f\x96\x40\"}\n", "utf8.jsonl:2: invalid UTF-8"),
        ("binary.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary.jsonl:3: NUL byte at byte 9 of the file: this is a binary"),
        ("empty.jsonl", b"", "no documents"),
        ("blank.jsonl", b"\n\n   \n", "no documents"),
        ("dup.jsonl", b"{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"a\", \"text\": \"y\"}\n", "dup.jsonl:2: field \"_id\": duplicate id"),
    ];
    for (name, bytes, want) in cases {
        let p = f.write(name, bytes);
        let err = fails(&["index", "--corpus", s(&p), "--out", s(&f.index)]);
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
        let err = fails(&["index", "--corpus", s(&p), "--out", s(&f.index), "--update"]);
        assert!(err.contains(want), "{name} (update): {err}");
    }
    assert!(fails(&[
        "index",
        "--corpus",
        s(&f.path("absent.jsonl")),
        "--out",
        s(&f.index)
    ])
    .contains("absent.jsonl"));
    assert_eq!(
        f.snapshot(),
        before,
        "a failed build or update changed the index"
    );
    assert_eq!(f.search_run(), run_before);
}

#[test]
fn unknown_ids_and_languages_are_refused() {
    let f = Fixture::new();
    let before = f.snapshot();
    let del = f.write("del.txt", b"civil:90\nno-such-article\n");
    let err = fails(&["index", "--out", s(&f.index), "--delete", s(&del)]);
    assert!(err.contains("no-such-article"), "{err}");
    assert_eq!(f.snapshot(), before);
    let err = fails(&[
        "index",
        "--corpus",
        s(&f.path("corpus.jsonl")),
        "--out",
        s(&f.path("x")),
        "--lang",
        "tlh",
    ]);
    assert!(err.contains("unknown language \"tlh\""), "{err}");
    let err = fails(&[
        "index",
        "--corpus",
        s(&f.path("corpus.jsonl")),
        "--out",
        s(&f.path("x")),
        "--analyzer-ja",
        "ja-magic",
    ]);
    assert!(err.contains("unknown analyzer \"ja-magic\""), "{err}");
    // A run whose query ids match none of the qrels is a mix-up, not a score of zero.
    let run = f.write("other.trec", b"zz1 Q0 civil:90 1 1.0 x\n");
    let err = fails(&["eval", "--run", s(&run), "--qrels", s(&f.path("qrels.tsv"))]);
    assert!(err.contains("none of the run's 1 queries"), "{err}");
}

#[test]
fn missing_or_bad_eval_inputs() {
    let f = Fixture::new();
    f.search_run();
    let err = fails(&[
        "eval",
        "--run",
        s(&f.path("run.trec")),
        "--qrels",
        s(&f.path("nope/dev.tsv")),
    ]);
    assert!(err.contains("nope/dev.tsv"), "{err}");
    let bad = f.write(
        "bad.tsv",
        b"query-id\tcorpus-id\tscore\nq1\tcivil:90\tyes\n",
    );
    let err = fails(&["eval", "--run", s(&f.path("run.trec")), "--qrels", s(&bad)]);
    assert!(err.contains("bad.tsv:2") && err.contains("score"), "{err}");
    let badrun = f.write("bad.trec", b"q1 Q0 civil:90 1 high tag\n");
    let err = fails(&[
        "eval",
        "--run",
        s(&badrun),
        "--qrels",
        s(&f.path("qrels.tsv")),
    ]);
    assert!(err.contains("bad.trec:1") && err.contains("score"), "{err}");
    let err = fails(&[
        "eval",
        "--run",
        s(&f.path("run.trec")),
        "--qrels",
        s(&f.path("qrels.tsv")),
        "--metrics",
        "ndcg@ten",
    ]);
    assert!(err.contains("ndcg@ten"), "{err}");
    let badq = f.write("badq.jsonl", b"{\"_id\": \"q1\"}\n");
    let err = fails(&[
        "search",
        "--index",
        s(&f.index),
        "--queries",
        s(&badq),
        "--output",
        s(&f.path("r.trec")),
    ]);
    assert!(
        err.contains("badq.jsonl:1: field \"text\": missing"),
        "{err}"
    );
}

#[test]
fn corrupt_index_is_reported_not_panicked_on() {
    let f = Fixture::new();
    let gen = fs::read_dir(&f.index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a generation folder");
    // Truncate every data file in turn, and garble the manifest: each must be an error.
    let mut files: Vec<PathBuf> = fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in &files {
        let bytes = fs::read(file).unwrap();
        fs::write(file, &bytes[..bytes.len() / 2]).unwrap();
        let err = fails(&["search", "--index", s(&f.index), "public order"]);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(name) || err.contains("corrupt"),
            "{name}: {err}"
        );
        fs::write(file, &bytes).unwrap();
    }
    let manifest = f.index.join("juris-index.json");
    fs::write(&manifest, b"{ not json").unwrap();
    let err = fails(&["search", "--index", s(&f.index), "public order"]);
    assert!(err.contains("juris-index.json"), "{err}");
    let err = fails(&["search", "--index", s(&f.path("nowhere")), "public order"]);
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn law_folder_is_split_into_articles() {
    let dir = tempfile::tempdir().unwrap();
    let laws = dir.path().join("laws");
    fs::create_dir_all(&laws).unwrap();
    fs::write(laws.join("minpo.txt"), "民法\n（公序良俗）\n第九十条　公の秩序又は善良の風俗に反する法律行為は、無効とする。\n第九十条の二　例文。\n２　第二項。\n").unwrap();
    fs::write(
        laws.join("labour.txt"),
        "المادة ١\nيسمى هذا القانون قانون العمل.\nمادة (2)\nللعامل إجازة سنوية.\n",
    )
    .unwrap();
    let index = dir.path().join("index");
    ok(&["index", "--corpus", s(&laws), "--out", s(&index)]);
    let hits = ok(&["search", "--index", s(&index), "--json", "公序良俗"]);
    let top: serde_json::Value = serde_json::from_str(hits.lines().next().unwrap()).unwrap();
    assert_eq!(top["id"], "minpo:90");
    assert_eq!(top["article"], "90");
    let hits = ok(&["search", "--index", s(&index), "--json", "إجازة"]);
    assert!(hits.contains("labour:2"), "{hits}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--index", s(&index)])).unwrap();
    assert_eq!(info["n_docs"], 4, "{info}");
}

#[test]
fn demo_runs_on_the_embedded_sample() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&["demo", "--dir", s(dir.path())]);
    assert!(out.contains("model-contract-act:2"), "{out}");
    assert!(out.contains("mihon-keiyaku-hou:5"), "{out}");
    assert!(out.contains("namudhaj-qanun-al-amal:3"), "{out}");
    assert!(out.contains("12 queries evaluated"), "{out}");
}
