"""Issue 3's open coliee_statute_en (MiniLM) hybrid figure: does any choice made on *train*
lift dev nDCG@10 to the issue's 0.770? Two experiments, each selected on train and reported
on dev:

1. dense side (sentence-transformers all-MiniLM-L6-v2, the model juris's parity tests pin):
   documents embedded as title + text (juris's default), as text only, and as overlapping
   word windows of 96 or 128 words scored by their best window (MaxP);
2. fusion families over juris's own BM25 (the setting `juris tune` chose) and MiniLM runs
   (depth 100): z-score and min-max weighted sums with α on a 0.025 grid, and reciprocal-rank
   fusion with k in {5, 10, 20, 40, 60, 100} and a weight on a 0.05 grid.

usage: bench/.venv/bin/python bench/hybrid_variants.py
       (after bench/hybrid_quality.py built bench/out/hybrid/coliee_statute_en/index with its
       minilm embeddings; needs sentence-transformers)
"""
import collections, json, subprocess, sys
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
D = ROOT.parent / "shared" / "data" / "coliee_statute_en"
INDEX = ROOT / "bench" / "out" / "hybrid" / "coliee_statute_en" / "index"
OUT = ROOT / "bench" / "out" / "hybrid_variants"
if not D.is_dir():
    sys.exit(f"skipped: {D} not found (the evaluation data lives in shared/data)")


def qrels(split):
    q = {}
    for line in open(D / "qrels" / f"{split}.tsv"):
        p = line.rstrip("\n").split("\t")
        if p[0] != "query-id":
            q.setdefault(p[0], {})[p[1]] = int(p[2])
    return q


Q = {s: qrels(s) for s in ["train", "dev"]}


def ndcg(run, qr):
    total = 0.0
    for q, rel in qr.items():
        r = run.get(q, [])[:10]
        dcg = sum((2 ** rel.get(d, 0) - 1) / np.log2(i + 2) for i, d in enumerate(r))
        ideal = sorted(rel.values(), reverse=True)[:10]
        total += dcg / sum((2 ** g - 1) / np.log2(i + 2) for i, g in enumerate(ideal))
    return total / len(qr)


def dense_variants():
    docs = [json.loads(l) for l in open(D / "corpus.jsonl")]
    queries = [json.loads(l) for l in open(D / "queries.jsonl")]
    ids = [d["_id"] for d in docs]
    model = SentenceTransformer(str(ROOT / "models" / "minilm"), device="cpu")
    qv = model.encode([q["text"] for q in queries], batch_size=32, normalize_embeddings=True)

    def evaluate(name, texts, owner):
        dv = model.encode(texts, batch_size=32, normalize_embeddings=True)
        sims = qv @ dv.T
        best = np.full((len(queries), len(docs)), -9.0)
        for j, o in enumerate(owner):
            best[:, o] = np.maximum(best[:, o], sims[:, j])
        run = {q["_id"]: [ids[k] for k in np.argsort(-best[i], kind="stable")[:100]]
               for i, q in enumerate(queries)}
        print(f"dense {name}: train {ndcg(run, Q['train']):.4f} dev {ndcg(run, Q['dev']):.4f}", flush=True)

    full = [(d.get("title", "") + "\n" + d["text"]).strip() for d in docs]
    evaluate("title+text", full, list(range(len(docs))))
    evaluate("text only", [d["text"] for d in docs], list(range(len(docs))))
    for width in (96, 128):
        texts, owner = [], []
        for i, text in enumerate(full):
            words = text.split()
            step = width // 2
            starts = range(0, max(1, len(words) - width + step), step) if len(words) > width else [0]
            for s in starts:
                texts.append(" ".join(words[s:s + width]))
                owner.append(i)
        evaluate(f"MaxP {width} words", texts, owner)


def fusion_families():
    OUT.mkdir(parents=True, exist_ok=True)
    juris = ROOT / "target" / "release" / "juris"
    tuned = json.load(open(INDEX / "tuned.json"))["bm25"]["scorer"]
    common = [str(juris), "-q", "search", "--index", str(INDEX), "--queries", str(D / "queries.jsonl"), "-k", "100"]
    subprocess.run(common + ["--output", str(OUT / "bm25.trec"), "--mode", "bm25", "--scorer", tuned["kind"],
                             "--k1", str(tuned["k1"]), "--b", str(tuned["b"])], check=True)
    subprocess.run(common + ["--output", str(OUT / "dense.trec"), "--mode", "dense", "--model", "minilm"], check=True)

    def load(f):
        r = collections.defaultdict(dict)
        for line in open(f):
            q, _, d, _, s, _ = line.split()
            r[q][d] = float(s)
        return r

    lex, den = load(OUT / "bm25.trec"), load(OUT / "dense.trec")

    def norm(s, how):
        v = np.array(list(s.values()))
        if how == "min-max":
            lo, hi = v.min(), v.max()
            return {k: (x - lo) / max(hi - lo, 1e-9) for k, x in s.items()}, 0.0
        m, sd = v.mean(), v.std() + 1e-9
        z = {k: (x - m) / sd for k, x in s.items()}
        return z, min(z.values())

    def ranks(s):
        return {k: i + 1 for i, (k, _) in enumerate(sorted(s.items(), key=lambda kv: -kv[1]))}

    def score(method, a, qr, k=None):
        run = {}
        for q in qr:
            l, d = lex.get(q, {}), den.get(q, {})
            if method == "rrf":
                lr, dr = ranks(l), ranks(d)
                s = {x: (a / (k + lr[x]) if x in lr else 0.0) + ((1 - a) / (k + dr[x]) if x in dr else 0.0)
                     for x in set(lr) | set(dr)}
            else:
                (ln, lmiss), (dn, dmiss) = norm(l, method) if l else ({}, 0.0), norm(d, method) if d else ({}, 0.0)
                s = {x: a * ln.get(x, lmiss) + (1 - a) * dn.get(x, dmiss) for x in set(ln) | set(dn)}
            run[q] = [x for x, _ in sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
        return ndcg(run, qr)

    print(f"BM25 alone dev {score('min-max', 1.0, Q['dev']):.4f}, dense alone dev {score('min-max', 0.0, Q['dev']):.4f}")
    families = [(m, None, [i / 40 for i in range(41)]) for m in ("z-score", "min-max")]
    families += [("rrf", k, [i / 20 for i in range(21)]) for k in (5, 10, 20, 40, 60, 100)]
    for method, k, grid in families:
        train, a = max((score(method, a, Q["train"], k), a) for a in grid)
        label = method if k is None else f"rrf k={k}"
        print(f"fusion {label}: chosen on train a={a} (train {train:.4f}) -> dev {score(method, a, Q['dev'], k):.4f}", flush=True)


dense_variants()
fusion_families()
