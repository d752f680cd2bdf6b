"""bm25s (numba backend, one thread) on the same corpus, tokens and queries as examples/qps.rs.

usage: NUMBA_NUM_THREADS=1 bench/.venv/bin/python crates/juris-index/examples/bm25s_qps.py \
           CORPUS QUERIES COPIES REPS STOPWORDS_OUT

Writes bm25s's English stopword list to STOPWORDS_OUT (pass it to qps --stopwords so both
sides drop the same words), indexes (lucene, k1=1.5, b=0.75) and times REPS passes of
tokenize(queries) + retrieve(k=10, n_threads=1) after a JIT warm-up; prints one JSON line.
"""
import json
import sys
import time

import bm25s
from bm25s.stopwords import STOPWORDS_EN


def main():
    corpus, queries, copies, reps, stop_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with open(stop_out, "w") as f:
        f.write("\n".join(STOPWORDS_EN) + "\n")
    with open(corpus, encoding="utf-8") as f:
        docs = [json.loads(l) for l in f if l.strip()]
    texts = [(d.get("title") or "") + "\n" + d["text"] if d.get("title") else d["text"] for d in docs] * copies
    with open(queries, encoding="utf-8") as f:
        qtexts = [json.loads(l)["text"] for l in f if l.strip()]
    t0 = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords=list(STOPWORDS_EN), show_progress=False)
    retriever = bm25s.BM25(method="lucene", backend="numba")
    retriever.index(tokens, show_progress=False)
    build_s = time.perf_counter() - t0
    tok = lambda t: bm25s.tokenize(t, stopwords=list(STOPWORDS_EN), show_progress=False)
    retriever.retrieve(tok(qtexts[:8]), k=10, n_threads=1, show_progress=False)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        retriever.retrieve(tok(qtexts), k=10, n_threads=1, show_progress=False)
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"docs": len(texts), "build_s": build_s, "queries": len(qtexts), "best_pass_s": best,
                      "qps": len(qtexts) / best}))


if __name__ == "__main__":
    main()
