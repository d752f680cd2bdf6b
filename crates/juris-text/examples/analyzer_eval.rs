//! Quick analyzer comparison: BM25 (k1 = 1.2, b = 0.75; env `K1`, `B`; `NO_TITLE` drops titles) over a BEIR-style folder
//! (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`), nDCG@10 per analyzer.
//! Not the juris index: a few dozen lines so that analyzer choices can be checked here.
//! Usage: `cargo run --release -p juris-text --example analyzer_eval -- <folder> <split>
//! <analyzer>...`. Extra names `x-ar-snowball-only` and `x-ar-snowball-raw` run Snowball
//! Arabic on `ar-norm` words (with stopwords) and on raw NFKC words.

use juris_text::analyzers::ar_light::is_ar_stopword;
use juris_text::normalize::{nfkc_lower, normalize_arabic};
use juris_text::{build_analyzer, Analyzer};
use rust_stemmers::{Algorithm, Stemmer};
use std::collections::HashMap;

struct Custom(&'static str);

impl Analyzer for Custom {
    fn name(&self) -> &str {
        self.0
    }
    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        let st = Stemmer::create(Algorithm::Arabic);
        let norm = if self.0.ends_with("raw") {
            nfkc_lower(text)
        } else {
            normalize_arabic(text)
        };
        for w in norm
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            if self.0.ends_with("only") && is_ar_stopword(w) {
                continue;
            }
            sink(&st.stem(w));
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, split, names) = (&args[0], &args[1], &args[2..]);
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}"));
    let mut docs: Vec<(String, String)> = Vec::new();
    for l in read("corpus.jsonl")?.lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        let title = if std::env::var_os("NO_TITLE").is_some() {
            ""
        } else {
            v["title"].as_str().unwrap_or("")
        };
        let text = format!("{} {}", title, v["text"].as_str().unwrap_or(""));
        docs.push((v["_id"].as_str().unwrap_or("").to_string(), text));
    }
    let mut queries = HashMap::new();
    for l in read("queries.jsonl")?.lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        queries.insert(
            v["_id"].as_str().unwrap_or("").to_string(),
            v["text"].as_str().unwrap_or("").to_string(),
        );
    }
    let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for l in read(&format!("qrels/{split}.tsv"))?.lines().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() >= 3 {
            qrels
                .entry(f[0].to_string())
                .or_default()
                .insert(f[1].to_string(), f[2].parse().unwrap_or(0.0));
        }
    }
    for name in names {
        let a: Box<dyn Analyzer> = match name.as_str() {
            "x-ar-snowball-only" => Box::new(Custom("x-ar-snowball-only")),
            "x-ar-snowball-raw" => Box::new(Custom("x-ar-snowball-raw")),
            n => Box::new(ArcA(build_analyzer(n)?)),
        };
        let mut postings: HashMap<String, Vec<(u32, f32)>> = HashMap::new();
        let mut lens = Vec::new();
        for (i, (_, t)) in docs.iter().enumerate() {
            let mut tf: HashMap<String, f32> = HashMap::new();
            let mut n = 0;
            a.analyze_with(t, &mut |w| {
                *tf.entry(w.to_string()).or_default() += 1.0;
                n += 1;
            });
            lens.push(n as f32);
            for (w, f) in tf {
                postings.entry(w).or_default().push((i as u32, f));
            }
        }
        let avg = lens.iter().sum::<f32>() / lens.len().max(1) as f32;
        let env = |k: &str, d: f32| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let (k1, b, nd) = (env("K1", 1.2), env("B", 0.75), docs.len() as f32);
        let mut total = 0.0;
        for (qid, rel) in &qrels {
            let mut scores = vec![0f32; docs.len()];
            for w in a.analyze(queries.get(qid).map_or("", |s| s.as_str())) {
                if let Some(p) = postings.get(&w) {
                    let idf = (1.0 + (nd - p.len() as f32 + 0.5) / (p.len() as f32 + 0.5)).ln();
                    for (d, f) in p {
                        let norm = k1 * (1.0 - b + b * lens[*d as usize] / avg);
                        scores[*d as usize] += idf * f * (k1 + 1.0) / (f + norm);
                    }
                }
            }
            let mut idx: Vec<usize> = (0..docs.len()).filter(|&i| scores[i] > 0.0).collect();
            idx.sort_by(|x, y| scores[*y].total_cmp(&scores[*x]).then(x.cmp(y)));
            let dcg: f64 = idx
                .iter()
                .take(10)
                .enumerate()
                .map(|(r, &d)| {
                    rel.get(&docs[d].0).copied().unwrap_or(0.0) / ((r + 2) as f64).log2()
                })
                .sum();
            let mut ideal: Vec<f64> = rel.values().copied().collect();
            ideal.sort_by(|x, y| y.total_cmp(x));
            let idcg: f64 = ideal
                .iter()
                .take(10)
                .enumerate()
                .map(|(r, g)| g / ((r + 2) as f64).log2())
                .sum();
            total += if idcg > 0.0 { dcg / idcg } else { 0.0 };
        }
        println!(
            "{name}\tnDCG@10 = {:.4}\t({} queries)",
            total / qrels.len() as f64,
            qrels.len()
        );
    }
    Ok(())
}

struct ArcA(std::sync::Arc<dyn Analyzer>);

impl Analyzer for ArcA {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        self.0.analyze_with(text, sink)
    }
}
