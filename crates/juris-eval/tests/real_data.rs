//! Optional check on real data: runs when `shared/data` is found (walking up
//! from this crate, or `JURIS_DATA_DIR` pointing at the data folder itself),
//! and prints `skipped: shared/data not found` otherwise.

use std::path::PathBuf;

use juris_eval::{evaluate, Metric, MissingPolicy, Qrels, Run};

fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("JURIS_DATA_DIR") {
        let d = PathBuf::from(d);
        if d.is_dir() {
            return Some(d);
        }
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let cand = dir.join("shared").join("data");
        if cand.is_dir() {
            return Some(cand);
        }
        if !dir.pop() {
            return None;
        }
    }
}

#[test]
fn coliee_statute_en_dev_qrels() {
    let Some(data) = data_dir() else {
        println!("skipped: shared/data not found");
        return;
    };
    let path = data.join("coliee_statute_en").join("qrels").join("dev.tsv");
    if !path.is_file() {
        println!(
            "skipped: shared/data not found ({} missing)",
            path.display()
        );
        return;
    }
    let qrels = Qrels::read(&path).unwrap();
    // observed: 101 dev queries, 130 judgments, all with score 1
    assert_eq!(qrels.num_queries(), 101);
    assert_eq!(qrels.num_judgments(), 130);
    assert_eq!(qrels.query_ids_with_relevant().count(), 101);
    // a perfect run scores 1 on every metric; an empty one scores 0 under Zero
    let mut perfect = Run::new("oracle");
    for (q, docs) in qrels.iter() {
        for (d, &r) in docs {
            perfect.push(q, d, f64::from(r)).unwrap();
        }
    }
    let ms = vec![
        Metric::Mrr(Some(10)),
        Metric::Ndcg(Some(10)),
        Metric::Recall(Some(100)),
        Metric::Map(None),
        Metric::RPrecision,
    ];
    let r = evaluate(&perfect, &qrels, &ms, MissingPolicy::Zero);
    assert_eq!(r.n_queries, 101);
    assert!(
        r.means.iter().all(|&m| (m - 1.0).abs() < 1e-12),
        "{:?}",
        r.means
    );
    let r = evaluate(&Run::new("empty"), &qrels, &ms, MissingPolicy::Zero);
    assert_eq!((r.n_queries, r.n_missing), (101, 101));
    assert!(r.means.iter().all(|&m| m == 0.0));
    let r = evaluate(&Run::new("empty"), &qrels, &ms, MissingPolicy::Skip);
    assert_eq!(r.n_queries, 0);
    println!("coliee_statute_en dev: 101 queries, 130 judgments");
}
