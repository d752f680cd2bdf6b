//! `juris`: the command-line front of the juris toolkit. Thin glue over `juris-text`
//! (analyzers), `juris-index` (ingestion, inverted index, BM25 family) and `juris-eval`
//! (metrics): parse arguments, show progress, print results. No retrieval logic lives here.

mod cli;
mod demo;
mod progress;
mod search;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
