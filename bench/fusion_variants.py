"""Two-signal fusion variants (one BM25 run, one dense run) with their weight chosen on train,
reported on dev — to see whether a fusion family that juris does not offer would do better
than its min-max / z-score / RRF on some dataset (issue 3's coliee_statute_en target).

Families, each per query over the union of the two lists (a document missing from a list gets
that list's lowest normalized value):
  zscore   (x − μ) / σ                               (juris `--fusion zscore`)
  minmax   (x − min) / (max − min)                   (juris `--fusion minmax`)
  dbsf     (x − (μ − 3σ)) / 6σ, clipped to [0, 1]    (distribution-based score fusion)
  rrf      1 / (k + rank), k in 5 … 100              (juris `--fusion rrf`)
The weight α of BM25 ranges over 0, 0.025, …, 1 (RRF: α and k), chosen on train by nDCG@10
(binary gains, as `juris eval`), reported on dev; dev-best settings are printed as a ceiling.
Plain Python.

Runs: TREC files of every train and dev query at a depth of your choice, e.g.
    juris search --index idx --queries D/queries.jsonl --output bm25.trec -k 768
    juris search --index idx --queries D/queries.jsonl --output dense.trec -k 768 --mode dense

usage: python3 bench/fusion_variants.py --data D [--depth 100] BM25.trec DENSE.trec
"""
import argparse
import collections
import math
from pathlib import Path

from fusion_offline import read_qrels, read_run


def ndcg10(ranked, rel):
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in rel)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
    return dcg / ideal if ideal else 0.0


def normalize(ranked, family):
    s = [x for _, x in ranked]
    if family == "minmax":
        lo, hi = min(s), max(s)
        f = (lambda x: (x - lo) / (hi - lo)) if hi > lo else (lambda x: 1.0)
    else:
        mean = sum(s) / len(s)
        sd = math.sqrt(sum((x - mean) ** 2 for x in s) / len(s)) or 1e-9
        if family == "zscore":
            f = lambda x: (x - mean) / sd  # noqa: E731
        else:  # dbsf
            f = lambda x: min(1.0, max(0.0, (x - (mean - 3 * sd)) / (6 * sd)))  # noqa: E731
    z = {d: f(x) for d, x in ranked}
    return z, min(z.values())


def rrf(ranked, k):
    z = {d: 1.0 / (k + i + 1) for i, (d, _) in enumerate(ranked)}
    return z, 0.0


def fused_mean(bm25, dense, qrels, qids, family, alpha, k=60, depth=100):
    total = 0.0
    for q in qids:
        cols = []
        for run in (bm25, dense):
            ranked = sorted(run.get(q, []), key=lambda t: -t[1])[:depth]
            cols.append(rrf(ranked, k) if family == "rrf" else normalize(ranked, family)
                        if ranked else ({}, 0.0))
        (a, a_low), (b, b_low) = cols
        docs = set(a) | set(b)
        score = {d: alpha * a.get(d, a_low) + (1 - alpha) * b.get(d, b_low) for d in docs}
        ranked = sorted(docs, key=lambda d: (-score[d], d))
        total += ndcg10(ranked, qrels[q])
    return total / len(qids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("bm25", type=Path)
    ap.add_argument("dense", type=Path)
    ap.add_argument("--depth", type=int, default=100, help="candidates per list (juris: 100)")
    a = ap.parse_args()
    bm25, dense = read_run(a.bm25), read_run(a.dense)
    train = read_qrels(a.data / "qrels" / "train.tsv")
    dev = read_qrels(a.data / "qrels" / "dev.tsv")
    tq, dq = sorted(train), sorted(dev)
    alphas = [i / 40 for i in range(41)]
    print("| family | chosen on train | train nDCG@10 | dev nDCG@10 | dev ceiling |")
    print("|---|---|---:|---:|---:|")
    for family in ("zscore", "minmax", "dbsf", "rrf"):
        grid = [(al, k) for al in alphas for k in ((5, 10, 20, 40, 60, 100) if family == "rrf" else (60,))]
        on_train = {s: fused_mean(bm25, dense, train, tq, family, *s, a.depth) for s in grid}
        best = max(grid, key=lambda s: (on_train[s], -abs(s[0] - 0.5)))
        on_dev = {s: fused_mean(bm25, dense, dev, dq, family, *s, a.depth) for s in grid}
        ceiling = max(on_dev.values())
        label = f"α={best[0]}" + (f" k={best[1]}" if family == "rrf" else "")
        print(f"| {family} | {label} | {on_train[best]:.4f} | {on_dev[best]:.4f} | {ceiling:.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
