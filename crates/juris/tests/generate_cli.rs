//! End-to-end `juris generate` on the fetched tiny random model (`models/tinycoder/tiny.gguf`,
//! no chat template, hence `--raw`): it streams the asked number of tokens and exits 0, a
//! seed gives the same text twice, and a prompt longer than the context exits 2 with a
//! message that says so.

mod common;

use common::tiny_model as tiny;
use std::process::{Command, Output};

fn juris(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_juris"))
        .args(args)
        .output()
        .expect("run juris")
}

#[test]
fn generate_streams_n_tokens_deterministically() {
    let Some(model) = tiny() else { return };
    let m = model.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        m,
        "--raw",
        "abc ab",
        "--max-tokens",
        "12",
        "--temperature",
        "0.8",
        "--top-p",
        "0.95",
        "--top-k",
        "40",
        "--seed",
        "11",
    ];
    let a = juris(&args);
    let stderr = String::from_utf8_lossy(&a.stderr);
    assert!(a.status.success(), "{stderr}");
    assert!(stderr.contains("12 generated"), "{stderr}");
    assert!(stderr.contains("MaxTokens"), "{stderr}");
    assert!(!a.stdout.is_empty());
    let b = juris(&args);
    assert_eq!(a.stdout, b.stdout, "same seed, same text");
    let greedy = juris(&[
        "generate",
        "--model",
        m,
        "--raw",
        "abc",
        "--max-tokens",
        "5",
    ]);
    assert!(
        greedy.status.success(),
        "{}",
        String::from_utf8_lossy(&greedy.stderr)
    );
}

#[test]
fn chat_on_a_file_without_template_is_a_clear_error() {
    let Some(model) = tiny() else { return };
    let out = juris(&["generate", "--model", model.to_str().unwrap(), "hello"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no chat template") && stderr.contains("--raw"),
        "{stderr}"
    );
}

#[test]
fn prompt_longer_than_the_context_exits_2() {
    let Some(model) = tiny() else { return };
    let m = model.to_str().unwrap();
    // The file's own context (llama.context_length = 2048).
    let long = "abc ".repeat(3000);
    let out = juris(&[
        "generate",
        "--model",
        m,
        "--raw",
        &long,
        "--max-tokens",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("context") && stderr.contains("shorten the prompt"),
        "{stderr}"
    );
    assert!(stderr.contains("llama.context_length"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A cap asked for on the command line.
    let out = juris(&[
        "generate",
        "--model",
        m,
        "--raw",
        "abc abc abc abc",
        "--context",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("context limit of 3 tokens"), "{stderr}");
}
