#!/usr/bin/env bash
# Runs on the lent GPU machine (see ../shared/gpu/README.md). Reassembles what earlier calls
# staged under /root/stage (parts of one tar of models/ and the datasets, each call carrying
# one part, because one call carries at most 64 MiB), unpacks the carried CUDA binaries, and
# links models/ so the bench scripts find them. Idempotent.
#   usage (in the repo copy there): bash bench/gpu/stage.sh [part-folder] [sha256-of-tar]
# The committed adapters (bench/adapters, ~65 MB) alone fill what one call may carry: call the
# device from a throwaway branch that `git rm`s the adapters a run does not read (e.g. all but
# coliee_ja_*), so each call carries ~45 MB of a part; switch back before committing.
set -euo pipefail
S=/root/stage
mkdir -p "$S"
if [ -n "${1:-}" ] && [ -d "$1" ]; then cp "$1"/* "$S"/; fi
if [ -n "${2:-}" ] && [ ! -d "$S/x" ]; then
  cat "$S"/part* > "$S/payload.tar"
  echo "$2  $S/payload.tar" | sha256sum -c -
  mkdir -p "$S/x" && tar xf "$S/payload.tar" -C "$S/x" && rm -f "$S/payload.tar" "$S"/part*
fi
if [ -d .gpu/bin ]; then
  for f in .gpu/bin/*.gz; do gunzip -c "$f" > "$S/$(basename "$f" .gz)"; chmod +x "$S/$(basename "$f" .gz)"; done
fi
[ -d "$S/x/models" ] && ln -sfn "$S/x/models" models
ls "$S" "$S/x" 2>/dev/null || true
