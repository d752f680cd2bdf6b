//! `juris demo`: the main job on the embedded default. Writes the sample laws (written for
//! this project in English, Japanese and Arabic) to a folder, indexes them through the same
//! folder ingestion users get, answers the sample questions and evaluates the ranking against
//! the sample qrels.

use crate::cli::DemoArgs;
use crate::progress::Bar;
use crate::search::{print_hits, run_batch};
use anyhow::{Context, Result};
use juris_eval::{evaluate, Metric, MissingPolicy, Qrels};
use juris_index::corpus::{read_corpus, read_queries, CorpusOptions};
use juris_index::{Index, IndexConfig};
use std::path::Path;

/// The embedded sample: (relative path, contents).
const SAMPLE: &[(&str, &str)] = &[
    (
        "laws/model-contract-act.txt",
        include_str!("../sample/laws/model-contract-act.txt"),
    ),
    (
        "laws/mihon-keiyaku-hou.txt",
        include_str!("../sample/laws/mihon-keiyaku-hou.txt"),
    ),
    (
        "laws/namudhaj-qanun-al-amal.txt",
        include_str!("../sample/laws/namudhaj-qanun-al-amal.txt"),
    ),
    ("queries.jsonl", include_str!("../sample/queries.jsonl")),
    ("qrels.tsv", include_str!("../sample/qrels.tsv")),
];

/// One question per language shown with its ranked articles.
const SHOWCASE: &[&str] = &["en-2", "ja-3", "ar-1"];

pub fn run(args: DemoArgs, bar: &Bar) -> Result<()> {
    let dir = args
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join("juris-demo"));
    write_sample(&dir)?;
    let index_dir = dir.join("index");
    println!("sample laws written to {}", dir.join("laws").display());

    let docs = read_corpus(&dir.join("laws"), &CorpusOptions::default())?;
    let report = juris_index::build_index(docs, &index_dir, &IndexConfig::default(), bar)?;
    println!("index built at {}: {report}\n", index_dir.display());

    let index = Index::open(&index_dir)?;
    let queries = read_queries(&dir.join("queries.jsonl"))?;
    for id in SHOWCASE {
        if let Some(q) = queries.iter().find(|q| q.id == *id) {
            println!("Q [{}] {}", q.id, q.text);
            print_hits(&index, &q.text, None, 3, false)?;
            println!();
        }
    }
    if let Some(question) = &args.question {
        println!("Q {question}");
        print_hits(&index, question, None, 5, false)?;
        println!();
    }

    let run = run_batch(&index, &queries, None, 10, "juris-demo", 1, bar)?;
    let run_path = dir.join("run.trec");
    run.write_trec(&run_path)?;
    let qrels = Qrels::read(&dir.join("qrels.tsv"))?;
    let report = evaluate(&run, &qrels, &Metric::defaults(), MissingPolicy::Zero);
    println!(
        "all {} sample questions (run: {}):",
        queries.len(),
        run_path.display()
    );
    print!("{}", report.to_table());
    println!(
        "\nnext: juris search --index {} \"your question\"   (or rerun: juris demo \"your question\")",
        index_dir.display()
    );
    Ok(())
}

fn write_sample(dir: &Path) -> Result<()> {
    for (rel, contents) in SAMPLE {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
