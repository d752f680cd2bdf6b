//! Bad GGUF input gives a clear `MlError` naming the file and the problem, never a panic.

mod gguf_common;

use gguf_common::{write_tiny, Tiny};
use juris_ml::gguf::GgufFile;
use juris_ml::models::decoder::load_gguf_encoder;
use juris_ml::{EncoderOptions, MlError};

fn load_err(path: &std::path::Path) -> MlError {
    match load_gguf_encoder(path, &EncoderOptions::default()) {
        Ok(_) => panic!("{} loaded but should have failed", path.display()),
        Err(e) => e,
    }
}

#[test]
fn truncated_file_is_corrupt_and_says_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.gguf");
    write_tiny(&full, &Tiny::default());
    let bytes = std::fs::read(&full).unwrap();
    // Cut in the tensor data: the header parses, a tensor runs past the end.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&cut);
    let msg = e.to_string();
    assert!(matches!(e, MlError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("truncated") && msg.contains("cut.gguf"),
        "{msg}"
    );
    // Cut inside the header.
    let head = dir.path().join("head.gguf");
    std::fs::write(&head, &bytes[..64]).unwrap();
    let e = load_err(&head);
    let msg = e.to_string();
    assert!(matches!(e, MlError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("not a readable GGUF") && msg.contains("head.gguf"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_names_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    write_tiny(
        &p,
        &Tiny {
            arch: "mamba",
            ..Tiny::default()
        },
    );
    let e = load_err(&p);
    let msg = e.to_string();
    assert!(matches!(e, MlError::Unsupported(_)), "{msg}");
    assert!(
        msg.contains("'mamba'") && msg.contains("llama, gemma3"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("holey.gguf");
    write_tiny(
        &p,
        &Tiny {
            drop_tensor: Some("blk.1.ffn_up.weight"),
            ..Tiny::default()
        },
    );
    let e = load_err(&p);
    let msg = e.to_string();
    assert!(matches!(e, MlError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("'blk.1.ffn_up.weight' is missing"), "{msg}");
    let p = dir.path().join("holey3.gguf");
    write_tiny(
        &p,
        &Tiny {
            arch: "gemma3",
            drop_tensor: Some("blk.0.post_ffw_norm.weight"),
            ..Tiny::default()
        },
    );
    let msg = load_err(&p).to_string();
    assert!(
        msg.contains("'blk.0.post_ffw_norm.weight' is missing"),
        "{msg}"
    );
}

#[test]
fn missing_metadata_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nokey.gguf");
    write_tiny(
        &p,
        &Tiny {
            drop_key: Some("llama.block_count"),
            ..Tiny::default()
        },
    );
    let msg = load_err(&p).to_string();
    assert!(msg.contains("'llama.block_count' is missing"), "{msg}");
    let p = dir.path().join("notok.gguf");
    write_tiny(
        &p,
        &Tiny {
            drop_key: Some("tokenizer.ggml.model"),
            ..Tiny::default()
        },
    );
    let msg = load_err(&p).to_string();
    assert!(msg.contains("'tokenizer.ggml.model' is missing"), "{msg}");
}

#[test]
fn missing_file_says_what_to_do() {
    let e = GgufFile::open(std::path::Path::new("/nonexistent/x.gguf")).unwrap_err();
    assert!(matches!(e, MlError::Missing { .. }), "{e}");
}

#[test]
fn metadata_access_reports_wrong_types() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    write_tiny(&p, &Tiny::default());
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.usize("llama.block_count").unwrap(), 2);
    let msg = g.usize("general.name").unwrap_err().to_string();
    assert!(
        msg.contains("'general.name'") && msg.contains("integer"),
        "{msg}"
    );
}
