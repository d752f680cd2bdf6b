//! Text generation from decoder LLMs: the [`Generator`] seam (a conversation in, text
//! streamed out), [`GgufGenerator`] over any [`DecoderLm`] loaded from a GGUF file, and the
//! seeded [`Sampler`].
//!
//! One call: render the conversation with the model's chat template, tokenize it, refuse it
//! when prompt + 1 token would not fit the context, feed the prompt in one pass (prefill),
//! then pick and feed one token at a time through the KV cache (decode) until an end token,
//! a stop string, `max_tokens`, the end of the context, or the callback says stop. Text is
//! handed to the callback as soon as it is final: an incomplete UTF-8 character (a byte
//! token waiting for the rest of its bytes) and a tail that could still become a stop
//! string are held back, so a stop string never reaches the callback.
//!
//! Sampling order follows transformers: repetition penalty, temperature, top-k, top-p, then
//! a draw from a generator seeded by `seed`, so a seed always gives the same text on the
//! same weights. Temperature 0 is greedy (argmax, the first of equal maxima).

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::decoder_lora::load_decoder_with_adapter;
use crate::error::{MlError, Result};
use crate::gguf::GgufFile;
use crate::gguf_tokenizer::GgufTokenizer;
use crate::models::decoder::DecoderLm;
use crate::models::decoder_layers::WeightMode;

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to this
    /// (1 keeps all).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Penalty > 1 for tokens among the last [`REPETITION_WINDOW`] (prompt included):
    /// positive logits are divided by it, negative ones multiplied (1 is off).
    pub repetition_penalty: f32,
    /// Seed of the sampler: the same seed gives the same tokens.
    pub seed: u64,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Cap on the context (prompt + generated tokens) below the model's own length.
    pub context_limit: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
            stop: Vec::new(),
            context_limit: None,
        }
    }
}

/// Tokens the repetition penalty looks back on (llama.cpp's default `penalty_last_n`).
pub const REPETITION_WINDOW: usize = 64;

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end token (EOS or end of turn).
    EndToken,
    /// A stop string appeared (it is not part of the text).
    Stop(String),
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// Counts and speeds of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (an end token included).
    pub generated_tokens: usize,
    /// Seconds spent on the prompt (up to the first token's logits).
    pub prefill_secs: f64,
    /// Seconds spent on the generated tokens after the first.
    pub decode_secs: f64,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
    }
    /// Generated tokens per second over the decode phase (every token after the first is
    /// one forward step).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text (without a stop string or end token).
    pub text: String,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The generated token ids (an end token included as the last one).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Counts and timings.
    pub stats: GenerationStats,
}

/// The generation seam: a conversation in, text streamed out. `on_text` receives each
/// piece of final text as it is produced and may return [`ControlFlow::Break`] to stop.
pub trait Generator {
    /// A short name for messages.
    fn name(&self) -> &str;
    /// Generates the assistant's reply to `messages` (formatted with the model's chat
    /// template).
    fn chat(
        &self,
        messages: &[ChatMessage],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation>;
    /// Continues `prompt` as written (no chat template; the tokenizer's BOS convention).
    fn complete(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation>;
}

/// A seeded token sampler (see the module docs for the order of its steps).
#[derive(Debug, Clone)]
pub struct Sampler {
    state: u64,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    penalty: f32,
}

impl Sampler {
    /// A sampler for `opts`.
    pub fn new(opts: &GenerateOptions) -> Sampler {
        Sampler {
            // SplitMix64's increment keeps seed 0 from being a fixed point.
            state: opts.seed ^ 0x9E37_79B9_7F4A_7C15,
            temperature: opts.temperature,
            top_p: opts.top_p,
            top_k: opts.top_k,
            penalty: opts.repetition_penalty,
        }
    }

    /// SplitMix64: small, fast, and the same sequence on every platform.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits` (changed in place by the penalty), given the
    /// sequence so far in `history`.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.penalty != 1.0 && self.penalty > 0.0 {
            let start = history.len().saturating_sub(REPETITION_WINDOW);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if let Some(l) = logits.get_mut(t as usize) {
                    if seen.insert(t) {
                        *l = if *l > 0.0 {
                            *l / self.penalty
                        } else {
                            *l * self.penalty
                        };
                    }
                }
            }
        }
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / self.temperature))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.top_k > 0 {
            cand.truncate(self.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.next_f64() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return cand[i].0;
            }
            u -= p;
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest logit (the first of equal maxima; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// A generator over a GGUF decoder: model, tokenizer and chat template from one file.
#[derive(Debug)]
pub struct GgufGenerator {
    name: String,
    path: std::path::PathBuf,
    model: Box<dyn DecoderLm>,
    tokenizer: GgufTokenizer,
    template: std::result::Result<ChatTemplate, String>,
    end_ids: Vec<u32>,
}

/// End-of-turn tokens of the common chat formats: generation ends at any of them, as it
/// does at EOS (an instruct model's EOS is not always its end of turn).
const END_TOKENS: &[&str] = &[
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
];

impl GgufGenerator {
    /// Loads `path` with weights in `mode` (quantized is the fast choice on CPU).
    pub fn load(path: &Path, mode: WeightMode, device: &Device) -> Result<GgufGenerator> {
        GgufGenerator::load_with_adapter(path, mode, None, device)
    }

    /// Loads `path` with weights in `mode` and, when given, the PEFT LoRA adapter in the
    /// folder `adapter` (merged into the weights for [`WeightMode::F32`], applied on top of
    /// the quantized ones for [`WeightMode::Quantized`]; see
    /// [`crate::decoder_lora::load_decoder_with_adapter`]).
    pub fn load_with_adapter(
        path: &Path,
        mode: WeightMode,
        adapter: Option<&Path>,
        device: &Device,
    ) -> Result<GgufGenerator> {
        let g = GgufFile::open(path)?;
        let model = load_decoder_with_adapter(&g, mode, adapter, device)?;
        let tokenizer = GgufTokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(MlError::Mismatch(format!(
                "{}: the tokenizer has {} tokens but the embedding only {} rows",
                path.display(),
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        // A file without a template can still continue raw prompts; the error is kept for
        // the first chat call.
        let template = ChatTemplate::from_gguf(&g).map_err(|e| e.to_string());
        let mut end_ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        if let Some(eot) = g.usize_opt("tokenizer.ggml.eot_token_id")? {
            end_ids.push(eot as u32);
        }
        end_ids.extend(END_TOKENS.iter().filter_map(|t| tokenizer.token_to_id(t)));
        end_ids.sort_unstable();
        end_ids.dedup();
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match g.string_opt("general.name")? {
            Some(n) if !n.is_empty() => format!("{n} ({base})"),
            _ => base,
        };
        let name = match adapter {
            Some(a) => format!("{name} + LoRA {}", a.display()),
            None => name,
        };
        Ok(GgufGenerator {
            name,
            path: path.to_path_buf(),
            model,
            tokenizer,
            template,
            end_ids,
        })
    }

    /// Loads `path` on the CPU.
    pub fn load_cpu(path: &Path, mode: WeightMode) -> Result<GgufGenerator> {
        GgufGenerator::load(path, mode, &Device::Cpu)
    }

    /// The decoder.
    pub fn model(&self) -> &dyn DecoderLm {
        self.model.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Token ids that end generation.
    pub fn end_ids(&self) -> &[u32] {
        &self.end_ids
    }

    /// Whether the file carries a chat template (or gets Gemma's turns); without one only
    /// raw prompts can be continued.
    pub fn has_chat_template(&self) -> bool {
        self.template.is_ok()
    }

    /// The prompt text for `messages` (chat template with the generation prompt).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        match &self.template {
            Ok(t) => t.render(messages, true),
            Err(e) => Err(MlError::Unsupported(e.clone())),
        }
    }

    /// Token ids of a rendered chat prompt: the template writes BOS itself where the model
    /// wants it, so no special tokens are added (as transformers' `apply_chat_template`).
    pub fn chat_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.render_chat(messages)?, false)
    }

    /// The context length in force for `opts`.
    pub fn context_length(&self, opts: &GenerateOptions) -> usize {
        let own = self.model.context_length();
        opts.context_limit.map_or(own, |c| c.min(own))
    }

    /// Logits of the token that would follow `prompt_ids`, `[vocab]` (one prefill pass on a
    /// fresh cache; nothing is generated). For scoring fixed answers by their likelihood, as
    /// lm-eval-harness does for multiple choice. Fails like [`GgufGenerator::generate_ids`]
    /// on an empty prompt or one that leaves no room in the context.
    pub fn next_token_logits(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Vec<f32>> {
        self.check_prompt(prompt_ids, opts)?;
        let mut cache = self.model.new_cache();
        Ok(self
            .model
            .forward_step(prompt_ids, &mut cache)?
            .to_vec1::<f32>()?)
    }

    /// The context length for `opts`, after checking that `prompt_ids` is not empty and
    /// leaves room for at least one generated token.
    fn check_prompt(&self, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<usize> {
        let context = self.context_length(opts);
        if prompt_ids.is_empty() {
            return Err(MlError::Mismatch(
                "the prompt is empty (no tokens); give some text to continue".into(),
            ));
        }
        if prompt_ids.len() + 1 > context {
            let key = format!("{}.context_length", self.model.architecture());
            let whose = if context < self.model.context_length() {
                format!("the context limit of {context} tokens that was asked for")
            } else {
                format!(
                    "the model's context of {context} tokens ('{key}' in {})",
                    self.path.display()
                )
            };
            return Err(MlError::Mismatch(format!(
                "the prompt has {} tokens, which leaves no room to generate within {whose}; shorten the prompt to at most {} tokens",
                prompt_ids.len(),
                context.saturating_sub(1)
            )));
        }
        Ok(context)
    }

    /// Generates after the prompt `prompt_ids` (see the module docs).
    pub fn generate_ids(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let context = self.check_prompt(prompt_ids, opts)?;
        let mut sampler = Sampler::new(opts);
        let mut cache = self.model.new_cache();
        let mut history = prompt_ids.to_vec();
        let mut tokens = Vec::new();
        let mut stream = TextStream::new(&opts.stop);
        let mut stats = GenerationStats {
            prompt_tokens: prompt_ids.len(),
            ..Default::default()
        };
        let started = Instant::now();
        let mut logits = self.model.forward_step(prompt_ids, &mut cache)?;
        stats.prefill_secs = started.elapsed().as_secs_f64();
        let decode_started = Instant::now();
        let finish = loop {
            if tokens.len() >= opts.max_tokens {
                break FinishReason::MaxTokens;
            }
            let mut l = logits.to_vec1::<f32>()?;
            let next = sampler.sample(&mut l, &history);
            tokens.push(next);
            history.push(next);
            if self.end_ids.contains(&next) {
                break FinishReason::EndToken;
            }
            let text = self.tokenizer.decode(&tokens, true)?;
            if let Some(reason) = stream.push(&text, on_text) {
                break reason;
            }
            if cache.len() + 1 > context {
                break FinishReason::ContextFull;
            }
            if tokens.len() >= opts.max_tokens {
                break FinishReason::MaxTokens;
            }
            logits = self.model.forward_step(&[next], &mut cache)?;
        };
        stats.decode_secs = decode_started.elapsed().as_secs_f64();
        stats.generated_tokens = tokens.len();
        let text = match &finish {
            FinishReason::Stop(_) | FinishReason::Cancelled => stream.emitted_text(),
            _ => {
                let shown: Vec<u32> = tokens
                    .iter()
                    .copied()
                    .filter(|t| !self.end_ids.contains(t))
                    .collect();
                let text = self.tokenizer.decode(&shown, true)?;
                stream.finish(&text, on_text)
            }
        };
        Ok(Generation {
            text,
            prompt_ids: prompt_ids.to_vec(),
            tokens,
            finish,
            stats,
        })
    }
}

impl Generator for GgufGenerator {
    fn name(&self) -> &str {
        &self.name
    }

    fn chat(
        &self,
        messages: &[ChatMessage],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let ids = self.chat_ids(messages)?;
        self.generate_ids(&ids, opts, on_text)
    }

    fn complete(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let ids = self.tokenizer.encode(prompt, true)?;
        self.generate_ids(&ids, opts, on_text)
    }
}

/// Turns the growing decoded text into final pieces for the callback, holding back what
/// may still change (an incomplete character) or become a stop string.
#[derive(Debug)]
struct TextStream<'a> {
    stop: &'a [String],
    /// The text already handed out.
    emitted: String,
    cancelled: bool,
}

impl<'a> TextStream<'a> {
    fn new(stop: &'a [String]) -> Self {
        TextStream {
            stop,
            emitted: String::new(),
            cancelled: false,
        }
    }

    fn emitted_text(&self) -> String {
        self.emitted.clone()
    }

    /// Hands out what is final in `text` (all generated text so far); returns a reason to
    /// end when a stop string appeared or the callback asked to stop.
    fn push(
        &mut self,
        text: &str,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Option<FinishReason> {
        // The earliest stop string wins; the text before it is final.
        let hit = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|(p, _)| *p);
        if let Some((p, s)) = hit {
            self.emit(&text[..p], on_text);
            return Some(if self.cancelled {
                FinishReason::Cancelled
            } else {
                FinishReason::Stop(s.clone())
            });
        }
        let mut end = text.len();
        // A replacement character at the end is a multi-byte character whose remaining
        // bytes are still to come.
        if let Some(p) = text.rfind(|c: char| c != '\u{FFFD}') {
            let after = p + text[p..].chars().next().map_or(0, char::len_utf8);
            if after < text.len() {
                end = after;
            }
        } else {
            end = 0;
        }
        let visible = &text[..end];
        let hold = self
            .stop
            .iter()
            .map(|s| partial_suffix(visible, s))
            .max()
            .unwrap_or(0);
        self.emit(&visible[..visible.len() - hold], on_text);
        self.cancelled.then_some(FinishReason::Cancelled)
    }

    /// Emits the rest of the final `text` at the end of generation; returns the full text.
    fn finish(&mut self, text: &str, on_text: &mut dyn FnMut(&str) -> ControlFlow<()>) -> String {
        self.emit(text, on_text);
        text.to_string()
    }

    /// Hands out `upto` minus what was already handed out. Decoding a longer sequence
    /// normally extends the shorter one's text; where it does not (a tokenizer that
    /// rewrites earlier text), nothing already shown is taken back.
    fn emit(&mut self, upto: &str, on_text: &mut dyn FnMut(&str) -> ControlFlow<()>) {
        if self.cancelled {
            return;
        }
        if let Some(rest) = upto.strip_prefix(self.emitted.as_str()) {
            if !rest.is_empty() {
                if on_text(rest).is_break() {
                    self.cancelled = true;
                }
                self.emitted.push_str(rest);
            }
        }
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&k| stop.is_char_boundary(k))
        .find(|&k| text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(stop: &[&str], steps: &[&str]) -> (Vec<String>, Option<FinishReason>) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stop);
        let mut out = Vec::new();
        let mut reason = None;
        for t in steps {
            reason = s.push(t, &mut |p: &str| {
                out.push(p.to_string());
                ControlFlow::Continue(())
            });
            if reason.is_some() {
                break;
            }
        }
        (out, reason)
    }

    #[test]
    fn stop_string_is_never_shown() {
        let (out, reason) = collect(&["\nUser:"], &["Hi", "Hi\n", "Hi\nUs", "Hi\nUser: x"]);
        assert_eq!(out.concat(), "Hi");
        assert_eq!(reason, Some(FinishReason::Stop("\nUser:".into())));
    }

    #[test]
    fn incomplete_characters_wait() {
        let (out, reason) = collect(&[], &["a\u{FFFD}", "a\u{FFFD}\u{FFFD}", "a東"]);
        assert_eq!(out, vec!["a", "東"]);
        assert_eq!(reason, None);
    }

    #[test]
    fn sampler_is_deterministic_and_greedy_at_zero() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
        let opts = GenerateOptions {
            temperature: 0.9,
            top_p: 0.9,
            top_k: 20,
            seed: 7,
            ..Default::default()
        };
        let draw = |o: &GenerateOptions| {
            let mut s = Sampler::new(o);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&opts), draw(&opts));
        let other = GenerateOptions {
            seed: 8,
            ..opts.clone()
        };
        assert_ne!(draw(&opts), draw(&other));
        let greedy = GenerateOptions::default();
        assert!(draw(&greedy).iter().all(|&t| t == argmax(&logits)));
    }

    #[test]
    fn repetition_penalty_moves_away_from_seen_tokens() {
        let mut s = Sampler::new(&GenerateOptions {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        let mut l = vec![1.0, 0.9, -1.0];
        assert_eq!(s.sample(&mut l, &[0]), 1);
        assert_eq!(l, vec![0.5, 0.9, -1.0]);
    }
}
