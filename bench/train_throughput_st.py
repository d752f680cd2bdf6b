#!/usr/bin/env python3
"""Training throughput of the PyTorch peer (sentence-transformers + LoRA) on the task that
`juris train retriever` runs, and the side-by-side summary of both (issue 4).

Two commands:

  train      LoRA fine-tuning of a SentenceTransformer (MiniLM) with the contrastive task of
             juris's trainer, for a fixed number of optimizer steps, timing each step:
             per step, `batch_size` training queries, each with one positive (drawn among its
             judged passages), `hard_negatives` hard negatives drawn from the candidates
             juris wrote to negatives-<phase>.jsonl and `random_negatives` random passages
             from the pool in the same file (hard ones missing are made up with random
             ones, as juris does); queries truncated to `query_max_len` tokens and passages
             to `max_len`, each group padded to its longest text; one forward pass over the
             queries and one over the passages; InfoNCE over every passage of the batch
             (in-batch negatives), cosine / temperature, other positives of a query masked
             out; AdamW with linear warmup and decay, gradient clipping. The base model's own
             dropout is off (juris's forward has none); the adapter's dropout is on.
  summarize  reads juris's metrics.jsonl files and this script's JSON files and writes the
             comparison (JSON and a Markdown table).

What a step's clock covers, on both sides: batch building (sampling, tokenization), the
forward and backward passes, the loss read back to the host, clipping and the optimizer
update, with the device synchronized at the end. Steady state: the first `warmup_steps`
steps are left out, the rate is over the steps after them.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import time

# H100 SXM dense peaks (no sparsity), FLOP/s.
PEAKS = {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_task(data_dir, split, negatives_path):
    """Passages (title, newline, text, as juris's trainer reads them), the split's queries
    with their positives, and each query's negatives."""
    doc_ids, doc_texts = [], []
    for d in read_jsonl(os.path.join(data_dir, "corpus.jsonl")):
        title, text = d.get("title") or "", d.get("text") or ""
        doc_ids.append(str(d["_id"]))
        doc_texts.append(f"{title}\n{text}" if title else text)
    pos_of = {d: i for i, d in enumerate(doc_ids)}
    qtext = {str(q["_id"]): q["text"] for q in read_jsonl(os.path.join(data_dir, "queries.jsonl"))}
    judged = {}
    with open(os.path.join(data_dir, "qrels", f"{split}.tsv"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and parts[0] == "query-id":
                continue
            if len(parts) >= 3 and int(float(parts[2])) > 0 and parts[1] in pos_of:
                judged.setdefault(parts[0], set()).add(pos_of[parts[1]])
    queries = [(q, qtext[q], sorted(p)) for q, p in sorted(judged.items()) if q in qtext]
    negs = {}
    for r in read_jsonl(negatives_path):
        negs[r["qid"]] = (
            [pos_of[d] for d in r["hard"] if d in pos_of],
            [pos_of[d] for d in r["random"] if d in pos_of],
        )
    return doc_texts, queries, negs


def add_lora(st, args):
    """LoRA on the linear layers whose names end in a target (PEFT's suffix rule): through
    PEFT (sentence-transformers' add_adapter) when it is installed, else a minimal
    equivalent here. Returns what was used."""
    import torch

    impl = args.lora_impl
    if impl == "auto":
        try:
            import peft  # noqa: F401

            impl = "peft"
        except ImportError:
            impl = "manual"
    if impl == "peft":
        try:
            import peft
            from peft import LoraConfig, TaskType

            st.add_adapter(
                LoraConfig(
                    task_type=TaskType.FEATURE_EXTRACTION,
                    r=args.lora_r,
                    lora_alpha=args.lora_alpha,
                    lora_dropout=args.lora_dropout,
                    target_modules=args.targets,
                )
            )
            impl = f"peft {peft.__version__} (SentenceTransformer.add_adapter)"
        except Exception as e:  # one GPU call: fall back rather than fail
            if args.lora_impl == "peft":
                raise
            print(f"PEFT adapter failed ({e!r}); using the manual LoRA layers", file=sys.stderr)
            impl = "manual"
    if impl == "manual":
        nn = torch.nn

        class LoraLinear(nn.Module):
            def __init__(self, base):
                super().__init__()
                self.base = base
                self.lora_A = nn.Parameter(torch.empty(args.lora_r, base.in_features))
                self.lora_B = nn.Parameter(torch.zeros(base.out_features, args.lora_r))
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                self.drop = nn.Dropout(args.lora_dropout)
                self.scale = args.lora_alpha / args.lora_r

            def forward(self, x):
                return self.base(x) + (self.drop(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

        root = st[0].auto_model
        names = [n for n, m in root.named_modules() if isinstance(m, nn.Linear)]
        for n in names:
            if any(n == t or n.endswith("." + t) for t in args.targets):
                parent_name, _, child = n.rpartition(".")
                parent = root.get_submodule(parent_name) if parent_name else root
                setattr(parent, child, LoraLinear(getattr(parent, child)))
        impl = "manual (PEFT not installed; same math: x W^T + dropout(x) A^T B^T alpha/r)"
    # Only the adapter trains (the base stays frozen, as in juris).
    for n, p in st.named_parameters():
        p.requires_grad = "lora_" in n
    return impl


def cmd_train(args):
    import torch
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    # Strict f32 matrix products, as candle's default (no TF32) on the juris side.
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    if not cuda:
        torch.set_num_threads(max(1, args.threads))

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    try:
        st = SentenceTransformer(args.model, device=args.device, config_kwargs=no_dropout)
    except TypeError:
        st = SentenceTransformer(args.model, device=args.device)
    for m in st.modules():  # whatever config_kwargs did not reach
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    auto = st[0].auto_model
    for k in no_dropout:
        if hasattr(auto.config, k):
            setattr(auto.config, k, 0.0)
    impl = add_lora(st, args)
    st.to(dev)
    st.train()
    attn = getattr(auto.config, "_attn_implementation", None)
    normalizes = type(st[len(st) - 1]).__name__ == "Normalize"
    tok = st.tokenizer
    params = [p for p in st.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    frozen = sum(p.numel() for p in st.parameters() if not p.requires_grad)

    doc_texts, queries, negs = load_task(args.data, args.split, args.negatives)
    steps_per_epoch = math.ceil(len(queries) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warm = math.ceil(args.warmup_ratio * total)

    def lr_factor(step):  # juris's lr_at: linear warmup, then linear decay to 0
        if step < warm:
            return (step + 1) / warm
        return min(1.0, max(0.0, (total - step) / max(1, total - warm)))

    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    def batch(idx):
        q_texts, docs, targets = [], [], []
        for i in idx:
            qid, text, positives = queries[i]
            q_texts.append(text)
            targets.append(len(docs))
            docs.append(rng.choice(positives))
            hard_pool, rand_pool = negs.get(qid, ([], []))
            hard = rng.sample(hard_pool, min(args.hard_negatives, len(hard_pool)))
            k = args.random_negatives + args.hard_negatives - len(hard)
            docs += hard + rng.sample(rand_pool, min(k, len(rand_pool)))
        mask = torch.zeros(len(idx), len(docs))
        for r, i in enumerate(idx):
            pos = set(queries[i][2])
            for c, d in enumerate(docs):
                if d in pos and c != targets[r]:
                    mask[r, c] = -1e9
        return q_texts, [doc_texts[d] for d in docs], torch.tensor(targets), mask

    def embed(feats):
        emb = st(feats)["sentence_embedding"]
        return emb if normalizes else torch.nn.functional.normalize(emb, dim=-1)

    def tokenize(texts, max_len):
        return tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    order, pos_in_order = [], 0
    per_step = []  # (seconds, samples, texts, tokens, padded_tokens)
    losses = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    for step in range(args.steps):
        t0 = time.perf_counter()
        if pos_in_order >= len(order):
            order = list(range(len(queries)))
            rng.shuffle(order)
            pos_in_order = 0
        idx = order[pos_in_order : pos_in_order + args.batch_size]
        pos_in_order += args.batch_size
        q_texts, d_texts, targets, mask = batch(idx)
        qf = tokenize(q_texts, args.query_max_len)
        df = tokenize(d_texts, args.max_len)
        # --bf16: PyTorch's mixed precision (autocast: bf16 matrix products, f32 weights,
        # optimizer state and reductions), the counterpart of juris's precision = "bf16".
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            q = embed({k: v.to(dev, non_blocking=True) for k, v in qf.items()})
            d = embed({k: v.to(dev, non_blocking=True) for k, v in df.items()})
        q, d = q.float(), d.float()
        logits = q @ d.t() / args.temperature + mask.to(dev, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(logits, targets.to(dev, non_blocking=True))
        loss.backward()
        loss_value = loss.item()
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        if not math.isfinite(loss_value):
            sys.exit(f"the loss became {loss_value} at step {step + 1}")
        lens = [qf["attention_mask"].sum(1).tolist(), df["attention_mask"].sum(1).tolist()]
        per_step.append(
            (
                dt,
                len(idx),
                len(lens[0]) + len(lens[1]),
                sum(lens[0]) + sum(lens[1]),
                sum(len(x) * max(x) for x in lens),
            )
        )
        losses.append(loss_value)
    steady = per_step[args.warmup_steps :]
    if not steady:
        sys.exit(f"--steps {args.steps} leaves no step after --warmup-steps {args.warmup_steps}")
    secs = sum(s[0] for s in steady)
    tot = [sum(s[i] for s in steady) for i in range(1, 5)]
    out = {
        "side": "sentence-transformers",
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "versions": {
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
        },
        "lora": impl,
        "attn_implementation": attn,
        "tf32": bool(args.tf32),
        "trainable_params": trainable,
        "frozen_params": frozen,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "measured_steps": len(steady),
        "train_s": secs,
        "samples": tot[0],
        "texts": tot[1],
        "tokens": tot[2],
        "padded_tokens": tot[3],
        "samples_per_s": tot[0] / secs,
        "texts_per_s": tot[1] / secs,
        "tokens_per_s": tot[2] / secs,
        "padded_tokens_per_s": tot[3] / secs,
        "step_ms_median": 1000 * statistics.median(s[0] for s in steady),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_mem_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
        "config": {
            k: getattr(args, k)
            for k in [
                "batch_size", "max_len", "query_max_len", "hard_negatives", "random_negatives",
                "temperature", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "lora_r",
                "lora_alpha", "lora_dropout", "targets", "seed",
            ]
        },
    }
    with open(args.json_out, "w") as f:
        json.dump(out, f, indent=1)
    print(
        f"st: {out['measured_steps']} steps in {secs:.2f}s: {out['samples_per_s']:.1f} samples/s, "
        f"{out['tokens_per_s']:.0f} tokens/s, median step {out['step_ms_median']:.1f} ms "
        f"(lora {impl}, attention {attn}, trainable {trainable})"
    )


def juris_rate(metrics_path, warmup_steps):
    """Steady-state rates from juris's per-step records (cumulative counters): the steps
    after `warmup_steps`."""
    try:
        recs = [r for r in read_jsonl(metrics_path) if "train_s" in r and "loss" in r]
    except (OSError, ValueError):
        return None
    recs.sort(key=lambda r: r["step"])
    base = next((r for r in recs if r["step"] == warmup_steps), None)
    last = recs[-1] if recs else None
    if base is None or last is None or last["step"] <= warmup_steps:
        return None
    secs = last["train_s"] - base["train_s"]
    d = {k: last[k] - base[k] for k in ["samples", "texts", "tokens", "padded_tokens"]}
    steps = [r for r in recs if r["step"] > warmup_steps]
    prev = {r["step"]: r["train_s"] for r in recs}
    step_s = [r["train_s"] - prev[r["step"] - 1] for r in steps if r["step"] - 1 in prev]
    return {
        "side": "juris",
        "measured_steps": last["step"] - warmup_steps,
        "last_step": last["step"],
        "train_s": secs,
        **d,
        "samples_per_s": d["samples"] / secs,
        "texts_per_s": d["texts"] / secs,
        "tokens_per_s": d["tokens"] / secs,
        "padded_tokens_per_s": d["padded_tokens"] / secs,
        "step_ms_median": 1000 * statistics.median(step_s) if step_s else None,
        "first_loss": recs[0]["loss"],
        "last_loss": last["loss"],
    }


def model_flops_per_token(cfg, lora_params):
    """Forward + backward model FLOPs per (non-pad) token of LoRA training on a frozen
    BERT encoder, linear layers only: forward 2·N, backward 2·N for the input gradients
    (frozen weights get no weight gradient), where N = the encoder's linear weights; the
    adapter adds 6 per parameter (forward, input and weight gradients). Attention scores
    (QKᵀ, ·V), embeddings, norms and the loss are left out."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    n_linear = layers * (4 * h * h + 2 * h * i)
    return 4 * n_linear + 6 * lora_params, n_linear


def cmd_summarize(args):
    with open(os.path.join(args.model, "config.json")) as f:
        mcfg = json.load(f)
    h, i, layers = mcfg["hidden_size"], mcfg["intermediate_size"], mcfg["num_hidden_layers"]
    r = args.lora_r
    # Adapter parameters on the 6 linears of each layer (q, k, v, attention out, FFN in, FFN out).
    lora_params = layers * r * (4 * (h + h) + (h + i) + (i + h))
    fpt, n_linear = model_flops_per_token(mcfg, lora_params)
    peak = PEAKS[args.peak]
    groups = {}
    for path in args.juris:
        rate = juris_rate(path, args.warmup_steps)
        groups.setdefault("juris", []).append(
            rate or {"side": "juris", "error": f"{path}: missing, or no step after the warm-up ones"}
        )
    for path in args.st:
        try:
            with open(path) as f:
                groups.setdefault("st", []).append(json.load(f))
        except (OSError, ValueError) as e:
            groups.setdefault("st", []).append({"side": "sentence-transformers", "error": str(e)})
    result = {
        "task": args.task,
        "device": args.device_name,
        "warmup_steps_skipped": args.warmup_steps,
        "mfu_formula": (
            "MFU = tokens/s × F / peak; F = 4·N_linear + 6·N_lora FLOPs per non-pad token "
            f"(N_linear = {n_linear} encoder linear weights, N_lora = {lora_params}; forward 2·N, "
            "backward 2·N for input gradients, no weight gradients for the frozen base; "
            "attention score products, embeddings, norms and the loss not counted)"
        ),
        "flops_per_token": fpt,
        "peak": {"name": args.peak, "flops": peak, "note": "H100 SXM dense; fp32 = CUDA-core FP32"},
        "runs": groups,
    }
    med = {}
    for side, runs in groups.items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            continue
        m = {k: statistics.median(x[k] for x in ok) for k in
             ["samples_per_s", "texts_per_s", "tokens_per_s", "padded_tokens_per_s"]}
        m["tokens_per_sample"] = statistics.median(x["tokens"] / x["samples"] for x in ok)
        m["step_ms_median"] = statistics.median(x["step_ms_median"] for x in ok if x.get("step_ms_median"))
        m["mfu"] = m["tokens_per_s"] * fpt / peak
        m["mfu_vs"] = {k: m["tokens_per_s"] * fpt / v for k, v in PEAKS.items()}
        m["samples_per_s_runs"] = [x["samples_per_s"] for x in ok]
        m["runs_ok"] = len(ok)
        med[side] = m
    result["median"] = med
    if "juris" in med and "st" in med:
        result["ratio_juris_over_st"] = {
            "samples_per_s": med["juris"]["samples_per_s"] / med["st"]["samples_per_s"],
            "tokens_per_s": med["juris"]["tokens_per_s"] / med["st"]["tokens_per_s"],
        }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n### {args.task} ({args.device_name})\n")
    print("| side | runs | samples/s | texts/s | tokens/s (non-pad) | tokens/sample | median step ms | MFU vs " + args.peak + " peak |")
    print("|---|---|---|---|---|---|---|---|")
    for side, name in [("juris", "juris (candle)"), ("st", "sentence-transformers (PyTorch)")]:
        if side in med:
            m = med[side]
            print(f"| {name} | {m['runs_ok']} | {m['samples_per_s']:.1f} | {m['texts_per_s']:.1f} | "
                  f"{m['tokens_per_s']:.0f} | {m['tokens_per_sample']:.1f} | {m['step_ms_median']:.1f} | "
                  f"{100 * m['mfu']:.2f}% |")
        else:
            print(f"| {name} | 0 | — | — | — | — | — | — |")
    for side in med:
        print(f"\n{side} samples/s per run: " + ", ".join(f"{v:.1f}" for v in med[side]["samples_per_s_runs"]))
    if "ratio_juris_over_st" in result:
        rr = result["ratio_juris_over_st"]
        print(f"\nratio juris/ST: {rr['samples_per_s']:.3f} (samples/s), {rr['tokens_per_s']:.3f} (tokens/s); goal ≥ 1.0")
    print(f"\nMFU: {result['mfu_formula']}; peak {args.peak} {peak / 1e12:.1f} TFLOP/s "
          f"({args.task.rsplit(', ', 1)[-1]}; the JSON also gives MFU against the other peaks)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", default="models/minilm")
    t.add_argument("--data", required=True)
    t.add_argument("--split", default="train")
    t.add_argument("--negatives", required=True, help="juris's negatives-<phase>.jsonl")
    t.add_argument("--device", default="cuda")
    t.add_argument("--steps", type=int, default=60)
    t.add_argument("--warmup-steps", type=int, default=10)
    t.add_argument("--epochs", type=int, default=1, help="for the learning-rate schedule's length")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--max-len", type=int, default=128)
    t.add_argument("--query-max-len", type=int, default=64)
    t.add_argument("--hard-negatives", type=int, default=3)
    t.add_argument("--random-negatives", type=int, default=1)
    t.add_argument("--temperature", type=float, default=0.05)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--warmup-ratio", type=float, default=0.1)
    t.add_argument("--max-grad-norm", type=float, default=1.0)
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--lora-alpha", type=float, default=32)
    t.add_argument("--lora-dropout", type=float, default=0.05)
    t.add_argument("--targets", nargs="+", default=[
        "query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"])
    t.add_argument("--lora-impl", choices=["auto", "peft", "manual"], default="auto")
    t.add_argument("--tf32", action="store_true", help="allow TF32 matrix products (off: strict f32)")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast for the encoder passes (juris: precision = \"bf16\")")
    t.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (device cpu)")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--json-out", required=True)
    s = sub.add_parser("summarize")
    s.add_argument("--juris", nargs="*", default=[], help="juris metrics.jsonl files")
    s.add_argument("--st", nargs="*", default=[], help="JSON files of `train`")
    s.add_argument("--model", default="models/minilm")
    s.add_argument("--lora-r", type=int, default=16)
    s.add_argument("--warmup-steps", type=int, default=10)
    s.add_argument("--peak", choices=sorted(PEAKS), default="fp32")
    s.add_argument("--task", default="MiniLM LoRA training")
    s.add_argument("--device-name", default="?")
    s.add_argument("--out", required=True)
    a = p.parse_args()
    cmd_train(a) if a.cmd == "train" else cmd_summarize(a)


if __name__ == "__main__":
    main()
