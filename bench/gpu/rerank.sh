#!/usr/bin/env bash
# Issue 4 on the lent GPU: a cross-encoder reranker (bench/train/gpu/<name>.toml, a [rerank]
# config) trained on jordan_law_qa_ar, then `juris rerank` of the first-stage hybrid run's
# top 20 on dev: the reranker alone (--alpha 0), fused with the first stage with α chosen on
# the train qrels (all train and dev queries reranked), and with α chosen on dev (a ceiling,
# dev queries only). Expects the stage (bench/gpu/stage.sh) to hold the e5-small model, the
# dataset and the first-stage run /root/stage/x/jordan_hybrid30.trec (top 30 of every query).
# Results: $OUT/<name>.rerank.jsonl, the metrics log, the adapter.
#   usage: bash bench/gpu/rerank.sh <name>...
set -uo pipefail
S=/root/stage; J=$S/juris; D=$S/x/data/jordan_law_qa_ar; FIRST=$S/x/jordan_hybrid30.trec
export PYTHONUNBUFFERED=1
for name in "$@"; do
  t0=$(date +%s)
  timeout "${TRAIN_TIMEOUT:-400}" "$J" -q train retriever --config "bench/train/gpu/$name.toml" --device cuda 2>&1 | tail -25
  rc=${PIPESTATUS[0]}
  echo "$name: training took $(( $(date +%s) - t0 )) s (exit $rc)"
  if [ "$rc" != 0 ]; then echo "$name: not finished; run again to resume"; continue; fi
  run=/root/work/runs/$name
  cp "$run/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
  cp "$run"/*.svg "$OUT/" 2>/dev/null
  idx=/root/work/eval/$name; rm -rf "$idx"
  "$J" -q index --corpus "$D/corpus.jsonl" --out "$idx" --lang ar --analyzer-ar ar-snowball
  awk 'NR>1 {print $1}' "$D/qrels/dev.tsv" | sort -u > "$idx/dev.qids"
  awk 'NR==FNR {k[$1]=1; next} ($1 in k)' "$idx/dev.qids" "$FIRST" > "$idx/first.dev.trec"
  rr() { "$J" -q rerank --index "$idx" --queries "$D/queries.jsonl" --model e5-small \
           --adapter "$run/adapter" --depth 20 --max-len 384 --batch-size 128 --device cuda "$@"; }
  rr --run "$idx/first.dev.trec" --alpha 0 --output "$OUT/$name.alone.trec" 2>&1 | tail -3
  rr --run "$idx/first.dev.trec" --tune-qrels "$D/qrels/dev.tsv" --output "$OUT/$name.devalpha.trec" 2>&1 | tail -3
  rr --run "$FIRST" --tune-qrels "$D/qrels/train.tsv" --output "$OUT/$name.trainalpha.trec" 2>&1 | tail -3
  for v in alone devalpha trainalpha; do
    "$J" eval --run "$OUT/$name.$v.trec" --qrels "$D/qrels/dev.tsv" --json \
      | python3 -c "import json,sys; m=json.load(sys.stdin)['means']; print(json.dumps({'run':'$name','variant':'$v',**m}))" \
      | tee -a "$OUT/$name.rerank.jsonl"
  done
  "$J" eval --run "$FIRST" --qrels "$D/qrels/dev.tsv" | head -3
done
