//! CPU encoding throughput of a juris encoder on a JSONL corpus (`title + "\n" + text` per
//! line, as passages), for `bench/encode_speed.py`, which runs sentence-transformers beside it.
//!
//! ```text
//! cargo run -p juris-ml --release --example encode_speed -- --model minilm \
//!     --corpus corpus.jsonl [--limit N] [--batch 32] [--max-len 256] [--threads 2] [--runs 3]
//!     [--dump-ids ids.jsonl] [--device cpu|cuda|cuda:N]
//! ```
//!
//! Prints one JSON line: `texts`, `tokens` (after truncation, special tokens and prefix
//! included), `seconds` (median of the runs, each one full `encode_batched` over all texts,
//! tokenization included), `texts_per_s`, `tokens_per_s`, and every run's seconds.
//! `--dump-ids` writes each text's model input ids (one JSON array per line) and skips timing,
//! so that a reference implementation can be run on exactly the same ids.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use juris_ml::{encode_batched, load_encoder, DeviceChoice, EncoderOptions, TextRole};

struct Args {
    model: String,
    corpus: String,
    limit: usize,
    batch: usize,
    max_len: usize,
    threads: usize,
    runs: usize,
    dump_ids: Option<String>,
    device: DeviceChoice,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: String::new(),
        corpus: String::new(),
        limit: usize::MAX,
        batch: 32,
        max_len: 256,
        threads: 2,
        runs: 3,
        dump_ids: None,
        device: DeviceChoice::Cpu,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<usize, String> {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag}: '{v}' is not a positive integer"))
        };
        match flag.as_str() {
            "--model" => a.model = value,
            "--corpus" => a.corpus = value,
            "--limit" => a.limit = num(&value)?,
            "--batch" => a.batch = num(&value)?,
            "--max-len" => a.max_len = num(&value)?,
            "--threads" => a.threads = num(&value)?,
            "--runs" => a.runs = num(&value)?,
            "--dump-ids" => a.dump_ids = Some(value),
            "--device" => {
                a.device = match value.as_str() {
                    "cpu" => DeviceChoice::Cpu,
                    "cuda" => DeviceChoice::Cuda(0),
                    other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                        Some(Ok(n)) => DeviceChoice::Cuda(n),
                        _ => return Err(format!("--device: '{other}' is not cpu, cuda or cuda:N")),
                    },
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.model.is_empty() || a.corpus.is_empty() {
        return Err("--model and --corpus are required".into());
    }
    Ok(a)
}

/// `title + "\n" + text` of the first `limit` lines (an empty title gives just the text's
/// line after a newline, as the Python side builds it too).
fn read_corpus(path: &str, limit: usize) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut texts = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        if texts.len() >= limit {
            break;
        }
        let line = line.map_err(|e| format!("{path}:{}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("{path}:{}: {e}", n + 1))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        texts.push(format!("{}\n{}", field("title"), field("text")));
    }
    Ok(texts)
}

/// CPU seconds this process has used (user + system, all threads), from /proc/self/stat;
/// `None` off Linux. On a shared machine a run's CPU time moves much less with other load
/// than its wall time.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    // candle sizes gemm's parallelism from RAYON_NUM_THREADS on every matmul and runs it on
    // rayon's global pool, which also reads it; setting both makes the thread count exactly N.
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build_global()
        .map_err(|e| format!("thread pool: {e}"))?;

    let texts = read_corpus(&a.corpus, a.limit)?;
    if texts.is_empty() {
        return Err(format!("{}: no documents", a.corpus));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let opts = EncoderOptions {
        max_len: a.max_len,
        batch_size: a.batch,
        device: a.device,
    };
    let role = TextRole::Passage;

    if let Some(out) = &a.dump_ids {
        let path = juris_ml::presets::resolve_model(&a.model).map_err(|e| e.to_string())?;
        let enc = match juris_ml::presets::detect_format(&path).map_err(|e| e.to_string())? {
            juris_ml::presets::ModelFormat::E5s1 => juris_ml::models::e5s1::load_e5s1(&path, &opts),
            juris_ml::presets::ModelFormat::HfDir => {
                juris_ml::models::bert::BertEncoder::from_hf_dir(&path, &opts)
            }
            juris_ml::presets::ModelFormat::Gguf => {
                return Err("--dump-ids supports BERT-family models only".into())
            }
        }
        .map_err(|e| e.to_string())?;
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(out).map_err(|e| format!("{out}: {e}"))?);
        for t in &refs {
            let ids = enc.token_ids(t, role).map_err(|e| e.to_string())?;
            let line = serde_json::to_string(&ids).map_err(|e| e.to_string())?;
            writeln!(f, "{line}").map_err(|e| format!("{out}: {e}"))?;
        }
        return f.flush().map_err(|e| format!("{out}: {e}"));
    }

    let enc = load_encoder(&a.model, &opts).map_err(|e| e.to_string())?;
    let mut tokens = 0usize;
    for t in &refs {
        let n = enc.token_count(t, role).map_err(|e| e.to_string())?;
        tokens += n.min(a.max_len);
    }
    // Warm-up: one batch of the longest texts (page faults of the first big allocations,
    // lazy init in the pools).
    let mut by_len: Vec<&str> = refs.clone();
    by_len.sort_by_key(|t| std::cmp::Reverse(t.len()));
    by_len.truncate(a.batch);
    enc.encode(&by_len, role).map_err(|e| e.to_string())?;

    let mut secs = Vec::with_capacity(a.runs);
    let mut cpu = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let v = encode_batched(enc.as_ref(), &refs, role, a.batch, &mut |_| {})
            .map_err(|e| e.to_string())?;
        secs.push(t0.elapsed().as_secs_f64());
        if let (Some(c0), Some(c1)) = (c0, cpu_seconds()) {
            cpu.push(c1 - c0);
        }
        std::hint::black_box(v);
    }
    let s = median(&secs);
    let out = serde_json::json!({
        "model": a.model,
        "texts": texts.len(),
        "tokens": tokens,
        "seconds": s,
        "texts_per_s": texts.len() as f64 / s,
        "tokens_per_s": tokens as f64 / s,
        "runs": secs,
        "cpu_seconds": cpu,
        "threads": a.threads,
        "batch": a.batch,
        "max_len": a.max_len,
        "device": format!("{:?}", a.device),
    });
    println!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("encode_speed: {e}");
            ExitCode::FAILURE
        }
    }
}
