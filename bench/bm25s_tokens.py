"""bm25s over juris's own tokens: the peer run for bench/quality.py.

Reads token files written by `juris analyze --output` ({"_id", "terms"} per line) for the
corpus and the queries, indexes the corpus with bm25s (same scorer family and k1/b as juris),
retrieves the top k per query and writes a TREC run, so that juris and bm25s are compared on
exactly the same terms.

usage: python bench/bm25s_tokens.py DOC_TOKENS QUERY_TOKENS RUN_OUT --method lucene --k1 1.2 --b 0.75 [-k 100]
"""
import argparse
import json

import bm25s
import numpy as np


def read_tokens(path):
    ids, terms = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ids.append(rec["_id"])
            terms.append(rec["terms"])
    return ids, terms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("doc_tokens")
    ap.add_argument("query_tokens")
    ap.add_argument("run_out")
    ap.add_argument("--method", default="lucene")
    ap.add_argument("--k1", type=float, default=1.5)
    ap.add_argument("--b", type=float, default=0.75)
    ap.add_argument("--delta", type=float, default=0.5)
    ap.add_argument("-k", type=int, default=100)
    a = ap.parse_args()
    doc_ids, doc_terms = read_tokens(a.doc_tokens)
    qids, q_terms = read_tokens(a.query_tokens)
    retriever = bm25s.BM25(method=a.method, k1=a.k1, b=a.b, delta=a.delta, backend="numba")
    retriever.index(doc_terms, show_progress=False)
    k = min(a.k, len(doc_ids))
    # juris returns only documents that contain a query term; BM25L and BM25+ give the others
    # a positive score, so they are cut here the same way.
    doc_sets = [set(t) for t in doc_terms]
    with open(a.run_out, "w", encoding="utf-8") as out:
        for qid, terms in zip(qids, q_terms):
            scores = retriever.get_scores(terms)
            top = np.argsort(-scores, kind="stable")[:k]
            qset = set(terms)
            rank = 0
            for d in top:
                if scores[d] <= 0 or not (qset & doc_sets[d]):
                    continue
                rank += 1
                out.write(f"{qid} Q0 {doc_ids[d]} {rank} {scores[d]:.6f} bm25s\n")


if __name__ == "__main__":
    main()
