#!/usr/bin/env bash
# Builds the CUDA binaries that scripts/gpu-check.sh runs on a GPU machine, into
# gpu/tinygpt-gpu.tar.gz (git-ignored; small enough for the device tool to carry).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d .cuda/venv ]] || scripts/cuda-env.sh setup
FEATURES="${FEATURES:-cuda,nccl}"
scripts/cuda-env.sh cargo build --release --features "$FEATURES" -p tinygpt --bin tinygpt
TEST="$(scripts/cuda-env.sh cargo test --release --features "$FEATURES" -p tinygpt-tests --test cuda --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda": print(m["executable"])')"
rm -rf gpu/stage && mkdir -p gpu/stage
cp target/release/tinygpt gpu/stage/tinygpt
cp "$TEST" gpu/stage/cuda-tests
strip gpu/stage/tinygpt gpu/stage/cuda-tests
# The TinyStories sample as GPT-Neo shards, for a short real training run on the GPU machine.
cargo build -q -p tinygpt --bin tinygpt   # the CPU debug build: it runs here
target/debug/tinygpt prepare --source "${TINYGPT_SHARED:-../shared}/data/tinystories" \
  --tokenizer "${TINYGPT_SHARED:-../shared}/data/tokenizers/gpt2/tokenizer.json" --out gpu/stage/data --quiet
# Which source the bundle was built from, so that a later session can tell whether it is stale.
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!gpu' || echo ' (with uncommitted changes)')" > gpu/stage/commit
tar czf gpu/tinygpt-gpu.tar.gz -C gpu/stage .
ls -la gpu/tinygpt-gpu.tar.gz
