//! Chat prompts: turns a conversation ([`ChatMessage`]s) into the exact text a model was
//! trained on, by rendering the model's own Jinja template (`tokenizer.chat_template` in the
//! GGUF file) with minijinja.
//!
//! The environment follows transformers' `apply_chat_template`, our reference for what a
//! template means: `trim_blocks` and `lstrip_blocks` on, the variables `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`, a `raise_exception(msg)` function,
//! Python string methods (`.strip()`, `.startswith()`, ...) through minijinja-contrib's
//! pycompat, and `strftime_now` (Llama 3.x templates put the date in the system prompt).
//!
//! Files without a template: Gemma 3 base files get Gemma's turn format (the one its
//! instruction-tuned siblings ship), others are refused with an error that says to pass a
//! raw prompt instead.

use serde::Serialize;

use crate::error::{MlError, Result};
use crate::gguf::GgufFile;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// How a model's conversations are written out.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// A Jinja template from the file.
    Jinja {
        /// Template source.
        source: String,
        /// Text of the BOS token (the `bos_token` variable).
        bos_token: String,
        /// Text of the EOS token (the `eos_token` variable).
        eos_token: String,
    },
    /// Gemma's turn format, for Gemma files that carry no template:
    /// `<bos><start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n`.
    GemmaTurns {
        /// Text of the BOS token.
        bos_token: String,
    },
}

const TEMPLATE_KEY: &str = "tokenizer.chat_template";

impl ChatTemplate {
    /// The template of `g`: its `tokenizer.chat_template`, Gemma's turn format for a
    /// `gemma3` file without one, and otherwise an error that names the file and the key.
    pub fn from_gguf(g: &GgufFile) -> Result<ChatTemplate> {
        let tokens = g.string_array_opt("tokenizer.ggml.tokens")?;
        let token_text = |key: &str| -> Result<String> {
            let id = g.usize_opt(key)?;
            Ok(match (id, &tokens) {
                (Some(i), Some(t)) => t.get(i).map(|s| s.to_string()).unwrap_or_default(),
                _ => String::new(),
            })
        };
        let bos_token = token_text("tokenizer.ggml.bos_token_id")?;
        let eos_token = token_text("tokenizer.ggml.eos_token_id")?;
        match g.string_opt(TEMPLATE_KEY)? {
            Some(source) if !source.trim().is_empty() => Ok(ChatTemplate::Jinja {
                source: source.to_string(),
                bos_token,
                eos_token,
            }),
            _ if g.architecture()? == "gemma3" => Ok(ChatTemplate::GemmaTurns { bos_token }),
            _ => Err(MlError::Unsupported(format!(
                "{}: the file has no chat template ('{TEMPLATE_KEY}'), so a conversation cannot be formatted for it; pass a raw prompt instead (juris generate --raw)",
                g.path().display()
            ))),
        }
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, ending where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatTemplate::Jinja {
                source,
                bos_token,
                eos_token,
            } => render_jinja(
                source,
                messages,
                add_generation_prompt,
                bos_token,
                eos_token,
            ),
            ChatTemplate::GemmaTurns { bos_token } => {
                Ok(render_gemma(messages, add_generation_prompt, bos_token))
            }
        }
    }
}

fn render_jinja(
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    use minijinja::{context, Environment, Error, ErrorKind};
    let fail = |what: &str, e: Error| {
        // minijinja's Display omits the cause chain; the detail names the template line.
        let mut msg = format!("chat template ('{TEMPLATE_KEY}'): {what}: {e}");
        if let Some(d) = e.detail() {
            if !msg.contains(d) {
                msg.push_str(&format!(" ({d})"));
            }
        }
        MlError::Unsupported(msg)
    };
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env.add_template("chat", source)
        .map_err(|e| fail("cannot be parsed", e))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| fail("cannot be loaded", e))?;
    tmpl.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| fail("rendering failed", e))
}

/// Gemma's format: roles `user` and `model`, a system message folded into the first user
/// turn (as Gemma 3's own template does).
fn render_gemma(messages: &[ChatMessage], add_generation_prompt: bool, bos_token: &str) -> String {
    let mut out = String::from(bos_token);
    let mut system: Option<&str> = None;
    for (i, m) in messages.iter().enumerate() {
        if i == 0 && m.role == "system" {
            system = Some(m.content.trim());
            continue;
        }
        let role = if m.role == "assistant" {
            "model"
        } else {
            &m.role
        };
        out.push_str("<start_of_turn>");
        out.push_str(role);
        out.push('\n');
        if let Some(s) = system.take() {
            out.push_str(s);
            out.push_str("\n\n");
        }
        out.push_str(m.content.trim());
        out.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        out.push_str("<start_of_turn>model\n");
    }
    out
}

/// Today's date (UTC) for templates that call `strftime_now(fmt)`; supports the fields
/// such templates use (`%d %b %B %Y %m %y %%`), leaving others as written.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m as usize).saturating_sub(1).min(11)];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }

    #[test]
    fn hf_style_template_features() {
        let source = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}\n{{ m.role }}: {{ m['content'] | trim }}{% if not loop.last %}|{% endif %}{% endfor %}{% if add_generation_prompt %} >{% endif %}{{ ' x '.strip() }}";
        let t = ChatTemplate::Jinja {
            source: source.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        let msgs = [
            ChatMessage::new("user", " hi "),
            ChatMessage::new("assistant", "yo"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<s>user: hi|assistant: yo >x"
        );
        let err = t
            .render(&[ChatMessage::new("system", "s")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no system"), "{err}");
    }

    #[test]
    fn gemma_turns() {
        let t = ChatTemplate::GemmaTurns {
            bos_token: "<bos>".into(),
        };
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello"),
            ChatMessage::new("user", "Bye"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
