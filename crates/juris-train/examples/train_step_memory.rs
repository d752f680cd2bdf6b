//! Peak memory and time of retriever training steps on the CPU, for measuring what a
//! training step keeps alive: `cargo run --release -p juris-train --example
//! train_step_memory -- <model> [queries] [passages per query] [passage tokens] [steps]
//! [checkpointing: 0|1]`. Texts are random words long enough to fill the token limit
//! (queries get a quarter of the words and half the limit); LoRA r 16 on every linear
//! layer with dropout 0.05. A `.gguf` model trains as a decoder retriever (f32 base, LoRA on
//! every projection). The peak is the process's high-water RSS (`VmHWM`).

use candle_core::{DType, Var};
use juris_ml::lora::{LoraConfig, LoraTrain, SplitMix64, BERT_LORA_TARGETS};
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::EncoderOptions;
use juris_train::retrieval_model::{BertRetrieval, DecoderRetrieval, RetrievalModel};
use juris_train::step_profile::StepProfile;
use juris_train::{micro_step, Batch, TrainConfig};

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "models/minilm".into());
    let arg = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (queries, per_query, tokens, steps) = (arg(2, 8), arg(3, 5), arg(4, 128), arg(5, 2));
    let checkpointing = arg(6, 0) == 1;
    let cfg = TrainConfig::parse(
        &format!(
            "[model]\npath = \"{model}\"\nmax_len = {tokens}\nquery_max_len = {}\n\
             [data]\ndir = \"-\"\n[train]\nout = \"-\"\ngradient_checkpointing = \
             {checkpointing}\n[[phase]]\nname = \"p\"\nnegatives = \"bm25\"\n",
            tokens / 2
        ),
        std::path::Path::new("train_step_memory"),
    )
    .unwrap();
    let enc;
    let m: Box<dyn RetrievalModel> = if model.ends_with(".gguf") {
        let lcfg = LoraConfig::new(16, 32.0, 0.05, juris_ml::DECODER_LORA_TARGETS, &model);
        let path = std::path::Path::new(&model);
        Box::new(
            DecoderRetrieval::new(path, lcfg, 1, WeightMode::F32, &candle_core::Device::Cpu)
                .unwrap(),
        )
    } else {
        let opts = EncoderOptions {
            max_len: tokens,
            ..Default::default()
        };
        enc = juris_ml::load_bert_encoder(&model, &opts).expect("model");
        let lcfg = LoraConfig::new(16, 32.0, 0.05, BERT_LORA_TARGETS, &model);
        let modules = BertRetrieval::modules(&enc, &lcfg, &model).unwrap();
        let lora =
            LoraTrain::init(lcfg, &modules, 1, DType::F32, &candle_core::Device::Cpu).unwrap();
        Box::new(BertRetrieval::new(&enc, lora))
    };
    let mut rng = SplitMix64(5);
    let mut text = |words: usize| -> String {
        (0..words)
            .map(|_| {
                (0..3 + rng.below(5))
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let qs: Vec<String> = (0..queries).map(|_| text(tokens / 4)).collect();
    let ds: Vec<String> = (0..queries * per_query).map(|_| text(tokens)).collect();
    let batch = Batch {
        queries: qs.iter().map(String::as_str).collect(),
        passages: ds.iter().map(String::as_str).collect(),
        targets: (0..queries).map(|i| i * per_query).collect(),
        excluded: Vec::new(),
        pair_query: Vec::new(),
    };
    let vars: Vec<Var> = m.lora().named_vars().into_iter().map(|(_, v)| v).collect();
    eprintln!(
        "loaded: rss {} MB; checkpointing {checkpointing}",
        status_kb("VmRSS:") / 1024
    );
    for step in 0..steps {
        let t0 = std::time::Instant::now();
        let s = micro_step(
            m.as_ref(),
            &batch,
            &cfg,
            step as u64,
            1.0,
            &vars,
            &mut StepProfile::off(),
        )
        .unwrap();
        let tokens: usize = s.lengths.iter().flatten().sum();
        let n = s.grads.iter().filter(|g| g.is_some()).count();
        eprintln!(
            "step {step}: loss {:.4}, {tokens} tokens, {n} grads, {:.2} s, peak rss {} MB",
            s.loss,
            t0.elapsed().as_secs_f64(),
            status_kb("VmHWM:") / 1024
        );
    }
}
