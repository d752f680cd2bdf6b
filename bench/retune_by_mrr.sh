#!/usr/bin/env bash
# Issue 4 check: the BM25 + dense ensemble of a run's phase-1 and phase-1+2 adapters with the
# BM25 setting and fusion chosen on train by nDCG@10 (the protocol of BENCHMARKS.md) and by
# MRR@10 (the metric the issue states its targets in), evaluated on dev. CPU.
#   usage: bash bench/retune_by_mrr.sh [run]   (default coliee_en_e5_e3s256: coliee_statute_en, e5-small)
set -uo pipefail
cd "$(dirname "$0")/.."
J=${JURIS_BIN:-target/release/juris}; DD=${DATA:-../shared/data}; OUT=${OUT:-bench/out/retune}
run=${1:-coliee_en_e5_e3s256}
source bench/run_of.sh; run_of "$run" || exit 2
for variant in phase1 phase1+2; do
  idx=$OUT/$run-$variant; rm -rf "$idx"; mkdir -p "$OUT"
  "$J" -q index --corpus "$DD/$ds/corpus.jsonl" --out "$idx" --lang $lang --analyzer-$lang $an
  "$J" -q embed --index "$idx" --model $model --max-len 256 --adapter "bench/adapters/$run/$variant"
  for metric in ndcg@10 mrr@10; do
    "$J" -q tune --index "$idx" --queries "$DD/$ds/queries.jsonl" --qrels "$DD/$ds/qrels/train.tsv" --metric $metric 2>&1 | tail -2
    "$J" -q search --index "$idx" --queries "$DD/$ds/queries.jsonl" --mode hybrid -k 100 --output "$idx/hybrid.trec"
    echo "$run $variant, tuned on train by $metric:"
    "$J" eval --run "$idx/hybrid.trec" --qrels "$DD/$ds/qrels/dev.tsv" --metrics mrr@10,ndcg@10,recall@10 | sed -n 3p
  done
done
