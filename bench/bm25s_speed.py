"""bm25s side of bench/speed.py: one process per measurement, so peak RSS is its own.

  build CORPUS INDEX_DIR        read corpus.jsonl, tokenize (English stopwords + Snowball
                                stemmer, as juris's en-snowball), index, save; prints JSON
  search INDEX_DIR QUERIES REPS load the index, warm up numba's JIT, then REPS timed passes of
                                tokenize(queries) + retrieve(k=10), single thread; prints JSON

Run with NUMBA_NUM_THREADS=1 (bench/speed.py sets it): bm25s's fastest single-thread setup is
its numba backend.
"""
import json
import sys
import time

import bm25s
import Stemmer


def read_jsonl(path, key):
    with open(path, encoding="utf-8") as f:
        return [key(json.loads(line)) for line in f if line.strip()]


def tokenize(texts, stemmer):
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)


def build(corpus, out):
    t0 = time.perf_counter()
    texts = read_jsonl(corpus, lambda r: (r.get("title") or "") + "\n" + r["text"])
    stemmer = Stemmer.Stemmer("english")
    tokens = tokenize(texts, stemmer)
    retriever = bm25s.BM25(method="lucene", backend="numba")
    retriever.index(tokens, show_progress=False)
    retriever.save(out)
    return {"build_s": time.perf_counter() - t0, "docs": len(texts)}


def search(index_dir, queries, reps):
    texts = read_jsonl(queries, lambda r: r["text"])
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25.load(index_dir, load_corpus=False)
    retriever.backend = "numba"
    # Warm-up: numba compiles on first use; compile time is not query time.
    retriever.retrieve(tokenize(texts[:8], stemmer), k=10, n_threads=1, show_progress=False)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        q = tokenize(texts, stemmer)
        retriever.retrieve(q, k=10, n_threads=1, show_progress=False)
        times.append(time.perf_counter() - t0)
    return {"queries": len(texts), "pass_s": times}


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "build":
        print(json.dumps(build(sys.argv[2], sys.argv[3])))
    elif cmd == "search":
        print(json.dumps(search(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        sys.exit(__doc__)
