"""Offline weighted fusion of two or more ranked lists (BM25 and/or dense TREC runs), to see
what an ensemble of more signals than `juris search --mode hybrid`'s two could reach.

Each run is normalized per query by z-score (population σ); a document missing from a run gets
that run's lowest normalized score — juris's z-score fusion. Weights range over a simplex grid
(--step, default 0.05), are chosen on the train qrels by MRR@10 and reported on dev; the best
weights on dev are printed too, as a ceiling only (choosing on dev and reporting dev is not a
result). Plain Python, no dependencies.

Runs: TREC files of every train and dev query, e.g. for jordan_law_qa_ar
    juris index --corpus D/corpus.jsonl --out idx --lang ar --analyzer-ar ar-snowball
    juris search --index idx --queries D/queries.jsonl --output bm25.trec -k 100 \\
        --scorer bm25plus --k1 1.5 --b 0.5
    juris embed --index idx --model e5-small --max-len 256 --name ft --adapter ADAPTER
    juris search --index idx --queries D/queries.jsonl --output ft.trec -k 100 --mode dense --model ft

usage: python3 bench/fusion_offline.py --data D [--step 0.05] RUN.trec RUN.trec [RUN.trec ...]
"""
import argparse
import collections
import math
from pathlib import Path


def read_run(path):
    run = collections.defaultdict(list)
    for line in open(path, encoding="utf-8"):
        qid, _, doc, _, score, _ = line.split()
        run[qid].append((doc, float(score)))
    return run


def read_qrels(path):
    rel = collections.defaultdict(set)
    with open(path, encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            qid, doc, grade = line.split()[:3]
            if int(grade) > 0:
                rel[qid].add(doc)
    return rel


def zscore(ranked):
    s = [x for _, x in ranked]
    mean = sum(s) / len(s)
    sd = math.sqrt(sum((x - mean) ** 2 for x in s) / len(s)) or 1e-9
    z = {d: (x - mean) / sd for d, x in ranked}
    return z, min(z.values())


def prepare(runs, qids):
    """Per query: the union of documents and each run's normalized column over it."""
    out = {}
    for q in qids:
        normed = [zscore(r[q]) if r.get(q) else ({}, 0.0) for r in runs]
        docs = sorted(set().union(*(z.keys() for z, _ in normed)))
        out[q] = (docs, [[z.get(d, low) for d in docs] for z, low in normed])
    return out


def mrr10(prepared, rel, weights):
    total = 0.0
    for q, (docs, cols) in prepared.items():
        fused = [sum(w * c[i] for w, c in zip(weights, cols)) for i in range(len(docs))]
        top = sorted(range(len(docs)), key=lambda i: -fused[i])[:10]
        total += next((1.0 / (r + 1) for r, i in enumerate(top) if docs[i] in rel[q]), 0.0)
    return total / max(1, len(prepared))


def simplex(n, steps):
    if n == 1:
        yield (steps,)
        return
    for a in range(steps + 1):
        for rest in simplex(n - 1, steps - a):
            yield (a,) + rest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="BEIR folder with qrels/train.tsv and qrels/dev.tsv")
    ap.add_argument("--step", type=float, default=0.05)
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    train = read_qrels(Path(a.data) / "qrels" / "train.tsv")
    dev = read_qrels(Path(a.data) / "qrels" / "dev.tsv")
    runs = [read_run(p) for p in a.runs]
    pt, pd = prepare(runs, train), prepare(runs, dev)
    for i, p in enumerate(a.runs):
        alone = tuple(1.0 if j == i else 0.0 for j in range(len(runs)))
        print(f"{p}: train MRR@10 {mrr10(pt, train, alone):.4f}, dev {mrr10(pd, dev, alone):.4f}")
    steps = round(1 / a.step)
    grid = [tuple(x / steps for x in w) for w in simplex(len(runs), steps)]
    best_train = max(grid, key=lambda w: mrr10(pt, train, w))
    print(f"weights chosen on train {best_train}: train MRR@10 {mrr10(pt, train, best_train):.4f}, "
          f"dev {mrr10(pd, dev, best_train):.4f}")
    best_dev = max(grid, key=lambda w: mrr10(pd, dev, w))
    print(f"ceiling (weights chosen on dev) {best_dev}: dev MRR@10 {mrr10(pd, dev, best_dev):.4f}")


if __name__ == "__main__":
    main()
