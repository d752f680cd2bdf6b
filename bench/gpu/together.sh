#!/usr/bin/env bash
# Runs several bench/gpu jobs side by side on the one lent GPU. Small-model training in
# candle is bound by kernel launches and host work, not by the GPU, so jobs sharing the
# card finish sooner together than one after another. Each job gets its own output folder
# and log under /root/work/out. Every 30 s and at the end, the logs, metrics and evaluation
# outputs are packed into $OUT/results.tar and the adapters under /root/work/runs are copied
# to $OUT at half size (bench/gpu/f16_adapters.py): a call returns at most 8 files, and what
# $OUT holds when a call is cut. GPU memory and utilization are sampled into gpu.csv.
#   usage: bash bench/gpu/together.sh "TRAIN_TIMEOUT=400 bash bench/gpu/issue5.sh smollm2" ...
#   (each job is the tail of an `env` command line, run with OUT set to its own folder)
set -uo pipefail
R=/root/work/out
FINAL=$OUT
mkdir -p "$R"
pack() {
  # ADAPTERS=0: leave the adapters on the machine (full fine-tunings are tens of MB each).
  [ "${ADAPTERS:-1}" = 0 ] || python3 bench/gpu/f16_adapters.py "$R/adapters" /root/work/runs/sft_*/best /root/work/runs/*/best-phase1 /root/work/runs/*/adapter 2>&1 | tail -3
  [ "${ADAPTERS:-1}" = 0 ] || for f in "$R"/adapters/*.safetensors; do
    case $f in */sft_*__adapter.safetensors) ;; *) [ -f "$f" ] && cp "$f" "$FINAL/" ;; esac
  done
  tar cf "$FINAL/results.tar.tmp" --exclude='*.safetensors' --exclude='*.adapter.tar' --exclude='*.adapters.tar' -C "$R" . \
    && mv "$FINAL/results.tar.tmp" "$FINAL/results.tar"
}
alive() { for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
# A job's folder and log: TAG=<name> in its line, else the script and its arguments (jobs
# of one script that differ only in their environment need a TAG each).
tag_of() { if [[ $1 =~ TAG=([A-Za-z0-9_]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo "$1" | sed -e 's#.*bench/gpu/##' -e 's#[^A-Za-z0-9]#_#g'; fi; }
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -l 10 >> "$R/gpu.csv" 2>&1 &
pids=()
for job in "$@"; do
  tag=$(tag_of "$job")
  mkdir -p "$R/$tag"
  ( eval "env OUT=$R/$tag $job" >> "$R/$tag.log" 2>&1 ) &
  pids+=($!)
  echo "started $job as $tag (pid $!)"
done
while alive "${pids[@]}"; do sleep 30; pack; done
pack
for job in "$@"; do tag=$(tag_of "$job"); echo "=== $job"; tail -25 "$R/$tag.log"; done
echo "peak GPU memory (MiB): $(awk -F', ' '{gsub(/ MiB/,"",$2); if ($2+0>m) m=$2+0} END {print m}' "$R/gpu.csv")"
