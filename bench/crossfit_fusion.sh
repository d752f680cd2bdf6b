#!/usr/bin/env bash
# Issue 4 check: phase 1 vs phase 1+2 ensembles with the BM25 setting and fusion chosen on
# queries the retriever never trained on. `juris tune` on train (the protocol of the tables)
# leans on the fine-tuned dense side, which is near its training data there; here the choice
# is cross-fitted on dev instead: dev is split in two halves by a seeded hash of the query id,
# `juris tune` chooses on one half and the other half is scored, then the other way round, so
# every dev query is scored by settings chosen without it. Repeated over SEEDS splits; the
# mean over splits of the cross-fitted dev MRR@10 / nDCG@10 is printed per variant. CPU.
#   usage: bash bench/crossfit_fusion.sh [run] (default coliee_en_e5_e3s256)
#   env: SEEDS (default "1 2 3 4 5"), METRIC (tune's metric, default mrr@10), JURIS_BIN, DATA, OUT
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JURIS_BIN:-target/release/juris}; DD=${DATA:-../shared/data}; OUT=${OUT:-bench/out/crossfit}
run=${1:-coliee_en_e5_e3s256}; METRIC=${METRIC:-mrr@10}
source bench/run_of.sh; run_of "$run" || exit 2
mkdir -p "$OUT"; rm -f "$OUT/$run.rows"
dev=$DD/$ds/qrels/dev.tsv
# Only dev queries are scored, so only they are searched after each tune.
devq=$OUT/$ds.dev.jsonl
python3 - "$DD/$ds/queries.jsonl" "$dev" "$devq" <<'EOF'
import json, sys
queries, qrels, out = sys.argv[1:]
judged = {l.split("\t")[0] for l in open(qrels, encoding="utf-8")}
with open(out, "w", encoding="utf-8") as f:
    f.writelines(l for l in open(queries, encoding="utf-8") if l.strip() and json.loads(l)["_id"] in judged)
EOF
for variant in phase1 phase1+2; do
  idx=$OUT/$run-$variant
  if [ ! -d "$idx/embeddings" ]; then
    rm -rf "$idx"
    "$J" -q index --corpus "$DD/$ds/corpus.jsonl" --out "$idx" --lang $lang --analyzer-$lang $an
    "$J" -q embed --index "$idx" --model $model --max-len 256 --adapter "bench/adapters/$run/$variant"
  fi
  for seed in ${SEEDS:-1 2 3 4 5}; do
    # Halves of dev by sha256(seed:query id) mod 2; the header line goes to both.
    python3 - "$dev" "$seed" "$idx/half" <<'EOF'
import hashlib, sys
src, seed, stem = sys.argv[1], sys.argv[2], sys.argv[3]
lines = open(src, encoding="utf-8").read().splitlines()
head, rows = (lines[:1], lines[1:]) if lines and lines[0].lower().startswith("query") else ([], lines)
halves = {0: list(head), 1: list(head)}
for r in rows:
    q = r.split("\t")[0]
    halves[int(hashlib.sha256(f"{seed}:{q}".encode()).hexdigest(), 16) % 2].append(r)
for h, rs in halves.items():
    open(f"{stem}{h}.tsv", "w", encoding="utf-8").write("\n".join(rs) + "\n")
EOF
    for h in 0 1; do
      o=$((1 - h))
      "$J" -q tune --index "$idx" --queries "$DD/$ds/queries.jsonl" --qrels "$idx/half$h.tsv" --metric "$METRIC" >/dev/null 2>&1
      "$J" -q search --index "$idx" --queries "$devq" --mode hybrid -k 100 --output "$idx/hybrid.trec" 2>/dev/null
      "$J" eval --run "$idx/hybrid.trec" --qrels "$idx/half$o.tsv" --metrics mrr@10,ndcg@10 --json \
        | python3 -c "import json,sys; r=json.load(sys.stdin); print('$variant', $seed, $o, r['n_queries'], r['means']['mrr@10'], r['means']['ndcg@10'])" >> "$OUT/$run.rows"
    done
  done
done
echo "run $run: cross-fitted dev (tune by $METRIC on one half, scored on the other), mean over splits"
python3 - "$OUT/$run.rows" <<'EOF'
import collections, sys
by = collections.defaultdict(list)
for line in open(sys.argv[1]):
    v, seed, half, n, mrr, ndcg = line.split()
    by[v].append((int(n), float(mrr), float(ndcg)))
for v, xs in by.items():
    w = sum(n for n, _, _ in xs)
    print(f"{v:10s} halves {len(xs):3d}  MRR@10 {sum(n * m for n, m, _ in xs) / w:.4f}"
          f"  nDCG@10 {sum(n * d for n, _, d in xs) / w:.4f}")
EOF
