#!/usr/bin/env bash
# The main job on the embedded default (README): builds juris, writes the sample law corpus
# (English, Japanese, Arabic), indexes it, answers its sample questions with ranked articles
# and evaluates the ranking. Arguments are passed to `juris demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -p juris
exec ./target/release/juris demo "$@"
