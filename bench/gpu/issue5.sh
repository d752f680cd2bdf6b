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

for job in "$@"; do
  t0=$(date +%s)
  case $job in
    smollm2)
      ds=coliee_statute_en; name=smollm2_coliee_en_yesno
      base=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      for split in train dev; do
        [ -f "$W/sft/coliee_en_yesno_$split.jsonl" ] || "$J" -q train chat-data --data "$D/$ds" --split $split --task yesno --out "$W/sft/coliee_en_yesno_$split.jsonl"
      done
      idx=$W/idx/coliee_en
      [ -d "$idx" ] || "$J" -q index --corpus "$D/$ds/corpus.jsonl" --out "$idx" --lang en --analyzer-en en-snowball
      timeout "${TRAIN_TIMEOUT:-330}" "$J" train generator --config "$(gpu_config $name)" --device cuda 2>&1 | grep -v "^\s*$" | tail -15
      rc=${PIPESTATUS[0]}
      echo "$job: training took $(( $(date +%s) - t0 )) s (exit $rc)"
      run=$W/runs/sft_$name
      cp "$run/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null; cp "$run"/*.svg "$OUT/" 2>/dev/null
      tar cf "$OUT/$name.adapter.tar" -C "$run" best adapter 2>/dev/null
      # A run cut by the timeout resumes from its checkpoint when this script runs again;
      # evaluate only finished runs unless EVAL_UNFINISHED=1 (then with best/ as it stands).
      if [ "$rc" != 0 ] && [ -z "${EVAL_UNFINISHED:-}" ]; then echo "$job: not finished; run again to resume"; continue; fi
      q=(--index "$idx" --queries "$D/$ds/queries.jsonl" --qrels "$D/$ds/qrels/dev.tsv" --device cuda --no-stats)
      for arts in gold retrieved; do
        for v in base adapter; do
          extra=(); [ $v = adapter ] && extra=(--adapter "$run/best")
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
      ds=jordan_law_qa_ar; name=gemma3_jordan_answer
      base=models/gemma3-270m/gemma-3-270m-q4_k_m.gguf
      for split in train dev; do
        [ -f "$W/sft/jordan_answer_$split.jsonl" ] || "$J" -q train chat-data --data "$D/$ds" --split $split --task answer --out "$W/sft/jordan_answer_$split.jsonl"
      done
      idx=$W/idx/jordan
      [ -d "$idx" ] || "$J" -q index --corpus "$D/$ds/corpus.jsonl" --out "$idx" --lang ar --analyzer-ar ar-snowball
      timeout "${TRAIN_TIMEOUT:-330}" "$J" train generator --config "$(gpu_config $name)" --device cuda 2>&1 | grep -v "^\s*$" | tail -15
      rc=${PIPESTATUS[0]}
      echo "$job: training took $(( $(date +%s) - t0 )) s (exit $rc)"
      run=$W/runs/sft_$name
      cp "$run/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null; cp "$run"/*.svg "$OUT/" 2>/dev/null
      tar cf "$OUT/$name.adapter.tar" -C "$run" best adapter 2>/dev/null
      # A run cut by the timeout resumes from its checkpoint when this script runs again;
      # evaluate only finished runs unless EVAL_UNFINISHED=1 (then with best/ as it stands).
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
