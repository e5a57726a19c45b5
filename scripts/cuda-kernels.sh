#!/usr/bin/env bash
# Compiles tinygpt's own CUDA kernels (tinygpt-lib/src/model/fused.cu) as a GPU run does at first
# use, on any machine, without a GPU: CUDA 13.0's NVRTC to PTX (scripts/nvrtc_ptx.py), for compute
# capability 8.0 (GPUs with bf16 tensor cores) and for NVRTC's default target (older GPUs), then
# ptxas to machine code for the H100/H200 (sm_90), the RTX 4090 (sm_89) and that default target,
# which also checks the tensor-core instructions' PTX.
# Then every kernel name that model/fused_cuda.rs launches must be an entry of the PTX, and every
# kernel of the PTX (the attention's warp and tensor-core kernels, the document scan, the norms,
# the softmax, GELU, the bias, the column sums, the cross-entropy, the sum of squares, AdamW and
# the embedding), run on the CPU by a small CUDA emulation
# (tests/cuda_emulated: a coroutine per GPU thread; shuffles, tensor-core products and
# __syncthreads as barriers), must equal references computed there in double, in value and
# gradient, with the threads of each block run one at a time between barriers in two orders
# (lowest index first, then highest), so that a missing barrier gives a wrong result.
# CI runs it next to scripts/cuda-check.sh (which builds the Rust side), so that neither
# half of the GPU path can rot unseen. The compiler comes from scripts/cuda-env.sh (PyPI wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
nvrtc() { scripts/cuda-env.sh bash -c 'ls "$CUDA_HOME"/lib/libnvrtc.so.13 2>/dev/null' || true; }
[[ -x "${TINYGPT_CUDA_DIR:-.cuda}/venv/bin/python" && -n "$(nvrtc)" ]] || scripts/cuda-env.sh setup
NVRTC="$(nvrtc)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
SRC=tinygpt-lib/src/model/fused.cu
# (libnvrtc loads its built-in headers, libnvrtc-builtins, from the library path)
LD_LIBRARY_PATH="$(dirname "$NVRTC")" python3 scripts/nvrtc_ptx.py "$NVRTC" "$SRC" "$OUT/fused.ptx" compute_80
LD_LIBRARY_PATH="$(dirname "$NVRTC")" python3 scripts/nvrtc_ptx.py "$NVRTC" "$SRC" "$OUT/fused_default.ptx"
for sm in 89 90; do
  scripts/cuda-env.sh ptxas -arch="sm_$sm" -o "$OUT/fused_sm$sm.cubin" "$OUT/fused.ptx"
done
default_sm="$(awk '/^\.target/{print $2; exit}' "$OUT/fused_default.ptx")"
scripts/cuda-env.sh ptxas -arch="$default_sm" -o "$OUT/fused_default.cubin" "$OUT/fused_default.ptx"
entries="$(grep -oE '\.entry [A-Za-z0-9_]+' "$OUT/fused.ptx" | awk '{print $2}' | sort -u)"
missing=0
# The names fused_cuda.rs passes to its launchers: whole, or with `_f32` and `_bf16` appended.
for name in $(grep -oE '"[a-z][a-z0-9_]*"' tinygpt-lib/src/model/fused_cuda.rs | tr -d '"' | sort -u); do
  [[ $name == tinygpt_fused || $name == compute_* ]] && continue  # the module, NVRTC's target
  if grep -qx "$name" <<<"$entries"; then continue; fi
  if grep -qx "${name}_f32" <<<"$entries" && grep -qx "${name}_bf16" <<<"$entries"; then continue; fi
  echo "error: model/fused_cuda.rs launches '$name', which $SRC does not define" >&2
  missing=1
done
# Every kernel is run by the emulation below: by its name, or by the template it instantiates
# (its name without `_f32`, `_bf16` or `_hd64`), called with `(` or `<`.
for name in $entries; do
  stem="$(sed -E 's/_(f32|bf16|hd[0-9]+)$//' <<<"$name")"
  grep -qw "$name" tests/cuda_emulated/*.cpp && continue
  grep -qE "\b$stem(<[^>]*>)?\(|\b$stem<" tests/cuda_emulated/*.cpp && continue
  echo "error: $SRC defines the kernel '$name', which tests/cuda_emulated does not run" >&2
  missing=1
done
[[ $missing == 0 ]] || exit 1
echo "fused.cu: NVRTC $(python3 -c 'import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); a,b=ctypes.c_int(),ctypes.c_int(); l.nvrtcVersion(ctypes.byref(a),ctypes.byref(b)); print(f"{a.value}.{b.value}")' "$NVRTC"): $(wc -l <<<"$entries") kernels compiled (compute_80 PTX) for sm_89 and sm_90, $(grep -c '\.entry' "$OUT/fused_default.ptx") without the tensor-core ones for $default_sm; every kernel fused_cuda.rs names is there, and tests/cuda_emulated runs each"
command -v g++ >/dev/null || { echo "error: g++ (C++20) is needed for tests/cuda_emulated: install it (apt-get install g++)" >&2; exit 1; }
for test in attention rows; do
  g++ -std=c++20 -O2 -pthread -x c++ "tests/cuda_emulated/$test.cpp" -o "$OUT/$test"
  "$OUT/$test"
done
