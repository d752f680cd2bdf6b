#!/usr/bin/env bash
# The project's test command (README; .ci/run calls exactly this): installs what is missing,
# then checks formatting, lints with warnings as errors, and runs every test of the workspace.
# Tests that need ../shared/data skip, saying so, when it is absent. The model presets are
# fetched (once, ~350 MB) so that the encoder and decoder parity tests run against the real
# weights; set JURIS_SKIP_MODELS=1 to skip that download (those tests then say "skipped").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if [[ -z "${JURIS_SKIP_MODELS:-}" ]]; then
  bash scripts/fetch-models.sh
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
