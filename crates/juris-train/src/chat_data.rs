//! Chat data for supervised fine-tuning: reading conversations from JSONL
//! (`{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}`, one per
//! line), writing them out as the model's prompt text, tokenizing, and marking which tokens
//! the loss is computed on: every token of every assistant reply, including the end-of-turn
//! token that closes it (so the model learns to stop), and nothing else.
//!
//! Design decision: assistant spans are found by rendering *prefixes* of the conversation
//! with the same template (the turns before reply `i` plus the generation prompt, and the
//! turns up to and including `i`) and tokenizing them, rather than by searching the token
//! stream for marker tokens. The prompt of a reply is then tokenized exactly as `generate`,
//! `ask` and `eval-qa` tokenize it at inference (the whole rendered prompt at once), which
//! is what the model must learn to continue. Each prefix's tokens are checked against the
//! whole conversation's tokens; where a token straddles a boundary (a merge across the
//! prompt/reply seam) the straddling token is counted as part of the reply and the event is
//! counted in [`DataStats::straddles`], so it is visible rather than silent.
//!
//! Examples longer than `max_len` are dropped when the cut would fall inside or before a
//! reply's last target token (a partial reply teaches a wrong stop), and truncated otherwise
//! (only template text after the last reply is lost). With packing, consecutive examples
//! are concatenated into sequences of up to `max_len` tokens (plain causal attention across
//! the packed examples, as transformers' simple packing does).

use std::io::BufRead;
use std::path::Path;

use juris_ml::gguf_tokenizer::GgufTokenizer;
use juris_ml::{ChatMessage, ChatTemplate};
use serde_json::Value;

use crate::error::{io, Result, TrainError};
use crate::sft_config::{SftConfig, TemplateChoice};

/// One conversation read from a chat file.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Line number in the file (1-based), for messages.
    pub line: usize,
    /// The turns, in order.
    pub messages: Vec<ChatMessage>,
}

/// Roles a message may have.
pub const ROLES: &[&str] = &["system", "user", "assistant"];

/// Reads every conversation of `path`. Blank lines are skipped; anything else that is not a
/// well-formed conversation with at least one assistant turn is an error naming the file,
/// the line and the field.
pub fn read_chat_jsonl(path: &Path) -> Result<Vec<Conversation>> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            parse_conversation(&line, n + 1).map_err(|what| {
                TrainError::Data(format!("{}:{}: {what}", path.display(), n + 1))
            })?,
        );
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no conversations; expected JSON lines like {{\"messages\": [{{\"role\": \
             \"user\", \"content\": \"...\"}}, {{\"role\": \"assistant\", \"content\": \
             \"...\"}}]}} (juris train chat-data writes them)",
            path.display()
        )));
    }
    Ok(out)
}

/// One line → a conversation, or what is wrong with it (the caller adds file and line).
pub fn parse_conversation(line: &str, line_no: usize) -> std::result::Result<Conversation, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object with a 'messages' field".into());
    };
    let msgs = match obj.get("messages") {
        None => return Err("field 'messages' is missing".into()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "field 'messages' must be an array of messages, not {}",
                kind(other)
            ))
        }
    };
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!(
                "field 'messages[{i}]' must be an object with 'role' and 'content', not {}",
                kind(m)
            ));
        };
        let role = match m.get("role") {
            None => return Err(format!("field 'messages[{i}].role' is missing")),
            Some(Value::String(r)) => r.as_str(),
            Some(other) => {
                return Err(format!(
                    "field 'messages[{i}].role' must be a string, not {}",
                    kind(other)
                ))
            }
        };
        if !ROLES.contains(&role) {
            return Err(format!(
                "field 'messages[{i}].role': unknown role '{role}' (use system, user or \
                 assistant)"
            ));
        }
        if role == "system" && i > 0 {
            return Err(format!(
                "field 'messages[{i}].role': a system message may only come first"
            ));
        }
        let content = match m.get("content") {
            None => return Err(format!("field 'messages[{i}].content' is missing")),
            Some(Value::String(c)) => c.as_str(),
            Some(other) => {
                return Err(format!(
                    "field 'messages[{i}].content' must be a string, not {}",
                    kind(other)
                ))
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(
            "field 'messages': no assistant turn, so there is nothing to learn; add a \
             message with role 'assistant'"
                .into(),
        );
    }
    Ok(Conversation {
        line: line_no,
        messages,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// ChatML as a Jinja template (the format of SmolLM2, Qwen and many others).
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + \
                      message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if \
                      add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// End-of-turn tokens of the common chat formats (as generation stops at them): the last
/// one inside a reply's rendering closes the reply and is trained on.
pub const END_OF_TURN_TOKENS: &[&str] = &[
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
];

/// The template `choice` selects: the model's own (`own`, as read from the GGUF file) for
/// `auto`, else a built-in format. `bos_token` is the text of the model's BOS token (Gemma's
/// format starts with it).
pub fn select_template(
    choice: TemplateChoice,
    own: Option<&ChatTemplate>,
    bos_token: &str,
) -> Result<ChatTemplate> {
    Ok(match choice {
        TemplateChoice::Auto => own.cloned().ok_or_else(|| {
            TrainError::Data(
                "the model file has no chat template ('tokenizer.chat_template'); set [data] \
                 template = \"chatml\" or \"gemma\" in the config"
                    .into(),
            )
        })?,
        TemplateChoice::Gemma => ChatTemplate::GemmaTurns {
            bos_token: bos_token.to_string(),
        },
        TemplateChoice::Chatml => ChatTemplate::Jinja {
            source: CHATML.into(),
            bos_token: bos_token.to_string(),
            eos_token: String::new(),
        },
    })
}

/// A tokenized training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `targets[t]`: token `t` is predicted by the loss (from position `t - 1`); never true
    /// at position 0.
    pub targets: Vec<bool>,
}

impl Example {
    /// Number of tokens the loss is computed on.
    pub fn target_count(&self) -> usize {
        self.targets.iter().skip(1).filter(|&&t| t).count()
    }

    /// Position just past the last target token (0 when there is none).
    fn target_end(&self) -> usize {
        self.targets.iter().rposition(|&t| t).map_or(0, |p| p + 1)
    }
}

/// An encoded conversation and how well its spans lined up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The sequence and its targets.
    pub example: Example,
    /// Boundaries where a token straddled the prompt/reply seam.
    pub straddles: usize,
}

/// Renders `messages` with `template`, tokenizes it with `tokenize` (no special tokens
/// added: templates write BOS themselves), and marks each assistant reply's tokens, up to
/// and including the last of `end_ids` in the reply's rendering (the end-of-turn token).
pub fn encode_conversation(
    template: &ChatTemplate,
    tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
    end_ids: &[u32],
    messages: &[ChatMessage],
) -> Result<Encoded> {
    let full = template.render(messages, false)?;
    let ids = tokenize(&full)?;
    let mut targets = vec![false; ids.len()];
    let mut straddles = 0usize;
    let mismatch = |i: usize, which: &str| {
        TrainError::Data(format!(
            "the chat template renders the conversation {which} assistant turn {i} \
             differently from the whole conversation (it rewrites earlier turns), so the \
             reply's tokens cannot be located; choose [data] template = \"chatml\" or \
             \"gemma\""
        ))
    };
    // Tokens of `prefix` that line up with the start of `ids`, and whether a token straddled
    // the end of `prefix`.
    let aligned = |prefix: &str| -> Result<(usize, bool)> {
        let p = tokenize(prefix)?;
        let common = p.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        Ok((common, common < p.len()))
    };
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = template.render(&messages[..i], true)?;
        let through = template.render(&messages[..=i], false)?;
        if !full.starts_with(&before) {
            return Err(mismatch(i, "before"));
        }
        if !full.starts_with(&through) || through.len() < before.len() {
            return Err(mismatch(i, "through"));
        }
        let (start, cut_start) = aligned(&before)?;
        let (mut end, cut_end) = aligned(&through)?;
        straddles += usize::from(cut_start) + usize::from(cut_end);
        if cut_end {
            // The straddling token holds the reply's last characters.
            end = (end + 1).min(ids.len());
        }
        let end = (start..end)
            .rev()
            .find(|&j| end_ids.contains(&ids[j]))
            .map_or(end, |j| j + 1);
        if end <= start {
            return Err(TrainError::Data(format!(
                "assistant turn {i} renders to no tokens"
            )));
        }
        for t in targets.iter_mut().take(end).skip(start.max(1)) {
            *t = true;
        }
    }
    Ok(Encoded {
        example: Example { ids, targets },
        straddles,
    })
}

/// Counts of a prepared data set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Conversations read.
    pub conversations: usize,
    /// Conversations kept (whole or with template text after the last reply cut).
    pub kept: usize,
    /// Conversations dropped because a reply did not fit in `max_len` tokens.
    pub dropped_too_long: usize,
    /// Conversations cut after their last reply to fit.
    pub truncated: usize,
    /// Prompt/reply boundaries where a token straddled the seam.
    pub straddles: usize,
    /// Training sequences (after packing).
    pub sequences: usize,
    /// Tokens in all sequences.
    pub tokens: usize,
    /// Tokens the loss is computed on.
    pub target_tokens: usize,
    /// The longest sequence.
    pub max_tokens: usize,
}

impl DataStats {
    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "{} conversations: {} kept, {} dropped (a reply longer than max_len), {} cut \
             after the last reply; {} sequences, {} tokens ({} trained on), longest {}{}",
            self.conversations,
            self.kept,
            self.dropped_too_long,
            self.truncated,
            self.sequences,
            self.tokens,
            self.target_tokens,
            self.max_tokens,
            if self.straddles > 0 {
                format!(
                    "; {} prompt/reply seams fell inside a token",
                    self.straddles
                )
            } else {
                String::new()
            }
        )
    }
}

/// Encodes every conversation, drops or cuts those longer than `max_len`, and packs them
/// when asked. The sequences keep file order (packing is greedy in file order).
pub fn prepare(
    conversations: &[Conversation],
    template: &ChatTemplate,
    tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
    end_ids: &[u32],
    max_len: usize,
    packing: bool,
    source: &Path,
) -> Result<(Vec<Example>, DataStats)> {
    let mut stats = DataStats {
        conversations: conversations.len(),
        ..Default::default()
    };
    let mut kept: Vec<Example> = Vec::with_capacity(conversations.len());
    for c in conversations {
        let enc = encode_conversation(template, tokenize, end_ids, &c.messages)
            .map_err(|e| TrainError::Data(format!("{}:{}: {e}", source.display(), c.line)))?;
        stats.straddles += enc.straddles;
        let mut ex = enc.example;
        if ex.ids.len() > max_len {
            if ex.target_end() > max_len {
                stats.dropped_too_long += 1;
                continue;
            }
            ex.ids.truncate(max_len);
            ex.targets.truncate(max_len);
            stats.truncated += 1;
        }
        if ex.target_count() == 0 {
            stats.dropped_too_long += 1;
            continue;
        }
        kept.push(ex);
    }
    stats.kept = kept.len();
    let sequences = if packing { pack(kept, max_len) } else { kept };
    stats.sequences = sequences.len();
    stats.tokens = sequences.iter().map(|e| e.ids.len()).sum();
    stats.target_tokens = sequences.iter().map(Example::target_count).sum();
    stats.max_tokens = sequences.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    Ok((sequences, stats))
}

/// Token ids that close a turn for `tok`: EOS, the file's end-of-turn id (`eot`, from
/// `tokenizer.ggml.eot_token_id`) and the [`END_OF_TURN_TOKENS`] it knows.
pub fn end_ids(tok: &GgufTokenizer, eot: Option<u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = tok.eos_id().into_iter().chain(eot).collect();
    ids.extend(END_OF_TURN_TOKENS.iter().filter_map(|t| tok.token_to_id(t)));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The training and dev sets of a config, tokenized for a model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The template used.
    pub template: ChatTemplate,
    /// Training sequences (packed when the config asks), in file order.
    pub train: Vec<Example>,
    /// Their counts.
    pub train_stats: DataStats,
    /// Dev sequences (never packed) and their counts.
    pub dev: Option<(Vec<Example>, DataStats)>,
}

/// Reads and tokenizes `[data] train` and `dev` of `cfg` for a model with tokenizer `tok`,
/// own template `own` and end-of-turn id `eot`. Fails when no training example fits.
pub fn prepare_files(
    cfg: &SftConfig,
    tok: &GgufTokenizer,
    own: Option<&ChatTemplate>,
    eot: Option<u32>,
) -> Result<Prepared> {
    let bos = match tok.bos_id() {
        Some(b) => tok.decode(&[b], false)?,
        None => String::new(),
    };
    let template = select_template(cfg.data.template, own, &bos)?;
    let ends = end_ids(tok, eot);
    let tokenize = |s: &str| -> Result<Vec<u32>> { Ok(tok.encode(s, false)?) };
    let max_len = cfg.model.max_len;
    let train_convs = read_chat_jsonl(&cfg.data.train)?;
    let (train, train_stats) = prepare(
        &train_convs,
        &template,
        &tokenize,
        &ends,
        max_len,
        cfg.data.packing,
        &cfg.data.train,
    )?;
    if train.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no conversation fits [model] max_len = {max_len} tokens ({}); raise max_len",
            cfg.data.train.display(),
            train_stats.summary()
        )));
    }
    let dev = match &cfg.data.dev {
        Some(p) => {
            let convs = read_chat_jsonl(p)?;
            Some(prepare(
                &convs, &template, &tokenize, &ends, max_len, false, p,
            )?)
        }
        None => None,
    };
    Ok(Prepared {
        template,
        train,
        train_stats,
        dev,
    })
}

/// Greedy packing in order: each example joins the current sequence while it fits.
pub fn pack(examples: Vec<Example>, max_len: usize) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut cur = Example {
        ids: Vec::new(),
        targets: Vec::new(),
    };
    for ex in examples {
        if !cur.ids.is_empty() && cur.ids.len() + ex.ids.len() > max_len {
            out.push(std::mem::replace(
                &mut cur,
                Example {
                    ids: Vec::new(),
                    targets: Vec::new(),
                },
            ));
        }
        cur.ids.extend_from_slice(&ex.ids);
        cur.targets.extend_from_slice(&ex.targets);
    }
    if !cur.ids.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in tokenizer: each marker is one token (ids 1000+), every other character is
    /// its code point. Prefixes of a text tokenize to prefixes of its tokens, as with real
    /// tokenizers at turn boundaries.
    const MARKERS: &[&str] = &[
        "<|im_start|>",
        "<|im_end|>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
    ];

    fn toy(text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (k, m) in MARKERS.iter().enumerate() {
                if let Some(r) = rest.strip_prefix(m) {
                    out.push(1000 + k as u32);
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().unwrap();
            out.push(c as u32);
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }

    fn detok(ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| {
                if i >= 1000 {
                    MARKERS[(i - 1000) as usize].to_string()
                } else {
                    char::from_u32(i).unwrap().to_string()
                }
            })
            .collect()
    }

    /// The trained-on text of each reply, as separate strings.
    fn target_runs(ex: &Example) -> Vec<String> {
        let mut runs = Vec::new();
        let mut cur: Vec<u32> = Vec::new();
        for (t, &on) in ex.targets.iter().enumerate() {
            if on {
                cur.push(ex.ids[t]);
            } else if !cur.is_empty() {
                runs.push(detok(&std::mem::take(&mut cur)));
            }
        }
        if !cur.is_empty() {
            runs.push(detok(&cur));
        }
        runs
    }

    fn conv() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Is it void?"),
            ChatMessage::new("assistant", "Yes"),
            ChatMessage::new("user", "Why?"),
            ChatMessage::new("assistant", "Art. 90 [90]"),
        ]
    }

    const END: &[u32] = &[1001, 1004];

    #[test]
    fn chatml_masks_cover_each_reply_and_its_end_token() {
        let t = select_template(TemplateChoice::Chatml, None, "").unwrap();
        let enc = encode_conversation(&t, &toy, END, &conv()).unwrap();
        assert_eq!(enc.straddles, 0);
        assert_eq!(
            target_runs(&enc.example),
            vec!["Yes<|im_end|>", "Art. 90 [90]<|im_end|>"]
        );
        // Everything else — system, user turns, role headers, the newline after each end
        // token — is context only.
        let text = detok(&enc.example.ids);
        assert!(text.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
        assert!(text.ends_with("<|im_end|>\n"));
        assert!(!enc.example.targets[enc.example.ids.len() - 1]);
        assert_eq!(
            enc.example.target_count(),
            "Yes".len() + 1 + "Art. 90 [90]".len() + 1
        );
    }

    #[test]
    fn gemma_masks_fold_the_system_message_and_cover_replies() {
        let t = select_template(TemplateChoice::Gemma, None, "<bos>").unwrap();
        let enc = encode_conversation(&t, &toy, END, &conv()).unwrap();
        assert_eq!(
            target_runs(&enc.example),
            vec!["Yes<end_of_turn>", "Art. 90 [90]<end_of_turn>"]
        );
        let text = detok(&enc.example.ids);
        assert!(
            text.starts_with("<bos><start_of_turn>user\nBe brief.\n\nIs it void?<end_of_turn>\n"),
            "{text}"
        );
        // The prompt of the last reply is exactly what inference feeds the model.
        let prompt = toy(&t.render(&conv()[..4], true).unwrap()).unwrap();
        assert_eq!(&enc.example.ids[..prompt.len()], &prompt[..]);
        assert!(enc.example.targets[prompt.len()]);
        assert!(!enc.example.targets[prompt.len() - 1]);
    }

    #[test]
    fn a_jinja_template_with_a_default_system_prompt() {
        // SmolLM2's shape: a default system turn when the conversation has none.
        let source = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::Jinja {
            source: source.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let msgs = vec![
            ChatMessage::new("user", "Q"),
            ChatMessage::new("assistant", "No"),
        ];
        let enc = encode_conversation(&t, &toy, END, &msgs).unwrap();
        assert_eq!(target_runs(&enc.example), vec!["No<|im_end|>"]);
        assert!(detok(&enc.example.ids).contains("You are helpful."));
    }

    #[test]
    fn a_straddling_token_joins_the_reply_and_is_counted() {
        // A tokenizer that merges "\nY" into one token, across the prompt/reply seam.
        let merging = |s: &str| -> Result<Vec<u32>> {
            let ids = toy(s)?;
            let mut out = Vec::new();
            let mut i = 0;
            while i < ids.len() {
                if ids[i] == '\n' as u32 && ids.get(i + 1) == Some(&('Y' as u32)) {
                    out.push(2000);
                    i += 2;
                } else {
                    out.push(ids[i]);
                    i += 1;
                }
            }
            Ok(out)
        };
        let t = select_template(TemplateChoice::Chatml, None, "").unwrap();
        let msgs = vec![
            ChatMessage::new("user", "Q"),
            ChatMessage::new("assistant", "Yes"),
        ];
        let enc = encode_conversation(&t, &merging, END, &msgs).unwrap();
        assert_eq!(enc.straddles, 1);
        let on: Vec<u32> = enc
            .example
            .ids
            .iter()
            .zip(&enc.example.targets)
            .filter(|(_, &t)| t)
            .map(|(&i, _)| i)
            .collect();
        assert_eq!(on, vec![2000, 'e' as u32, 's' as u32, 1001]);
    }

    #[test]
    fn a_template_that_rewrites_history_is_refused() {
        // Drops earlier assistant turns (as some reasoning templates do).
        let source = "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::Jinja {
            source: source.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let e = encode_conversation(&t, &toy, END, &conv()[1..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("template = \"chatml\""), "{e}");
    }

    fn convs(n: usize, reply: &str) -> Vec<Conversation> {
        (0..n)
            .map(|i| Conversation {
                line: i + 1,
                messages: vec![
                    ChatMessage::new("user", &format!("question {i}")),
                    ChatMessage::new("assistant", reply),
                ],
            })
            .collect()
    }

    #[test]
    fn long_examples_are_dropped_or_cut_and_short_ones_packed() {
        let t = select_template(TemplateChoice::Chatml, None, "").unwrap();
        let one = encode_conversation(&t, &toy, END, &convs(1, "ok")[0].messages)
            .unwrap()
            .example;
        let n = one.ids.len();
        let src = Path::new("c.jsonl");
        // Exactly fits.
        let (ex, st) = prepare(&convs(3, "ok"), &t, &toy, END, n, false, src).unwrap();
        assert_eq!((ex.len(), st.dropped_too_long, st.truncated), (3, 0, 0));
        // One token less: only the "\n" after <|im_end|> is lost.
        let (ex, st) = prepare(&convs(3, "ok"), &t, &toy, END, n - 1, false, src).unwrap();
        assert_eq!((ex.len(), st.dropped_too_long, st.truncated), (3, 0, 3));
        assert_eq!(ex[0].target_count(), 3);
        // Two less: the end token would be cut: dropped.
        let (ex, st) = prepare(&convs(3, "ok"), &t, &toy, END, n - 2, false, src).unwrap();
        assert_eq!((ex.len(), st.dropped_too_long), (0, 3));
        assert!(st.summary().contains("3 dropped"), "{}", st.summary());
        // Packing: two per sequence at 2n + 1 tokens.
        let (ex, st) = prepare(&convs(5, "ok"), &t, &toy, END, 2 * n + 1, true, src).unwrap();
        assert_eq!(ex.len(), 3);
        assert_eq!(st.sequences, 3);
        assert_eq!(st.target_tokens, 5 * 3);
        assert_eq!(ex[0].ids.len(), 2 * n);
        assert_eq!(ex[2].ids.len(), n);
    }

    fn parse_err(line: &str) -> String {
        parse_conversation(line, 1).unwrap_err()
    }

    #[test]
    fn schema_errors_name_the_field() {
        let cases = [
            ("{not json", "not valid JSON"),
            ("[1, 2]", "'messages'"),
            ("{\"msgs\": []}", "field 'messages' is missing"),
            ("{\"messages\": \"hi\"}", "field 'messages' must be an array"),
            ("{\"messages\": [3]}", "field 'messages[0]' must be an object"),
            (
                "{\"messages\": [{\"content\": \"x\"}]}",
                "field 'messages[0].role' is missing",
            ),
            (
                "{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}",
                "field 'messages[0].role' must be a string",
            ),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"bot\", \"content\": \"y\"}]}",
                "field 'messages[1].role': unknown role 'bot'",
            ),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": [\"x\"]}]}",
                "field 'messages[0].content' must be a string, not an array",
            ),
            (
                "{\"messages\": [{\"role\": \"user\"}]}",
                "field 'messages[0].content' is missing",
            ),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
                "no assistant turn",
            ),
            ("{\"messages\": []}", "no assistant turn"),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}",
                "field 'messages[1].role': a system message may only come first",
            ),
        ];
        for (line, want) in cases {
            let e = parse_err(line);
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("chat.jsonl");
        let good = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": 7}"#;
        std::fs::write(&p, format!("{good}\n\n{good}\n{{\"messages\": 5}}\n")).unwrap();
        let e = read_chat_jsonl(&p).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}:4:", p.display())) && e.contains("'messages'"),
            "{e}"
        );
        std::fs::write(&p, "\n  \n").unwrap();
        let e = read_chat_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("no conversations"), "{e}");
        std::fs::write(&p, format!("{good}\n\n{good}\n")).unwrap();
        let c = read_chat_jsonl(&p).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].line, c[1].line), (1, 3));
        let e = read_chat_jsonl(&dir.path().join("missing.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.jsonl"), "{e}");
    }
}
