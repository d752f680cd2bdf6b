//! End-to-end `juris train chat-data` and `juris train generator`: chat data written from a
//! small BEIR folder with the eval-qa / ask prompts, a short QLoRA run on the fetched tiny
//! random model (`models/tinycoder/tiny.gguf`, no chat template: `template = "chatml"`),
//! the adapter and the merged export used by `generate` and `eval-qa`. Bad inputs exit 2
//! with a message naming the file and what is wrong, never a panic.

mod common;

use common::{fails, ok, s, tiny_model as tiny, write_inputs, QRELS};
use std::path::{Path, PathBuf};

const QUERIES: &str = r#"{"_id": "q1", "text": "Is a juristic act contrary to public order void?", "answer": "Y"}
{"_id": "q2", "text": "May a lessee sublease without the consent of the lessor?", "answer": "N"}
{"_id": "q3", "text": "كم يوما إجازة العامل السنوية؟", "answer": "أربعة عشر يوما بأجر كامل.", "lang": "ar"}
{"_id": "q4", "text": "公序良俗に反する法律行為は有効か", "answer": "無効とする。"}
"#;

/// A BEIR folder (`qrels/train.tsv`) in a temporary directory.
fn beir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("qrels")).unwrap();
    write_inputs(&data, QUERIES);
    std::fs::write(data.join("qrels/train.tsv"), QRELS).unwrap();
    (dir, data)
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn chat_data_writes_eval_qa_and_ask_prompts() {
    let (dir, data) = beir();
    let yn = dir.path().join("out/yn.jsonl");
    let out = ok(&[
        "train",
        "chat-data",
        "--data",
        s(&data),
        "--task",
        "yesno",
        "--out",
        s(&yn),
    ]);
    assert!(out.contains("wrote 2 conversations"), "{out}");
    let rows = lines(&yn);
    assert_eq!(rows.len(), 2);
    let m = rows[0]["messages"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    let prompt = m[0]["content"].as_str().unwrap();
    assert!(prompt.ends_with("Answer Yes or No."), "{prompt}");
    assert!(prompt.contains("[1] civil:90 — Public Policy"), "{prompt}");
    assert_eq!(m[1]["content"], "Yes");
    assert_eq!(rows[1]["messages"][1]["content"], "No");

    let ans = dir.path().join("ans.jsonl");
    ok(&[
        "train",
        "chat-data",
        "--data",
        s(&data),
        "--task",
        "answer",
        "--out",
        s(&ans),
    ]);
    let rows = lines(&ans);
    assert_eq!(rows.len(), 2);
    let m = rows[0]["messages"].as_array().unwrap();
    assert_eq!(m[0]["role"], "system");
    assert!(m[1]["content"].as_str().unwrap().contains("in Arabic"));
    assert_eq!(m[2]["content"], "أربعة عشر يوما بأجر كامل. [labour:3]");
}

#[test]
fn chat_data_bad_inputs_exit_2() {
    let (dir, data) = beir();
    let out = dir.path().join("x.jsonl");
    let e = fails(&[
        "train",
        "chat-data",
        "--data",
        s(&dir.path().join("nope")),
        "--task",
        "yesno",
        "--out",
        s(&out),
    ]);
    assert!(e.contains("nope") && e.contains("BEIR folder"), "{e}");
    let e = fails(&[
        "train",
        "chat-data",
        "--data",
        s(&data),
        "--split",
        "dev",
        "--task",
        "yesno",
        "--out",
        s(&out),
    ]);
    assert!(e.contains("dev.tsv"), "{e}");
    // Only free-text answers left: nothing for the Y/N task.
    let text_only: Vec<&str> = QUERIES
        .lines()
        .filter(|l| l.contains("\"q3\"") || l.contains("\"q4\""))
        .collect();
    std::fs::write(data.join("queries.jsonl"), text_only.join("\n")).unwrap();
    let e = fails(&[
        "train",
        "chat-data",
        "--data",
        s(&data),
        "--task",
        "yesno",
        "--out",
        s(&out),
    ]);
    assert!(
        e.contains("--task yesno") && e.contains("--task answer"),
        "{e}"
    );
    assert!(!out.exists());
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("sft.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn generator_config_and_data_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = fails(&["train", "generator", "--config", s(&d.join("missing.toml"))]);
    assert!(e.contains("missing.toml"), "{e}");
    let cfg = write_config(
        d,
        "[model]\ngguf = \"x.gguf\"\nlearning_rate = 3\n[data]\ntrain = \"t.jsonl\"\n[train]\nout = \"o\"\n",
    );
    let e = fails(&["train", "generator", "--config", s(&cfg)]);
    assert!(e.contains("sft.toml") && e.contains("learning_rate"), "{e}");
    let cfg = write_config(
        d,
        &format!(
            "[model]\ngguf = \"{}\"\n[data]\ntrain = \"t.jsonl\"\n[train]\nout = \"o\"\n",
            s(&d.join("none.gguf"))
        ),
    );
    let e = fails(&["train", "generator", "--config", s(&cfg)]);
    assert!(e.contains("none.gguf"), "{e}");
    let Some(model) = tiny() else { return };
    let chat = d.join("chat.jsonl");
    std::fs::write(
        &chat,
        "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n",
    )
    .unwrap();
    let cfg = write_config(
        d,
        &format!(
            "[model]\ngguf = \"{}\"\n[data]\ntrain = \"{}\"\ntemplate = \"chatml\"\n[train]\nout = \"{}\"\n",
            s(&model),
            s(&chat),
            s(&d.join("run"))
        ),
    );
    for extra in [&[][..], &["--check-data"][..]] {
        let mut args = vec!["train", "generator", "--config", s(&cfg)];
        args.extend_from_slice(extra);
        let e = fails(&args);
        assert!(
            e.contains("chat.jsonl:1") && e.contains("messages[0].content"),
            "{e}"
        );
    }
}

#[test]
fn generator_trains_and_its_adapter_and_export_are_usable() {
    let Some(model) = tiny() else { return };
    let (dir, data) = beir();
    let d = dir.path();
    let chat = d.join("yn.jsonl");
    ok(&[
        "train",
        "chat-data",
        "--data",
        s(&data),
        "--task",
        "yesno",
        "--out",
        s(&chat),
    ]);
    let run = d.join("run");
    let cfg = write_config(
        d,
        &format!(
            r#"[model]
gguf = "{}"
base = "quantized"
max_len = 512
[lora]
r = 4
alpha = 8
[data]
train = "{chat}"
dev = "{chat}"
template = "chatml"
[train]
out = "{}"
batch_size = 2
lr = 1e-3
epochs = 3
max_steps = 2
[export]
formats = ["q8_0"]
"#,
            s(&model),
            s(&run),
            chat = s(&chat),
        ),
    );
    let out = ok(&["train", "generator", "--config", s(&cfg), "--check-data"]);
    assert!(out.contains("train: 2 conversations: 2 kept"), "{out}");
    let out = ok(&["train", "generator", "--config", s(&cfg)]);
    assert!(
        out.contains("2 steps") && out.contains("merged-q8_0.gguf"),
        "{out}"
    );
    assert!(out.contains("dev loss before training"), "{out}");
    for f in ["adapter", "best"] {
        assert!(run.join(f).join("adapter_model.safetensors").is_file());
    }
    let merged = run.join("merged-q8_0.gguf");
    assert!(merged.is_file());
    // Two training steps (one per epoch of 2 conversations), dev losses before training,
    // at the end of epoch 1 and at max_steps.
    let records = lines(&run.join("metrics.jsonl"));
    let train: Vec<u64> = records
        .iter()
        .filter(|r| r.get("loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    let dev: Vec<u64> = records
        .iter()
        .filter(|r| r.get("dev").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!((train, dev), (vec![1, 2], vec![0, 1, 2]));

    // The adapter and the merged model serve generate and eval-qa.
    let best = run.join("best");
    let text = ok(&[
        "generate",
        "--model",
        s(&model),
        "--adapter",
        s(&best),
        "--raw",
        "--max-tokens",
        "3",
        "--no-stats",
        "--device",
        "cpu",
        "hello",
    ]);
    assert!(!text.is_empty());
    let idx = d.join("idx");
    ok(&[
        "index",
        "--corpus",
        s(&data.join("corpus.jsonl")),
        "--out",
        s(&idx),
    ]);
    let (queries, qrels) = (data.join("queries.jsonl"), data.join("qrels.tsv"));
    for (m, adapter) in [(s(&model), Some(s(&best))), (s(&merged), None)] {
        let mut args = vec![
            "eval-qa",
            "--index",
            s(&idx),
            "--queries",
            s(&queries),
            "--qrels",
            s(&qrels),
            "--model",
            m,
            "--limit",
            "2",
            "--max-tokens",
            "8",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        let table = ok(&args);
        assert!(table.contains("yes/no accuracy"), "{table}");
    }
    let e = fails(&[
        "generate",
        "--model",
        s(&model),
        "--adapter",
        s(&d.join("no-adapter")),
        "--raw",
        "hi",
    ]);
    assert!(e.contains("no-adapter"), "{e}");
}
