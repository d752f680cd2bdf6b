//! Fine-tuning juris models. Two trainers share the optimizer, checkpoints and metrics log:
//!
//! * the dense-retriever trainer ([`train`]): contrastive (InfoNCE) training of LoRA
//!   adapters on a BERT-family encoder or a GGUF decoder LLM with last-token pooling
//!   ([`retrieval_model`]), in phases whose negatives come from BM25 (phase 1)
//!   or from the previous phase's model (phase 2, hard negatives re-mined with a
//!   false-negative guard), with AdamW, warmup and linear decay, gradient accumulation and
//!   clipping, dev evaluation after every epoch (juris-eval metrics), early stopping, exact
//!   resume from checkpoints, and a metrics log with an SVG plot. The result is a
//!   PEFT-format adapter folder that `juris embed/search --adapter` merge into the base
//!   weights;
//! * the generator trainer (`sft`): supervised fine-tuning (QLoRA) of a GGUF decoder on
//!   chat data ([`chat_data`], [`sft_config`]), with the loss on assistant tokens only, a
//!   dev loss, the best adapter kept, and merged GGUF exports.
//!
//! Code is device-generic (candle); CUDA comes with the `cuda` feature, and with it bf16
//! mixed-precision retriever training (`[train] precision = "bf16"`, [`config::Precision`]).
#![deny(missing_docs)]

pub mod chat_data;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod loss;
pub mod negatives;
pub mod optim;
pub mod report;
pub mod retrieval_model;
pub mod sft;
pub mod sft_config;
pub mod step_profile;
pub mod trainer;

pub use config::{NegativeSource, PhaseConfig, Precision, TrainConfig};
pub use error::{Result, TrainError};
pub use sft_config::SftConfig;
pub use trainer::{
    micro_step, train, train_with, Batch, MicroStep, Throughput, TrainOptions, TrainOutcome,
};
