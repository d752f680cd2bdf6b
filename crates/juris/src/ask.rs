//! `juris ask`: a question answered from the law, with citations. The best articles are
//! retrieved through the same `Retriever` seam as `search`, numbered in a prompt cut to fit
//! the model's context, and answered by a local GGUF model; only citations that name a
//! retrieved article are kept, the others are reported as dropped, and when nothing
//! relevant was retrieved (or the model says so) the answer is [`NO_ANSWER`] rather than
//! an invention.
//!
//! Prompt building ([`user_message`], [`fit_articles`]) and citation extraction
//! ([`extract_citations`]) are plain functions with unit tests below; `eval-qa` shares
//! them, the model wrapper [`QaModel`] and the retrieval set-up [`with_retriever`].

use crate::progress::Bar;
use crate::retrieve::{
    list_stores, Bm25Retriever, DenseRetriever, FusionChoice, HybridRetriever, QueryText, Retriever,
};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use juris_index::Index;
use juris_ml::{ChatMessage, GenerateOptions, Generator, GgufGenerator};
use juris_text::Lang;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

/// What is printed instead of an answer when the retrieved articles do not answer the
/// question; the prompt asks the model to reply exactly this in that case.
pub const NO_ANSWER: &str = "The retrieved articles do not answer this question.";

/// One retrieved article as the prompt and the output show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Article {
    /// Document id in the index (what citations name).
    pub id: String,
    /// Title (may be empty).
    pub title: String,
    /// Text (possibly cut to fit the context).
    pub text: String,
    /// Retrieval score.
    pub score: f32,
}

/// How articles are retrieved.
#[derive(Clone, Copy, Debug, ValueEnum, Default, PartialEq, Eq)]
pub enum AskMode {
    /// Hybrid when `juris tune` chose a fusion for an embedding store the index has, else
    /// BM25 (with the tuned scorer when there is one).
    #[default]
    Auto,
    /// Lexical BM25-family ranking.
    Bm25,
    /// Embeddings only (needs `juris embed`).
    Dense,
    /// BM25 and dense fused (as tuned, else min-max with α 0.5, 100 candidates per side).
    Hybrid,
}

/// Retrieval flags shared by `ask` and `eval-qa`.
#[derive(Args, Debug, Clone)]
pub struct RetrievalArgs {
    /// Index folder.
    #[arg(long)]
    pub index: PathBuf,
    /// How to retrieve articles.
    #[arg(long, value_enum, default_value_t = AskMode::Auto)]
    pub mode: AskMode,
    /// Embedding store for dense/hybrid retrieval (default: the tuned one, or the only one).
    #[arg(long)]
    pub embeddings: Option<String>,
    /// Device for the query encoder and the generator: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub rerank: crate::rerank_cmd::RerankOptions,
}

/// Arguments of `juris ask`.
#[derive(Args, Debug)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    /// Articles retrieved and shown to the model.
    #[arg(short = 'k', long = "articles", default_value_t = 5)]
    pub articles: usize,
    /// Generator: a preset (smollm2, gemma3-270m) or a GGUF file.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Language to answer in (en, ja, ar, …), overriding detection from the question.
    #[arg(long)]
    pub lang: Option<String>,
    /// Print one JSON object (question, answer, citations, retrieved articles, timings).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reply: ReplyArgs,
    #[command(flatten)]
    pub sampling: crate::generate_cmd::SamplingArgs,
}

/// How the model's reply starts (`ask` and `eval-qa`).
#[derive(Args, Debug, Clone, Default)]
pub struct ReplyArgs {
    /// Words the answer starts with, given to the model as the beginning of its own reply
    /// and kept in the answer: e.g. "According to [" makes a small model name one of the
    /// numbered articles before anything else.
    #[arg(long, value_name = "TEXT")]
    pub reply_prefix: Option<String>,
}

impl ReplyArgs {
    /// The prefix, if one was given and it is not empty.
    pub fn prefix(&self) -> Option<&str> {
        self.reply_prefix.as_deref().filter(|p| !p.is_empty())
    }
}

/// The answer: the reply's `prefix` (if any) and the generated text, trimmed.
pub fn reply_text(prefix: Option<&str>, generated: &str) -> String {
    format!("{}{generated}", prefix.unwrap_or(""))
        .trim()
        .to_string()
}

/// How the instruction names the answer language, with the language's own words so that a
/// small model sees the script it should write.
fn in_language(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "in English",
        Lang::Ja => "in Japanese (日本語で答えてください)",
        Lang::Ar => "in Arabic (أجب باللغة العربية)",
        Lang::Other => "in the language of the question",
    }
}

/// The numbered articles block: `[n] <id> — <title>` then the text, one blank line apart.
pub fn articles_block(articles: &[Article]) -> String {
    let mut out = String::new();
    for (i, a) in articles.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&format!("[{}] {}", i + 1, a.id));
        if !a.title.is_empty() {
            out.push_str(&format!(" — {}", a.title));
        }
        out.push('\n');
        out.push_str(a.text.trim());
    }
    out
}

/// The system message of `ask`: answer only from the given articles, and say
/// [`NO_ANSWER`] when they do not answer. (Kept apart from the user message: SmolLM2-135M
/// repeats a "reply only: …" clause from the user turn instead of answering.)
pub fn system_message() -> String {
    format!(
        "You answer legal questions using only the law articles the user gives. If the \
         articles do not answer the question, say: {NO_ANSWER}"
    )
}

/// The user message `ask` sends: the numbered articles, the question, then the instruction
/// (answer language, citations by id in square brackets) last, where a small model heeds
/// it most.
pub fn user_message(question: &str, lang: Lang, articles: &[Article]) -> String {
    let example = articles.first().map_or("id", |a| a.id.as_str());
    format!(
        "Law articles:\n{}\n\nQuestion: {}\n\nAnswer the question {} in one or two sentences \
         using the law articles above, and cite the id of each article you rely on in square \
         brackets, e.g. [{example}].",
        articles_block(articles),
        question.trim(),
        in_language(lang),
    )
}

/// Token shares for texts of `lengths` tokens within `budget`: max-min fair ("water
/// filling"), so short texts keep all their tokens and long ones share the rest equally.
/// The shares never exceed the lengths and add up to at most `budget`.
pub fn water_fill(lengths: &[usize], budget: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut caps = vec![0; lengths.len()];
    let mut left = budget;
    for (done, &i) in order.iter().enumerate() {
        let share = left / (lengths.len() - done);
        caps[i] = lengths[i].min(share);
        left -= caps[i];
    }
    caps
}

/// The longest prefix of `text` (whole characters, "…" appended) that `count` puts at most
/// `cap` tokens on; `text` itself when it fits.
fn cut_to_tokens(
    text: &str,
    cap: usize,
    count: &mut dyn FnMut(&str) -> Result<usize>,
) -> Result<String> {
    if count(text)? <= cap {
        return Ok(text.to_string());
    }
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let (mut lo, mut hi) = (0usize, bounds.len());
    // Invariant: a prefix of `lo` characters fits; one of `hi` does not (or is all of it).
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if count(&format!("{}…", &text[..bounds[mid]]))? <= cap {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(if lo == 0 {
        String::new()
    } else {
        format!("{}…", text[..bounds[lo]].trim_end())
    })
}

/// A prompt that fits.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The articles as shown (texts possibly cut).
    pub articles: Vec<Article>,
    /// The message built from them.
    pub message: String,
    /// Its size by `prompt_tokens`.
    pub tokens: usize,
    /// How many article texts were cut.
    pub cut: usize,
}

/// Cuts the article texts so that `build(articles)` measures at most `budget` tokens by
/// `prompt_tokens` (the rendered prompt, in the generator's tokens); `text_tokens` counts
/// one article text. Articles get max-min fair shares of what the rest of the prompt
/// leaves. Fails, saying by how much, when the prompt without any article text (the
/// instruction and question alone) does not fit.
pub fn fit_articles(
    articles: &[Article],
    budget: usize,
    build: &dyn Fn(&[Article]) -> String,
    prompt_tokens: &mut dyn FnMut(&str) -> Result<usize>,
    text_tokens: &mut dyn FnMut(&str) -> Result<usize>,
) -> Result<Fitted> {
    let message = build(articles);
    let tokens = prompt_tokens(&message)?;
    if tokens <= budget {
        return Ok(Fitted {
            articles: articles.to_vec(),
            message,
            tokens,
            cut: 0,
        });
    }
    let alone = prompt_tokens(&build(&[]))?;
    if alone > budget {
        bail!(
            "the question and instructions alone take {alone} tokens, more than the {budget} \
             the model's context leaves for the prompt; shorten the question (or lower \
             --max-tokens)"
        );
    }
    // Drop the lowest-ranked articles while their headings alone do not fit.
    let mut kept: Vec<Article> = articles.to_vec();
    let bare = |arts: &[Article]| -> Vec<Article> {
        arts.iter()
            .map(|a| Article {
                text: String::new(),
                ..a.clone()
            })
            .collect()
    };
    let mut overhead = prompt_tokens(&build(&bare(&kept)))?;
    while overhead > budget && !kept.is_empty() {
        kept.pop();
        overhead = prompt_tokens(&build(&bare(&kept)))?;
    }
    let lengths: Vec<usize> = kept
        .iter()
        .map(|a| text_tokens(&a.text))
        .collect::<Result<_>>()?;
    let mut room = budget - overhead;
    // Token counts of pieces and of the whole differ by a few at the seams: shrink and retry.
    for _ in 0..8 {
        let caps = water_fill(&lengths, room);
        let mut shown = kept.clone();
        let mut cut = 0;
        for ((a, &cap), &len) in shown.iter_mut().zip(&caps).zip(&lengths) {
            if cap < len {
                a.text = cut_to_tokens(&a.text, cap, text_tokens)?;
                cut += 1;
            }
        }
        let message = build(&shown);
        let tokens = prompt_tokens(&message)?;
        if tokens <= budget {
            return Ok(Fitted {
                articles: shown,
                message,
                tokens,
                cut: cut + articles.len() - kept.len(),
            });
        }
        room = room.saturating_sub((tokens - budget).max(kept.len()));
    }
    bail!(
        "could not fit the articles into {budget} prompt tokens; lower --articles or --max-tokens"
    )
}

/// Citations found in an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Citations {
    /// Positions (0-based) among the retrieved articles, in order of first mention.
    pub kept: Vec<usize>,
    /// Bracketed references that name no retrieved article, as written.
    pub dropped: Vec<String>,
}

/// Resolves one bracketed reference: a retrieved id (exactly, then ignoring case, then
/// after an "Article"/"Art."/"المادة"/"第…条" wrapper), else a number `n` for the n-th
/// article. Ids win over numbers, as the prompt asks for ids.
fn resolve_citation(part: &str, ids: &[&str]) -> Option<usize> {
    let find = |s: &str| {
        ids.iter()
            .position(|id| *id == s)
            .or_else(|| ids.iter().position(|id| id.eq_ignore_ascii_case(s)))
    };
    if let Some(i) = find(part) {
        return Some(i);
    }
    let lower = part.to_lowercase();
    let unwrapped = ["article ", "art. ", "art ", "المادة "]
        .iter()
        .find_map(|p| lower.strip_prefix(p).and_then(|_| part.get(p.len()..)))
        .or_else(|| part.strip_prefix('第').and_then(|s| s.strip_suffix('条')))
        .map(str::trim);
    if let Some(inner) = unwrapped {
        if let Some(i) = find(inner) {
            return Some(i);
        }
    }
    let number = unwrapped.unwrap_or(part).parse::<usize>().ok()?;
    (1..=ids.len()).contains(&number).then(|| number - 1)
}

/// Bracketed references in `answer` (`[id]`, `[2]`, `[a, b]`, full-width `［…］` and `【…】`)
/// sorted into citations of the retrieved articles `ids` and dropped ones. A bracket
/// followed by `(` (a Markdown link) or longer than 80 characters is not a citation.
pub fn extract_citations(answer: &str, ids: &[&str]) -> Citations {
    let mut out = Citations::default();
    let chars: Vec<char> = answer.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !matches!(chars[i], '[' | '［' | '【') {
            i += 1;
            continue;
        }
        let Some(len) = chars[i + 1..]
            .iter()
            .position(|c| matches!(c, ']' | '］' | '】' | '[' | '［' | '【'))
        else {
            break;
        };
        let close = i + 1 + len;
        if !matches!(chars[close], ']' | '］' | '】') {
            i = close;
            continue;
        }
        let inner: String = chars[i + 1..close].iter().collect();
        i = close + 1;
        if inner.chars().count() > 80 || chars.get(close + 1) == Some(&'(') {
            continue;
        }
        for part in inner.split([',', ';', '、', '،', '，', '；']) {
            let part = part.trim().trim_end_matches(['.', ':', '。']);
            if part.is_empty() {
                continue;
            }
            match resolve_citation(part, ids) {
                Some(k) if !out.kept.contains(&k) => out.kept.push(k),
                Some(_) => {}
                None if !out.dropped.iter().any(|d| d == part) => out.dropped.push(part.into()),
                None => {}
            }
        }
    }
    out
}

/// `answer` without its bracketed references (what [`extract_citations`] reads), for
/// scoring the wording of an answer against a reference that cites nothing.
pub fn strip_citations(answer: &str) -> String {
    let mut out = String::with_capacity(answer.len());
    let mut rest = answer;
    while let Some(open) = rest.find(['[', '［', '【']) {
        let after = &rest[open..];
        let close = after
            .char_indices()
            .skip(1)
            .find(|(_, c)| matches!(c, ']' | '］' | '】'))
            .map(|(i, c)| i + c.len_utf8());
        match close {
            Some(end) if after[..end].chars().count() <= 82 => {
                out.push_str(&rest[..open]);
                rest = &after[end..];
            }
            _ => {
                let step = open + after.chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..step]);
                rest = &rest[step..];
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether an answer says the articles do not answer the question (the phrase the prompt
/// asks for, or its usual variants in English, Japanese and Arabic), or says nothing.
pub fn says_no_answer(answer: &str) -> bool {
    let lower = answer.to_lowercase();
    lower.trim().is_empty()
        || [
            "do not answer this question",
            "does not answer this question",
            "don't answer this question",
            "do not answer the question",
            "does not answer the question",
            "回答できません",
            "答えられません",
            "答えていません",
            "لا تجيب",
        ]
        .iter()
        .any(|p| lower.contains(p))
}

/// A generator with what `ask` and `eval-qa` need around it: prompts through the chat
/// template (or, for files without one, a plain "…\n\nAnswer:" continuation), and token
/// counts in the generator's own tokenizer.
pub struct QaModel {
    /// The generator.
    pub gen: GgufGenerator,
}

impl QaModel {
    /// Loads `spec` (preset or GGUF path) with the weight mode and adapter of `s`, on the
    /// device named by `device`.
    pub fn load(
        spec: &str,
        s: &crate::generate_cmd::SamplingArgs,
        device: &str,
    ) -> Result<QaModel> {
        Ok(QaModel {
            gen: crate::generate_cmd::load(spec, s, crate::cli::parse_device(device)?)?,
        })
    }

    /// Prompt token ids for an optional system message and one user message.
    pub fn prompt_ids(&self, system: Option<&str>, message: &str) -> Result<Vec<u32>> {
        if self.gen.has_chat_template() {
            let mut msgs: Vec<ChatMessage> = system
                .map(|s| ChatMessage::new("system", s))
                .into_iter()
                .collect();
            msgs.push(ChatMessage::new("user", message));
            Ok(self.gen.chat_ids(&msgs)?)
        } else {
            let text = match system {
                Some(s) => format!("{s}\n\n{message}\n\nAnswer:"),
                None => format!("{message}\n\nAnswer:"),
            };
            Ok(self.gen.tokenizer().encode(&text, true)?)
        }
    }

    /// [`QaModel::prompt_ids`] followed by the tokens of `prefix`, the start of the
    /// model's reply.
    pub fn reply_ids(
        &self,
        system: Option<&str>,
        message: &str,
        prefix: Option<&str>,
    ) -> Result<Vec<u32>> {
        let mut ids = self.prompt_ids(system, message)?;
        if let Some(p) = prefix {
            ids.extend(self.gen.tokenizer().encode(p, false)?);
        }
        Ok(ids)
    }

    /// [`QaModel::prompt_budget`] less the tokens `prefix` takes in the context.
    pub fn reply_budget(&self, opts: &GenerateOptions, prefix: Option<&str>) -> Result<usize> {
        let taken = prefix.map_or(Ok(0), |p| self.text_tokens(p))?;
        Ok(self.prompt_budget(opts)?.saturating_sub(taken))
    }

    /// Tokens of a bare text.
    pub fn text_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.gen.tokenizer().encode(text, false)?.len())
    }

    /// Prompt tokens left when `opts.max_tokens` are kept free in the context.
    pub fn prompt_budget(&self, opts: &GenerateOptions) -> Result<usize> {
        let context = self.gen.context_length(opts);
        if opts.max_tokens >= context {
            bail!(
                "--max-tokens {} leaves no room for a prompt in the context of {context} tokens",
                opts.max_tokens
            );
        }
        Ok(context - opts.max_tokens)
    }

    /// [`fit_articles`] for this model's prompt and tokenizer.
    pub fn fit(
        &self,
        system: Option<&str>,
        articles: &[Article],
        budget: usize,
        build: &dyn Fn(&[Article]) -> String,
    ) -> Result<Fitted> {
        fit_articles(
            articles,
            budget,
            build,
            &mut |m| Ok(self.prompt_ids(system, m)?.len()),
            &mut |t| self.text_tokens(t),
        )
    }
}

/// Opens the index and the retriever `r` asks for (see [`AskMode`]) and runs `f` with
/// them. The index passed to `f` carries the tuned BM25 scorer when there is one.
pub fn with_retriever<T>(
    r: &RetrievalArgs,
    f: impl FnOnce(&Index, &dyn Retriever) -> Result<T>,
) -> Result<T> {
    let dir = &r.index;
    let index = Index::open(dir)?;
    let tuned = crate::tune::load_tuned(dir)?;
    let index = match &tuned {
        Some(t) => index.with_scorer(t.bm25.scorer)?,
        None => index,
    };
    let stores = list_stores(dir);
    let tuned_hybrid = tuned.and_then(|t| t.hybrid).filter(|h| {
        stores.contains(&h.store) && r.embeddings.as_deref().is_none_or(|e| e == h.store)
    });
    let mode = match r.mode {
        AskMode::Auto if tuned_hybrid.is_some() => AskMode::Hybrid,
        AskMode::Auto => AskMode::Bm25,
        m => m,
    };
    let device = crate::cli::parse_device(&r.device)?;
    match mode {
        AskMode::Dense => {
            let dense = DenseRetriever::open(&index, r.embeddings.as_deref(), None, device)?;
            r.rerank.wrap(&index, &dense, device, f)
        }
        AskMode::Hybrid => {
            let store = r
                .embeddings
                .clone()
                .or(tuned_hybrid.as_ref().map(|h| h.store.clone()));
            let dense = DenseRetriever::open(&index, store.as_deref(), None, device)?;
            let (lexical, fusion, depth) = match &tuned_hybrid {
                Some(h) => (index.with_scorer(h.scorer)?, h.fusion, h.depth),
                None => (
                    index.with_scorer(*index.scorer())?,
                    FusionChoice::MinMax { alpha: 0.5 },
                    100,
                ),
            };
            let hybrid = HybridRetriever {
                bm25: Bm25Retriever { index: &lexical },
                dense,
                fusion,
                depth,
            };
            r.rerank.wrap(&index, &hybrid, device, f)
        }
        _ => r
            .rerank
            .wrap(&index, &Bm25Retriever { index: &index }, device, f),
    }
}

/// The top `k` articles of each question (text, language).
pub fn retrieve_articles(
    index: &Index,
    retriever: &dyn Retriever,
    questions: &[QueryText],
    k: usize,
    bar: &Bar,
) -> Result<Vec<Vec<Article>>> {
    let ranked = retriever.retrieve_batch(questions, k, bar)?;
    ranked
        .into_iter()
        .map(|hits| {
            hits.into_iter()
                .map(|(doc, score)| {
                    let d = index.doc(doc)?;
                    Ok(Article {
                        id: d.id,
                        title: d.title,
                        text: d.text,
                        score,
                    })
                })
                .collect()
        })
        .collect()
}

/// Whether retrieval found anything relevant: some article with a positive score.
pub fn anything_relevant(articles: &[Article]) -> bool {
    articles.iter().any(|a| a.score > 0.0)
}

/// The first sentence-ish piece of an article's text, for the citation list.
fn short_snippet(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= 160 {
        return flat;
    }
    format!("{}…", flat.chars().take(160).collect::<String>())
}

/// The answer language: `--lang`, else detected from the question.
pub fn answer_lang(question: &str, lang: Option<&str>) -> Result<Lang> {
    Ok(match lang {
        Some(code) => Lang::parse(code)?,
        None => juris_text::lang::detect_lang(question),
    })
}

/// Runs `juris ask`.
pub fn cmd_ask(a: AskArgs) -> Result<()> {
    let question = a.question.trim();
    if question.is_empty() {
        bail!("the question is empty; give a question to answer, e.g. juris ask --index idx \"Is a contract with a minor valid?\"");
    }
    if a.articles == 0 {
        bail!("--articles must be at least 1");
    }
    let lang = answer_lang(question, a.lang.as_deref())?;
    let opts = a.sampling.options()?;
    let model = QaModel::load(&a.model, &a.sampling, &a.retrieval.device)?;
    let prefix = a.reply.prefix();
    let budget = model.reply_budget(&opts, prefix)?;
    // A question too long for the context is refused before any work, found or not.
    let system = system_message();
    model.fit(Some(&system), &[], budget, &|arts| {
        user_message(question, lang, arts)
    })?;

    let started = Instant::now();
    let articles = with_retriever(&a.retrieval, |index, retriever| {
        let q = QueryText {
            text: question.to_string(),
            lang: a.lang.as_deref().map(Lang::parse).transpose()?,
        };
        Ok(retrieve_articles(index, retriever, &[q], a.articles, &Bar::new(true))?.remove(0))
    })
    .with_context(|| format!("retrieving from {}", a.retrieval.index.display()))?;
    let retrieve_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut answer = String::new();
    let mut stats = juris_ml::GenerationStats::default();
    let mut citations = Citations::default();
    let answered = if anything_relevant(&articles) {
        let fitted = model.fit(Some(&system), &articles, budget, &|arts| {
            user_message(question, lang, arts)
        })?;
        if fitted.cut > 0 && !a.json {
            eprintln!(
                "note: {} article text(s) cut to fit the model's context",
                fitted.cut
            );
        }
        let ids = model.reply_ids(Some(&system), &fitted.message, prefix)?;
        let mut print = crate::generate_cmd::printer();
        if let (Some(p), false) = (prefix, a.json) {
            let _ = print(p);
        }
        let mut stream = |piece: &str| -> ControlFlow<()> {
            if a.json {
                ControlFlow::Continue(())
            } else {
                print(piece)
            }
        };
        let out = model.gen.generate_ids(&ids, &opts, &mut stream)?;
        if !a.json {
            println!();
        }
        answer = reply_text(prefix, &out.text);
        stats = out.stats;
        let retrieved_ids: Vec<&str> = fitted.articles.iter().map(|a| a.id.as_str()).collect();
        citations = extract_citations(&answer, &retrieved_ids);
        !says_no_answer(&answer)
    } else {
        false
    };

    if a.json {
        let cited: Vec<serde_json::Value> = citations
            .kept
            .iter()
            .map(|&i| {
                let art = &articles[i];
                serde_json::json!({"id": art.id, "title": art.title,
                    "snippet": short_snippet(&art.text), "score": art.score})
            })
            .collect();
        let retrieved: Vec<serde_json::Value> = articles
            .iter()
            .map(|art| serde_json::json!({"id": art.id, "title": art.title, "score": art.score}))
            .collect();
        let value = serde_json::json!({
            "question": question,
            "language": lang.code(),
            "answer": if answered { answer.clone() } else { NO_ANSWER.to_string() },
            "answered": answered,
            "raw_answer": answer,
            "citations": cited,
            "dropped_citations": citations.dropped,
            "retrieved": retrieved,
            "model": model.gen.name(),
            "timings": {
                "retrieve_ms": retrieve_ms,
                "prompt_tokens": stats.prompt_tokens,
                "prompt_ms": stats.prefill_secs * 1e3,
                "generated_tokens": stats.generated_tokens,
                "generate_ms": stats.decode_secs * 1e3,
            },
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if !answered {
        println!("{NO_ANSWER}");
        if articles.is_empty() || !anything_relevant(&articles) {
            println!(
                "(no article of {} matches the question)",
                a.retrieval.index.display()
            );
            return Ok(());
        }
    }
    if !citations.kept.is_empty() {
        println!("\nCited:");
        for &i in &citations.kept {
            let art = &articles[i];
            println!("  [{}] {}  {}", art.id, art.title, short_snippet(&art.text));
        }
    } else if answered {
        println!("\n(the answer cites none of the retrieved articles)");
    }
    if !citations.dropped.is_empty() {
        println!(
            "dropped citations (not among the retrieved articles): {}",
            citations
                .dropped
                .iter()
                .map(|d| format!("[{d}]"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "retrieved: {}",
        articles
            .iter()
            .map(|a| format!("{} ({:.2})", a.id, a.score))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !a.sampling.no_stats {
        eprintln!(
            "[retrieve {retrieve_ms:.0} ms; {} prompt tokens, {:.0} ms; {} generated, {:.0} ms; {}]",
            stats.prompt_tokens,
            stats.prefill_secs * 1e3,
            stats.generated_tokens,
            stats.decode_secs * 1e3,
            model.gen.name()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn art(id: &str, text: &str) -> Article {
        Article {
            id: id.into(),
            title: format!("Title {id}"),
            text: text.into(),
            score: 1.0,
        }
    }

    #[test]
    fn prompt_numbers_articles_and_asks_for_the_language() {
        let m = user_message(
            "契約は有効か",
            Lang::Ja,
            &[art("civil:90", "A is void."), art("7", "B.")],
        );
        assert!(
            m.contains("[1] civil:90 — Title civil:90\nA is void.\n\n[2] 7 — Title 7\nB."),
            "{m}"
        );
        assert!(m.contains("[civil:90]") && m.contains("日本語"));
        assert!(system_message().contains(NO_ANSWER));
        assert!(
            m.contains("\n\nQuestion: 契約は有効か\n\nAnswer the question in Japanese"),
            "{m}"
        );
    }

    #[test]
    fn water_fill_is_max_min_fair() {
        assert_eq!(water_fill(&[10, 100, 100], 90), vec![10, 40, 40]);
        assert_eq!(water_fill(&[5, 6], 100), vec![5, 6]);
        assert_eq!(water_fill(&[50, 50, 50], 10), vec![3, 3, 4]);
        assert_eq!(water_fill(&[], 10), Vec::<usize>::new());
    }

    /// Words as tokens: a stand-in tokenizer for fitting tests.
    fn words(s: &str) -> Result<usize> {
        Ok(s.split_whitespace().count())
    }

    #[test]
    fn articles_are_cut_to_fit_and_the_question_alone_must_fit() {
        let long = "w ".repeat(200);
        let arts = vec![art("a", "short text"), art("b", &long), art("c", &long)];
        let build = |xs: &[Article]| user_message("is it void?", Lang::En, xs);
        let full = words(&build(&arts)).unwrap();
        let budget = full - 250;
        let fitted = fit_articles(&arts, budget, &build, &mut words, &mut words).unwrap();
        assert!(fitted.tokens <= budget, "{} > {budget}", fitted.tokens);
        assert_eq!(fitted.cut, 2);
        assert_eq!(fitted.articles[0].text, "short text");
        assert!(fitted.articles[1].text.ends_with('…'));
        // Both long articles get about the same share.
        let (b, c) = (
            words(&fitted.articles[1].text).unwrap(),
            words(&fitted.articles[2].text).unwrap(),
        );
        assert!(b.abs_diff(c) <= 1 && b > 50, "{b} {c}");
        // Everything fits: unchanged.
        let same = fit_articles(&arts, full, &build, &mut words, &mut words).unwrap();
        assert_eq!((same.cut, same.articles), (0, arts.clone()));
        // Not even the question fits.
        let alone = words(&build(&[])).unwrap();
        let err = fit_articles(&arts, alone - 1, &build, &mut words, &mut words)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorten the question"), "{err}");
        // Room for headings but not all of them: lowest-ranked articles go first.
        let headings = words(&build(
            &arts[..1]
                .iter()
                .map(|a| Article {
                    text: String::new(),
                    ..a.clone()
                })
                .collect::<Vec<_>>(),
        ))
        .unwrap();
        let fitted = fit_articles(&arts, headings + 2, &build, &mut words, &mut words).unwrap();
        assert_eq!(fitted.articles.len(), 1);
        assert!(fitted.tokens <= headings + 2);
    }

    #[test]
    fn citations_keep_retrieved_ids_and_numbers_and_drop_the_rest() {
        let ids = ["civil:90", "612", "labour:3"];
        let c = extract_citations(
            "Void [civil:90]; see also [2, labour:3] and [Article 612] and [civil:1] [9] [x](http://a).",
            &ids,
        );
        assert_eq!(c.kept, vec![0, 1, 2]);
        assert_eq!(c.dropped, vec!["civil:1".to_string(), "9".to_string()]);
        // Ids win over positions: "612" is an id, "1" is the first article.
        let c = extract_citations("【612】［1］[CIVIL:90]", &ids);
        assert_eq!(c.kept, vec![1, 0]);
        assert!(c.dropped.is_empty());
        let c = extract_citations("第612条 [第612条] [المادة labour:3] [unclosed", &ids);
        assert_eq!(c.kept, vec![1, 2]);
        assert_eq!(extract_citations("no brackets", &ids), Citations::default());
        let long = format!("[{}]", "x".repeat(100));
        assert_eq!(extract_citations(&long, &ids), Citations::default());
    }

    #[test]
    fn citations_are_stripped_for_scoring() {
        assert_eq!(
            strip_citations("Void [civil:90]. See 【7】 and [a, b]."),
            "Void . See and ."
        );
        assert_eq!(strip_citations("[unclosed and fine"), "[unclosed and fine");
    }

    #[test]
    fn no_answer_is_recognized() {
        assert!(says_no_answer(NO_ANSWER));
        assert!(says_no_answer("  "));
        assert!(says_no_answer(
            "I'm sorry, the articles do not answer the question."
        ));
        assert!(!says_no_answer("Yes, it is void [civil:90]."));
    }
}
