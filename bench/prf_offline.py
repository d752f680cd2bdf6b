"""Pseudo-relevance feedback (PRF) on top of juris's BM25 + dense hybrid, offline: does a PRF
variant whose parameters are chosen on TRAIN lift dev nDCG@10 (issue 3's coliee_statute_en
MiniLM target, 0.770)? Feedback uses only first-pass rankings, never qrels.

Baseline   juris's hybrid: per query, the top `--depth` (100) of the BM25 list and of the dense
           list, each normalized (z-score, population σ, or min-max), a document missing from
           a list gets that list's lowest normalized value, fused = α·BM25 + (1−α)·dense.
           Family and α (0, 0.05, …, 1) chosen on train.
V1 dense   Rocchio on the query vector: q' = normalize(q + β·mean(e_d, d ∈ top-m of the first
           pass)); new dense score cos(q', d), then fused with the unchanged BM25 list again.
           Since ‖e_d‖ = 1, cos(q', d) ∝ cos(q, d) + β·mean_j e_j·e_d with a per-query factor,
           which neither normalization nor the top-depth cut sees; so juris's own dense scores
           (dense.trec, every document) and its stored document vectors give it exactly.
           First pass: the baseline hybrid (z-score α 0.65, juris's tuned setting) or dense.
           m ∈ {1,2,3,5,10}, β ∈ {0.1,…,1.0}, family, α chosen jointly on train.
V2 score   final = baseline-family fused score + γ·mean_j cos(d, d_j), d_j the top-m of the first
           pass hybrid; over the same candidates (union of both top-depth lists).
           family, α, m, γ chosen jointly on train.
V3 RM3     BM25 query expansion: the top-t terms of p(t|R) = mean over the top-m first-pass
           hybrid documents of tf(t,d)/|d| (juris's own en-snowball terms) are added to the
           query with total weight w·|q| (spread in proportion to p(t|R)); the original terms
           keep weight 1 per occurrence. Scored with juris's BM25+ (Lv & Zhai: idf ln((N+1)/df),
           idf·((k1+1)tf/(k1·L+tf) + δ), k1 2.0, b 0.9, δ 1, its tuned setting), reimplemented
           here and checked against juris's bm25.trec; then fused with the unchanged dense list.
           m, t, w, family, α chosen jointly on train.
V4 both    V1's and V3's train-chosen lists fused together (family, α re-chosen on train).

nDCG@10 with binary gains and MRR@10, as `juris eval`. Ties broken by document id (string).
For each variant: train-chosen setting, its train and dev nDCG@10 and dev MRR@10, and the
dev-best setting of the same grid as a ceiling only (choosing on dev is not a result).

Inputs (W = a work folder, D = the BEIR dataset folder, J = the juris binary):
    J index --corpus D/corpus.jsonl --out W/idx --lang en --analyzer-en en-snowball
    J embed --index W/idx --model minilm --max-len 512
    J tune --index W/idx --queries D/queries.jsonl --qrels D/qrels/train.tsv
    for m in bm25 dense hybrid; do
      J search --index W/idx --queries D/queries.jsonl --output W/$m.trec -k 768 --mode $m; done
    J analyze --index W/idx --corpus D/corpus.jsonl --output W/doc_tokens.jsonl
    J analyze --index W/idx --queries D/queries.jsonl --output W/q_tokens.jsonl

usage: bench/.venv/bin/python bench/prf_offline.py --data D --work W [--depth 100]
--depth: documents per list before normalization. `juris tune` and `juris search --mode hybrid`
use the tuned depth (100) whatever -k is (since 3f60158; before, search normalized max(100, K)
documents, which `--depth 768` reproduced), so `--depth 100` gives W/hybrid.trec's top 10.
(numpy only; reads W/idx/embeddings/minilm/{ids.txt,vectors.bin}; never reads qrels/test.tsv)
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from fusion_offline import read_qrels

ALPHAS = [round(i * 0.05, 2) for i in range(21)]
FAMILIES = ("zscore", "minmax")


# ---------------------------------------------------------------- inputs

def read_run_matrix(path, qidx, didx, fill):
    """TREC run -> (queries × docs) score matrix; documents absent from a query's list get `fill`."""
    s = np.full((len(qidx), len(didx)), fill, dtype=np.float64)
    for line in open(path, encoding="utf-8"):
        qid, _, doc, _, score, _ = line.split()
        if qid in qidx:
            s[qidx[qid], didx[doc]] = float(score)
    return s


def read_store(store, didx):
    ids = Path(store, "ids.txt").read_text(encoding="utf-8").split("\n")[: len(didx)]
    meta = json.loads(Path(store, "meta.json").read_text(encoding="utf-8"))
    dtype = np.float16 if meta["dtype"] == "f16" else np.float32
    v = np.fromfile(Path(store, "vectors.bin"), dtype=dtype).reshape(meta["count"], meta["dim"])
    e = np.zeros((len(didx), meta["dim"]))
    for i, d in enumerate(ids):
        e[didx[d]] = v[i]
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def read_tokens(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        rec = json.loads(line)
        out[rec["_id"]] = rec["terms"]
    return out


# ---------------------------------------------------------------- BM25+ (juris `bm25plus`)

class BM25Plus:
    def __init__(self, doc_terms, k1=2.0, b=0.9, delta=1.0):
        self.vocab = {t: i for i, t in enumerate(sorted({t for ts in doc_terms for t in ts}))}
        n = len(doc_terms)
        self.tf = np.zeros((len(self.vocab), n))  # term × doc
        for j, ts in enumerate(doc_terms):
            for t in ts:
                self.tf[self.vocab[t], j] += 1
        dl = self.tf.sum(axis=0)
        length = 1 - b + b * dl / dl.mean()
        df = (self.tf > 0).sum(axis=1)
        idf = np.log((n + 1) / df)
        tfc = (k1 + 1) * self.tf / (k1 * length[None, :] + self.tf)
        self.impact = np.where(self.tf > 0, idf[:, None] * (tfc + delta), 0.0)
        self.p_td = self.tf / dl[None, :]  # p(t|d) for RM3

    def weights(self, terms):
        w = np.zeros(len(self.vocab))
        for t in terms:  # repeated query terms count once per occurrence; unknown ones drop
            if t in self.vocab:
                w[self.vocab[t]] += 1
        return w

    def score(self, wq):
        """(queries × vocab) weights -> (queries × docs) scores."""
        return wq @ self.impact


# ---------------------------------------------------------------- fusion and metrics

def normalize(s, depth, family, candidates=None):
    """juris's per-list normalization over the list's top `depth` (only `candidates` may enter):
    returns the normalized matrix (non-top documents get the list's lowest value) and the mask."""
    s = np.where(candidates, s, -np.inf) if candidates is not None else s
    top = np.argpartition(-s, depth - 1, axis=1)[:, :depth]
    mask = np.zeros(s.shape, bool)
    np.put_along_axis(mask, top, True, axis=1)
    mask &= np.isfinite(s)
    x = np.where(mask, s, np.nan)
    if family == "zscore":
        mean = np.nanmean(x, axis=1, keepdims=True)
        sd = np.nanstd(x, axis=1, keepdims=True)
        z = (x - mean) / np.where(sd > 0, sd, 1e-9)
    else:
        lo, hi = np.nanmin(x, axis=1, keepdims=True), np.nanmax(x, axis=1, keepdims=True)
        z = np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1), 1.0)
    low = np.nanmin(z, axis=1, keepdims=True)
    return np.nan_to_num(np.where(mask, z, low)), mask  # an empty list contributes 0


def fuse(nb, nd, alpha):
    (b, mb), (d, md) = nb, nd
    return np.where(mb | md, alpha * b + (1 - alpha) * d, -np.inf)


def metrics(fused, rel):
    """Per-query nDCG@10 and MRR@10 (binary gains); columns are in document-id order, and ties
    inside the top 10 are broken by id."""
    part = np.argpartition(-fused, 9, axis=1)[:, :10]
    vals = np.take_along_axis(fused, part, axis=1)
    top = np.take_along_axis(part, np.lexsort((part, -vals), axis=1), axis=1)
    hits = np.take_along_axis(rel, top, axis=1)
    disc = 1 / np.log2(np.arange(2, 12))
    ideal = np.array([disc[: min(int(k), 10)].sum() for k in rel.sum(axis=1)])
    ndcg = (hits * disc).sum(axis=1) / np.where(ideal > 0, ideal, 1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    mrr = np.where(first >= 0, 1 / np.maximum(first + 1, 1), 0.0)
    return ndcg, mrr


# ---------------------------------------------------------------- experiment

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--store", default="minilm")
    a = ap.parse_args()
    t0 = time.time()
    W, depth = a.work, a.depth

    train = read_qrels(a.data / "qrels" / "train.tsv")
    dev = read_qrels(a.data / "qrels" / "dev.tsv")
    assert not set(train) & set(dev)
    qids = sorted(train) + sorted(dev)
    ntr = len(train)
    docs = sorted(json.loads(l)["_id"] for l in open(a.data / "corpus.jsonl", encoding="utf-8"))
    qidx = {q: i for i, q in enumerate(qids)}
    didx = {d: i for i, d in enumerate(docs)}
    rel = np.zeros((len(qids), len(docs)))
    for split in (train, dev):
        for q, ds in split.items():
            for d in ds:
                rel[qidx[q], didx[d]] = 1
    TR, DV = slice(0, ntr), slice(ntr, None)

    def evaluate(fused):
        nd, mr = metrics(fused, rel)
        return nd[TR].mean(), nd[DV].mean(), mr[DV].mean()

    # juris's runs and document vectors
    bm25_juris = read_run_matrix(W / "bm25.trec", qidx, didx, 0.0)
    dense = read_run_matrix(W / "dense.trec", qidx, didx, np.nan)
    assert not np.isnan(dense).any(), "dense.trec must hold every document (-k 768)"
    hybrid_juris = read_run_matrix(W / "hybrid.trec", qidx, didx, -np.inf)
    E = read_store(W / "idx" / "embeddings" / a.store, didx)
    DD = E @ E.T  # doc-doc cosine

    # BM25+ reimplemented over juris's terms, checked against juris's run
    dt, qt = read_tokens(W / "doc_tokens.jsonl"), read_tokens(W / "q_tokens.jsonl")
    bm = BM25Plus([dt[d] for d in docs])
    WQ = np.stack([bm.weights(qt[q]) for q in qids])
    bm25 = bm.score(WQ)
    diff = np.abs(bm25 - bm25_juris).max()
    print(f"check: BM25+ here vs juris bm25.trec, max |Δscore| = {diff:.2e} "
          f"(max score {bm25.max():.1f})")
    assert diff < 1e-3, "BM25+ replica differs from juris"

    def fuse_grid(bm_scores, dn_scores):
        """Yields ((family, α), fused) over the baseline grid; the BM25 list holds only documents
        with a query term (score > 0), as juris's."""
        for fam in FAMILIES:
            nb = normalize(bm_scores, depth, fam, bm_scores > 0)
            nd = normalize(dn_scores, depth, fam)
            for al in ALPHAS:
                yield (fam, al), fuse(nb, nd, al)

    results = []  # (variant, train-chosen setting, tr, dv, mrr, ceiling setting, ceiling dv)

    def search(name, settings):
        """settings: iterable of (label, fused matrix); chooses on train, reports dev."""
        best_tr = best_dv = None
        n = 0
        for label, fused in settings:
            tr, dv, mr = evaluate(fused)
            n += 1
            if best_tr is None or tr > best_tr[1] + 1e-12:
                best_tr = (label, tr, dv, mr)
            if best_dv is None or dv > best_dv[1] + 1e-12:
                best_dv = (label, dv)
        results.append((name, *best_tr, *best_dv))
        lab, tr, dv, mr = best_tr
        print(f"{name}: {n} settings; train-chosen {lab}: train nDCG@10 {tr:.4f}, dev nDCG@10 "
              f"{dv:.4f}, dev MRR@10 {mr:.4f} | dev ceiling {best_dv[0]}: {best_dv[1]:.4f} "
              f"[{time.time() - t0:.0f}s]", flush=True)
        return best_tr

    # -- juris's own hybrid run, and the baseline replica
    tr, dv, mr = evaluate(hybrid_juris)
    print(f"juris hybrid.trec: train nDCG@10 {tr:.4f}, dev nDCG@10 {dv:.4f}, dev MRR@10 {mr:.4f}")
    base = dict(fuse_grid(bm25, dense))
    search("baseline (replica)", (((f, al), F) for (f, al), F in base.items()))
    first_hybrid = base[("zscore", 0.65)]  # juris's tuned (train-chosen) first pass
    tr, dv, mr = evaluate(first_hybrid)
    agree = (np.argsort(-first_hybrid, axis=1, kind="stable")[:, :10]
             == np.argsort(-hybrid_juris, axis=1, kind="stable")[:, :10]).all(axis=1).mean()
    print(f"replica z-score α 0.65: dev nDCG@10 {dv:.4f}; same top-10 as juris's run for "
          f"{agree:.1%} of queries (juris search fuses each side's top tuned depth, so this "
          f"matches when --depth is that depth)")

    order = {"hybrid": np.argsort(-first_hybrid, axis=1, kind="stable"),
             "dense": np.argsort(-dense, axis=1, kind="stable"),
             "bm25": np.argsort(-bm25, axis=1, kind="stable")}

    def fb_sim(src, m):
        """(queries × docs) mean cosine of each document to the top-m feedback documents."""
        return DD[order[src][:, :m]].mean(axis=1)

    ms = (1, 2, 3, 5, 10)

    # -- V1 dense Rocchio
    def v1(src):
        for m in ms:
            sim = fb_sim(src, m)
            for beta in [round(0.1 * i, 1) for i in range(1, 11)]:
                dn = dense + beta * sim  # ∝ cos(q', d)
                for (fam, al), F in fuse_grid(bm25, dn):
                    yield (f"m={m} β={beta} {fam} α={al}", F)

    v1_best = {src: search(f"V1 Rocchio, feedback from {src}", v1(src)) for src in ("hybrid", "dense")}

    # -- V2 score-level PRF
    gammas = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]

    def v2():
        for m in ms:
            sim = fb_sim("hybrid", m)
            for (fam, al), F in base.items():
                for g in gammas:
                    yield (f"m={m} γ={g} {fam} α={al}", F + g * sim)

    search("V2 score PRF (hybrid feedback)", v2())

    # -- V3 RM3 on the BM25 side
    qlen = WQ.sum(axis=1, keepdims=True)

    def rm3_scores(m, t, w):
        prf = bm.p_td[:, order["hybrid"][:, :m]].mean(axis=2).T  # queries × vocab
        keep = np.argpartition(-prf, t - 1, axis=1)[:, :t]
        sel = np.zeros_like(prf)
        np.put_along_axis(sel, keep, np.take_along_axis(prf, keep, axis=1), axis=1)
        sel /= sel.sum(axis=1, keepdims=True)
        return bm.score(WQ + w * qlen * sel)

    def v3():
        for m in ms:
            for t in (5, 10, 20, 40):
                for w in (0.1, 0.2, 0.3, 0.5, 0.75, 1.0):
                    s = rm3_scores(m, t, w)
                    for (fam, al), F in fuse_grid(s, dense):
                        yield (f"m={m} t={t} w={w} {fam} α={al}", F)

    v3_best = search("V3 RM3 BM25 (hybrid feedback)", v3())

    # -- V4: V1 (hybrid feedback) + V3, both train-chosen, fused again
    def parse(label):
        return dict(kv.split("=") for kv in label.split() if "=" in kv)

    p1, p3 = parse(v1_best["hybrid"][0]), parse(v3_best[0])
    dn = dense + float(p1["β"]) * fb_sim("hybrid", int(p1["m"]))
    s3 = rm3_scores(int(p3["m"]), int(p3["t"]), float(p3["w"]))
    search(f"V4 V1(m={p1['m']} β={p1['β']}) + V3(m={p3['m']} t={p3['t']} w={p3['w']})",
           fuse_grid(s3, dn))

    print("\n| variant | chosen on train | train nDCG@10 | dev nDCG@10 | dev MRR@10 | dev ceiling (setting) |")
    print("|---|---|---:|---:|---:|---|")
    for name, lab, tr, dv, mr, clab, cdv in results:
        print(f"| {name} | {lab} | {tr:.4f} | {dv:.4f} | {mr:.4f} | {cdv:.4f} ({clab}) |")
    print(f"wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
