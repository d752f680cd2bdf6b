#!/usr/bin/env bash
# Issue 5 on the lent GPU: QLoRA SFT of the two generators and their evaluation, base vs
# fine-tuned, on dev (bench/train/sft/*.toml, rewritten here to write under /root/work).
#   smollm2: SmolLM2-135M-Instruct (Q4_1, base kept quantized) on coliee_statute_en train,
#            eval-qa's Yes/No prompt -> "Yes"/"No"; dev Y/N accuracy with the gold articles
#            and with BM25-retrieved ones (-k 5, plus ask's citation hit rate), base vs adapter
#            on the same Q4_1 base, and
#            the merged Q8_0 / Q4_0 exports.
#   gemma:   Gemma-3-270M (base, Q4_K_M kept quantized) on jordan_law_qa_ar train, ask's
#            prompt -> the reference answer; dev ROUGE-L / token F1 (first $LIMIT dev
#            questions, gold articles), base vs adapter.
# Expects bench/gpu/stage.sh to have unpacked the payload (models/, data/) and the binary.
#   usage: bash bench/gpu/issue5.sh smollm2|gemma ...
# Options for smollm2 (environment): SMOL_CONFIG (a config of bench/train/sft, default
# smollm2_coliee_en_yesno), ARTICLES (default "gold retrieved"), MODELS (which models to
# evaluate, default "base adapter"; "final" is the run's last adapter instead of best/).
# Jobs side by side should find the chat data and index made: run `prep` once first (it also
# writes the negation-augmented training file of bench/augment_yesno.py).
set -uo pipefail
S=/root/stage; J=$S/juris; D=$S/x/data; W=/root/work
LIMIT=${LIMIT:-200}
mkdir -p "$W/sft" "$W/idx"
export PYTHONUNBUFFERED=1

# A config of bench/train/sft with its data and output paths moved under /root/work.
gpu_config() {
  sed -e "s#bench/out/sft/#$W/sft/#g" -e "s#^out = \"runs/#out = \"$W/runs/#" "bench/train/sft/$1.toml" > "$W/$1.toml"
  echo "$W/$1.toml"
}

# Chat data and a BM25 index of dataset $1 (task $3, files <$4>_<split>.jsonl; index $5 with
# --lang $6 --analyzer-$6 $7), made once. Sets idx.
prepare_data() {
  local ds=$1 task=$3 stem=$4 lang=$6 an=$7 split
  for split in train dev; do
    [ -f "$W/sft/${stem}_$split.jsonl" ] || "$J" -q train chat-data --data "$D/$ds" --split $split --task $task --out "$W/sft/${stem}_$split.jsonl"
  done
  idx=$W/idx/$5
  [ -d "$idx" ] || "$J" -q index --corpus "$D/$ds/corpus.jsonl" --out "$idx" --lang $lang --analyzer-$lang $an
}
# The same, then QLoRA SFT of config $2 (resumed if cut). Sets idx, run and rc (the
# trainer's exit status) and copies its log, plot and adapters to $OUT.
prepare_and_train() {
  local name=$2
  prepare_data "$@"
  timeout "${TRAIN_TIMEOUT:-330}" "$J" train generator --config "$(gpu_config $name)" --device cuda 2>&1 | grep -v "^\s*$" | tail -15
  rc=${PIPESTATUS[0]}
  echo "$name: training took $(( $(date +%s) - t0 )) s (exit $rc)"
  run=$W/runs/sft_$name
  cp "$run/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null; cp "$run"/*.svg "$OUT/" 2>/dev/null
  tar cf "$OUT/$name.adapter.tar" -C "$run" best adapter 2>/dev/null
}

for job in "$@"; do
  t0=$(date +%s)
  case $job in
    prep)
      prepare_data coliee_statute_en - yesno coliee_en_yesno coliee_en en en-snowball
      python3 bench/augment_yesno.py "$W/sft/coliee_en_yesno_train.jsonl" "$W/sft/coliee_en_yesno_aug_train.jsonl"
      ls -la "$W/sft" "$W/idx" ;;
    smollm2)
      ds=coliee_statute_en; base=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      name=${SMOL_CONFIG:-smollm2_coliee_en_yesno}
      prepare_and_train $ds "$name" yesno coliee_en_yesno coliee_en en en-snowball
      # A run cut by the timeout resumes from its checkpoint when this script runs again;
      # evaluate only finished runs unless EVAL_UNFINISHED=1 (then with best/ as it stands).
      if [ "$rc" != 0 ] && [ -z "${EVAL_UNFINISHED:-}" ]; then echo "$job: not finished; run again to resume"; continue; fi
      q=(--index "$idx" --queries "$D/$ds/queries.jsonl" --qrels "$D/$ds/qrels/dev.tsv" --device cuda --no-stats)
      for arts in ${ARTICLES:-gold retrieved}; do
        for v in ${MODELS:-base adapter}; do
          extra=(); [ $v = adapter ] && extra=(--adapter "$run/best"); [ $v = final ] && extra=(--adapter "$run/adapter")
          # With retrieved articles also generate ask's cited answer: the citation hit rate.
          [ $arts = retrieved ] && extra+=(--cite --max-tokens 64)
          echo "== smollm2 $arts $v"
          "$J" eval-qa "${q[@]}" --articles $arts --model "$base" "${extra[@]}" --output "$OUT/smollm2-$arts-$v.jsonl" 2>&1 | tail -12
        done
      done
      for f in q8_0 q4_0; do
        [ -f "$run/merged-$f.gguf" ] || continue
        echo "== smollm2 gold merged-$f"
        "$J" eval-qa "${q[@]}" --articles gold --model "$run/merged-$f.gguf" --output "$OUT/smollm2-gold-merged-$f.jsonl" 2>&1 | tail -12
      done
      ;;
    gemma)
      ds=jordan_law_qa_ar; base=models/gemma3-270m/gemma-3-270m-q4_k_m.gguf
      prepare_and_train $ds gemma3_jordan_answer answer jordan_answer jordan ar ar-snowball
      if [ "$rc" != 0 ] && [ -z "${EVAL_UNFINISHED:-}" ]; then echo "$job: not finished; run again to resume"; continue; fi
      q=(--index "$idx" --queries "$D/$ds/queries.jsonl" --qrels "$D/$ds/qrels/dev.tsv" --device cuda --no-stats --limit "$LIMIT" --max-tokens 96)
      for v in base adapter; do
        extra=(); [ $v = adapter ] && extra=(--adapter "$run/best")
        echo "== gemma gold $v"
        "$J" eval-qa "${q[@]}" --articles gold --model "$base" "${extra[@]}" --output "$OUT/gemma-gold-$v.jsonl" 2>&1 | tail -12
      done
      ;;
    *) echo "unknown job $job" ;;
  esac
  echo "$job: done in $(( $(date +%s) - t0 )) s"
done
