//! Broken model folders and files give clear errors naming the file, never a panic. Each case
//! is built from copies in a temporary folder; `models/` is never modified.

mod bert_common;

use std::io::Write;
use std::path::Path;

use juris_ml::models::bert::BertEncoder;
use juris_ml::models::e5s1::load_e5s1;
use juris_ml::{EncoderOptions, MlError};

/// Writes a tiny BERT HF folder (config, weights, and `tokenizer` copied in when given).
fn tiny_hf_dir(tokenizer: Option<&Path>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), bert_common::config_json()).unwrap();
    candle_core::safetensors::save(
        &bert_common::weights(""),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    if let Some(t) = tokenizer {
        std::fs::copy(t, dir.path().join("tokenizer.json")).unwrap();
    }
    dir
}

fn load_hf(dir: &Path) -> Result<BertEncoder, MlError> {
    BertEncoder::from_hf_dir(dir, &EncoderOptions::default())
}

#[test]
fn hf_folder_missing_files() {
    let Some(minilm) = bert_common::model_path("minilm") else {
        return;
    };
    let tok = minilm.join("tokenizer.json");
    for missing in ["config.json", "model.safetensors", "tokenizer.json"] {
        let dir = tiny_hf_dir(Some(&tok));
        std::fs::remove_file(dir.path().join(missing)).unwrap();
        match load_hf(dir.path()) {
            Err(MlError::Missing { path, hint }) => {
                assert!(path.ends_with(missing), "{path:?}");
                assert!(hint.contains("fetch-models"), "{hint}");
            }
            Err(e) => panic!("{missing}: expected Missing, got {e}"),
            Ok(_) => panic!("{missing}: loaded without it"),
        }
    }
}

#[test]
fn truncated_safetensors_is_corrupt() {
    let Some(minilm) = bert_common::model_path("minilm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(minilm.join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(minilm.join("model.safetensors")).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(dir.path().join("model.safetensors"), &bytes[..cut]).unwrap();
        match load_hf(dir.path()) {
            Err(e @ MlError::Corrupt { .. }) => {
                assert!(e.to_string().contains("model.safetensors"), "{e}");
            }
            Err(e) => panic!("cut {cut}: expected Corrupt, got {e}"),
            Ok(_) => panic!("cut {cut}: loaded a truncated file"),
        }
    }
}

#[test]
fn tokenizer_larger_than_embedding_table_is_mismatch() {
    let Some(minilm) = bert_common::model_path("minilm") else {
        return;
    };
    // The tiny model has 12 rows; MiniLM's tokenizer has 30522 tokens.
    let dir = tiny_hf_dir(Some(&minilm.join("tokenizer.json")));
    match load_hf(dir.path()) {
        Err(MlError::Mismatch(msg)) => assert!(msg.contains("30522"), "{msg}"),
        Err(e) => panic!("expected Mismatch, got {e}"),
        Ok(_) => panic!("loaded a tokenizer larger than the embedding table"),
    }
}

#[test]
fn garbage_tokenizer_json_is_corrupt() {
    let dir = tiny_hf_dir(None);
    std::fs::write(dir.path().join("tokenizer.json"), b"{ not json").unwrap();
    let err = load_hf(dir.path())
        .err()
        .expect("garbage tokenizer must fail");
    assert!(matches!(err, MlError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

fn expect_e5_error(bytes: &[u8], what: &str) {
    let mut f = tempfile::Builder::new().suffix(".bin").tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    match load_e5s1(f.path(), &EncoderOptions::default()) {
        Err(e @ (MlError::Corrupt { .. } | MlError::Mismatch(_) | MlError::Unsupported(_))) => {
            let name = f.path().file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                e.to_string().contains(&name),
                "{what}: error does not name the file: {e}"
            );
        }
        Err(e) => panic!("{what}: unexpected error kind: {e}"),
        Ok(_) => panic!("{what}: loaded a broken file"),
    }
}

#[test]
fn garbage_e5s1_is_an_error() {
    // Random bytes after a valid magic, and a few hand-made headers.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for len in [4usize, 8, 60, 200, 5000] {
        let mut bytes = b"E5S1".to_vec();
        bytes.extend((4..len).map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        }));
        expect_e5_error(&bytes, &format!("{len} random bytes"));
    }
    let mut hdr = b"E5S1".to_vec();
    hdr.extend(1u32.to_le_bytes());
    for v in [384i32, 12, 12, 1536, 250037, 512, 2] {
        hdr.extend(v.to_le_bytes());
    }
    hdr.extend(1e-5f32.to_le_bytes());
    hdr.extend(32i32.to_le_bytes());
    expect_e5_error(&hdr, "header only");
    let mut huge = hdr.clone();
    huge.extend(i32::MAX.to_le_bytes());
    expect_e5_error(&huge, "huge piece count");
}

#[test]
fn truncated_e5s1_is_corrupt() {
    let Some(path) = bert_common::model_path("e5-small/e5-small-q4.bin") else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    // Every cut inside the header and tokenizer counts, then cuts in the piece table, the
    // normalization map, the tensor directory and the tensor data.
    let mut cuts: Vec<usize> = (0..=72).collect();
    cuts.extend([
        1000,
        1_000_000,
        4_000_000,
        4_637_000,
        4_638_260,
        30_000_000,
        bytes.len() - 1,
    ]);
    for cut in cuts {
        expect_e5_error(&bytes[..cut.min(bytes.len())], &format!("cut at {cut}"));
    }
    // A tensor offset pointing past the end: the first directory entry's offset field.
    let mut bad = bytes.clone();
    let pos = find(&bad, b"emb.word").expect("directory holds emb.word") + 8 + 1 + 4;
    bad[pos..pos + 8].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
    expect_e5_error(&bad, "tensor offset past the end");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
