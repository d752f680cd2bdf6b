#!/usr/bin/env bash
# GPU encoding throughput of `juris embed --device cuda` (candle CUDA, f32) for MiniLM and
# e5-small over the coliee and jordan corpora (batch 32, max length 256, 3 runs each, fresh
# store every run), sentence-transformers (PyTorch CUDA, f32) on MiniLM with the same texts
# and settings beside it, and a CPU-vs-CUDA check of the same model's vectors. Expects
# bench/gpu/stage.sh to have run. usage: bash bench/gpu/encode_gpu.sh
set -uo pipefail
S=/root/stage; J=$S/juris; D=$S/x/data; W=/root/work
rm -rf "$W"; mkdir -p "$W"
for ds in coliee_statute_en:en coliee_statute_ja:ja jordan_law_qa_ar:ar; do
  "$J" -q index --corpus "$D/${ds%%:*}/corpus.jsonl" --out "$W/${ds%%:*}" --lang "${ds##*:}"
done
"$J" -q embed --index "$W/coliee_statute_en" --model minilm --device cuda --name warm --max-len 256 2>&1 | tail -1
for run in 1 2 3; do
  for pair in "minilm coliee_statute_en" "e5-small coliee_statute_en" "e5-small coliee_statute_ja" "e5-small jordan_law_qa_ar"; do
    set -- $pair
    rm -rf "$W/$2/embeddings/$1"
    echo "juris $1 $2 run $run: $("$J" -q embed --index "$W/$2" --model "$1" --device cuda --max-len 256 --batch-size 32 2>&1 | tail -1 | grep -o '[0-9]* encoded.*')"
  done
done
python3 - "$D" <<'PY'
import json, statistics, sys, time, torch
from sentence_transformers import SentenceTransformer
st = SentenceTransformer("models/minilm", device="cuda"); st.max_seq_length = 256
for ds in ["coliee_statute_en"]:
    texts = [(d.get("title") or "") + "\n" + d["text"] for d in map(json.loads, open(f"{sys.argv[1]}/{ds}/corpus.jsonl"))]
    toks = sum(min(len(x), 256) for x in st.tokenizer(texts)["input_ids"])
    st.encode(texts, batch_size=32); torch.cuda.synchronize()
    secs = []
    for _ in range(3):
        t0 = time.perf_counter(); st.encode(texts, batch_size=32); torch.cuda.synchronize(); secs.append(time.perf_counter() - t0)
    s = statistics.median(secs)
    print(f"sentence-transformers minilm {ds}: {len(texts)} texts, {toks} tokens, runs {[round(x, 3) for x in secs]}, median {s:.3f}s = {len(texts)/s:.1f} docs/s, {toks/s:.0f} tokens/s")
PY
for m in smollm2 minilm; do
  "$J" -q embed --index "$W/coliee_statute_en" --model $m --device cuda --name $m-cuda --max-len 256 2>&1 | tail -1
  "$J" -q embed --index "$W/coliee_statute_en" --model $m --device cpu --name $m-cpu --max-len 256 2>&1 | tail -1
  python3 - "$W/coliee_statute_en/embeddings" $m <<'PY'
import sys, json, numpy as np
d, m = sys.argv[1], sys.argv[2]
def load(name):
    meta = json.load(open(f"{d}/{name}/meta.json"))
    v = np.fromfile(f"{d}/{name}/vectors.bin", dtype=np.float16, offset=0)
    return v
a, b = load(f"{m}-cuda"), load(f"{m}-cpu")
n = min(a.size, b.size); dim = 384 if m == "minilm" else 576
k = (n // dim) * dim
a, b = a[-k:].astype(np.float32).reshape(-1, dim), b[-k:].astype(np.float32).reshape(-1, dim)
cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(f"{m}: CUDA vs CPU vectors, {len(cos)} rows: min cosine {cos.min():.6f}, mean {cos.mean():.6f}")
PY
done
