//! Every kind of bad input gives an error naming the file, line and field;
//! no input makes a reader panic.

use std::path::PathBuf;

use juris_eval::{EvalError, Metric, Qrels, QrelsFormat, Run};
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn qrels_err(bytes: &[u8]) -> String {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "dev.tsv", bytes);
    Qrels::read(&p).unwrap_err().to_string()
}

fn run_err(bytes: &[u8]) -> String {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "bm25.trec", bytes);
    Run::read(&p).unwrap_err().to_string()
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} should contain {p:?}");
    }
}

#[test]
fn qrels_bad_score() {
    let msg = qrels_err(b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\tx\n");
    assert_has(
        &msg,
        &["dev.tsv:3: field 3 (score): \"x\" is not an integer"],
    );
    let msg = qrels_err(b"q1 0 d1 1\nq1 0 d2 1.5\n");
    assert_has(
        &msg,
        &["dev.tsv:2: field 4 (relevance): \"1.5\" is not an integer"],
    );
    // a first line that is neither a header nor data
    let msg = qrels_err(b"q1\td1\thigh\n");
    assert_has(&msg, &["dev.tsv:1: field 3 (score)"]);
}

#[test]
fn qrels_wrong_column_count() {
    let msg = qrels_err(b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n");
    assert_has(&msg, &["dev.tsv:3:", "expected 3 fields", "found 2"]);
    let msg = qrels_err(b"q1 0 d1 1\nq2 0 d2 1 extra\n");
    assert_has(&msg, &["dev.tsv:2:", "expected 4 fields", "found 5"]);
    let msg = qrels_err(b"q1 d1\n");
    assert_has(&msg, &["dev.tsv:1:", "found 2"]);
}

#[test]
fn qrels_empty_field_and_conflict() {
    let msg = qrels_err(b"query-id\tcorpus-id\tscore\nq1\t\t1\n");
    assert_has(&msg, &["dev.tsv:2: field 2 (corpus-id) is empty"]);
    let msg = qrels_err(b"q1\td1\t1\nq1\td1\t2\n");
    assert_has(&msg, &["dev.tsv:2:", "\"d1\"", "different relevance"]);
    // an identical repeat is accepted
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "dup.tsv", b"q1\td1\t1\nq1\td1\t1\n");
    assert_eq!(Qrels::read(&p).unwrap().num_judgments(), 1);
}

#[test]
fn missing_and_empty_files() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("qrels").join("dev.tsv");
    let e = Qrels::read(&p).unwrap_err();
    assert!(matches!(e, EvalError::NotFound { .. }));
    assert_has(
        &e.to_string(),
        &["qrels/dev.tsv", "file not found", "check"],
    );
    let e = Run::read(&dir.path().join("nope.trec"))
        .unwrap_err()
        .to_string();
    assert_has(&e, &["nope.trec", "file not found"]);
    assert_has(&qrels_err(b""), &["dev.tsv", "file is empty"]);
    assert_has(&qrels_err(b"\n\n  \n"), &["dev.tsv", "only blank lines"]);
    assert_has(
        &qrels_err(b"query-id\tcorpus-id\tscore\n"),
        &["dev.tsv", "header line but no judgments"],
    );
    assert_has(&run_err(b""), &["bm25.trec", "file is empty"]);
    // a directory is an error, not a panic
    let e = Run::read(dir.path()).unwrap_err().to_string();
    assert!(!e.is_empty());
}

#[test]
fn non_utf8_lines() {
    let msg = qrels_err(b"q1\td1\t1\nq\xff2\td2\t1\n");
    assert_has(&msg, &["dev.tsv:2:", "not valid UTF-8"]);
    let msg = run_err(b"q1 Q0 d1 1 2.5 t\nq1 Q0 d\xc3 2 1.5 t\n");
    assert_has(&msg, &["bm25.trec:2:", "not valid UTF-8"]);
}

#[test]
fn run_bad_fields() {
    let msg = run_err(b"q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 abc t\n");
    assert_has(
        &msg,
        &["bm25.trec:2: field 5 (score): \"abc\" is not a number"],
    );
    let msg = run_err(b"q1 Q0 d1 1 NaN t\n");
    assert_has(
        &msg,
        &["bm25.trec:1: field 5 (score)", "not a finite number"],
    );
    let msg = run_err(b"q1 Q0 d1 one 2.5 t\n");
    assert_has(
        &msg,
        &["bm25.trec:1: field 4 (rank): \"one\" is not an integer"],
    );
    let msg = run_err(b"q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.5\n");
    assert_has(&msg, &["bm25.trec:2:", "expected 6", "found 5"]);
}

#[test]
fn run_duplicate_doc() {
    let msg = run_err(b"q1 Q0 d1 1 2.5 t\nq2 Q0 d1 1 2.5 t\nq1 Q0 d1 2 1.5 t\n");
    assert_has(
        &msg,
        &["bm25.trec:3: field 3 (doc-id): duplicate document \"d1\" for query \"q1\""],
    );
    let mut run = Run::new("t");
    run.push("q1", "d1", 1.0).unwrap();
    let e = run.push("q1", "d1", 2.0).unwrap_err();
    assert!(matches!(e, EvalError::DuplicateDoc { .. }), "{e}");
    assert!(run.push("q1", "d2", f64::NAN).is_err());
    assert_eq!(run.len(), 1);
    assert_eq!(run.score("q1", "d1"), Some(1.0));
}

#[test]
fn bom_crlf_blank_lines_and_format_detection() {
    let dir = TempDir::new().unwrap();
    let p = write(
        &dir,
        "q.tsv",
        b"\xEF\xBB\xBFquery-id\tcorpus-id\tscore\r\nq1\tdoc one\t2\r\n\r\nq2\td2\t0\r\n",
    );
    let (q, f) = Qrels::read_with_format(&p).unwrap();
    assert_eq!(f, QrelsFormat::Beir);
    assert_eq!(q.relevance("q1", "doc one"), Some(2));
    assert_eq!(q.num_judgments(), 2);
    let p = write(&dir, "q.txt", b"q1\t0\td1\t1\nq1 0 d2 3\n");
    let (q, f) = Qrels::read_with_format(&p).unwrap();
    assert_eq!(f, QrelsFormat::Trec);
    assert_eq!(q.relevance("q1", "d2"), Some(3));
    // headerless BEIR
    let p = write(&dir, "h.tsv", b"q1\td1\t1\n");
    assert_eq!(Qrels::read(&p).unwrap().num_judgments(), 1);
    let p = write(&dir, "r.trec", b"\r\nq1 Q0 d1 1 -2.5e-3 my-run\r\n");
    let r = Run::read(&p).unwrap();
    assert_eq!((r.tag(), r.score("q1", "d1")), ("my-run", Some(-2.5e-3)));
}

#[test]
fn write_is_atomic_and_rejects_unwritable_ids() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("run.trec");
    std::fs::write(&out, "old content\n").unwrap();
    let mut run = Run::new("my run");
    run.push("q1", "doc 1", 1.0).unwrap();
    let e = run.write_trec(&out).unwrap_err().to_string();
    assert_has(&e, &["run.trec", "document id", "\"doc 1\""]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old content\n");
    let mut run = Run::new("my run");
    run.push("q1", "d1", 0.1 + 0.2).unwrap();
    run.push("q1", "d2", 1e-300).unwrap();
    run.write_trec(&out).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("q1 Q0 d1 1 0.30000000000000004 my_run")
    );
    let back = Run::read(&out).unwrap();
    assert_eq!(back.score("q1", "d2"), Some(1e-300));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file left"
    );
    // writing into a missing directory is an error naming the path
    let e = run
        .write_trec(&dir.path().join("no/such/dir/x.trec"))
        .unwrap_err()
        .to_string();
    assert_has(&e, &["x.trec", "cannot write"]);
}

#[test]
fn metric_parsing_round_trips() {
    for s in [
        "mrr@10",
        "mrr",
        "ndcg@10",
        "ndcg",
        "recall@100",
        "recall",
        "p@5",
        "map",
        "map@100",
        "f2@5",
        "r-precision",
    ] {
        let m = Metric::parse(s).unwrap();
        assert_eq!(m.to_string(), s);
        assert_eq!(s.parse::<Metric>().unwrap(), m);
    }
    for (alias, canon) in [
        ("NDCG@10", "ndcg@10"),
        ("ndcg_cut_10", "ndcg@10"),
        ("P_5", "p@5"),
        ("P.5", "p@5"),
        ("precision@5", "p@5"),
        ("recall_100", "recall@100"),
        ("map_cut_10", "map@10"),
        ("recip_rank", "mrr"),
        ("Rprec", "r-precision"),
        (" MRR@10 ", "mrr@10"),
    ] {
        assert_eq!(Metric::parse(alias).unwrap().to_string(), canon, "{alias}");
    }
    for bad in [
        "",
        "mrr@0",
        "mrr@x",
        "p",
        "f2",
        "bleu",
        "ndcg@-1",
        "r-precision@5",
        "p@",
    ] {
        let e = Metric::parse(bad).unwrap_err().to_string();
        assert!(e.contains("metric"), "{bad}: {e}");
    }
    assert_eq!(
        Metric::defaults()
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>(),
        ["mrr@10", "ndcg@10", "recall@10", "recall@100"]
    );
    assert_eq!(
        Metric::parse("ndcg@10")
            .unwrap()
            .trec_eval_name()
            .as_deref(),
        Some("ndcg_cut_10")
    );
}

#[test]
fn readers_never_panic_on_garbage() {
    let dir = TempDir::new().unwrap();
    let mut rng = juris_eval::significance::SplitMix64::new(99);
    let alphabet = b"q0d1 \t\n\r.-eE+x\xff\xc3Q9";
    for i in 0..300 {
        let len = (rng.next_u64() % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
            .collect();
        let p = write(&dir, &format!("g{i}"), &bytes);
        let _ = Qrels::read(&p);
        let _ = Run::read(&p);
    }
}
