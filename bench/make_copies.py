"""Writes a large corpus made of N copies of a BEIR corpus (ids suffixed '#<copy>'), the way
bench/speed.py derives its 502,751-document corpus from scifact (97 copies of 5,183 docs).

usage: python bench/make_copies.py CORPUS.jsonl N OUT.jsonl
"""
import json
import sys

src, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(src, encoding="utf-8") as f:
    docs = [json.loads(line) for line in f if line.strip()]
with open(out + ".tmp", "w", encoding="utf-8") as f:
    for c in range(n):
        for d in docs:
            f.write(json.dumps({"_id": f"{d['_id']}#{c}", "title": d.get("title", ""), "text": d["text"]},
                               ensure_ascii=False) + "\n")
import os
os.replace(out + ".tmp", out)
