//! Gradient checkpointing per block: a training forward pass cut at its transformer blocks
//! ([`BlockPass`]: BERT encoders and the GGUF decoders implement it), run either whole with
//! one graph ([`forward_all`]) or keeping only each block's input ([`forward_saving_inputs`])
//! and recomputing one block at a time in the backward pass ([`backward_blocks`]).
//!
//! Why: candle keeps every intermediate of a graph alive until backward, so a step's memory
//! grows with `blocks × tokens`; checkpointed, it is one block's graph plus one
//! `[tokens, hidden]` tensor per block. The price is a second forward of every block.
//!
//! The recomputation runs the very ops of the first forward (each block's input enters as a
//! variable in both, so layers choose their differentiable forms both times), and LoRA
//! dropout draws each module's mask from the pass's seed and the module's path, so setting
//! the same seed ([`crate::lora::LoraTrain::set_dropout_seed`]) before the forward and
//! before the backward gives the gradients of plain training.

use candle_core::{Tensor, Var};

use crate::error::Result;

/// A differentiable forward pass over one batch, cut at its blocks: `finish(block_{n-1}(…
/// block_0(stem())))` is the pass's output (final hidden states).
pub trait BlockPass {
    /// The first block's input (the embeddings; nothing trainable comes before it).
    fn stem(&self) -> Result<Tensor>;
    /// Number of blocks.
    fn num_blocks(&self) -> usize;
    /// Block `i` applied to its input `x`.
    fn block(&self, i: usize, x: &Tensor) -> Result<Tensor>;
    /// What follows the last block (a final norm; nothing trainable).
    fn finish(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// The whole pass with one graph (plain training, evaluation without a graph).
pub fn forward_all(pass: &dyn BlockPass) -> Result<Tensor> {
    let mut x = pass.stem()?;
    for i in 0..pass.num_blocks() {
        x = pass.block(i, &x)?;
    }
    pass.finish(&x)
}

/// The first forward of checkpointed training: the input of each block (detached) and the
/// last block's output (detached; `finish` not applied). Each block's graph is dropped as
/// soon as its output is taken.
pub fn forward_saving_inputs(pass: &dyn BlockPass) -> Result<(Vec<Tensor>, Tensor)> {
    let mut x = pass.stem()?.detach();
    let mut inputs = Vec::with_capacity(pass.num_blocks());
    for i in 0..pass.num_blocks() {
        inputs.push(x.clone());
        let input = Var::from_tensor(&x)?;
        x = pass.block(i, input.as_tensor())?.detach();
    }
    Ok((inputs, x))
}

/// The backward pass through the blocks of a pass run by [`forward_saving_inputs`], given
/// the gradient of the loss with respect to the last block's output: each block, last to
/// first, is recomputed from its saved input with a graph, and `Σ out ⊙ grad_out` is
/// backpropagated, giving the block's share of the gradients of `vars` (added to
/// `sums[k]` for `vars[k]`) and the gradient for the block before it.
pub fn backward_blocks(
    pass: &dyn BlockPass,
    mut inputs: Vec<Tensor>,
    grad_last: Tensor,
    vars: &[Var],
    sums: &mut [Option<Tensor>],
) -> Result<()> {
    let mut grad = grad_last.detach();
    for i in (0..pass.num_blocks()).rev() {
        let Some(x) = inputs.pop() else { break };
        let input = Var::from_tensor(&x)?;
        drop(x);
        let out = pass.block(i, input.as_tensor())?;
        let grads = (out * &grad)?.sum_all()?.backward()?;
        add_var_grads(&grads, vars, sums)?;
        grad = match grads.get(input.as_tensor()) {
            Some(g) => g.detach(),
            None => input.as_tensor().zeros_like()?,
        };
    }
    Ok(())
}

/// Adds the gradients in `grads` of `vars` to `sums` (same order).
pub fn add_var_grads(
    grads: &candle_core::backprop::GradStore,
    vars: &[Var],
    sums: &mut [Option<Tensor>],
) -> Result<()> {
    for (v, sum) in vars.iter().zip(sums.iter_mut()) {
        if let Some(g) = grads.get(v.as_tensor()) {
            *sum = Some(match sum.take() {
                None => g.clone(),
                Some(s) => (s + g)?,
            });
        }
    }
    Ok(())
}
