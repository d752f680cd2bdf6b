#!/usr/bin/env bash
# GPU numbers of issue 3, on the lent H100: encoding throughput of juris (candle CUDA, f32)
# beside sentence-transformers / transformers (PyTorch CUDA, f32) in the same run, and
# zero-shot dense + hybrid quality with every model on the legal datasets, embedding and
# query encoding on the GPU. Expects bench/gpu/stage.sh to have run. Results go to $OUT.
#   usage: bash bench/gpu/issue3.sh [speed|quality|all]
set -uo pipefail
S=/root/stage
export PYTHONUNBUFFERED=1
what=${1:-all}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ "$what" = speed ] || [ "$what" = all ]; then
  timeout 300 python3 bench/encode_speed.py --device cuda --bin "$S/encode_speed" \
      --data "$S/x/data" --runs 5 --threads 8 2>&1 | tee "$OUT/encode_speed_cuda.log"
  cp bench/out/encode_speed_cuda.json "$OUT/" 2>/dev/null
fi
if [ "$what" = quality ] || [ "$what" = all ]; then
  JURIS_BIN="$S/juris" timeout "${QUALITY_TIMEOUT:-420}" python3 bench/hybrid_quality.py \
      --data "$S/x/data" --device cuda --no-peer \
      --datasets "${DATASETS:-coliee_statute_en,coliee_statute_ja,jordan_law_qa_ar,najiz_faq_ar}" \
      --models "${MODELS:-smollm2,gemma3-270m}" 2>&1 | tee "$OUT/hybrid_cuda.log"
  cp bench/out/hybrid.json "$OUT/hybrid_cuda.json" 2>/dev/null
fi
exit 0
