//! Evaluation reports and two-run comparisons, rendered as text tables or JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::metrics::{Metric, MissingPolicy};
use crate::significance::{paired_t_test, randomization_test, RandomizationTest, TTest};
use crate::EvalError;

/// Per-query and mean metric values of one run, as produced by [`crate::evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The run's tag.
    pub run_tag: String,
    /// The metrics, in column order.
    pub metrics: Vec<Metric>,
    /// Query id → one value per metric (same order as `metrics`).
    pub per_query: BTreeMap<String, Vec<f64>>,
    /// Mean over `per_query` of each metric (0 when no query was evaluated).
    pub means: Vec<f64>,
    /// Number of queries evaluated (`per_query.len()`).
    pub n_queries: usize,
    /// Queries with relevant qrels but no document in the run (scored 0 under
    /// [`MissingPolicy::Zero`], left out under [`MissingPolicy::Skip`]).
    pub n_missing: usize,
    /// Run queries without any relevant judgment; ignored.
    pub n_run_only: usize,
    /// How missing queries were treated.
    pub missing_policy: MissingPolicy,
}

impl Report {
    /// The mean of one metric, if it is in the report.
    pub fn mean(&self, metric: Metric) -> Option<f64> {
        let j = self.metrics.iter().position(|&m| m == metric)?;
        self.means.get(j).copied()
    }

    /// One-row table of the means (see [`table`]), followed by a line with the
    /// query counts.
    pub fn to_table(&self) -> String {
        let mut out = table(&[self]);
        out.push_str(&self.counts_line());
        out.push('\n');
        out
    }

    /// Table with one row per query and a final `mean` row; 4 decimals.
    pub fn to_table_per_query(&self) -> String {
        let mut header = vec!["query".to_string()];
        header.extend(self.metrics.iter().map(Metric::to_string));
        let mut rows: Vec<Vec<String>> = self
            .per_query
            .iter()
            .map(|(q, vals)| {
                let mut row = vec![q.clone()];
                row.extend(vals.iter().map(|v| format!("{v:.4}")));
                row
            })
            .collect();
        let mut mean_row = vec!["mean".to_string()];
        mean_row.extend(self.means.iter().map(|v| format!("{v:.4}")));
        rows.push(mean_row);
        render(&header, &rows)
    }

    /// `N queries evaluated; M with qrels missing from the run (scored 0); K run-only ignored`.
    pub fn counts_line(&self) -> String {
        let missing = match self.missing_policy {
            MissingPolicy::Zero => "scored 0",
            MissingPolicy::Skip => "skipped",
        };
        format!(
            "{} queries evaluated; {} with qrels missing from the run ({missing}); {} run queries without qrels ignored",
            self.n_queries, self.n_missing, self.n_run_only
        )
    }

    /// JSON object: `run`, `missing_policy`, the counts, `metrics` (names in
    /// order), `means` (name → value) and `per_query` (query → name → value).
    pub fn to_json_value(&self) -> Value {
        let names: Vec<String> = self.metrics.iter().map(Metric::to_string).collect();
        let named = |vals: &[f64]| -> Value {
            let mut m = Map::new();
            for (n, v) in names.iter().zip(vals) {
                m.insert(n.clone(), json!(v));
            }
            Value::Object(m)
        };
        let mut per_query = Map::new();
        for (q, vals) in &self.per_query {
            per_query.insert(q.clone(), named(vals));
        }
        json!({
            "run": self.run_tag,
            "missing_policy": self.missing_policy,
            "n_queries": self.n_queries,
            "n_missing": self.n_missing,
            "n_run_only": self.n_run_only,
            "metrics": names,
            "means": named(&self.means),
            "per_query": Value::Object(per_query),
        })
    }

    /// [`Report::to_json_value`] as pretty-printed JSON text.
    pub fn to_json(&self) -> String {
        pretty(&self.to_json_value())
    }
}

/// Aligned text table with one row per run: `run`, `queries`, then the mean of
/// each metric of the first report (4 decimals; `-` where a report lacks it).
pub fn table(reports: &[&Report]) -> String {
    let metrics: Vec<Metric> = reports
        .first()
        .map(|r| r.metrics.clone())
        .unwrap_or_default();
    let mut header = vec!["run".to_string(), "queries".to_string()];
    header.extend(metrics.iter().map(Metric::to_string));
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let mut row = vec![display_tag(&r.run_tag), r.n_queries.to_string()];
            row.extend(metrics.iter().map(|&m| match r.mean(m) {
                Some(v) => format!("{v:.4}"),
                None => "-".to_string(),
            }));
            row
        })
        .collect();
    render(&header, &rows)
}

fn display_tag(tag: &str) -> String {
    if tag.is_empty() {
        "(untagged)".to_string()
    } else {
        tag.to_string()
    }
}

/// Renders rows under a header: first column left-aligned, others right-aligned,
/// two spaces between columns, a dashed rule under the header.
fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let ncols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (j, cell) in row.iter().enumerate().take(ncols) {
            widths[j] = widths[j].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (j, cell) in cells.iter().enumerate().take(ncols) {
            let pad = widths[j] - cell.chars().count();
            if j > 0 {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header);
    out.push('\n');
    let total: usize = widths.iter().sum::<usize>() + 2 * ncols.saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v)
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
}

/// Paired comparison of two runs on one metric: `a` minus `b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The metric compared.
    pub metric: Metric,
    /// Tag of run `a`.
    pub run_a: String,
    /// Tag of run `b`.
    pub run_b: String,
    /// Mean of `a` over the paired queries.
    pub mean_a: f64,
    /// Mean of `b` over the paired queries.
    pub mean_b: f64,
    /// Queries only in `a`'s report (not paired, not tested).
    pub n_only_a: usize,
    /// Queries only in `b`'s report (not paired, not tested).
    pub n_only_b: usize,
    /// Paired two-sided t-test (`n` = paired queries, `mean_diff` = `mean_a - mean_b`).
    pub t_test: TTest,
    /// Paired randomization test.
    pub randomization: RandomizationTest,
}

impl Comparison {
    /// Aligned text table: one row per run plus a difference row and the test results.
    pub fn to_table(&self) -> String {
        let header = vec![
            "run".to_string(),
            "queries".to_string(),
            self.metric.to_string(),
        ];
        let n = self.t_test.n.to_string();
        let rows = vec![
            vec![
                display_tag(&self.run_a),
                n.clone(),
                format!("{:.4}", self.mean_a),
            ],
            vec![
                display_tag(&self.run_b),
                n.clone(),
                format!("{:.4}", self.mean_b),
            ],
            vec![
                "a - b".to_string(),
                n,
                format!("{:+.4}", self.t_test.mean_diff),
            ],
        ];
        let mut out = render(&header, &rows);
        let t = match self.t_test.t {
            Some(t) => format!("{t:.4}"),
            None => "undefined".to_string(),
        };
        out.push_str(&format!(
            "paired t-test: t = {t}, df = {}, p = {:.4}\n",
            self.t_test.df, self.t_test.p_value
        ));
        out.push_str(&format!(
            "randomization test: {} rounds, seed {}, p = {:.4}\n",
            self.randomization.rounds, self.randomization.seed, self.randomization.p_value
        ));
        if self.n_only_a + self.n_only_b > 0 {
            out.push_str(&format!(
                "not paired: {} queries only in a, {} only in b\n",
                self.n_only_a, self.n_only_b
            ));
        }
        out
    }

    /// The comparison as JSON text.
    pub fn to_json(&self) -> String {
        match serde_json::to_value(self) {
            Ok(v) => pretty(&v),
            Err(e) => format!("{{\"error\": {:?}}}", e.to_string()),
        }
    }
}

/// Compares two reports on `a.metrics[metric_index]`, paired over the queries
/// both reports contain (differences `a - b`).
///
/// Runs a paired two-sided t-test and a randomization test with `rounds`
/// rounds (see [`crate::significance::DEFAULT_ROUNDS`]) and `seed`. Errors if
/// `metric_index` is out of range or `b` lacks that metric.
pub fn compare(
    a: &Report,
    b: &Report,
    metric_index: usize,
    rounds: usize,
    seed: u64,
) -> Result<Comparison, EvalError> {
    let metric = *a
        .metrics
        .get(metric_index)
        .ok_or_else(|| EvalError::Compare {
            message: format!(
                "metric index {metric_index} out of range: the report has {} metrics",
                a.metrics.len()
            ),
        })?;
    let jb = b
        .metrics
        .iter()
        .position(|&m| m == metric)
        .ok_or_else(|| EvalError::Compare {
            message: format!("run {:?} was not evaluated on {metric}", b.run_tag),
        })?;
    let mut va = Vec::new();
    let mut vb = Vec::new();
    for (q, vals) in &a.per_query {
        let pair = (
            vals.get(metric_index),
            b.per_query.get(q).and_then(|o| o.get(jb)),
        );
        if let (Some(&x), Some(&y)) = pair {
            va.push(x);
            vb.push(y);
        }
    }
    let n = va.len();
    let diffs: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| x - y).collect();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    Ok(Comparison {
        metric,
        run_a: a.run_tag.clone(),
        run_b: b.run_tag.clone(),
        mean_a: mean(&va),
        mean_b: mean(&vb),
        n_only_a: a.per_query.len().saturating_sub(n),
        n_only_b: b.per_query.len().saturating_sub(n),
        t_test: paired_t_test(&diffs),
        randomization: randomization_test(&diffs, rounds, seed),
    })
}
