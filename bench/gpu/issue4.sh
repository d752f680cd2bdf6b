#!/usr/bin/env bash
# Issue 4 on the lent H100: two-phase LoRA fine-tuning (bench/train/gpu/<name>.toml) and the
# evaluation of zero-shot, phase 1 and phase 1+2 adapters, dense alone and in the BM25
# ensemble (fusion and α tuned on train), on dev: MRR@10, nDCG@10, Recall@10.
# Expects bench/gpu/stage.sh to have run. Results: $OUT/issue4.jsonl, metrics logs, adapters.
#   usage: bash bench/gpu/issue4.sh <name>...   (name: coliee_en_minilm, coliee_en_e5, coliee_ja_e5,
#          coliee_ja_gemma, jordan_e5, jordan_gemma, coliee_ja_gemma_p2, coliee_ja_e5_p2,
#          jordan_e5_p2, jordan_e5_e3, coliee_ja_e5_e3, the full fine-tunings coliee_ja_e5_full,
#          jordan_e5_full, coliee_en_minilm_full, phase 2 alone coliee_ja_e5_e3_p2skip5[lr3], and the coliee_en_{minilm,e5}_{p2m10,p2lr3,p2m10lr3,e3}, coliee_en_minilm_e3s[256], coliee_{ja,en}_e5_e3s256, jordan_gemma_p2s256 (VARIANTS=phase1+2),
#          phase 2 with BM25 + mined negatives from the committed phase 1: coliee_{en,ja}_e5_e3s256_p2mix,
#          coliee_en_minilm_e3s_p2mix, jordan_e5_l256_p2mix (VARIANTS='phase1 phase1+2'); both phases at batch 32 with
#          that phase 2: coliee_{en,ja}_e5_e3s256_b32mix[_e5], coliee_en_minilm_e3s_b32mix[_s43,_s44]
#          variants, jordan_e5_l256)
# TUNE_QRELS=holdout tunes on qrels/holdout.tsv instead of train.tsv (bench/make_holdout.py).
# RUNS=1 also writes each fine-tuned variant's dense run of every query (train and dev, top 100) to
# $OUT/<name>-<variant>.dense.trec.gz, for offline analysis of multi-model ensembles.
set -uo pipefail
S=/root/stage; J=$S/juris; D=$S/x/data
export PYTHONUNBUFFERED=1
for name in "$@"; do
  case $name in
    coliee_en_minilm|coliee_en_minilm_*) ds=coliee_statute_en; model=minilm; lang=en; an=en-snowball ;;
    coliee_ja_e5|coliee_ja_e5_e3|coliee_ja_e5_full|coliee_ja_e5_e3s256|coliee_ja_e5_e3s256_*) ds=coliee_statute_ja; model=e5-small; lang=ja; an=ja-bigram ;;
    coliee_ja_gemma) ds=coliee_statute_ja; model=gemma3-270m; lang=ja; an=ja-bigram ;;
    # Phase 2 alone from the committed phase-1 adapter ([lora] init): evaluate with
    # VARIANTS=phase1+2 (zero-shot and phase 1 were measured by the full runs).
    coliee_ja_gemma_p2) ds=coliee_statute_ja; model=gemma3-270m; lang=ja; an=ja-bigram ;;
    coliee_ja_e5_p2|coliee_ja_e5_e3_p2*) ds=coliee_statute_ja; model=e5-small; lang=ja; an=ja-bigram ;;
    # The holdout copy (bench/make_holdout.py): train minus 10 %, fusion tuned on that 10 %.
    coliee_en_e5_e3s256h) ds=coliee_statute_en_h; model=e5-small; lang=en; an=en-snowball ;;
    coliee_en_e5|coliee_en_e5_*) ds=coliee_statute_en; model=e5-small; lang=en; an=en-snowball ;;
    jordan_e5|jordan_e5_e3|jordan_e5_full|jordan_e5_l256|jordan_e5_l256_*) ds=jordan_law_qa_ar; model=e5-small; lang=ar; an=ar-snowball ;;
    jordan_e5_p2) ds=jordan_law_qa_ar; model=e5-small; lang=ar; an=ar-snowball ;;
    jordan_gemma|jordan_gemma_*) ds=jordan_law_qa_ar; model=gemma3-270m; lang=ar; an=ar-snowball ;;
    *) echo "unknown run $name"; continue ;;
  esac
  t0=$(date +%s)
  timeout "${TRAIN_TIMEOUT:-400}" "$J" -q train retriever --config "bench/train/gpu/$name.toml" --device cuda 2>&1 | tail -25
  rc=${PIPESTATUS[0]}
  echo "$name: training took $(( $(date +%s) - t0 )) s (exit $rc)"
  # A run cut by the timeout resumes from its checkpoint when this script runs again (the
  # next call on the still-warm machine); evaluate only finished runs.
  # EVAL_UNFINISHED=1 evaluates what exists anyway (e.g. VARIANTS="zero-shot phase1" once
  # phase 1's best adapter is written).
  if [ "$rc" != 0 ] && [ -z "${EVAL_UNFINISHED:-}" ]; then echo "$name: not finished; run again to resume"; continue; fi
  run=/root/work/runs/$name
  cp "$run/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
  cp "$run"/*.svg "$OUT/" 2>/dev/null
  tar cf "$OUT/$name.adapters.tar" -C "$run" best-phase1 adapter 2>/dev/null
  python3 -c "
import json,sys
judged={l.split('\t')[0] for l in open('$D/$ds/qrels/dev.tsv') if not l.startswith('query-id')}
with open('/root/work/$ds.dev.jsonl','w') as f:
    for l in open('$D/$ds/queries.jsonl'):
        if json.loads(l)['_id'] in judged: f.write(l)
"
  for v in ${VARIANTS:-zero-shot phase1 phase1+2}; do
    idx=/root/work/eval/$name-$v; rm -rf "$idx"
    "$J" -q index --corpus "$D/$ds/corpus.jsonl" --out "$idx" --lang $lang --analyzer-$lang $an
    case $v in
      zero-shot) "$J" -q embed --index "$idx" --model $model --max-len 256 --device cuda ;;
      # A phase-2-alone run ([lora] init) has no best-phase1: its phase 1 is the init adapter.
      phase1) p1="$run/best-phase1"; [ -d "$p1" ] || p1=$(sed -n 's/^init = "\(.*\)"/\1/p' "bench/train/gpu/$name.toml")
              "$J" -q embed --index "$idx" --model $model --max-len 256 --device cuda --adapter "$p1" ;;
      phase1+2) "$J" -q embed --index "$idx" --model $model --max-len 256 --device cuda --adapter "$run/adapter" ;;
    esac
    store=$(ls "$idx/embeddings" | head -1)
    if [ -n "${RUNS:-}" ] && [ "$v" != zero-shot ]; then
      "$J" -q search --index "$idx" --queries "$D/$ds/queries.jsonl" --output "/root/work/$name-$v.dense.trec" -k 100 --mode dense --model "$store" --device cuda \
        && gzip -c "/root/work/$name-$v.dense.trec" > "$OUT/$name-$v.dense.trec.gz"
    fi
    "$J" -q tune --index "$idx" --queries "$D/$ds/queries.jsonl" --qrels "$D/$ds/qrels/${TUNE_QRELS:-train}.tsv" --model "$store" --device cuda
    for mode in bm25 dense hybrid; do
      "$J" -q search --index "$idx" --queries "/root/work/$ds.dev.jsonl" --output "/root/work/$name-$v-$mode.trec" -k 100 --mode $mode --model "$store" --device cuda
      m=$("$J" eval --run "/root/work/$name-$v-$mode.trec" --qrels "$D/$ds/qrels/dev.tsv" --metrics mrr@10,ndcg@10,recall@10 --json)
      echo "{\"run\": \"$name\", \"variant\": \"$v\", \"mode\": \"$mode\", \"tuned\": $(cat "$idx/tuned.json"), \"eval\": $m}" | tee -a "$OUT/issue4.jsonl" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(r['run'], r['variant'], r['mode'], {k: round(v, 4) for k, v in r['eval']['means'].items()})"
    done
  done
done
