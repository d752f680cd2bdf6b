//! Fine-tuning juris dense retrievers: contrastive (InfoNCE) training of LoRA adapters on a
//! BERT-family encoder, in phases whose negatives come from BM25 (phase 1) or from the
//! previous phase's model (phase 2, hard negatives re-mined with a false-negative guard),
//! with AdamW, warmup and linear decay, gradient accumulation and clipping, dev evaluation
//! after every epoch (juris-eval metrics), early stopping, exact resume from checkpoints,
//! and a metrics log with an SVG plot.
//!
//! The result is a PEFT-format adapter folder that `juris embed/search --adapter` merge
//! into the base weights. Code is device-generic (candle); CUDA comes with the `cuda`
//! feature.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod loss;
pub mod negatives;
pub mod optim;
pub mod report;
pub mod retrieval_model;
pub mod trainer;

pub use config::{NegativeSource, PhaseConfig, TrainConfig};
pub use error::{Result, TrainError};
pub use trainer::{train, train_with, TrainOptions, TrainOutcome};
