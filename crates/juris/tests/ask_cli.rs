//! End-to-end `juris ask` and `juris eval-qa` on the fetched tiny random model
//! (`models/tinycoder/tiny.gguf`: no chat template, so the plain "Answer:" prompt): the JSON
//! answer has the documented fields and every kept citation is a retrieved article; eval-qa
//! scores Y/N and free-text answers and writes one JSON line per query. Bad inputs exit 2
//! with a message: an empty question, a question longer than the context, an unknown model
//! file, and a queries file without answers.

mod common;

use common::{fails, ok, s, tiny_model as tiny, write_inputs};
use std::path::{Path, PathBuf};

const QUERIES: &str = r#"{"_id": "q1", "text": "Is a juristic act contrary to public order void?", "answer": "Y"}
{"_id": "q2", "text": "May a lessee sublease without the consent of the lessor?", "answer": "N"}
{"_id": "q3", "text": "كم يوما إجازة العامل السنوية؟", "answer": "أربعة عشر يوما بأجر كامل.", "lang": "ar"}
{"_id": "q4", "text": "公序良俗に反する法律行為は有効か", "answer": "無効とする。"}
"#;

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path(), QUERIES);
    let idx = dir.path().join("idx");
    let corpus = dir.path().join("corpus.jsonl");
    ok(&["index", "--corpus", s(&corpus), "--out", s(&idx)]);
    (dir, idx)
}

/// `juris ask --index idx --model model` with `args`.
fn ask(idx: &Path, model: &Path, args: &[&str]) -> String {
    let mut all = vec!["ask", "--index", s(idx), "--model", s(model)];
    all.extend_from_slice(args);
    ok(&all)
}

#[test]
fn ask_json_has_the_schema_and_cites_only_retrieved_articles() {
    let Some(model) = tiny() else { return };
    let (_dir, idx) = setup();
    let out = ask(
        &idx,
        &model,
        &[
            "--json",
            "--max-tokens",
            "24",
            "Is a juristic act contrary to public order void? [civil:90]",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    for key in [
        "question",
        "language",
        "answer",
        "citations",
        "dropped_citations",
        "retrieved",
        "model",
        "timings",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {out}");
    }
    assert_eq!(v["language"], "en");
    for key in [
        "retrieve_ms",
        "prompt_tokens",
        "prompt_ms",
        "generated_tokens",
        "generate_ms",
    ] {
        assert!(v["timings"][key].is_number(), "timings.{key}: {out}");
    }
    let retrieved: Vec<&str> = v["retrieved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(retrieved.first(), Some(&"civil:90"), "{out}");
    for c in v["citations"].as_array().unwrap() {
        assert!(retrieved.contains(&c["id"].as_str().unwrap()), "{out}");
        assert!(c["snippet"].is_string() && c["score"].is_number());
    }
    assert!(v["timings"]["prompt_tokens"].as_u64().unwrap() > 10);

    // Nothing relevant: the fixed line, and no generation.
    let out = ask(&idx, &model, &["--json", "quantum chromodynamics"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["answer"],
        "The retrieved articles do not answer this question."
    );
    assert_eq!(v["answered"], false);
    assert_eq!(v["timings"]["generated_tokens"], 0);
    // Text mode says so in words.
    let out = ask(&idx, &model, &["quantum chromodynamics"]);
    assert!(out.contains("do not answer this question"), "{out}");
}

#[test]
fn a_reply_prefix_starts_the_answer_and_its_citation_counts() {
    let Some(model) = tiny() else { return };
    let (_dir, idx) = setup();
    let q = "Is a juristic act contrary to public order void? [civil:90]";
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--json", "--max-tokens", "8"];
        args.extend_from_slice(extra);
        args.push(q);
        serde_json::from_str(&ask(&idx, &model, &args)).unwrap()
    };
    let plain = run(&[]);
    // The random model's reply is noise; the prefix makes the answer cite the top article.
    let prefixed = run(&["--reply-prefix", "Under [civil:90] "]);
    let raw = prefixed["raw_answer"].as_str().unwrap();
    assert!(raw.starts_with("Under [civil:90]"), "{prefixed}");
    let cited: Vec<&str> = prefixed["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(cited.contains(&"civil:90"), "{prefixed}");
    // The prefix is part of the model's input: more prompt tokens than without it.
    let tokens = |v: &serde_json::Value| v["timings"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens(&prefixed) > tokens(&plain), "{prefixed} vs {plain}");
    // Text mode prints the prefix before the generated words.
    let out = ask(
        &idx,
        &model,
        &[
            "--max-tokens",
            "4",
            "--reply-prefix",
            "Under [civil:90] ",
            q,
        ],
    );
    assert!(out.starts_with("Under [civil:90] "), "{out}");
}

#[test]
fn ask_refuses_bad_input_clearly() {
    let (_dir, idx) = setup();
    let err = fails(&["ask", "--index", s(&idx), "   "]);
    assert!(err.contains("question is empty"), "{err}");
    let err = fails(&[
        "ask",
        "--index",
        s(&idx),
        "--model",
        "/no/such/model.gguf",
        "void?",
    ]);
    assert!(err.contains("no such model file"), "{err}");
    let Some(model) = tiny() else { return };
    // tiny.gguf's context is 2048 tokens.
    let long = "void ".repeat(3000);
    let err = fails(&["ask", "--index", s(&idx), "--model", s(&model), &long]);
    assert!(err.contains("shorten the question"), "{err}");
}

#[test]
fn eval_qa_scores_yes_no_and_free_text_and_writes_rows() {
    let Some(model) = tiny() else { return };
    let (dir, idx) = setup();
    let rows = dir.path().join("rows.jsonl");
    let (queries, qrels) = (
        dir.path().join("queries.jsonl"),
        dir.path().join("qrels.tsv"),
    );
    for source in ["gold", "retrieved"] {
        let out = ok(&[
            "eval-qa",
            "--index",
            s(&idx),
            "--queries",
            s(&queries),
            "--qrels",
            s(&qrels),
            "--articles",
            source,
            "-k",
            "2",
            "--model",
            s(&model),
            "--max-tokens",
            "8",
            "--output",
            s(&rows),
        ]);
        assert!(
            out.contains("yes/no accuracy") && out.contains("rouge-l f1"),
            "{out}"
        );
        assert!(out.contains("token f1"), "{out}");
        assert_eq!(out.contains("recall@2"), source == "retrieved", "{out}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rows)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["kind"], "yes_no");
        assert!(lines[0]["yes_logit"].is_number());
        assert_eq!(lines[2]["kind"], "free_text");
        let rl = lines[2]["rouge_l"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rl));
    }
}

#[test]
fn eval_qa_cite_scores_citations_of_yes_no_questions() {
    let Some(model) = tiny() else { return };
    let (dir, idx) = setup();
    let rows = dir.path().join("rows.jsonl");
    let (queries, qrels) = (
        dir.path().join("queries.jsonl"),
        dir.path().join("qrels.tsv"),
    );
    let out = ok(&[
        "eval-qa",
        "--index",
        s(&idx),
        "--queries",
        s(&queries),
        "--qrels",
        s(&qrels),
        "--articles",
        "retrieved",
        "-k",
        "2",
        "--model",
        s(&model),
        "--max-tokens",
        "8",
        "--cite",
        "--output",
        s(&rows),
    ]);
    // Every query (Yes/No ones included) now counts in the citation hit rate.
    let line = out
        .lines()
        .find(|l| l.starts_with("citation hit rate"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.trim_end().ends_with(" 4"), "{line}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rows)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "yes_no");
    assert!(lines[0]["citation_hit"].is_boolean(), "{}", lines[0]);
    assert!(lines[0]["answer"].is_string());
    let hits = lines
        .iter()
        .filter(|l| l["citation_hit"] == serde_json::Value::Bool(true))
        .count();
    let rate: f64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(
        (rate - hits as f64 / 4.0).abs() < 1e-4,
        "{line} vs {hits} hits"
    );
}

#[test]
fn eval_qa_without_answers_says_what_it_needs() {
    let (dir, idx) = setup();
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, "{\"_id\": \"q1\", \"text\": \"void?\"}\n").unwrap();
    let qrels = dir.path().join("qrels.tsv");
    let err = fails(&[
        "eval-qa",
        "--index",
        s(&idx),
        "--queries",
        s(&plain),
        "--qrels",
        s(&qrels),
    ]);
    assert!(err.contains("no query has an `answer`"), "{err}");
}

/// `--rerank-model`: the retrieved articles are the first stage's, the top `--rerank-depth`
/// reordered by the cross-encoder (same set), `--rerank-alpha 1` keeps the first stage's
/// order, and a question with nothing relevant still gets the fixed line.
#[test]
fn ask_reranks_the_retrieved_articles() {
    let Some(model) = tiny() else { return };
    if !common::models_dir()
        .join("e5-small/e5-small-q4.bin")
        .exists()
    {
        eprintln!("skipped: e5-small missing; run bash scripts/fetch-models.sh");
        return;
    }
    let (_dir, idx) = setup();
    let q = "May a lessee sublease without the consent of the lessor?";
    let retrieved = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["--json", "--max-tokens", "4", "-k", "3"];
        args.extend_from_slice(extra);
        args.push(q);
        let v: serde_json::Value = serde_json::from_str(&ask(&idx, &model, &args)).unwrap();
        v["retrieved"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let plain = retrieved(&[]);
    let rerank = ["--rerank-model", "e5-small", "--rerank-depth", "3"];
    let mut reranked = retrieved(&rerank);
    assert_eq!(reranked.len(), plain.len());
    let kept = retrieved(&[&rerank[..], &["--rerank-alpha", "1"]].concat());
    assert_eq!(kept, plain, "alpha 1 is the first stage's order");
    let mut sorted = plain.clone();
    sorted.sort();
    reranked.sort();
    assert_eq!(reranked, sorted, "the same articles, reordered");
    let mut args = vec!["--json"];
    args.extend_from_slice(&rerank);
    args.push("quantum chromodynamics");
    let v: serde_json::Value = serde_json::from_str(&ask(&idx, &model, &args)).unwrap();
    assert_eq!(v["answered"], false);
}
