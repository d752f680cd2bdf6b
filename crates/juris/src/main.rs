//! `juris`: the command-line front of the juris toolkit. Glue over `juris-text`
//! (analyzers), `juris-index` (ingestion, inverted index, BM25 family), `juris-eval`
//! (metrics), `juris-ml` (models, encoders) and `juris-dense` (embedding store, vector
//! search, fusion): parse arguments, show progress, print results. The one piece of
//! orchestration kept here is [`retrieve`]: the `Retriever` seam that joins BM25 and dense
//! search for `search`, `tune` and the benchmarks.

mod ask;
mod chat_data;
mod cli;
mod demo;
mod embed;
mod eval_qa;
mod generate_cmd;
mod progress;
mod rerank_cmd;
mod retrieve;
mod search;
mod train_cmd;
mod tune;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message so
/// far already contains (library errors often print their source themselves).
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
