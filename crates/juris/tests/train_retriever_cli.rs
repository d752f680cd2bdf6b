//! `juris train retriever` refuses a config it cannot run before loading anything: bf16
//! mixed precision on the CPU, or an unknown precision, exit 2 with a message naming the
//! config file and the key, never a panic.

mod common;

use common::{fails, s};

fn config(precision: &str) -> String {
    format!(
        "[model]\npath = \"no-such-model\"\n[data]\ndir = \"no-such-data\"\n[train]\n\
         out = \"no-such-run\"\nprecision = {precision}\n[[phase]]\nname = \"p1\"\n\
         negatives = \"bm25\"\n"
    )
}

#[test]
fn bf16_on_the_cpu_and_unknown_precisions_exit_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf16.toml");
    std::fs::write(&file, config("\"bf16\"")).unwrap();
    let e = fails(&["train", "retriever", "--config", s(&file)]);
    assert!(
        e.contains(s(&file)) && e.contains("train.precision") && e.contains("--device cuda"),
        "{e}"
    );
    let e = fails(&[
        "train",
        "retriever",
        "--config",
        s(&file),
        "--device",
        "cpu",
    ]);
    assert!(e.contains("train.precision"), "{e}");
    std::fs::write(&file, config("\"fp16\"")).unwrap();
    let e = fails(&["train", "retriever", "--config", s(&file)]);
    assert!(
        e.contains(s(&file)) && e.contains("precision") && e.contains("bf16"),
        "{e}"
    );
}
