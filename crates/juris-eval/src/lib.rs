//! Evaluation for juris: qrels and run IO, retrieval metrics, significance
//! tests and reports.
//!
//! * [`Qrels`] reads BEIR TSV (`query-id corpus-id score`, header detected) and
//!   TREC qrels; [`Run`] reads and atomically writes TREC run files.
//! * [`Metric`] (`mrr@k`, `ndcg@k`, `recall@k`, `p@k`, `map`, `map@k`, `f2@k`,
//!   `r-precision`) and [`evaluate`] produce a [`Report`] of per-query values
//!   and means.
//! * [`compare`] runs a paired t-test and a paired randomization test on two
//!   reports ([`significance`]).
//! * [`Report::to_table`] / [`Report::to_json`] render results.
//! * [`qa`]: answer-quality metrics (SQuAD token F1, ROUGE-L) for Arabic, Japanese and
//!   English answers.
//!
//! **Key design decision: trec_eval parity.** Metrics reproduce trec_eval
//! (as wrapped by pytrec_eval) exactly, including its ranking rule: a query's
//! documents are sorted by score descending with ties broken by document id in
//! *descending* byte order, and the rank column of a run file is ignored (see
//! [`trec_eval_order`]). The one deliberate departure is the default handling of
//! queries that have relevant qrels but no results: [`MissingPolicy::Zero`]
//! scores them 0 (trec_eval/pytrec_eval silently drop them, available as
//! [`MissingPolicy::Skip`]). Parity with pytrec_eval, ranx and scipy is checked
//! by `tests/parity.rs` against fixtures from `scripts/fixtures/eval_fixtures.py`.
//!
//! ```
//! use juris_eval::{compare, evaluate, Metric, MissingPolicy, Qrels, Run};
//!
//! let mut qrels = Qrels::new();
//! qrels.insert("q1", "d1", 2);
//! qrels.insert("q2", "d7", 1);
//! let mut run = Run::new("bm25");
//! run.push("q1", "d3", 1.5).unwrap();
//! run.push("q1", "d1", 1.5).unwrap(); // tie: "d3" > "d1", so d3 ranks first
//! let metrics = Metric::defaults();
//! let report = evaluate(&run, &qrels, &metrics, MissingPolicy::Zero);
//! assert_eq!(report.per_query["q1"][0], 0.5); // mrr@10
//! assert_eq!(report.per_query["q2"][0], 0.0); // missing from the run
//! assert_eq!(report.n_missing, 1);
//! println!("{}", report.to_table());
//! let c = compare(&report, &report, 0, 1000, 42).unwrap();
//! assert_eq!(c.t_test.p_value, 1.0);
//! ```
//!
//! All file errors name the file, the 1-based line and the field; no input
//! makes the readers panic.
#![deny(missing_docs)]

mod error;
mod lines;
pub mod metrics;
pub mod qa;
pub mod qrels;
pub mod report;
pub mod run;
pub mod significance;

pub use error::EvalError;
pub use metrics::{evaluate, Metric, MissingPolicy};
pub use qrels::{Qrels, QrelsFormat};
pub use report::{compare, table, Comparison, Report};
pub use run::{trec_eval_order, Run};
pub use significance::{paired_t_test, randomization_test, RandomizationTest, TTest};
