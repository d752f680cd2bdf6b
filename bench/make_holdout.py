"""Copies a BEIR dataset with a slice of its train queries held out for tuning.

A fine-tuned retriever scores its own training queries far better than new ones, so a
fusion weight chosen on them leans on the retriever (BENCHMARKS.md, issue 4). This script
writes <out>/ with the same corpus, queries and dev qrels, `qrels/train.tsv` without the
held-out queries (what the retriever trains on) and `qrels/holdout.tsv` with them (what
`juris tune --qrels` chooses the fusion on). A query is held out when
sha256("<dataset>:<query id>") mod 10 == 0 (about 10 %), so the split is fixed.

usage: python3 bench/make_holdout.py ../shared/data/coliee_statute_en OUT_DIR
"""
import hashlib
import shutil
import sys
from pathlib import Path


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    name = src.name
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for f in ("corpus.jsonl", "queries.jsonl"):
        shutil.copy(src / f, out / f)
    shutil.copy(src / "qrels" / "dev.tsv", out / "qrels" / "dev.tsv")
    lines = (src / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [l for l in lines[1:] if l.strip()]
    held = lambda qid: int(hashlib.sha256(f"{name}:{qid}".encode()).hexdigest(), 16) % 10 == 0
    train = [r for r in rows if not held(r.split("\t")[0])]
    hold = [r for r in rows if held(r.split("\t")[0])]
    (out / "qrels" / "train.tsv").write_text("\n".join([header] + train) + "\n", encoding="utf-8")
    (out / "qrels" / "holdout.tsv").write_text("\n".join([header] + hold) + "\n", encoding="utf-8")
    q = lambda rs: len({r.split("\t")[0] for r in rs})
    print(f"{name}: {q(train)} train queries, {q(hold)} held out -> {out}")


if __name__ == "__main__":
    main()
