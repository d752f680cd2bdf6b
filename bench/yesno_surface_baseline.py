"""A surface-feature baseline for COLIEE Task 4 (Yes/No entailment of a statement by its gold
articles): how much of the answer can be read off the words alone? If a logistic regression on
such features stays at the majority rate, a small model that only learns surface cues cannot
beat its base either (BENCHMARKS.md, issue 5, session 12).

Features per statement: negation words in the statement, whether the gold articles contain
one, the share of statement words absent from the articles, statement length / 50. Logistic
regression (standardized on train, batch gradient descent) trained on train, scored on dev.

usage: bench/.venv/bin/python bench/yesno_surface_baseline.py [../shared/data/coliee_statute_en]
"""
import collections
import json
import re
import sys

import numpy as np

NEG = {"not", "no", "cannot", "never", "nor", "without"}


def words(s):
    return re.findall(r"[a-z]+", s.lower())


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/coliee_statute_en"
    corpus = {}
    for line in open(f"{d}/corpus.jsonl", encoding="utf-8"):
        r = json.loads(line)
        corpus[r["_id"]] = r.get("title", "") + " " + r["text"]
    queries = {json.loads(l)["_id"]: json.loads(l) for l in open(f"{d}/queries.jsonl", encoding="utf-8")}

    def split(name):
        gold = collections.defaultdict(list)
        with open(f"{d}/qrels/{name}.tsv", encoding="utf-8") as f:
            next(f)  # header
            for line in f:
                qid, doc, grade = line.split()[:3]
                if int(grade) > 0:
                    gold[qid].append(doc)
        x, y = [], []
        for qid, docs in gold.items():
            answer = queries[qid].get("answer")
            if answer not in ("Y", "N"):
                continue
            q = words(queries[qid]["text"])
            art = words(" ".join(corpus[doc] for doc in docs if doc in corpus))
            vocab = set(art)
            x.append([sum(w in NEG for w in q), any(w in NEG for w in art),
                      sum(w not in vocab for w in q) / max(1, len(q)), len(q) / 50])
            y.append(answer == "Y")
        return np.array(x, float), np.array(y)

    xt, yt = split("train")
    xd, yd = split("dev")
    mu, sd = xt.mean(0), xt.std(0) + 1e-9
    a, b = (xt - mu) / sd, (xd - mu) / sd
    w, c = np.zeros(a.shape[1]), 0.0
    for _ in range(3000):
        g = 1 / (1 + np.exp(-(a @ w + c))) - yt
        w -= 0.1 * a.T @ g / len(yt)
        c -= 0.1 * g.mean()
    print(f"train {len(yt)} statements ({yt.mean():.3f} Y), dev {len(yd)} ({yd.mean():.3f} Y)")
    print(f"train accuracy {((a @ w + c > 0) == yt).mean():.4f}, dev accuracy "
          f"{((b @ w + c > 0) == yd).mean():.4f} (always-N on dev: {1 - yd.mean():.4f})")


if __name__ == "__main__":
    main()
