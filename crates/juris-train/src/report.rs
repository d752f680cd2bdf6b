//! The run's record: `metrics.jsonl` (one JSON object per logged step or evaluation) and
//! `metrics.svg`, a plot of training loss and dev metrics against the step, drawn by hand
//! (two panels, polylines, axis labels; no plotting dependency).

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::error::{io, Result};

/// Appends one record to the log.
pub fn append(path: &Path, record: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    writeln!(f, "{record}").map_err(io(path))
}

/// All records of the log (none when absent); unreadable lines are skipped.
pub fn read(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps only the records up to optimizer step `step` (a resumed run rewrites what came after
/// its checkpoint, so the log matches an uninterrupted run).
pub fn truncate_after(path: &Path, step: u64) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let kept: Vec<Value> = read(path)
        .into_iter()
        .filter(|r| r.get("step").and_then(Value::as_u64).unwrap_or(0) <= step)
        .collect();
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for r in kept {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

const W: f64 = 720.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

fn panel(out: &mut String, top: f64, title: &str, series: &[Series]) {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    let plot_w = W - LEFT - RIGHT;
    let plot_h = PANEL_H - 50.0;
    let y0 = top + 30.0;
    out.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"14\" font-weight=\"bold\">{title}</text>\n",
        top + 18.0
    ));
    out.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{y0}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>\n"
    ));
    if pts.is_empty() {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#666\">no data</text>\n",
            LEFT + 10.0,
            y0 + 20.0
        ));
        return;
    }
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if xmax - xmin < 1e-12 {
        xmax = xmin + 1.0;
    }
    if ymax - ymin < 1e-12 {
        ymax = ymin + 1.0;
    }
    let sx = |x: f64| LEFT + (x - xmin) / (xmax - xmin) * plot_w;
    let sy = |y: f64| y0 + plot_h - (y - ymin) / (ymax - ymin) * plot_h;
    for (v, y) in [
        (ymin, sy(ymin)),
        (ymax, sy(ymax)),
        ((ymin + ymax) / 2.0, sy((ymin + ymax) / 2.0)),
    ] {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{v:.3}</text>\n",
            LEFT - 4.0,
            y + 3.0
        ));
    }
    for (v, x) in [(xmin, sx(xmin)), (xmax, sx(xmax))] {
        out.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{v:.0}</text>\n",
            y0 + plot_h + 12.0
        ));
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">step</text>\n",
        LEFT + plot_w / 2.0,
        y0 + plot_h + 12.0
    ));
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        ));
        if s.points.len() < 30 {
            for &(x, y) in &s.points {
                out.push_str(&format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>\n",
                    sx(x),
                    sy(y)
                ));
            }
        }
        let ly = y0 + 12.0 + i as f64 * 16.0;
        out.push_str(&format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>\n",
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 35.0,
            ly + 4.0,
            s.name
        ));
    }
}

/// The SVG of `records`: training loss per logged step, dev metrics per evaluation.
pub fn svg(records: &[Value]) -> String {
    svg_titled(records, "training loss (InfoNCE)")
}

/// [`svg`] with another title on the loss panel (the SFT trainer's loss is cross-entropy).
pub fn svg_titled(records: &[Value], loss_title: &str) -> String {
    let mut loss = Series {
        name: "train loss".into(),
        points: Vec::new(),
    };
    let mut metrics: Vec<Series> = Vec::new();
    for r in records {
        let step = r.get("step").and_then(Value::as_f64).unwrap_or(0.0);
        if let Some(l) = r.get("loss").and_then(Value::as_f64) {
            loss.points.push((step, l));
        }
        if let Some(m) = r.get("dev").and_then(Value::as_object) {
            for (name, v) in m {
                let Some(v) = v.as_f64() else { continue };
                match metrics.iter_mut().find(|s| &s.name == name) {
                    Some(s) => s.points.push((step, v)),
                    None => metrics.push(Series {
                        name: name.clone(),
                        points: vec![(step, v)],
                    }),
                }
            }
        }
    }
    let h = 2.0 * PANEL_H + 10.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    panel(&mut out, 0.0, loss_title, std::slice::from_ref(&loss));
    panel(&mut out, PANEL_H, "dev metrics", &metrics);
    out.push_str("</svg>\n");
    out
}

/// Writes `metrics.svg` from `metrics.jsonl` in `out`.
pub fn write_svg(out: &Path) -> Result<()> {
    write_svg_titled(out, "training loss (InfoNCE)")
}

/// [`write_svg`] with another title on the loss panel.
pub fn write_svg_titled(out: &Path, loss_title: &str) -> Result<()> {
    let svg = svg_titled(&read(&out.join("metrics.jsonl")), loss_title);
    let path = out.join("metrics.svg");
    std::fs::write(&path, svg).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_both_panels_and_series() {
        let recs = vec![
            serde_json::json!({"step": 1, "loss": 2.0}),
            serde_json::json!({"step": 2, "loss": 1.5}),
            serde_json::json!({"step": 2, "dev": {"ndcg@10": 0.5, "mrr@10": 0.4}}),
        ];
        let s = svg(&recs);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("training loss") && s.contains("ndcg@10") && s.contains("mrr@10"));
        assert_eq!(s.matches("<polyline").count(), 3);
    }
}
