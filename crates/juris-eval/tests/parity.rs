//! Parity of juris-eval with pytrec_eval (trec_eval), ranx and scipy on the
//! fixtures written by `scripts/fixtures/eval_fixtures.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use juris_eval::{compare, evaluate, Metric, MissingPolicy, Qrels, Report, Run};
use serde_json::Value;

const TOL: f64 = 1e-6;

/// (juris metric, pytrec_eval measure)
const PYTREC: [(&str, &str); 12] = [
    ("ndcg@5", "ndcg_cut_5"),
    ("ndcg@10", "ndcg_cut_10"),
    ("ndcg@100", "ndcg_cut_100"),
    ("p@5", "P_5"),
    ("p@10", "P_10"),
    ("recall@5", "recall_5"),
    ("recall@10", "recall_10"),
    ("recall@100", "recall_100"),
    ("map", "map"),
    ("map@10", "map_cut_10"),
    ("mrr", "recip_rank"),
    ("r-precision", "Rprec"),
];

/// (juris metric, ranx metric)
const RANX: [(&str, &str); 13] = [
    ("ndcg@5", "ndcg@5"),
    ("ndcg@10", "ndcg@10"),
    ("ndcg@100", "ndcg@100"),
    ("p@5", "precision@5"),
    ("p@10", "precision@10"),
    ("recall@5", "recall@5"),
    ("recall@10", "recall@10"),
    ("recall@100", "recall@100"),
    ("map", "map"),
    ("map@10", "map@10"),
    ("mrr", "mrr"),
    ("mrr@10", "mrr@10"),
    ("r-precision", "r-precision"),
];

const RUNS: [&str; 3] = ["run_a", "run_b", "run_ties"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid expected.json")
}

fn qrels() -> Qrels {
    Qrels::read(&fixture("qrels.tsv")).expect("qrels.tsv")
}

fn metrics(names: &[&str]) -> Vec<Metric> {
    names.iter().map(|n| Metric::parse(n).unwrap()).collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn report_map(r: &Report) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for (q, vals) in &r.per_query {
        for (m, v) in r.metrics.iter().zip(vals) {
            out.insert((q.clone(), m.to_string()), *v);
        }
    }
    out
}

#[test]
fn beir_and_trec_qrels_read_identically() {
    let a = qrels();
    let b = Qrels::read(&fixture("qrels.txt")).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.num_queries(), 24);
    assert_eq!(a.relevance("q12", "d100"), Some(1));
    assert_eq!(a.num_relevant("q7"), 0);
}

#[test]
fn metrics_match_pytrec_eval_skip_policy() {
    let exp = expected();
    let qrels = qrels();
    let names: Vec<&str> = PYTREC.iter().map(|p| p.0).collect();
    let ms = metrics(&names);
    let mut max_diff = 0.0f64;
    let mut checked = 0usize;
    for run_name in RUNS {
        let run = Run::read(&fixture(&format!("{run_name}.trec"))).unwrap();
        let report = evaluate(&run, &qrels, &ms, MissingPolicy::Skip);
        let want = &exp["runs"][run_name]["pytrec_eval"];
        let want = want.as_object().unwrap();
        // pytrec_eval also reports queries whose judgments are all 0; juris does not.
        let want_qids: Vec<&String> = want.keys().filter(|q| qrels.num_relevant(q) > 0).collect();
        let got_qids: Vec<&String> = report.per_query.keys().collect();
        assert_eq!(got_qids, want_qids, "{run_name}: evaluated queries");
        assert!(
            report.n_missing > 0,
            "{run_name}: fixtures have missing queries"
        );
        // q99 has no qrels, q7 only non-relevant ones: both ignored
        assert_eq!(report.n_run_only, 2, "{run_name}: run-only queries");
        for (j, (ours, theirs)) in PYTREC.iter().enumerate() {
            let mut sum = 0.0;
            for q in &want_qids {
                let w = num(&want[*q][*theirs]);
                let g = report.per_query[*q][j];
                let d = (w - g).abs();
                max_diff = max_diff.max(d);
                checked += 1;
                assert!(
                    d <= TOL,
                    "{run_name} {q} {ours}: juris {g} vs pytrec_eval {w}"
                );
                sum += w;
            }
            let mean = sum / want_qids.len() as f64;
            let d = (mean - report.means[j]).abs();
            max_diff = max_diff.max(d);
            assert!(
                d <= TOL,
                "{run_name} mean {ours}: {} vs {mean}",
                report.means[j]
            );
        }
    }
    println!("pytrec_eval parity: {checked} values, max abs diff {max_diff:e}");
}

#[test]
fn mrr_at_k_matches_pytrec_recip_rank_on_truncated_run() {
    let exp = expected();
    let qrels = qrels();
    for run_name in RUNS {
        let run = Run::read(&fixture(&format!("{run_name}.trec"))).unwrap();
        for k in [5usize, 10] {
            let report = evaluate(&run, &qrels, &[Metric::Mrr(Some(k))], MissingPolicy::Skip);
            let want = exp["runs"][run_name]["mrr_cut"][k.to_string()]
                .as_object()
                .unwrap();
            let mut n = 0;
            for (q, w) in want {
                if qrels.num_relevant(q) == 0 {
                    continue;
                }
                let g = report.per_query[q][0];
                assert!(
                    (g - num(w)).abs() <= TOL,
                    "{run_name} {q} mrr@{k}: {g} vs {w}"
                );
                n += 1;
            }
            assert_eq!(n, report.n_queries);
            // evaluating the truncated run gives the same numbers
            let cut = evaluate(
                &run.truncated(k),
                &qrels,
                &[Metric::Mrr(None)],
                MissingPolicy::Skip,
            );
            assert_eq!(cut.per_query, report.per_query);
        }
    }
}

#[test]
fn metrics_match_ranx_zero_policy_on_tie_free_queries() {
    let exp = expected();
    let qrels = qrels();
    let names: Vec<&str> = RANX.iter().map(|p| p.0).collect();
    let ms = metrics(&names);
    let mut compared = 0usize;
    for run_name in RUNS {
        let run = Run::read(&fixture(&format!("{run_name}.trec"))).unwrap();
        let report = evaluate(&run, &qrels, &ms, MissingPolicy::Zero);
        let got = report_map(&report);
        let block = &exp["runs"][run_name];
        let tie_free: Vec<&str> = block["tie_free"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // queries missing from the run: ranx (make_comparable) and Zero both give 0
        let missing: Vec<&str> = qrels
            .query_ids_with_relevant()
            .filter(|q| !run.contains_query(q))
            .collect();
        assert_eq!(missing.len(), report.n_missing);
        for (ours, theirs) in RANX {
            for q in tie_free.iter().chain(&missing) {
                if qrels.num_relevant(q) == 0 {
                    continue;
                }
                let w = num(&block["ranx"][theirs][*q]);
                let g = got[&(q.to_string(), ours.to_string())];
                assert!(
                    (w - g).abs() <= TOL,
                    "{run_name} {q} {ours}: juris {g} vs ranx {w}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 300, "compared only {compared} values with ranx");
}

#[test]
fn t_test_matches_scipy_ttest_rel() {
    let exp = expected();
    let qrels = qrels();
    let ms = metrics(&["ndcg@10", "mrr"]);
    let a = evaluate(
        &Run::read(&fixture("run_a.trec")).unwrap(),
        &qrels,
        &ms,
        MissingPolicy::Zero,
    );
    let b = evaluate(
        &Run::read(&fixture("run_b.trec")).unwrap(),
        &qrels,
        &ms,
        MissingPolicy::Zero,
    );
    for (j, measure) in ["ndcg_cut_10", "recip_rank"].iter().enumerate() {
        let want = &exp["ttest_a_vs_b"][*measure];
        let c = compare(&a, &b, j, 1000, 7).unwrap();
        assert_eq!(c.t_test.n as u64, want["n"].as_u64().unwrap());
        assert_eq!(c.t_test.df as u64, want["df"].as_u64().unwrap());
        let t = c.t_test.t.expect("t defined");
        assert!(
            (t - num(&want["t"])).abs() <= TOL,
            "{measure}: t {t} vs {}",
            want["t"]
        );
        assert!(
            (c.t_test.p_value - num(&want["p"])).abs() <= TOL,
            "{measure}: p {} vs {}",
            c.t_test.p_value,
            want["p"]
        );
        assert_eq!(c.n_only_a + c.n_only_b, 0);
        println!(
            "{measure}: |t - scipy| = {:e}, |p - scipy| = {:e}",
            (t - num(&want["t"])).abs(),
            (c.t_test.p_value - num(&want["p"])).abs()
        );
    }
}

#[test]
fn f2_matches_hand_computed_values() {
    let mut qrels = Qrels::new();
    for (q, d, r) in [
        ("q1", "a", 1),
        ("q1", "b", 2),
        ("q1", "c", 1),
        ("q2", "a", 1),
        ("q2", "b", 1),
        ("q2", "z", 0),
        ("q3", "a", 1),
        ("q4", "a", 1),
    ] {
        qrels.insert(q, d, r);
    }
    let mut run = Run::new("hand");
    // q1, k = 3: top 3 = x, a, y → 1 hit; P = 1/3, R = 1/3, F2 = 1/3
    for (d, s) in [("x", 0.9), ("a", 0.8), ("y", 0.7), ("b", 0.6)] {
        run.push("q1", d, s).unwrap();
    }
    // q2, k = 3, only 2 retrieved (both relevant): P = 2/2 = 1, R = 1, F2 = 1
    run.push("q2", "a", 1.0).unwrap();
    run.push("q2", "b", 1.0).unwrap();
    // q3: nothing relevant retrieved → 0; q4: missing from the run → 0 under Zero
    run.push("q3", "z", 1.0).unwrap();
    let f2 = Metric::parse("f2@3").unwrap();
    assert_eq!(f2, Metric::F2(3));
    let r = evaluate(&run, &qrels, &[f2], MissingPolicy::Zero);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(r.per_query["q1"][0], 1.0 / 3.0));
    assert!(close(r.per_query["q2"][0], 1.0));
    assert_eq!(r.per_query["q3"][0], 0.0);
    assert_eq!(r.per_query["q4"][0], 0.0);
    assert!(close(r.means[0], (1.0 / 3.0 + 1.0) / 4.0));
    // k = 1 on q1 → top 1 = x (not relevant) → 0; k = 2 → P = 1/2, R = 1/3:
    // F2 = 5 · (1/2)(1/3) / (4 · 1/2 + 1/3) = (5/6) / (7/3) = 5/14
    let r = evaluate(
        &run,
        &qrels,
        &[Metric::F2(1), Metric::F2(2)],
        MissingPolicy::Skip,
    );
    assert_eq!(r.per_query["q1"][0], 0.0);
    assert!(close(r.per_query["q1"][1], 5.0 / 14.0));
    // cross-check through compute(): 5PR/(4P+R) with P = 2/4, R = 2/3 at k = 4
    let v = Metric::F2(4).compute(&[0, 1, 0, 2], &[1, 2, 1]);
    let (p, rc) = (0.5, 2.0 / 3.0);
    assert!(close(v, 5.0 * p * rc / (4.0 * p + rc)));
}

fn synthetic_report(tag: &str, values: &[f64]) -> Report {
    let mut per_query = BTreeMap::new();
    for (i, v) in values.iter().enumerate() {
        per_query.insert(format!("q{i:03}"), vec![*v]);
    }
    let n = values.len();
    Report {
        run_tag: tag.to_string(),
        metrics: vec![Metric::Ndcg(Some(10))],
        means: vec![values.iter().sum::<f64>() / n as f64],
        per_query,
        n_queries: n,
        n_missing: 0,
        n_run_only: 0,
        missing_policy: MissingPolicy::Zero,
    }
}

#[test]
fn randomization_test_is_deterministic_and_agrees_with_t_test() {
    let mut rng = juris_eval::significance::SplitMix64::new(3);
    let base: Vec<f64> = (0..60).map(|_| rng.next_f64() * 0.6).collect();
    // clear improvement: +0.15 ± 0.05
    let better: Vec<f64> = base
        .iter()
        .map(|b| b + 0.15 + (rng.next_f64() - 0.5) * 0.1)
        .collect();
    // no effect: symmetric noise
    let same: Vec<f64> = base
        .iter()
        .map(|b| b + (rng.next_f64() - 0.5) * 0.2)
        .collect();
    let b = synthetic_report("base", &base);
    let clear = compare(&synthetic_report("better", &better), &b, 0, 10_000, 42).unwrap();
    let clear2 = compare(&synthetic_report("better", &better), &b, 0, 10_000, 42).unwrap();
    assert_eq!(clear, clear2, "same seed, same result");
    assert!(clear.t_test.p_value < 0.01 && clear.randomization.p_value < 0.01);
    // with 10,000 rounds and a huge effect no round reaches the observed value
    assert_eq!(clear.randomization.p_value, 1.0 / 10_001.0);
    let null = compare(&synthetic_report("same", &same), &b, 0, 10_000, 42).unwrap();
    assert_eq!(
        null.t_test.p_value < 0.05,
        null.randomization.p_value < 0.05,
        "t {} vs randomization {}",
        null.t_test.p_value,
        null.randomization.p_value
    );
    assert!((null.t_test.p_value - null.randomization.p_value).abs() < 0.05);
    let other_seed = compare(&synthetic_report("same", &same), &b, 0, 10_000, 43).unwrap();
    assert!((other_seed.randomization.p_value - null.randomization.p_value).abs() < 0.03);
    assert!(
        compare(&b, &b, 1, 10, 1).is_err(),
        "metric index out of range"
    );
    // renderers
    let table = clear.to_table();
    println!("{table}");
    assert!(table.contains("paired t-test") && table.contains("better"));
    let json: Value = serde_json::from_str(&clear.to_json()).unwrap();
    assert_eq!(json["metric"], "ndcg@10");
}

#[test]
fn run_round_trips_through_trec_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::read(&fixture("run_ties.trec")).unwrap();
    let out = dir.path().join("out.trec");
    run.write_trec(&out).unwrap();
    let back = Run::read(&out).unwrap();
    assert_eq!(run, back);
    assert_eq!(back.tag(), "run_ties");
    // written in trec_eval order with ranks 1..n: q12 ties → d9, d2, d10, d1, then d100
    let text = std::fs::read_to_string(&out).unwrap();
    let q12: Vec<&str> = text.lines().filter(|l| l.starts_with("q12 ")).collect();
    assert_eq!(
        q12,
        [
            "q12 Q0 d9 1 1 run_ties",
            "q12 Q0 d2 2 1 run_ties",
            "q12 Q0 d10 3 1 run_ties",
            "q12 Q0 d1 4 1 run_ties",
            "q12 Q0 d100 5 0.5 run_ties",
        ]
    );
    // only the final file is left in the directory
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.trec")]);
    // the report renders
    let qrels = qrels();
    let report = evaluate(&run, &qrels, &Metric::defaults(), MissingPolicy::Zero);
    let table = report.to_table();
    assert!(
        table.contains("mrr@10") && table.contains("run_ties"),
        "{table}"
    );
    let per_q = report.to_table_per_query();
    println!("{table}\n{per_q}");
    assert!(!per_q.contains("-0.0000"), "no negative zeros: {per_q}");
    assert_eq!(per_q.lines().count(), 2 + report.n_queries + 1);
    let json: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["n_queries"], report.n_queries);
    assert!((num(&json["means"]["ndcg@10"]) - report.means[1]).abs() < 1e-15);
}
