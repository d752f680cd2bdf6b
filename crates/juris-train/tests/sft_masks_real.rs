//! Assistant masks with the real tokenizers and chat formats of the preset generators
//! (SmolLM2: its own ChatML template with a default system prompt, byte-level BPE; Gemma 3
//! base: Gemma's turns, SentencePiece): the reply spans line up with the whole
//! conversation's tokens (no token straddles a prompt/reply seam), the prompt part is
//! exactly the token sequence inference feeds the model, and the trained-on tokens decode to
//! the reply and its end-of-turn token. Skipped, saying so, when the models are absent.

use std::path::PathBuf;

use juris_ml::gguf::GgufFile;
use juris_ml::gguf_tokenizer::GgufTokenizer;
use juris_ml::{ChatMessage, ChatTemplate};
use juris_train::chat_data::{encode_conversation, end_ids, select_template};
use juris_train::sft_config::TemplateChoice;

fn model(preset: &str) -> Option<PathBuf> {
    match juris_ml::presets::resolve_model(preset) {
        Ok(p) if p.is_file() => Some(p),
        _ => {
            eprintln!("skipped: model preset '{preset}' is not fetched");
            None
        }
    }
}

fn conversations() -> Vec<Vec<ChatMessage>> {
    let arts = "Articles:\n[1] 5 — Minors\nArticle 5 (1) A minor must obtain consent.";
    vec![
        vec![
            ChatMessage::new(
                "user",
                &format!("Read the law.\n\n{arts}\n\nStatement: A minor may sell land.\n\nIs the statement correct? Answer Yes or No."),
            ),
            ChatMessage::new("assistant", "Yes"),
        ],
        vec![
            ChatMessage::new("user", "Is it void?"),
            ChatMessage::new("assistant", "No"),
        ],
        vec![
            ChatMessage::new("system", "You answer legal questions using only the law articles."),
            ChatMessage::new(
                "user",
                "Law articles:\n[1] art-1 — القانون المدني الأردني\nالمادة 1\nيسمى هذا القانون.\n\nQuestion: متى يعمل هذا القانون المدني؟",
            ),
            ChatMessage::new("assistant", "يعمل هذا القانون المدني اعتبارًا من 1 يناير 1977. [art-1]"),
            ChatMessage::new("user", "And article 2?"),
            ChatMessage::new("assistant", "It covers the matters its words address [art-2]."),
        ],
    ]
}

fn check(preset: &str, choice: TemplateChoice) {
    let Some(path) = model(preset) else { return };
    let g = GgufFile::open(&path).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    let own = ChatTemplate::from_gguf(&g).ok();
    let eot = g
        .usize_opt("tokenizer.ggml.eot_token_id")
        .unwrap()
        .map(|v| v as u32);
    let bos = tok
        .bos_id()
        .map(|b| tok.decode(&[b], false).unwrap())
        .unwrap_or_default();
    let template = select_template(choice, own.as_ref(), &bos).unwrap();
    let ends = end_ids(&tok, eot);
    let tokenize = |s: &str| -> juris_train::Result<Vec<u32>> { Ok(tok.encode(s, false)?) };
    for msgs in conversations() {
        let enc = encode_conversation(&template, &tokenize, &ends, &msgs).unwrap();
        assert_eq!(enc.straddles, 0, "{preset}: a token straddles a seam");
        let ex = &enc.example;
        // The last reply's prompt, as `generate`/`eval-qa` tokenize it.
        let last = msgs.len() - 1;
        let prompt = tok
            .encode(&template.render(&msgs[..last], true).unwrap(), false)
            .unwrap();
        assert_eq!(
            &ex.ids[..prompt.len()],
            &prompt[..],
            "{preset}: prompt differs"
        );
        assert!(ex.targets[prompt.len()] && !ex.targets[prompt.len() - 1]);
        // Each run of targets decodes to a reply and ends with an end-of-turn token.
        let mut runs: Vec<Vec<u32>> = Vec::new();
        let mut on = false;
        for (t, &is) in ex.targets.iter().enumerate() {
            if is && !on {
                runs.push(Vec::new());
            }
            if is {
                runs.last_mut().unwrap().push(ex.ids[t]);
            }
            on = is;
        }
        let replies: Vec<&ChatMessage> = msgs.iter().filter(|m| m.role == "assistant").collect();
        assert_eq!(runs.len(), replies.len(), "{preset}");
        for (run, reply) in runs.iter().zip(replies) {
            assert!(ends.contains(run.last().unwrap()), "{preset}: no end token");
            let text = tok.decode(&run[..run.len() - 1], false).unwrap();
            assert_eq!(text.trim(), reply.content, "{preset}");
        }
    }
}

#[test]
fn smollm2_own_template() {
    check("smollm2", TemplateChoice::Auto);
}

#[test]
fn gemma3_turns() {
    check("gemma3-270m", TemplateChoice::Auto);
    check("gemma3-270m", TemplateChoice::Gemma);
}
