//! Prompt-processing and decode speed of a GGUF decoder on the CPU with quantized weights,
//! for `bench/generate_speed.py`, which times llama.cpp beside it on the same token ids.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run -p juris-ml --release --example generate_speed -- \
//!     MODEL.gguf PROMPT_IDS.json NEW_TOKENS
//! ```
//!
//! `PROMPT_IDS.json` is a JSON array of token ids. One run: a fresh KV cache, the prompt in
//! one step (prefill), then `NEW_TOKENS - 1` greedy steps of one token each (decode; the
//! first new token comes from the prefill's logits), not stopped at an end token. Prints one
//! JSON line: `prompt_tokens`, `prefill_s`, `decode_tokens` (steps), `decode_s`, `load_s`,
//! and the generated `ids`.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::Device;
use juris_ml::generate::argmax;
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::GgufGenerator;

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, ids_path, new_tokens] = args.as_slice() else {
        return Err("usage: generate_speed MODEL.gguf PROMPT_IDS.json NEW_TOKENS".into());
    };
    let new_tokens: usize = new_tokens
        .parse()
        .map_err(|e| format!("NEW_TOKENS {new_tokens:?}: {e}"))?;
    let text = std::fs::read_to_string(ids_path).map_err(|e| format!("{ids_path}: {e}"))?;
    let prompt: Vec<u32> = serde_json::from_str(&text).map_err(|e| format!("{ids_path}: {e}"))?;
    if prompt.is_empty() || new_tokens == 0 {
        return Err("the prompt and NEW_TOKENS must not be empty".into());
    }
    let t = Instant::now();
    let gen = GgufGenerator::load(
        std::path::Path::new(model),
        WeightMode::Quantized,
        &Device::Cpu,
    )
    .map_err(|e| e.to_string())?;
    let load_s = t.elapsed().as_secs_f64();
    let m = gen.model();
    let mut cache = m.new_cache();
    let t = Instant::now();
    let logits = m
        .forward_step(&prompt, &mut cache)
        .map_err(|e| e.to_string())?;
    let mut next = argmax(&logits.to_vec1::<f32>().map_err(|e| e.to_string())?);
    let prefill_s = t.elapsed().as_secs_f64();
    let mut ids = vec![next];
    let t = Instant::now();
    for _ in 1..new_tokens {
        let logits = m
            .forward_step(&[next], &mut cache)
            .map_err(|e| e.to_string())?;
        next = argmax(&logits.to_vec1::<f32>().map_err(|e| e.to_string())?);
        ids.push(next);
    }
    let decode_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "prompt_tokens": prompt.len(),
            "prefill_s": prefill_s,
            "decode_tokens": new_tokens - 1,
            "decode_s": decode_s,
            "load_s": load_s,
            "ids": ids,
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
