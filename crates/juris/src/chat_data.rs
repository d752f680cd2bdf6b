//! `juris train chat-data`: supervised fine-tuning data made with exactly the prompts
//! `eval-qa` (and `ask`) send, so that a fine-tuned generator is evaluated in the format it
//! was trained on.
//!
//! * `--task yesno` (COLIEE Task 4): one user message, `eval-qa`'s Yes/No prompt
//!   ([`yes_no_message`]) over the query's gold articles, no system message (eval-qa sends
//!   none), and the assistant reply `Yes` or `No` — the words whose first-token logits
//!   eval-qa compares.
//! * `--task answer` (free-text answers): `ask`'s system message and user message
//!   ([`system_message`], [`user_message`]: numbered articles, the question, the answer
//!   language and the request to cite ids in square brackets) over the gold articles, and
//!   the reference answer followed by a citation of each gold article, `[<id>]`, which is
//!   how `ask` and `eval-qa` read citations back.
//!
//! Queries and articles are chosen as eval-qa's `--articles gold` chooses them (judged
//! queries with an answer, in file order; relevant articles in qrels order). Article texts
//! are not cut here: eval-qa cuts them only beyond the model's context, and the trainer
//! drops (and counts) examples longer than its `max_len`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use juris_eval::Qrels;
use juris_index::corpus::{read_corpus_all, CorpusOptions};

use crate::ask::{system_message, user_message, Article};
use crate::eval_qa::{load_items, yes_no_message, Expected, Item};

/// What the assistant learns to answer.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ChatTask {
    /// Yes/No entailment (queries whose answer is Y or N).
    Yesno,
    /// A free-text answer citing the gold articles (queries with a reference answer).
    Answer,
}

/// Arguments of `juris train chat-data`.
#[derive(Args, Debug)]
pub struct ChatDataArgs {
    /// A BEIR folder (corpus.jsonl, queries.jsonl with `answer`, qrels/<split>.tsv).
    #[arg(long)]
    pub data: PathBuf,
    /// Split whose judged queries become conversations.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// yesno (Y/N answers) or answer (reference answers with citations).
    #[arg(long, value_enum)]
    pub task: ChatTask,
    /// Output JSONL of {"messages": [...]} (parent folders are created).
    #[arg(long)]
    pub out: PathBuf,
    /// Language to answer in, overriding each query's `lang` and detection (answer task).
    #[arg(long)]
    pub lang: Option<String>,
    /// Only the first N queries (in file order).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// The citation suffix `ask` expects: each article id in square brackets.
fn cite(reference: &str, articles: &[Article]) -> String {
    let mut out = reference.trim().to_string();
    for a in articles {
        let c = format!("[{}]", a.id);
        if !out.contains(&c) {
            out.push(' ');
            out.push_str(&c);
        }
    }
    out
}

/// The conversation of one item for `task`, or `None` when the item does not fit the task
/// (the other kind of answer, or none of its articles in the corpus).
pub(crate) fn conversation(
    task: ChatTask,
    item: &Item,
    articles: &[Article],
) -> Option<serde_json::Value> {
    if articles.is_empty() {
        return None;
    }
    let msg = |role: &str, content: String| serde_json::json!({"role": role, "content": content});
    let messages = match (task, &item.expected) {
        (ChatTask::Yesno, Expected::YesNo(truth)) => vec![
            msg("user", yes_no_message(&item.text, articles)),
            msg("assistant", if *truth { "Yes" } else { "No" }.to_string()),
        ],
        (ChatTask::Answer, Expected::Text(reference)) => {
            let lang = item
                .lang
                .unwrap_or_else(|| juris_text::lang::detect_lang(&item.text));
            vec![
                msg("system", system_message()),
                msg("user", user_message(&item.text, lang, articles)),
                msg("assistant", cite(reference, articles)),
            ]
        }
        _ => return None,
    };
    Some(serde_json::json!({"id": item.id, "messages": messages}))
}

/// Runs `juris train chat-data`.
pub fn cmd_chat_data(a: ChatDataArgs) -> Result<()> {
    let queries = a.data.join("queries.jsonl");
    let corpus = a.data.join("corpus.jsonl");
    let qrels_path = a.data.join("qrels").join(format!("{}.tsv", a.split));
    for p in [&queries, &corpus, &qrels_path] {
        if !p.is_file() {
            bail!(
                "{}: missing; --data must be a BEIR folder (corpus.jsonl, queries.jsonl with \
                 `answer`, qrels/<split>.tsv) and --split one of its qrels files",
                p.display()
            );
        }
    }
    let qrels = Qrels::read(&qrels_path)?;
    let items = load_items(&queries, &qrels_path, &qrels, a.lang.as_deref(), a.limit)?;
    let docs: HashMap<String, juris_index::corpus::Document> =
        read_corpus_all(&corpus, &CorpusOptions::default())?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
    let mut lines = String::new();
    let (mut written, mut other_kind, mut no_articles, mut missing) = (0usize, 0, 0, 0);
    for item in &items {
        let articles: Vec<Article> = item
            .gold
            .iter()
            .filter_map(|id| {
                let d = docs.get(id);
                missing += usize::from(d.is_none());
                d.map(|d| Article {
                    id: d.id.clone(),
                    title: d.title.clone(),
                    text: d.text.clone(),
                    score: 1.0,
                })
            })
            .collect();
        match conversation(a.task, item, &articles) {
            Some(c) => {
                lines.push_str(&c.to_string());
                lines.push('\n');
                written += 1;
            }
            None if articles.is_empty() => no_articles += 1,
            None => other_kind += 1,
        }
    }
    if written == 0 {
        bail!(
            "none of the {} answered queries of {} fits --task {} ({other_kind} have the \
             other kind of answer, {no_articles} no article in the corpus); Y/N data sets \
             (coliee_statute_*) take --task yesno, reference-answer sets (jordan_law_qa_ar, \
             najiz_faq_ar) --task answer",
            items.len(),
            qrels_path.display(),
            match a.task {
                ChatTask::Yesno => "yesno",
                ChatTask::Answer => "answer",
            }
        );
    }
    write_atomic(&a.out, &lines)?;
    println!(
        "wrote {written} conversations to {} ({} queries of {}: {other_kind} skipped for \
         their kind of answer, {no_articles} for lack of articles; {missing} gold article(s) \
         not in the corpus)",
        a.out.display(),
        items.len(),
        qrels_path.display()
    );
    Ok(())
}

fn write_atomic(out: &Path, text: &str) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("jsonl.tmp-chat");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use juris_text::Lang;

    fn item(expected: Expected) -> Item {
        Item {
            id: "q1".into(),
            text: "A minor may sell land.".into(),
            lang: Some(Lang::En),
            expected,
            gold: vec!["5".into()],
        }
    }

    fn arts() -> Vec<Article> {
        vec![Article {
            id: "5".into(),
            title: "Minors".into(),
            text: "Article 5 A minor needs consent.".into(),
            score: 1.0,
        }]
    }

    #[test]
    fn yes_no_conversation_is_eval_qa_prompt_and_the_word() {
        let c = conversation(ChatTask::Yesno, &item(Expected::YesNo(false)), &arts()).unwrap();
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["role"], "user");
        assert_eq!(
            m[0]["content"].as_str().unwrap(),
            yes_no_message("A minor may sell land.", &arts())
        );
        assert_eq!(m[1]["content"], "No");
        assert!(conversation(ChatTask::Answer, &item(Expected::YesNo(true)), &arts()).is_none());
        assert!(conversation(ChatTask::Yesno, &item(Expected::YesNo(true)), &[]).is_none());
    }

    #[test]
    fn answer_conversation_is_ask_prompt_and_a_cited_reference() {
        let it = item(Expected::Text("It needs consent.".into()));
        let c = conversation(ChatTask::Answer, &it, &arts()).unwrap();
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m[0]["content"].as_str().unwrap(), system_message());
        assert_eq!(
            m[1]["content"].as_str().unwrap(),
            user_message(&it.text, Lang::En, &arts())
        );
        let reply = m[2]["content"].as_str().unwrap();
        assert_eq!(reply, "It needs consent. [5]");
        // What ask reads back: the citation is kept, and scoring ignores it.
        let c = crate::ask::extract_citations(reply, &["5"]);
        assert_eq!(c.kept, vec![0]);
        assert_eq!(crate::ask::strip_citations(reply), "It needs consent.");
        assert_eq!(cite("Void [5].", &arts()), "Void [5].");
    }
}
