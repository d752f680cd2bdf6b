#!/usr/bin/env bash
# Creates bench/.venv with the peer and reference packages, and builds juris in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x bench/.venv/bin/python ] || python3 -m venv bench/.venv
bench/.venv/bin/pip install -q -r bench/requirements.txt
cargo build --release --locked -p juris
