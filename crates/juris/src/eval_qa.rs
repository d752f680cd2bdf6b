//! `juris eval-qa`: how well a local model answers a data set's questions from the law.
//!
//! Queries whose `answer` is `Y` or `N` (COLIEE Task 4: a statement and the relevant Civil
//! Code articles → entailed or not) are scored the way lm-eval-harness scores multiple
//! choice: the prompt ends with "Answer Yes or No." and the model's next-token logits for
//! "Yes" and "No" (their first tokens, with and without a leading space) are compared, so
//! no free text has to be parsed. Queries with a free-text `answer` get an answer generated
//! with the `ask` prompt, scored by ROUGE-L F1 and SQuAD token F1 (juris-eval's `qa`
//! module: Unicode punctuation, Japanese by character) after its citations are removed.
//!
//! Articles are the gold ones from the qrels (`--articles gold`: reading comprehension) or
//! the retrieved ones (`--articles retrieved`: the whole pipeline), which adds Recall@k of
//! the retrieval and, for generated answers, the citation hit rate (a gold article among
//! the kept citations; with `--cite` Yes/No queries get an `ask` answer too, for that rate).
//! `--output` gets one JSON line per query as soon as it is scored,
//! so an interrupted run (Ctrl-C) keeps every finished row.

use crate::ask::{
    anything_relevant, extract_citations, retrieve_articles, says_no_answer, strip_citations,
    user_message, with_retriever, Article, QaModel, RetrievalArgs, NO_ANSWER,
};
use crate::progress::Bar;
use crate::retrieve::QueryText;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use juris_eval::qa::{rouge_l, token_f1};
use juris_eval::Qrels;
use juris_index::corpus::read_queries;
use juris_index::{Index, Progress};
use juris_ml::{GenerateOptions, Generator};
use juris_text::Lang;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which articles the model reads.
#[derive(Clone, Copy, Debug, ValueEnum, Default, PartialEq, Eq)]
pub enum ArticleSource {
    /// The relevant articles of the qrels (reading comprehension alone).
    #[default]
    Gold,
    /// The top `-k` retrieved articles (retrieval and answering together).
    Retrieved,
}

/// Arguments of `juris eval-qa`.
#[derive(Args, Debug)]
pub struct EvalQaArgs {
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    /// Queries (queries.jsonl) whose `answer` field holds Y/N or a reference answer.
    #[arg(long)]
    pub queries: PathBuf,
    /// Judgments of the split to evaluate (e.g. qrels/dev.tsv); only these queries are used.
    #[arg(long)]
    pub qrels: PathBuf,
    /// Articles given to the model: gold (from the qrels) or retrieved.
    #[arg(long, value_enum, default_value_t = ArticleSource::Gold)]
    pub articles: ArticleSource,
    /// Articles retrieved per question (with --articles retrieved).
    #[arg(short = 'k', long, default_value_t = 5)]
    pub k: usize,
    /// Generator: a preset (smollm2, gemma3-270m) or a GGUF file.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Evaluate only the first N queries (in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Per-query results as JSON lines.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Language to answer in, overriding each query's `lang` and detection.
    #[arg(long)]
    pub lang: Option<String>,
    /// For Yes/No queries too, generate the `ask` answer (numbered articles, cited ids) and
    /// score its citations: with --articles retrieved this is the citation hit rate of
    /// `juris ask` on those questions.
    #[arg(long)]
    pub cite: bool,
    #[command(flatten)]
    pub reply: crate::ask::ReplyArgs,
    #[command(flatten)]
    pub sampling: crate::generate_cmd::SamplingArgs,
}

/// An `ask` answer: the text, kept and dropped citations, prompt tokens, and whether the
/// articles were cut to fit the context.
type AskAnswer = (String, Vec<String>, Vec<String>, usize, bool);

/// A query's expected answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expected {
    /// Entailed (true) or not.
    YesNo(bool),
    /// A reference answer text.
    Text(String),
}

/// One evaluated query.
pub(crate) struct Item {
    pub(crate) id: String,
    pub(crate) text: String,
    pub(crate) lang: Option<Lang>,
    pub(crate) expected: Expected,
    /// Relevant document ids (grade > 0), in qrels order.
    pub(crate) gold: Vec<String>,
}

/// Reads the `answer` of every JSONL record in `path` (id → answer); records without one
/// are absent.
fn read_answers(path: &Path) -> Result<HashMap<String, String>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        // read_queries has validated the records; a line it accepted is JSON here too.
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let id = ["_id", "id", "qid", "query_id"]
            .iter()
            .find_map(|k| match &value[*k] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(x) => Some(x.to_string()),
                _ => None,
            });
        if let (Some(id), Some(answer)) = (id, value["answer"].as_str()) {
            if !answer.trim().is_empty() {
                out.insert(id, answer.trim().to_string());
            }
        }
    }
    Ok(out)
}

pub(crate) fn expected_of(answer: &str) -> Expected {
    match answer {
        "Y" | "y" | "Yes" | "yes" => Expected::YesNo(true),
        "N" | "n" | "No" | "no" => Expected::YesNo(false),
        text => Expected::Text(text.to_string()),
    }
}

/// The judged queries of `qrels` (read from `qrels_path`) that carry an answer in
/// `queries_path`, in file order, the first `limit` of them; `lang` overrides each query's
/// language. Shared with `juris train chat-data`, so that training data and evaluation see
/// the same questions the same way.
pub(crate) fn load_items(
    queries_path: &Path,
    qrels_path: &Path,
    qrels: &Qrels,
    lang: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<Item>> {
    let queries = read_queries(queries_path)?;
    let answers = read_answers(queries_path)?;
    if answers.is_empty() {
        bail!(
            "{}: no query has an `answer` field; eval-qa needs answers (Y/N, or a reference \
             text) as in coliee_statute_*, jordan_law_qa_ar and najiz_faq_ar",
            queries_path.display()
        );
    }
    let override_lang = lang.map(Lang::parse).transpose()?;
    let mut items = Vec::new();
    let mut judged = 0usize;
    for q in queries {
        let Some(rel) = qrels.get(&q.id) else {
            continue;
        };
        let gold: Vec<String> = rel
            .iter()
            .filter(|(_, &g)| g > 0)
            .map(|(d, _)| d.clone())
            .collect();
        if gold.is_empty() {
            continue;
        }
        judged += 1;
        let Some(answer) = answers.get(&q.id) else {
            continue;
        };
        items.push(Item {
            lang: override_lang.or_else(|| q.lang.as_deref().and_then(|c| Lang::parse(c).ok())),
            expected: expected_of(answer),
            id: q.id,
            text: q.text,
            gold,
        });
    }
    if items.is_empty() {
        bail!(
            "none of the {judged} queries judged in {} has an `answer` in {} ({} answers there); \
             check that the queries and qrels belong to the same dataset",
            qrels_path.display(),
            queries_path.display(),
            answers.len()
        );
    }
    if let Some(n) = limit {
        items.truncate(n);
    }
    Ok(items)
}

/// The Yes/No prompt: the articles, the statement, and "Answer Yes or No."
pub fn yes_no_message(statement: &str, articles: &[Article]) -> String {
    format!(
        "Read the law articles below and decide whether the statement is correct under them.\n\n\
         Articles:\n{}\n\nStatement: {}\n\nIs the statement correct? Answer Yes or No.",
        crate::ask::articles_block(articles),
        statement.trim()
    )
}

/// First tokens that start "Yes" and "No" (with and without a leading space, and each
/// side's ids not shared with the other), or `None` when the tokenizer gives none usable.
fn yes_no_ids(model: &QaModel) -> Result<Option<(Vec<u32>, Vec<u32>)>> {
    let tok = model.gen.tokenizer();
    let firsts = |word: &str| -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for variant in [word.to_string(), format!(" {word}")] {
            if let Some(&id) = tok.encode(&variant, false)?.first() {
                let text = tok.decode(&[id], false)?;
                if !text.trim().is_empty() && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    };
    let (yes, no) = (firsts("Yes")?, firsts("No")?);
    let yes: Vec<u32> = yes.iter().copied().filter(|i| !no.contains(i)).collect();
    let no: Vec<u32> = no.iter().copied().filter(|i| !yes.contains(i)).collect();
    Ok((!yes.is_empty() && !no.is_empty()).then_some((yes, no)))
}

fn best_logit(logits: &[f32], ids: &[u32]) -> f32 {
    ids.iter()
        .filter_map(|&i| logits.get(i as usize).copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Yes (true) or No from generated text, for tokenizers without usable Yes/No tokens.
fn parse_yes_no(text: &str) -> Option<bool> {
    let t = text.trim_start().to_lowercase();
    if t.starts_with("yes") || t.starts_with("はい") || t.starts_with("نعم") {
        Some(true)
    } else if t.starts_with("no") || t.starts_with("いいえ") || t.starts_with("لا") {
        Some(false)
    } else {
        None
    }
}

/// Running sums for the table.
#[derive(Default)]
struct Totals {
    yn: usize,
    yn_correct: usize,
    yn_gold_yes: usize,
    yn_pred_yes: usize,
    yn_unparsed: usize,
    text: usize,
    rouge: f64,
    f1: f64,
    no_answer: usize,
    cite_queries: usize,
    cite_hits: usize,
    recall_queries: usize,
    recall: f64,
    cut: usize,
}

/// Runs `juris eval-qa`.
pub fn cmd_eval_qa(a: EvalQaArgs, bar: &Bar) -> Result<()> {
    if a.k == 0 {
        bail!("-k must be at least 1");
    }
    let qrels = Qrels::read(&a.qrels)?;
    let items = load_items(&a.queries, &a.qrels, &qrels, a.lang.as_deref(), a.limit)?;
    let opts = a.sampling.options()?;
    let model = QaModel::load(&a.model, &a.sampling, &a.retrieval.device)?;
    let prefix = a.reply.prefix();
    let budget = model.reply_budget(&opts, prefix)?;
    let yn_budget = model.prompt_budget(&GenerateOptions {
        max_tokens: 1,
        ..opts.clone()
    })?;
    let yn_ids = yes_no_ids(&model)?;
    let system = crate::ask::system_message();
    if yn_ids.is_none()
        && items
            .iter()
            .any(|i| matches!(i.expected, Expected::YesNo(_)))
    {
        eprintln!(
            "note: the tokenizer has no usable Yes/No tokens; parsing generated text instead"
        );
    }
    let mut out = match &a.output {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let started = Instant::now();
    let mut totals = Totals::default();
    let retriever_name = with_retriever(&a.retrieval, |index, retriever| {
        let articles: Vec<Vec<Article>> = match a.articles {
            ArticleSource::Gold => gold_articles(index, &items),
            ArticleSource::Retrieved => {
                let questions: Vec<QueryText> = items
                    .iter()
                    .map(|i| QueryText {
                        text: i.text.clone(),
                        lang: i.lang,
                    })
                    .collect();
                retrieve_articles(index, retriever, &questions, a.k, bar)?
            }
        };
        bar.start("answering", Some(items.len() as u64));
        // The `ask` answer to an item: generated text, kept and dropped citations, prompt
        // tokens (and whether the articles were cut to fit).
        let ask_answer = |item: &Item, arts: &[Article]| -> Result<AskAnswer> {
            if !anything_relevant(arts) {
                return Ok((NO_ANSWER.to_string(), Vec::new(), Vec::new(), 0, false));
            }
            let lang = item
                .lang
                .unwrap_or_else(|| juris_text::lang::detect_lang(&item.text));
            let fitted = model.fit(Some(&system), arts, budget, &|xs| {
                user_message(&item.text, lang, xs)
            })?;
            let ids = model.reply_ids(Some(&system), &fitted.message, prefix)?;
            let g = model
                .gen
                .generate_ids(&ids, &opts, &mut |_| ControlFlow::Continue(()))?;
            let answer = crate::ask::reply_text(prefix, &g.text);
            let shown: Vec<&str> = arts.iter().map(|x| x.id.as_str()).collect();
            let c = extract_citations(&answer, &shown);
            let kept: Vec<String> = c.kept.iter().map(|&i| arts[i].id.clone()).collect();
            Ok((answer, kept, c.dropped, fitted.tokens, fitted.cut > 0))
        };
        for (item, arts) in items.iter().zip(&articles) {
            let q_started = Instant::now();
            let mut row = serde_json::json!({
                "id": item.id,
                "question": item.text,
                "articles": arts.iter().map(|x| &x.id).collect::<Vec<_>>(),
            });
            if a.articles == ArticleSource::Retrieved {
                let gold: HashSet<&str> = item.gold.iter().map(String::as_str).collect();
                let found = arts.iter().filter(|x| gold.contains(x.id.as_str())).count();
                let recall = found as f64 / gold.len() as f64;
                totals.recall_queries += 1;
                totals.recall += recall;
                row["recall"] = recall.into();
            }
            match &item.expected {
                Expected::YesNo(truth) => {
                    let fitted =
                        model.fit(None, arts, yn_budget, &|xs| yes_no_message(&item.text, xs))?;
                    totals.cut += usize::from(fitted.cut > 0);
                    let ids = model.prompt_ids(None, &fitted.message)?;
                    let predicted = match &yn_ids {
                        Some((yes, no)) => {
                            let logits = model.gen.next_token_logits(&ids, &opts)?;
                            let (y, n) = (best_logit(&logits, yes), best_logit(&logits, no));
                            row["yes_logit"] = f64::from(y).into();
                            row["no_logit"] = f64::from(n).into();
                            Some(y > n)
                        }
                        None => {
                            let short = GenerateOptions {
                                max_tokens: 8,
                                ..opts.clone()
                            };
                            let g = model
                                .gen
                                .generate_ids(&ids, &short, &mut |_| ControlFlow::Continue(()))?;
                            row["generated"] = g.text.clone().into();
                            parse_yes_no(&g.text)
                        }
                    };
                    totals.yn += 1;
                    totals.yn_gold_yes += usize::from(*truth);
                    totals.yn_pred_yes += usize::from(predicted == Some(true));
                    totals.yn_unparsed += usize::from(predicted.is_none());
                    let correct = predicted == Some(*truth);
                    totals.yn_correct += usize::from(correct);
                    row["kind"] = "yes_no".into();
                    row["expected"] = if *truth { "Y" } else { "N" }.into();
                    row["predicted"] = predicted.map(|p| if p { "Y" } else { "N" }).into();
                    row["correct"] = correct.into();
                    row["prompt_tokens"] = fitted.tokens.into();
                    if a.cite {
                        let (answer, kept, dropped, _, _) = ask_answer(item, arts)?;
                        let hit = kept.iter().any(|c| item.gold.contains(c));
                        totals.cite_queries += 1;
                        totals.cite_hits += usize::from(hit);
                        row["citation_hit"] = hit.into();
                        row["answer"] = answer.into();
                        row["citations"] = kept.into();
                        row["dropped_citations"] = dropped.into();
                    }
                }
                Expected::Text(reference) => {
                    let (answer, kept, dropped, prompt_tokens, cut) = ask_answer(item, arts)?;
                    totals.cut += usize::from(cut);
                    let scored = strip_citations(&answer);
                    let (rl, f1) = (rouge_l(&scored, reference), token_f1(&scored, reference));
                    totals.text += 1;
                    totals.rouge += rl;
                    totals.f1 += f1;
                    totals.no_answer += usize::from(says_no_answer(&answer));
                    if a.articles == ArticleSource::Retrieved {
                        let hit = kept.iter().any(|c| item.gold.contains(c));
                        totals.cite_queries += 1;
                        totals.cite_hits += usize::from(hit);
                        row["citation_hit"] = hit.into();
                    }
                    row["kind"] = "free_text".into();
                    row["reference"] = reference.clone().into();
                    row["answer"] = answer.into();
                    row["rouge_l"] = rl.into();
                    row["token_f1"] = f1.into();
                    row["citations"] = kept.into();
                    row["dropped_citations"] = dropped.into();
                    row["prompt_tokens"] = prompt_tokens.into();
                }
            }
            row["ms"] = (q_started.elapsed().as_secs_f64() * 1e3).into();
            if let Some(w) = out.as_mut() {
                serde_json::to_writer(&mut *w, &row)?;
                w.write_all(b"\n")?;
                w.flush()?;
            }
            bar.inc(1);
        }
        bar.finish();
        Ok(match a.articles {
            ArticleSource::Gold => "gold articles from the qrels".to_string(),
            ArticleSource::Retrieved => format!("top {} by {}", a.k, retriever.describe()),
        })
    })?;
    print_table(
        &a,
        &totals,
        &retriever_name,
        model.gen.name(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// The relevant articles of each item that the index holds (grade as the score).
fn gold_articles(index: &Index, items: &[Item]) -> Vec<Vec<Article>> {
    let mut missing = 0usize;
    let out = items
        .iter()
        .map(|item| {
            item.gold
                .iter()
                .filter_map(|id| {
                    let doc = index.lookup_id(id).and_then(|n| index.doc(n).ok());
                    missing += usize::from(doc.is_none());
                    doc.map(|d| Article {
                        id: d.id,
                        title: d.title,
                        text: d.text,
                        score: 1.0,
                    })
                })
                .collect()
        })
        .collect();
    if missing > 0 {
        eprintln!(
            "note: {missing} gold article(s) of the qrels are not in the index; they are left out"
        );
    }
    out
}

fn print_table(a: &EvalQaArgs, t: &Totals, articles: &str, model: &str, secs: f64) {
    let n = t.yn + t.text;
    println!(
        "eval-qa on {} ({} queries: {} yes/no, {} free-text)\narticles: {articles}\nmodel: {model}\n",
        a.qrels.display(),
        n,
        t.yn,
        t.text
    );
    println!("{:<22} {:>8} {:>6}", "metric", "value", "n");
    let row = |name: &str, value: f64, n: usize| {
        if n > 0 {
            println!("{name:<22} {value:>8.4} {n:>6}");
        }
    };
    let mean = |sum: f64, n: usize| if n > 0 { sum / n as f64 } else { 0.0 };
    row("yes/no accuracy", mean(t.yn_correct as f64, t.yn), t.yn);
    row("rouge-l f1", mean(t.rouge, t.text), t.text);
    row("token f1", mean(t.f1, t.text), t.text);
    row(
        "citation hit rate",
        mean(t.cite_hits as f64, t.cite_queries),
        t.cite_queries,
    );
    row(
        &format!("recall@{}", a.k),
        mean(t.recall, t.recall_queries),
        t.recall_queries,
    );
    if t.yn > 0 {
        println!(
            "\nyes/no: gold Y {} / N {}; predicted Y {}{} (always-N baseline {:.4})",
            t.yn_gold_yes,
            t.yn - t.yn_gold_yes,
            t.yn_pred_yes,
            if t.yn_unparsed > 0 {
                format!(", unparsed {}", t.yn_unparsed)
            } else {
                String::new()
            },
            (t.yn - t.yn_gold_yes) as f64 / t.yn as f64
        );
    }
    if t.text > 0 && t.no_answer > 0 {
        println!("free-text: {} answered \"{NO_ANSWER}\"", t.no_answer);
    }
    if t.cut > 0 {
        println!(
            "{} prompt(s) had article texts cut to fit the context",
            t.cut
        );
    }
    println!(
        "\n{secs:.1} s ({:.2} s/query){}",
        secs / n.max(1) as f64,
        a.output
            .as_ref()
            .map(|p| format!("; per query: {}", p.display()))
            .unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_yes_no_or_text() {
        assert_eq!(expected_of("Y"), Expected::YesNo(true));
        assert_eq!(expected_of("N"), Expected::YesNo(false));
        assert_eq!(expected_of("يعمل به"), Expected::Text("يعمل به".into()));
        assert_eq!(parse_yes_no(" Yes, because"), Some(true));
        assert_eq!(parse_yes_no("いいえ"), Some(false));
        assert_eq!(parse_yes_no("Maybe"), None);
    }

    #[test]
    fn yes_no_prompt_ends_with_the_question() {
        let m = yes_no_message("A minor may sell land.", &[]);
        assert!(m.ends_with("Answer Yes or No."));
        assert!(m.contains("Statement: A minor may sell land."));
    }
}
