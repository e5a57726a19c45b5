#!/usr/bin/env bash
# Alternates the PyTorch reference and one or more tinygpt binaries on the CPU, ROUNDS times, and
# prints each one's tokens/s (sorted, median, mean) and, per binary, the median of the rounds'
# ratios to PyTorch. On a shared VM the same command varies by ±25% from minute to minute, so
# runs are alternated and compared round by round rather than timed once each.
#
#   scripts/cpu-vs-torch.sh ROUNDS PRESET BINARY...
#   e.g. scripts/cpu-vs-torch.sh 10 small target/release/tinygpt /tmp/tinygpt-before
#
# TORCH_PYTHON: a Python with PyTorch (default: python3). Build the binaries first, and run
# nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# < 3)); then
    echo "usage: $0 ROUNDS PRESET BINARY..." >&2
    exit 2
fi
rounds=$1 preset=$2
shift 2
py="${TORCH_PYTHON:-python3}"
"$py" -c 'import torch' 2>/dev/null || {
    echo "error: $py has no PyTorch; set TORCH_PYTHON to a Python that has it (pip install torch)" >&2
    exit 1
}
for b in "$@"; do
    [[ -x "$b" ]] || { echo "error: $b is not an executable tinygpt binary" >&2; exit 1; }
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for _ in $(seq "$rounds"); do
    OMP_NUM_THREADS="$(nproc)" "$py" scripts/torch_reference.py --preset "$preset" --batch-size 8 \
        --dtype f32 --mask document --steps 8 --warmup-steps 2 | tail -1 |
        "$py" -c 'import json,sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"]))' >>"$out/0"
    i=1
    for b in "$@"; do
        "$b" bench train --preset "$preset" --steps 8 --json | tail -1 |
            "$py" -c 'import json,sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"]))' >>"$out/$i"
        i=$((i + 1))
    done
done
"$py" - "$out" PyTorch "$@" <<'EOF'
import statistics as st, sys
folder, names = sys.argv[1], sys.argv[2:]
runs = [[float(x) for x in open(f"{folder}/{i}")] for i in range(len(names))]
for i, (name, r) in enumerate(zip(names, runs)):
    line = f"{name}: {' '.join(str(round(x)) for x in sorted(r))}  median {st.median(r):.0f}  mean {st.mean(r):.0f}"
    if i:
        line += f"  / PyTorch, median of the rounds' ratios: {st.median(a / b for a, b in zip(r, runs[0])):.2f}"
    print(line)
EOF
