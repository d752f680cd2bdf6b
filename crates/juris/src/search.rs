//! Presenting search results: ranked hits with snippets for a person, and TREC runs for a
//! file of queries.

use crate::progress::Bar;
use crate::retrieve::{Bm25Retriever, QueryText, Retriever};
use anyhow::Result;
use juris_eval::Run;
use juris_index::corpus::{Document, Query};
use juris_index::Index;
use juris_text::Lang;
use std::collections::HashSet;

/// Longest snippet shown, in characters.
const SNIPPET_CHARS: usize = 220;

/// Prints the top `k` articles for `question`, with the sentence that shares most terms with
/// it as the snippet.
pub fn print_hits(
    index: &Index,
    question: &str,
    lang: Option<Lang>,
    k: usize,
    json: bool,
) -> Result<()> {
    let analyzers = index.analyzers();
    let lang = analyzers.lang_of(question, lang);
    // Analyze once: the same terms rank the articles and pick their snippets.
    let query_terms = analyzers.analyze(question, Some(lang))?;
    let hits: Vec<(u32, f32)> = index
        .search_terms(&query_terms, k)?
        .into_iter()
        .map(|h| (h.doc, h.score))
        .collect();
    let terms: HashSet<String> = query_terms.into_iter().collect();
    if hits.is_empty() && !json {
        println!(
            "no article matches: none of the question's terms ({}) occurs in the index",
            terms.len()
        );
    }
    print_ranked(index, &hits, &terms, lang, json)
}

/// Prints ranked hits (from any retriever) with snippets chosen by the question's `terms`.
pub fn print_ranked(
    index: &Index,
    hits: &[(u32, f32)],
    terms: &HashSet<String>,
    lang: Lang,
    json: bool,
) -> Result<()> {
    for (rank, &(doc, score)) in hits.iter().enumerate() {
        let doc = index.doc(doc)?;
        let snippet = snippet(index, &doc, terms, lang);
        if json {
            let row = serde_json::json!({
                "rank": rank + 1, "id": doc.id, "score": score, "title": doc.title,
                "snippet": snippet, "law": doc.meta.law, "article": doc.meta.article,
            });
            println!("{row}");
        } else {
            let title = if doc.title.is_empty() {
                String::new()
            } else {
                format!("  ({})", doc.title)
            };
            println!("{:>3}. {}{}  [{:.3}]", rank + 1, doc.id, title, score);
            println!("     {snippet}");
        }
    }
    Ok(())
}

/// The sentence of `doc` that contains most distinct query terms (first one on ties),
/// cut to [`SNIPPET_CHARS`].
pub fn snippet(index: &Index, doc: &Document, terms: &HashSet<String>, lang: Lang) -> String {
    let analyzers = index.analyzers();
    let mut best = ("", 0usize);
    for sentence in doc
        .text
        .split_inclusive(['。', '.', '؟', '?', '!', '\n', '؛'])
    {
        let sentence = sentence.trim();
        if sentence.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        let _ = analyzers.analyze_with(sentence, Some(lang), &mut |t| {
            if terms.contains(t) {
                seen.insert(t.to_string());
            }
        });
        if best.0.is_empty() || seen.len() > best.1 {
            best = (sentence, seen.len());
        }
    }
    let flat: String = best.0.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= SNIPPET_CHARS {
        return flat;
    }
    let cut: String = flat.chars().take(SNIPPET_CHARS).collect();
    format!("{cut}…")
}

/// Runs every query through BM25 and collects the top `k` hits of each into a TREC run
/// (`passes` timed passes, see [`run_retriever`]).
#[allow(clippy::too_many_arguments)]
pub fn run_batch(
    index: &Index,
    queries: &[Query],
    lang: Option<Lang>,
    k: usize,
    tag: &str,
    passes: u32,
    bar: &Bar,
) -> Result<Run> {
    run_retriever(
        index,
        &Bm25Retriever { index },
        queries,
        lang,
        k,
        tag,
        passes,
        bar,
    )
}

/// Runs every query through `retriever` (dense or hybrid) into a TREC run. The batch runs
/// `passes` times (all give the same hits); the time printed is the median pass.
#[allow(clippy::too_many_arguments)]
pub fn run_retriever(
    index: &Index,
    retriever: &dyn Retriever,
    queries: &[Query],
    lang: Option<Lang>,
    k: usize,
    tag: &str,
    passes: u32,
    bar: &Bar,
) -> Result<Run> {
    let texts: Vec<QueryText> = queries
        .iter()
        .map(|q| QueryText {
            text: q.text.clone(),
            lang: lang.or_else(|| q.lang.as_deref().and_then(|c| Lang::parse(c).ok())),
        })
        .collect();
    // Not timed, like loading an in-memory index: the first touch of each mapped page of
    // the postings (x97: ~10 % of a single pass's time went to page faults).
    if queries.len() > 1 {
        retriever.preload();
    }
    // Timed: query analysis or encoding, scoring and top-k of every query (what
    // bench/speed.py reports), not reading the queries or writing the run.
    let mut times = Vec::new();
    let mut results = Vec::new();
    for _ in 0..passes.max(1) {
        let started = std::time::Instant::now();
        results = retriever.retrieve_batch(&texts, k, bar)?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let elapsed = times[times.len() / 2];
    let of_passes = if times.len() > 1 {
        format!(", median of {} passes", times.len())
    } else {
        String::new()
    };
    eprintln!(
        "searched {} queries in {elapsed:.6}s ({:.0} q/s; {}, top-{k}, {} threads{of_passes})",
        queries.len(),
        queries.len() as f64 / elapsed.max(1e-9),
        retriever.describe(),
        rayon::current_num_threads()
    );
    let mut run = Run::new(tag);
    for (q, hits) in queries.iter().zip(results) {
        for (doc, score) in hits {
            run.push(&q.id, index.doc_id(doc)?, f64::from(score))?;
        }
    }
    Ok(run)
}
