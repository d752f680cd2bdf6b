#!/usr/bin/env bash
# Dense runs of every query of a dataset (train and dev, top 100) from a committed adapter,
# for offline analysis of ensembles of several retrievers (e.g. BM25 + e5-small + Gemma).
# Runs on the lent GPU after bench/gpu/stage.sh. Writes $OUT/<tag>.dense.trec.gz.
#   usage: bash bench/gpu/dense_runs.sh <dataset> <lang> <model> <tag> [adapter-dir]
#   e.g.   bash bench/gpu/dense_runs.sh jordan_law_qa_ar ar gemma3-270m jordan_gemma-phase1 \
#            bench/adapters/jordan_gemma/phase1
set -euo pipefail
S=/root/stage; J=$S/juris; D=$S/x/data
ds=$1; lang=$2; model=$3; tag=$4; adapter=${5:-}
idx=/root/work/dense_runs/$tag; rm -rf "$idx"; mkdir -p "$(dirname "$idx")"
"$J" -q index --corpus "$D/$ds/corpus.jsonl" --out "$idx" --lang "$lang"
"$J" -q embed --index "$idx" --model "$model" --max-len 256 --device cuda ${adapter:+--adapter "$adapter"}
"$J" -q search --index "$idx" --queries "$D/$ds/queries.jsonl" --output "/root/work/$tag.dense.trec" -k 100 --mode dense --device cuda
gzip -c "/root/work/$tag.dense.trec" > "$OUT/$tag.dense.trec.gz"
echo "$tag: $(wc -l < "/root/work/$tag.dense.trec") lines"
