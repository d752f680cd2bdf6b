//! Generation against references recorded by `scripts/fixtures/generation_fixtures.py`
//! (llama.cpp on the same GGUF files, F32 KV cache, 2 threads; see the fixture's
//! "reference" and "reference_settings"):
//!
//! * SmolLM2's chat template renders a 2-turn conversation exactly as transformers'
//!   `apply_chat_template` does;
//! * greedy continuations (32 tokens, stopped at an end token) of 10 prompts, chat-formatted
//!   and raw, English / Japanese / Arabic, for SmolLM2 and Gemma-3-270M with quantized
//!   weights (the way llama.cpp computes): prompt token ids (ours vs the reference
//!   tokenizer's) are identical; at least a per-model number of continuations are
//!   identical to the reference's; the others are identical up to a near tie, a step where
//!   the reference's top-1 logit beats its top-2 by less than the fixture's "near_tie"
//!   margin;
//! * top-1 agreement: from the first parting on, the reference's tokens are fed (teacher
//!   forcing) and our argmax is compared with the reference's at every step; over all
//!   steps (at least 200 per model) at least a per-model share agree, and every
//!   disagreement is a near tie.
//!
//! With quantized weights juris computes every op the way llama.cpp's CPU backend does,
//! sums included, so its logits are llama.cpp's bit for bit (checked op by op on
//! llama.cpp's own intermediate tensors: `scripts/diag/llamacpp_tensors.py`, same input
//! rows through our ops with `examples/parity_probe.rs`; prompt and decode logits of both
//! files are equal to the last bit). What it took, in the order the differences were found:
//!
//! * activation quantization (`models::ggml_matmul`): candle rounds activations to 8 bits
//!   with `1/d` instead of `127/amax`, rounds half away from zero instead of to even, and
//!   stores Q8_1's block sum as `f16(f16(Σq)·f16(d))` instead of `f16(d·Σq)`;
//! * RMSNorm: llama.cpp sums squares in f64 and multiplies by `1/sqrt`;
//! * GELU (Gemma): llama.cpp looks it up in an f16 table, built with `1 + a·x·x` fused;
//! * the quantized products' summation orders (`models::ggml_matmul`): ggml's x86
//!   `vec_dot` for Q8_0/Q5_0/Q4_1, and for Q4_K/Q6_K the orders llama.cpp really uses,
//!   which depend on the number of rows (repacked Q4_K GEMV/GEMM; Q6_K `vec_dot` for a
//!   token, tiled for a prompt); its last block runs the MLP on the output row alone;
//! * rotary angles by llama.cpp's f32 recurrence, rotation fused; attention with ggml's
//!   dot-product orders, its vectorized `expf` and f64 softmax sums; SiLU with that `expf`
//!   (`models::decoder_layers`).
//!
//! The reference computed each prompt in one batch, then one token per step; so do the
//! greedy runs and the teacher forcing here (the orders above depend on the batch).
//!
//! The near-tie margin stays as a guard for platforms where llama.cpp's transcendental
//! functions (the C library's `cosf`/`sinf`/`expf`) give other bits: the fixture measures
//! llama.cpp's own top-1 − top-2 margin shift under a change of KV cache precision (F32 →
//! F16) over every step and takes its maximum (SmolLM2 0.65, Gemma 3 1.42): a parting or
//! disagreement at a wider margin fails the test, as do fewer identical prompts or lower
//! agreement than asserted per model.
//!
//! Measured (candle 0.11.1, llama-cpp-python 0.3.36, x86 with AVX2/FMA): SmolLM2 Q4_1 and
//! Gemma-3-270M Q4_K_M both 320/320 = 100% top-1 agreement and 10 of 10 continuations
//! identical (before this: 318/320 and 7, 311/320 and 4). Asserted: issue 5's 99% and 5
//! identical for each.
//!
//! Each model is skipped with a message when its file has not been fetched.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::Device;
use juris_ml::generate::argmax;
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::{ChatMessage, FinishReason, GenerateOptions, GgufGenerator};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/generation_{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(name: &str) -> Option<(GgufGenerator, Value)> {
    let fx = fixture(name);
    let path = root().join(fx["model"].as_str().unwrap());
    if !path.exists() {
        println!(
            "skipped: {} missing; run bash scripts/fetch-models.sh",
            path.display()
        );
        return None;
    }
    let g = GgufGenerator::load(&path, WeightMode::Quantized, &Device::Cpu).unwrap();
    Some((g, fx))
}

/// What one model must reach (see the module docs for the measured values).
struct Bar {
    /// Continuations of at least this many prompts must be identical.
    identical: usize,
    /// Share of the teacher-forced steps whose top-1 must agree with the reference's.
    agreement: f64,
}

/// Teacher-forced steps per model the top-1 agreement must cover.
const MIN_POSITIONS: usize = 200;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check_greedy(name: &str, bar: Bar) {
    let Some((gen, fx)) = load(name) else { return };
    println!(
        "reference: {} {}",
        fx["reference"], fx["reference_settings"]
    );
    let near_tie = fx["near_tie"]["margin"].as_f64().unwrap();
    println!("near-tie margin: {near_tie} ({})", fx["near_tie"]);
    let n = fx["new_tokens"].as_u64().unwrap() as usize;
    let model = gen.model();
    let mut failures = Vec::new();
    let (mut identical, mut positions, mut agree) = (0usize, 0usize, 0usize);
    for (i, p) in fx["prompts"].as_array().unwrap().iter().enumerate() {
        let expected_prompt = ids(&p["prompt_ids"]);
        let ours = if p["kind"] == "chat" {
            gen.chat_ids(&messages(&p["messages"])).unwrap()
        } else {
            gen.tokenizer()
                .encode(p["text"].as_str().unwrap(), true)
                .unwrap()
        };
        if ours != expected_prompt {
            failures.push(format!(
                "{name} prompt {i}: prompt ids differ\n ours {ours:?}\n ref  {expected_prompt:?}"
            ));
        }
        let opts = GenerateOptions {
            max_tokens: n,
            ..Default::default()
        };
        let out = gen
            .generate_ids(&expected_prompt, &opts, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let reference = ids(&p["greedy_ids"]);
        let margins = floats(&p["greedy_margins"]);
        let k = out.tokens.len();
        // The first step where our continuation differs from the reference's (none when it
        // is a prefix that ended at an end token, or all of it).
        let parting = out
            .tokens
            .iter()
            .zip(&reference)
            .position(|(a, b)| a != b)
            .or_else(|| (out.finish != FinishReason::EndToken && k < reference.len()).then_some(k));
        let Some(first) = parting else {
            identical += 1;
            positions += k;
            agree += k;
            println!(
                "{name} prompt {i} ({}): identical ({k} tokens, {:?}), text {:?}",
                p["kind"], out.finish, out.text
            );
            continue;
        };
        println!(
            "{name} prompt {i} ({}): parts at step {first}: ours {} ref {} (reference margin {:.4}), text {:?}",
            p["kind"], out.tokens[first], reference[first], margins[first], out.text
        );
        if margins[first] >= near_tie {
            failures.push(format!(
                "{name} prompt {i}: greedy ids part at step {first} where the reference's top-1 margin {:.4} is no near tie (< {near_tie})\n ours {:?}\n ref  {reference:?}",
                margins[first], out.tokens
            ));
        }
        // Teacher forcing from the parting on: feed the reference's tokens, compare argmax.
        // The tokens before the parting go in one at a time after the prompt, as the
        // reference computed them: llama.cpp's quantized products sum in an order that
        // depends on the number of rows (see `models::ggml_matmul`).
        positions += first;
        agree += first;
        let mut cache = model.new_cache();
        let mut logits = model.forward_step(&expected_prompt, &mut cache).unwrap();
        for &t in &reference[..first] {
            logits = model.forward_step(&[t], &mut cache).unwrap();
        }
        for step in first..reference.len() {
            let l = logits.to_vec1::<f32>().unwrap();
            let ours = argmax(&l);
            positions += 1;
            if ours == reference[step] {
                agree += 1;
            } else {
                println!(
                    "  step {step}: ours {ours} ref {} (reference margin {:.4}, ours {:.4})",
                    reference[step],
                    margins[step],
                    l[ours as usize] - l[reference[step] as usize]
                );
                if margins[step] >= near_tie {
                    failures.push(format!(
                        "{name} prompt {i} step {step} (reference's tokens fed): our top-1 {ours} differs from the reference's {} at margin {:.4}, no near tie (< {near_tie})",
                        reference[step], margins[step]
                    ));
                }
            }
            if step + 1 < reference.len() {
                logits = model.forward_step(&[reference[step]], &mut cache).unwrap();
            }
        }
    }
    let rate = agree as f64 / positions.max(1) as f64;
    println!(
        "{name}: {identical} of {} continuations identical; top-1 agreement {agree}/{positions} = {:.2}%",
        fx["prompts"].as_array().unwrap().len(),
        100.0 * rate
    );
    if identical < bar.identical {
        failures.push(format!(
            "{name}: only {identical} identical continuations, want at least {}",
            bar.identical
        ));
    }
    if positions < MIN_POSITIONS || rate < bar.agreement {
        failures.push(format!(
            "{name}: top-1 agreement {agree}/{positions}; want at least {} over at least {MIN_POSITIONS} steps",
            bar.agreement
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    let Some((gen, fx)) = load("smollm2") else {
        return;
    };
    let t = &fx["chat_template"];
    let rendered = gen.render_chat(&messages(&t["messages"])).unwrap();
    assert_eq!(rendered, t["expected"].as_str().unwrap());
}

#[test]
fn smollm2_greedy_matches_reference() {
    check_greedy(
        "smollm2",
        Bar {
            identical: 5,
            agreement: 0.99,
        },
    );
}

#[test]
fn gemma3_greedy_matches_reference() {
    check_greedy(
        "gemma3",
        Bar {
            identical: 5,
            agreement: 0.99,
        },
    );
}
