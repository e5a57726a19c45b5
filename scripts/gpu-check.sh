#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine (no network there) by the `device` tool:
#
#   scripts/gpu-build.sh                     # here: builds gpu/tinygpt-gpu.tar.gz (CUDA binaries)
#   scripts/gpu-check.sh                     # there: CUDA tests, tinygpt vs PyTorch, a short
#                                            # real training run, a table
#
# It uses the CUDA 13 libraries of the machine's PyTorch install (libcuda comes from the driver).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT" gpu/bin
tar xzf gpu/tinygpt-gpu.tar.gz -C gpu/bin
BIN=gpu/bin/tinygpt
PY="${PYTHON:-python3}"

# CUDA libraries: every lib folder of the nvidia-* wheels and torch's own.
SITE="$("$PY" -c 'import site; print(" ".join(site.getsitepackages()))')"
LIBS="$(for s in $SITE; do ls -d "$s"/nvidia/*/lib "$s"/nvidia/cu13/lib "$s"/torch/lib 2>/dev/null; done | sort -u | tr '\n' ':')"
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:-}"
echo "== bundle built from $(cat gpu/bin/commit 2>/dev/null || echo 'an unknown commit')"
echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
case "$NAME" in
  *H100*PCIe*) PEAK=756 ;;
  *H100*|*H200*) PEAK=989 ;;   # SXM, bf16 dense
  *4090*) PEAK=165 ;;
  *A100*) PEAK=312 ;;
  *) PEAK=989 ;;
esac
echo "bf16 dense peak used for MFU: $PEAK TFLOP/s ($NAME)"
if ! ldd "$BIN" | grep -q "not found"; then echo "libraries: all found"; else ldd "$BIN" | grep "not found"; fi

echo "== CUDA tests (GPU vs CPU logits and gradients, bf16 vs f32, packed == separate, KV cache, fused kernels)"
gpu/bin/cuda-tests --test-threads 1 > "$OUT/cuda-tests.txt" 2>&1
TESTS=$?
tail -8 "$OUT/cuda-tests.txt"

run() { echo "\$ $*"; timeout 240 "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -3; }
# The training-step benchmark, the same every time; only the environment differs.
BENCH=(bench train --preset seed-61m --device cuda:0 --dtype bf16 --batch-size 32 --steps 20 --warmup-steps 3 --peak-tflops "$PEAK" --json)
echo "== tinygpt: seed-61m training step throughput"
run "$BIN" "${BENCH[@]}"
OURS="$(tail -1 "$OUT/log.txt")"
echo "== the same with the fused CUDA attention on tensor cores (opt-in until checked here: TINYGPT_CUDA_ATTENTION=fused)"
run env TINYGPT_CUDA_ATTENTION=fused "$BIN" "${BENCH[@]}"
OURS_FUSED="$(tail -1 "$OUT/log.txt")"
echo "== the same with its warp kernels instead (TINYGPT_CUDA_ATTENTION=fused-warp)"
run env TINYGPT_CUDA_ATTENTION=fused-warp "$BIN" "${BENCH[@]}"
OURS_WARP="$(tail -1 "$OUT/log.txt")"
echo "== the same with CUDA's and cudarc's allocation defaults (TINYGPT_CUDA_DEFAULTS=1: events per buffer, pool emptied at each sync)"
run env TINYGPT_CUDA_DEFAULTS=1 "$BIN" "${BENCH[@]}"
OURS_DEFAULTS="$(tail -1 "$OUT/log.txt")"
echo "== PyTorch reference, same model and batch"
run "$PY" scripts/torch_reference.py --preset seed-61m --batch-size 32 --steps 20 --mask document --peak-tflops "$PEAK"
TORCH_DOC="$(tail -1 "$OUT/log.txt")"
TORCH_CAUSAL=""
if [[ -n "${GPU_CHECK_CAUSAL:-}" ]]; then   # PyTorch without the document mask: its best case
  run "$PY" scripts/torch_reference.py --preset seed-61m --batch-size 32 --steps 20 --mask causal --peak-tflops "$PEAK"
  TORCH_CAUSAL="$(tail -1 "$OUT/log.txt")"
fi

# A short real training run: seed-61m, bf16, the TinyStories sample (GPT-Neo tokenizer), 40
# steps of 8,192 tokens; the loss must fall. Once as by default, once with the fused attention.
train() {  # $1: a label, then an optional `env VAR=value` prefix
  local label="$1"; shift
  echo "== a short real training run ($label): seed-61m, bf16, TinyStories sample, 40 steps of 8,192 tokens"
  rm -rf "$OUT/run-$label"
  run "$@" "$BIN" train --preset seed-1gpu --data gpu/bin/data --out "$OUT/run-$label" --batch-size 16 --grad-accum 1 \
    --max-steps 40 --eval-interval 20 --peak-tflops "$PEAK"
  "$PY" - "$OUT/run-$label/metrics.jsonl" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
first, last = r[0]["loss"], r[-1]["loss"]
val = [x["val_loss"] for x in r if "val_loss" in x]
peak = max((x.get("gpu_peak_memory") or 0 for x in r), default=0) / 2**30
print(f"train loss {first:.3f} -> {last:.3f}; val loss {val}; {r[-1]['tokens_per_s']:.0f} tok/s, MFU {100 * r[-1].get('mfu', 0):.1f}%, "
      f"GPU memory peak {peak:.2f} GiB")
sys.exit(0 if last < first - 2.0 else 1)
PY
}
train composed env
RUN=$?
train fused env TINYGPT_CUDA_ATTENTION=fused
RUN_FUSED=$?

# The profile and the kernel list below run with the attention GPU_CHECK_ATTENTION picks (default
# `fused`, the tensor-core kernels; `composed` for the default path).
ATTENTION="${GPU_CHECK_ATTENTION:-fused}"
[[ $ATTENTION == composed ]] && ATTENTION=""
if [[ -n "${GPU_CHECK_PROFILE:-}" ]]; then   # where tinygpt's step time goes, piece by piece
  echo "== tinygpt profile (ms per call, forward + backward; TINYGPT_CUDA_ATTENTION=$ATTENTION)"
  TINYGPT_CUDA_ATTENTION="$ATTENTION" timeout 180 "$BIN" bench train --preset seed-61m --device cuda:0 --dtype bf16 --batch-size 32 \
    --steps 3 --warmup-steps 1 --peak-tflops "$PEAK" --profile 2>&1 | tee "$OUT/profile.txt" | tail -24
fi

if [[ -n "${GPU_CHECK_NSYS:-}" ]]; then   # the GPU kernels of a few steps, by total time (Nsight Systems)
  NSYS="$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/*/bin/nsys /usr/lib/nsight-systems/bin/nsys 2>/dev/null | head -1)"
  if [[ -n "$NSYS" ]]; then
    echo "== kernels of 5 training steps ($NSYS; TINYGPT_CUDA_ATTENTION=$ATTENTION)"
    TINYGPT_CUDA_ATTENTION="$ATTENTION" timeout 240 "$NSYS" profile -o /tmp/tinygpt-nsys --force-overwrite true -t cuda "$BIN" bench train --preset seed-61m \
      --device cuda:0 --dtype bf16 --batch-size 32 --steps 5 --warmup-steps 2 > /dev/null 2>&1
    timeout 120 "$NSYS" stats -q --report cuda_gpu_kern_sum --format csv /tmp/tinygpt-nsys.nsys-rep 2>/dev/null \
      > "$OUT/kernels.csv"
    "$PY" - "$OUT/kernels.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.strip() and not l.startswith("Generating"))]
for r in rows[:25]:
    print(f"{float(r['Time (%)']):5.1f}%  {float(r['Total Time (ns)']) / 1e6:9.2f} ms  {int(r['Instances']):7d}x  {r['Name'][:90]}")
PY
  else
    echo "== nsys: not found on this machine"
  fi
fi

echo "== summary ($NAME)"
"$PY" - "$TORCH_DOC" "$OURS" "$OURS_FUSED" "$OURS_WARP" "$OURS_DEFAULTS" "$TORCH_CAUSAL" <<'PY'
import json, sys
rows = []
labels = ["pytorch bf16 sdpa (document mask)", "tinygpt bf16 (document mask)", "tinygpt bf16, fused attention (mma)",
          "tinygpt bf16, fused attention (warps)", "tinygpt bf16, CUDA alloc defaults", "pytorch bf16 sdpa (causal only)"]
for label, line in zip(labels, sys.argv[1:]):
    try:
        r = json.loads(line)
        # peak memory of tensors: tinygpt reports bytes, the PyTorch reference GiB
        gib = r["peak_memory"] / 2**30 if r.get("peak_memory") else r.get("peak_mem_gib", float("nan"))
        rows.append((label, r["tokens_per_s"], r["mfu"], gib))
    except Exception:
        rows.append((label, float("nan"), float("nan"), float("nan")))
print(f"{'implementation':38} {'tokens/s':>12} {'MFU':>7} {'vs torch(doc)':>14} {'peak GiB':>9}")
for label, tps, mfu, gib in rows:
    print(f"{label:38} {tps:12.0f} {100 * mfu:6.1f}% {tps / rows[0][1]:13.2f}x {gib:9.1f}")
PY
# What decides the default attention on CUDA (docs/GPU.md): the fused kernels become the default
# once they pass their test on a GPU and run faster than the composed attention.
FUSED_TEST="$(grep -E 'fused_cuda_attention_equals_the_cpu_kernel_in_value_and_gradient \.\.\. ' "$OUT/cuda-tests.txt" | awk '{print $NF}')"
"$PY" - "${FUSED_TEST:-not run}" "$OURS" "$OURS_FUSED" "$RUN_FUSED" <<'PY'
import json, sys
test, composed, fused, run = sys.argv[1:5]
try:
    speedup = f"{json.loads(fused)['tokens_per_s'] / json.loads(composed)['tokens_per_s']:.2f}x the composed attention's tokens/s"
except Exception:
    speedup = "no speed measured"
print(f"fused attention (tensor cores): test {test}; {speedup}; its training run's loss "
      + ("fell" if run == "0" else "did NOT fall"))
PY
[[ $RUN == 0 ]] || echo "FAILED: the training run's loss did not fall"
[[ $RUN_FUSED == 0 ]] || echo "FAILED: the training run with the fused attention: its loss did not fall"
exit $(( TESTS || RUN || RUN_FUSED ))
