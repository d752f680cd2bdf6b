#!/usr/bin/env bash
# The project's test command (README; .ci/run calls exactly this): installs what is missing,
# then checks formatting, lints with warnings as errors, and runs every test of the workspace.
# Tests that need ../shared/data skip, saying so, when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
