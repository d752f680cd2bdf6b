#!/usr/bin/env bash
# Creates bench/.venv with the peer and reference packages, and builds juris in release mode.
#   bash bench/setup.sh          # BM25 and metric peers (bm25s, rank_bm25, pytrec_eval, ranx)
#   bash bench/setup.sh --ml     # also PyTorch, sentence-transformers, transformers, gguf, and
#                                # the model presets (scripts/fetch-models.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x bench/.venv/bin/python ] || python3 -m venv bench/.venv
bench/.venv/bin/pip install -q -r bench/requirements.txt
if [[ "${1:-}" == "--ml" ]]; then
  bench/.venv/bin/pip install -q -r bench/requirements-ml.txt
  bash scripts/fetch-models.sh
fi
cargo build --release --locked -p juris
