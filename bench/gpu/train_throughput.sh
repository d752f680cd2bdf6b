#!/usr/bin/env bash
# Issue 4: training throughput, juris vs sentence-transformers (PyTorch), side by side on
# one machine: MiniLM with LoRA (r 16, alpha 32, dropout 0.05 on q/k/v/attention-out/FFN
# in/FFN out), 8 queries a step, each with its positive, 3 BM25 hard negatives and 1 random
# passage (the same negatives file on both sides), in-batch negatives, InfoNCE at
# temperature 0.05, queries ≤ 64 tokens and passages ≤ 128, strict f32 (no TF32) on both,
# AdamW with warmup/decay and clipping at 1.0. Runs alternate juris, ST, juris, ST, juris,
# ST; each counts the optimizer steps after the first WARMUP alone (juris: the train_s /
# samples / tokens counters of its metrics.jsonl, which leave out model loading, BM25
# mining and checkpoints; ST: per-step clocks with torch.cuda.synchronize). Medians of the
# runs, the ratio juris/ST and model FLOPs utilization: $OUT/train_throughput.json and a
# Markdown table on stdout; the raw records (juris metrics.jsonl, ST JSON, configs) in
# $OUT/train_throughput_raw.tar. Then (time left, DROPOUT0=1) one run a side with the adapter dropout at 0,
# which shows what the dropout masks cost (drawn by one kernel on the GPU since session 6).
#
#   usage (repo root):  bash bench/gpu/train_throughput.sh [device] 2>&1 | tee $OUT/train_throughput.log
#                       device: cuda (default) or cpu
#   env: JURIS (binary; default /root/stage/juris), DATA (BEIR folder; default
#        /root/stage/x/data/coliee_statute_en), MODEL (default models/minilm), STEPS (per run,
#        default 70), WARMUP (steps left out, default 10), RUNS (per side, default 3),
#        RUN_TIMEOUT (s per run, default 100), BUDGET (s for the whole script, default 420),
#        DROPOUT0 (1: the dropout-0 pair too; default 1), BATCH (queries a step, default 8),
#        EPOCHS (of the lr schedule, default 1; raise it with BATCH so STEPS fit), PY (default
#        python3), OUT, PRECISION (juris's [train] precision: f32 default, bf16 on CUDA),
#        ST (0: juris runs only, e.g. PRECISION=bf16 beside an f32 run; samples/s per run
#        printed instead of the comparison table). PRECISION=bf16 with the ST side runs
#        sentence-transformers under bf16 autocast (--bf16) and reports MFU against the bf16 peak.
#   CPU smoke test here: JURIS=target/release/juris DATA=/work/shared/data/coliee_statute_en \
#        STEPS=4 WARMUP=1 RUNS=1 OUT=/tmp/tput PY=bench/.venv/bin/python \
#        bash bench/gpu/train_throughput.sh cpu
set -uo pipefail
DEVICE=${1:-cuda}
JURIS=${JURIS:-/root/stage/juris}
DATA=${DATA:-/root/stage/x/data/coliee_statute_en}
MODEL=${MODEL:-models/minilm}
STEPS=${STEPS:-70}
WARMUP=${WARMUP:-10}
RUNS=${RUNS:-3}
RUN_TIMEOUT=${RUN_TIMEOUT:-100}
BUDGET=${BUDGET:-420}
DROPOUT0=${DROPOUT0:-1}
BATCH=${BATCH:-8}
EPOCHS=${EPOCHS:-1}
PY=${PY:-python3}
OUT=${OUT:-/tmp/train_throughput_out}
PRECISION=${PRECISION:-f32}
ST_SIDE=${ST:-1}
WORK=${WORK:-/tmp/train_throughput_work}
export PYTHONUNBUFFERED=1
ST="$PY bench/train_throughput_st.py"
mkdir -p "$OUT"
rm -rf "$WORK"; mkdir -p "$WORK"

[ -x "$JURIS" ] || { echo "no juris binary at $JURIS"; exit 1; }
[ -f "$DATA/corpus.jsonl" ] || { echo "no BEIR data at $DATA"; exit 1; }
[ -f "$MODEL/model.safetensors" ] || { echo "no model at $MODEL"; exit 1; }
if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; fi
DEVNAME=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if '$DEVICE' != 'cpu' else 'cpu')" 2>/dev/null || echo "$DEVICE")
$PY -c "import torch, transformers, sentence_transformers as s; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sentence-transformers', s.__version__)"
$PY -c "import peft; print('peft', peft.__version__)" 2>/dev/null || echo "peft not installed: the ST side uses its own LoRA layers"
"$JURIS" --version 2>/dev/null || true

# One config, the training part of bench/train/gpu/coliee_en_minilm.toml's phase 1, without
# the dev evaluation; every step logged (the counters are cumulative).
config() { # out dropout
  cat <<EOF
[model]
path = "$MODEL"
max_len = 128
query_max_len = 64

[lora]
r = 16
alpha = 32
dropout = $2
target_modules = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]

[data]
dir = "$DATA"
train_split = "train"

[train]
out = "$1"
seed = 42
batch_size = $BATCH
grad_accum = 1
lr = 3e-4
weight_decay = 0.01
warmup_ratio = 0.1
max_grad_norm = 1.0
temperature = 0.05
checkpoint_every = 0
log_every = 1
metric = "ndcg@10"
eval_batch_size = 128
$([ "$PRECISION" != f32 ] && echo "precision = \"$PRECISION\"")

[[phase]]
name = "phase1"
epochs = $EPOCHS
negatives = "bm25"
top_k = 30
hard_negatives = 3
random_negatives = 1
EOF
}

NEG=$WORK/negatives-phase1.jsonl
run_juris() { # tag dropout
  local dir=$WORK/juris-$1
  mkdir -p "$dir"
  config "$dir" "$2" >"$WORK/juris-$1.toml"
  # All runs after the first train on the negatives the first one mined.
  [ -f "$NEG" ] && cp "$NEG" "$dir/"
  local t0=$SECONDS
  timeout "$RUN_TIMEOUT" "$JURIS" -q train retriever --config "$WORK/juris-$1.toml" --device "$DEVICE" --max-steps "$STEPS" 2>&1 | grep -v '^\s*$' | tail -4
  echo "juris $1: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s wall (loading and BM25 included)"
  [ -f "$NEG" ] || cp "$dir/negatives-phase1.jsonl" "$NEG" 2>/dev/null
  grep -q '"train_s"' "$dir/metrics.jsonl" 2>/dev/null ||
    echo "juris $1: no train_s in metrics.jsonl: the binary predates the throughput counters (build branch tput) or no step finished"
  JURIS_FILES+=("$dir/metrics.jsonl")
}
run_st() { # tag dropout
  local t0=$SECONDS
  timeout "$RUN_TIMEOUT" $ST train --model "$MODEL" --data "$DATA" --negatives "$NEG" --device "$DEVICE" \
    --steps "$STEPS" --warmup-steps "$WARMUP" --batch-size "$BATCH" --epochs "$EPOCHS" --lora-dropout "$2" \
    $([ "$PRECISION" = bf16 ] && echo --bf16) --json-out "$WORK/st-$1.json" 2>&1 | grep -v '^\s*$' | tail -4
  echo "st $1: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s wall (imports and loading included)"
  ST_FILES+=("$WORK/st-$1.json")
}
summarize() { # json-name task
  $ST summarize --model "$MODEL" --warmup-steps "$WARMUP" --peak "$([ "$PRECISION" = bf16 ] && echo bf16 || echo fp32)" --device-name "$DEVNAME" \
    --task "$2" --out "$OUT/$1" --juris "${JURIS_FILES[@]}" --st "${ST_FILES[@]}"
}

if [ "$ST_SIDE" = 0 ]; then
  # juris alone: samples/s of the optimizer steps after the first WARMUP, per run.
  for i in $(seq 1 "$RUNS"); do
    JURIS_FILES=()
    run_juris "$PRECISION-$i" 0.05
    $PY - "${JURIS_FILES[0]}" "$WARMUP" "$PRECISION" <<'PYEOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"train_s"' in l and '"loss"' in l]
w = int(sys.argv[2])
base, last = recs[w - 1], recs[-1]
secs = last["train_s"] - base["train_s"]
n = last["samples"] - base["samples"]
print(f"juris {sys.argv[3]}: steps {base['step'] + 1}-{last['step']}: {n} samples in {secs:.2f} s = "
      f"{n / secs:.1f} samples/s; loss at step {last['step']}: {last['loss']:.4f}")
PYEOF
  done
  echo "total $SECONDS s"
  exit 0
fi

JURIS_FILES=(); ST_FILES=()
for i in $(seq 1 "$RUNS"); do
  if [ $i -gt 1 ] && [ $((SECONDS + 2 * RUN_TIMEOUT)) -gt "$BUDGET" ]; then echo "budget: stopping after $((i - 1)) runs a side"; break; fi
  run_juris "$i" 0.05
  [ -f "$NEG" ] || { echo "juris wrote no negatives file; stopping"; exit 1; }
  run_st "$i" 0.05
done
summarize train_throughput.json "MiniLM LoRA r16 (dropout 0.05), batch $BATCH queries × (1 positive + 3 hard + 1 random), max len 64/128, $([ "$PRECISION" = bf16 ] && echo "bf16 mixed precision (juris precision = bf16, PyTorch autocast)" || echo "strict f32")"

if [ "$DROPOUT0" = 1 ] && [ $((SECONDS + 2 * RUN_TIMEOUT)) -le "$BUDGET" ]; then
  JURIS_FILES=(); ST_FILES=()
  run_juris d0 0
  run_st d0 0
  summarize train_throughput_dropout0.json "the same with adapter dropout 0 (one run a side)"
else
  echo "dropout-0 pair skipped (DROPOUT0=$DROPOUT0, $SECONDS s used of $BUDGET)"
fi
tar cf "$OUT/train_throughput_raw.tar" -C "$WORK" --exclude='bm25-index' --exclude='adapter' --exclude='checkpoint' --exclude='juris-*/negatives-phase1.jsonl' . 2>/dev/null
echo "total $SECONDS s"
