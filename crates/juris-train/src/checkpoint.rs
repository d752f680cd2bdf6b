//! Checkpoints for an exact resume: the trainable tensors and the optimizer's moments
//! (`tensors.safetensors`, bit-exact f32/f64) and where training stands (`state.json`:
//! for the retriever trainer [`TrainState`] — phase, epoch, batch within the epoch, step
//! counters, early-stopping state, the config's digest; the SFT trainer stores its own
//! state through [`save_state`] / [`load_state`]). Data order, negative sampling and
//! dropout are derived from the seed and these counters, so nothing else is needed. A checkpoint is written to `checkpoint.tmp/` and
//! renamed into place (the previous one is kept as `checkpoint.old/` until then), so a kill
//! at any moment leaves a complete checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, TrainError};
use crate::optim::AdamW;

/// Where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`crate::TrainConfig::trajectory_digest`] of the config that wrote it.
    pub config_digest: String,
    /// Phase being trained (index into the config's phases).
    pub phase: usize,
    /// Epoch within the phase.
    pub epoch: usize,
    /// Optimizer steps already taken in this epoch.
    pub step_in_epoch: u64,
    /// Optimizer steps taken in this phase.
    pub phase_step: u64,
    /// Optimizer steps taken in all phases.
    pub global_step: u64,
    /// AdamW's update counter.
    pub adam_step: u64,
    /// Best dev metric so far in this phase (in the run, with `select_across_phases`).
    pub best: Option<f64>,
    /// The phase whose `best-<phase>` folder holds the adapter that scored `best`.
    #[serde(default)]
    pub best_phase: Option<String>,
    /// Epochs since the best dev metric.
    pub bad_epochs: usize,
    /// Whether every phase has finished.
    pub done: bool,
}

/// The checkpoint folder of a run.
pub fn dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Writes a checkpoint atomically.
pub fn save(out: &Path, state: &TrainState, tensors: &[(String, Tensor)]) -> Result<()> {
    save_state(out, state, tensors)
}

/// Reads the run's checkpoint, if any (falling back to `checkpoint.old/` when a kill came
/// between the two renames of [`save`]).
pub fn load(out: &Path, device: &Device) -> Result<Option<(TrainState, HashMap<String, Tensor>)>> {
    load_state(out, device)
}

/// [`save`] for any serializable training state (each trainer has its own).
pub fn save_state<S: Serialize>(out: &Path, state: &S, tensors: &[(String, Tensor)]) -> Result<()> {
    let final_dir = dir(out);
    let tmp = out.join("checkpoint.tmp");
    let old = out.join("checkpoint.old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, tmp.join("tensors.safetensors"))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Data(e.to_string()))?;
    std::fs::write(tmp.join("state.json"), json).map_err(io(tmp.join("state.json")))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// [`load`] for any training state.
pub fn load_state<S: DeserializeOwned>(
    out: &Path,
    device: &Device,
) -> Result<Option<(S, HashMap<String, Tensor>)>> {
    let mut d = dir(out);
    if !d.join("state.json").is_file() {
        d = out.join("checkpoint.old");
        if !d.join("state.json").is_file() {
            return Ok(None);
        }
    }
    let text = std::fs::read_to_string(d.join("state.json")).map_err(io(d.join("state.json")))?;
    let state: S = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: d.clone(),
        what: format!(
            "state.json is not a juris training state ({e}); delete the folder to start over"
        ),
    })?;
    let tensors =
        candle_core::safetensors::load(d.join("tensors.safetensors"), device).map_err(|e| {
            TrainError::Checkpoint {
                path: d.clone(),
                what: format!(
                    "tensors.safetensors unreadable ({e}); delete the folder to start over"
                ),
            }
        })?;
    Ok(Some((state, tensors)))
}

/// The tensors a checkpoint stores for the trainable variables `named` and their optimizer:
/// `param.<name>`, `adam_m.<name>`, `adam_v.<name>`.
pub fn training_tensors(named: &[(String, Var)], opt: &AdamW) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = Vec::with_capacity(named.len() * 3);
    for (i, (name, var)) in named.iter().enumerate() {
        tensors.push((format!("param.{name}"), var.as_tensor().clone()));
        let shape = var.as_tensor().shape();
        tensors.push((format!("adam_m.{name}"), opt.m(i, shape)?));
        tensors.push((format!("adam_v.{name}"), opt.v(i, shape)?));
    }
    Ok(tensors)
}

/// Puts the tensors of [`training_tensors`] back into `named` and `opt` (its step counter
/// set to `adam_step`); a missing tensor is an error naming the checkpoint of `out`.
pub fn restore_training(
    out: &Path,
    tensors: &HashMap<String, Tensor>,
    named: &[(String, Var)],
    opt: &mut AdamW,
    adam_step: u64,
) -> Result<()> {
    let get = |k: String| -> Result<Tensor> {
        tensors
            .get(&k)
            .cloned()
            .ok_or_else(|| TrainError::Checkpoint {
                path: dir(out),
                what: format!("tensor '{k}' is missing; delete the folder to start over"),
            })
    };
    for (i, (name, var)) in named.iter().enumerate() {
        var.set(&get(format!("param.{name}"))?)?;
        opt.set_moments(
            i,
            &get(format!("adam_m.{name}"))?,
            &get(format!("adam_v.{name}"))?,
        )?;
    }
    opt.step = adam_step;
    Ok(())
}
