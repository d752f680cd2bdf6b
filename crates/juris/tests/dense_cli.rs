//! End-to-end tests of dense and hybrid retrieval through the `juris` binary: `embed`,
//! `search --mode dense|hybrid`, `tune`, and the errors a user meets (no embeddings, stale
//! embeddings after an index update, an unknown model). They use the `e5-small` preset
//! (multilingual, so the en/ja/ar sample questions all make sense) from the models folder;
//! when it has not been fetched they say so and pass without checking.

mod common;

use common::{fails, fails_line, juris, models_dir, ok, ok_line, s, write_inputs};
use std::fs;
use std::path::{Path, PathBuf};

fn e5_present() -> bool {
    let p = models_dir().join("e5-small/e5-small-q4.bin");
    if !p.exists() {
        eprintln!(
            "skipped: {} missing; run bash scripts/fetch-models.sh",
            p.display()
        );
        return false;
    }
    true
}

// Paraphrases that share few words with their articles, so dense retrieval has work to do.
const QUERIES: &str = r#"{"_id": "q1", "text": "Is an agreement that offends decency enforceable?"}
{"_id": "q2", "text": "Can a tenant rent the flat to someone else without asking the landlord?"}
{"_id": "q3", "text": "كم يوما من الإجازة المدفوعة يحصل عليها الموظف كل عام؟"}
{"_id": "q4", "text": "道徳に反する契約は有効ですか"}
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        write_inputs(&root, QUERIES);
        Fixture { _dir: dir, root }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// Top document of each query in a TREC run.
fn top1(run: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(run).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[3] == "1" {
            out.push((f[0].to_string(), f[2].to_string()));
        }
    }
    out.sort();
    out
}

#[test]
fn embed_search_dense_and_hybrid_tune_and_refresh() {
    if !e5_present() {
        return;
    }
    let fx = Fixture::new();
    let (idx, corpus, queries) = (fx.p("index"), fx.p("corpus.jsonl"), fx.p("queries.jsonl"));
    let (idx, corpus, queries) = (s(&idx), s(&corpus), s(&queries));
    ok_line(&format!("index --corpus {corpus} --out {idx}"));

    // Dense search before embedding: a clear instruction, not a panic.
    let err = fails(&["search", "--index", idx, "--mode", "dense", "void contract"]);
    assert!(err.contains("juris embed"), "{err}");

    ok_line(&format!("embed --index {idx} --model e5-small"));
    assert!(Path::new(idx)
        .join("embeddings/e5-small/meta.json")
        .is_file());

    // Dense: every paraphrased question finds its article first.
    let run = fx.p("dense.trec");
    ok_line(&format!(
        "search --index {idx} --mode dense --queries {queries} --output {} -k 5",
        s(&run)
    ));
    let expect: Vec<(String, String)> = [
        ("q1", "civil:90"),
        ("q2", "civil:612"),
        ("q3", "labour:3"),
        ("q4", "minpo:90"),
    ]
    .iter()
    .map(|(q, d)| (q.to_string(), d.to_string()))
    .collect();
    assert_eq!(top1(&run), expect);

    // Hybrid: fused scores, the same winners here, and a run with one line per hit.
    let hyb = fx.p("hybrid.trec");
    ok_line(&format!(
        "search --index {idx} --mode hybrid --alpha 0.3 --queries {queries} --output {} -k 3",
        s(&hyb)
    ));
    assert_eq!(top1(&hyb), expect);
    assert_eq!(fs::read_to_string(&hyb).unwrap().lines().count(), 12);

    // Free-text dense search prints the article for a person.
    let out = ok(&[
        "search",
        "--index",
        idx,
        "--mode",
        "dense",
        "--json",
        "-k",
        "1",
        "公序良俗に反する契約",
    ]);
    assert!(out.contains("minpo:90"), "{out}");

    // tune writes tuned.json with a hybrid choice that search then uses.
    ok_line(&format!(
        "tune --index {idx} --queries {queries} --qrels {}",
        s(&fx.p("qrels.tsv"))
    ));
    let tuned: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(Path::new(idx).join("tuned.json")).unwrap())
            .unwrap();
    assert_eq!(tuned["hybrid"]["store"], "e5-small");
    assert_eq!(tuned["num_queries"], 4);
    let (hybrid, bm25) = (
        tuned["hybrid"]["score"].as_f64(),
        tuned["bm25"]["score"].as_f64(),
    );
    assert!(hybrid.unwrap() >= bm25.unwrap() - 1e-9, "{tuned}");

    // After an index update the store is stale until embed runs again, which then encodes
    // only the new document.
    let more = fx.p("more.jsonl");
    fs::write(
        &more,
        r#"{"_id": "civil:1", "title": "Good faith", "text": "Rights must be exercised in good faith."}"#,
    )
    .unwrap();
    ok_line(&format!("index --update --corpus {} --out {idx}", s(&more)));
    let err = fails(&["search", "--index", idx, "--mode", "dense", "good faith"]);
    assert!(err.contains("out of date"), "{err}");
    let out = juris(&["embed", "--index", idx, "--model", "e5-small"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 encoded, 5 reused"), "{stderr}");
    ok(&["search", "--index", idx, "--mode", "dense", "good faith"]);
}

#[test]
fn unknown_or_broken_models_are_clear_errors() {
    let fx = Fixture::new();
    let idx = fx.p("index");
    let idx = s(&idx);
    ok_line(&format!(
        "index --corpus {} --out {idx}",
        s(&fx.p("corpus.jsonl"))
    ));
    let missing = fx.p("no-such-model");
    let err = fails_line(&format!("embed --index {idx} --model {}", s(&missing)));
    assert!(
        err.contains("no-such-model") && err.contains("preset"),
        "{err}"
    );
    let garbage = fx.p("garbage.bin");
    fs::write(&garbage, b"not a model at all").unwrap();
    let err = fails_line(&format!("embed --index {idx} --model {}", s(&garbage)));
    assert!(
        err.contains("garbage.bin") && err.contains("unknown model format"),
        "{err}"
    );
    let err = fails(&[
        "search", "--index", idx, "--mode", "hybrid", "--model", "nope", "x",
    ]);
    assert!(err.contains("no embeddings named 'nope'"), "{err}");
    assert!(!Path::new(idx).join("embeddings/garbage").exists());
}

/// `juris rerank`: the top `--depth` hits of a run are reordered among themselves, the tail
/// keeps its order below them, `--alpha 1` (first stage only) gives back the run's order,
/// `--tune-qrels` reports its choice, and bad runs are clear errors naming the file.
#[test]
fn rerank_reorders_the_head_of_a_run_and_names_bad_runs() {
    let fx = Fixture::new();
    let (idx, queries) = (fx.p("index"), fx.p("queries.jsonl"));
    let (idx, queries) = (s(&idx), s(&queries));
    ok_line(&format!(
        "index --corpus {} --out {idx}",
        s(&fx.p("corpus.jsonl"))
    ));
    let first = fx.p("bm25.trec");
    ok_line(&format!(
        "search --index {idx} --queries {queries} --output {} -k 5",
        s(&first)
    ));
    let ranked = |run: &Path| -> Vec<(String, Vec<String>)> {
        let text = fs::read_to_string(run).unwrap();
        let mut by: std::collections::BTreeMap<String, Vec<(usize, String)>> = Default::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            by.entry(f[0].into())
                .or_default()
                .push((f[3].parse().unwrap(), f[2].into()));
        }
        by.into_iter()
            .map(|(q, mut v)| {
                v.sort();
                (q, v.into_iter().map(|x| x.1).collect())
            })
            .collect()
    };
    // Bad runs first (they fail before a model loads).
    let bad = fx.p("bad.trec");
    fs::write(&bad, "q1 Q0 no-such-article 1 3.0 x\n").unwrap();
    let out = fx.p("reranked.trec");
    let rerank = |run: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "rerank",
            "--index",
            idx,
            "--queries",
            queries,
            "--run",
            s(run),
            "--model",
            "e5-small",
            "--output",
            s(&out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    fn argv(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let e = fails(&argv(&rerank(&first, &["--depth", "0"])));
    assert!(e.contains("--depth"), "{e}");
    let e = fails(&argv(&rerank(&first, &["--alpha", "2"])));
    assert!(e.contains("--alpha"), "{e}");
    fs::write(&bad, "q9 Q0 civil:90 1 3.0 x\n").unwrap();
    let e = fails(&argv(&rerank(&bad, &[])));
    assert!(e.contains(s(&bad)) && e.contains("'q9'"), "{e}");
    if !e5_present() {
        return;
    }
    fs::write(&bad, "q1 Q0 no-such-article 1 3.0 x\n").unwrap();
    let e = fails(&argv(&rerank(&bad, &[])));
    assert!(
        e.contains(s(&bad)) && e.contains("'no-such-article'"),
        "{e}"
    );

    let before = ranked(&first);
    ok(&argv(&rerank(&first, &["--depth", "3", "--alpha", "0"])));
    let after = ranked(&out);
    assert_eq!(before.len(), after.len());
    for ((q, b), (q2, a)) in before.iter().zip(&after) {
        assert_eq!(q, q2);
        assert_eq!(a.len(), b.len(), "{q}: hits kept");
        let (mut bh, mut ah) = (b[..3.min(b.len())].to_vec(), a[..3.min(a.len())].to_vec());
        bh.sort();
        ah.sort();
        assert_eq!(bh, ah, "{q}: the head is a permutation of the run's head");
        assert_eq!(
            b[3.min(b.len())..],
            a[3.min(a.len())..],
            "{q}: the tail keeps its order"
        );
    }
    ok(&argv(&rerank(&first, &["--depth", "3", "--alpha", "1"])));
    assert_eq!(ranked(&out), before, "alpha 1 is the first stage alone");
    let o = juris(&argv(&rerank(
        &first,
        &["--depth", "3", "--tune-qrels", s(&fx.p("qrels.tsv"))],
    )));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.contains("chose alpha"),
        "{stderr}"
    );
    // Judgments of queries the run does not rank: an error, not a silent alpha.
    let other = fx.p("other.tsv");
    fs::write(&other, "query-id\tcorpus-id\tscore\nq9\tcivil:90\t1\n").unwrap();
    let e = fails(&argv(&rerank(
        &first,
        &["--depth", "3", "--tune-qrels", s(&other)],
    )));
    assert!(
        e.contains(s(&other)) && e.contains("none of its queries"),
        "{e}"
    );
}

/// A cross-encoder's adapter (marked by the trainer) is refused by `embed` before any model
/// loads, with a message that says where it belongs.
#[test]
fn embed_refuses_a_cross_encoder_adapter() {
    let fx = Fixture::new();
    let idx = fx.p("index");
    ok_line(&format!(
        "index --corpus {} --out {}",
        s(&fx.p("corpus.jsonl")),
        s(&idx)
    ));
    let adapter = fx.p("reranker");
    fs::create_dir_all(&adapter).unwrap();
    fs::write(adapter.join("juris_cross_encoder.json"), "{}").unwrap();
    let e = fails(&[
        "embed",
        "--index",
        s(&idx),
        "--model",
        "e5-small",
        "--adapter",
        s(&adapter),
    ]);
    assert!(
        e.contains(s(&adapter)) && e.contains("cross-encoder") && e.contains("juris rerank"),
        "{e}"
    );
}
