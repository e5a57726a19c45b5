#!/usr/bin/env bash
# Compiles tinygpt's own CUDA kernels (tinygpt-lib/src/model/fused.cu) as a GPU run does at first
# use, on any machine, without a GPU: NVRTC to PTX (scripts/nvrtc_ptx.py), for compute capability
# 8.0 (GPUs with bf16 tensor cores) and for NVRTC's default target (older GPUs), then ptxas to
# machine code for the H100/H200 (sm_90), the RTX 4090 (sm_89) and that default target, which also
# checks the tensor-core instructions' PTX. Twice: with CUDA 13.0, which the default build uses,
# and with CUDA 12.4, the oldest CUDA a build may use (docs/GPU.md, "Which CUDA").
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
PYTHON="${TINYGPT_CUDA_DIR:-.cuda}/venv/bin/python"
# The folder of a CUDA component from the PyPI wheels: `cu13` (all of CUDA 13), `cuda_nvrtc` and
# `cuda_nvcc` (CUDA 12's, one folder each).
wheel_dir() { "$PYTHON" -c 'import nvidia, os, sys; print(os.path.join(list(nvidia.__path__)[0], sys.argv[1]))' "$1" 2>/dev/null || true; }
ready() { [[ -x "$PYTHON" && -e "$(wheel_dir cu13)/lib/libnvrtc.so.13" && -e "$(wheel_dir cuda_nvrtc)/lib/libnvrtc.so.12" ]]; }
ready || scripts/cuda-env.sh setup
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
SRC=tinygpt-lib/src/model/fused.cu

# compile NAME LIBNVRTC PTXAS: fused.cu → $OUT/NAME.ptx (compute_80) and $OUT/NAME_default.ptx
# (NVRTC's default target), then machine code; prints what it compiled.
compile() {
  local name="$1" nvrtc="$2" ptxas="$3" sm default_sm version
  # (libnvrtc loads its built-in headers, libnvrtc-builtins, from the library path)
  LD_LIBRARY_PATH="$(dirname "$nvrtc")" python3 scripts/nvrtc_ptx.py "$nvrtc" "$SRC" "$OUT/$name.ptx" compute_80
  LD_LIBRARY_PATH="$(dirname "$nvrtc")" python3 scripts/nvrtc_ptx.py "$nvrtc" "$SRC" "$OUT/${name}_default.ptx"
  for sm in 89 90; do
    "$ptxas" -arch="sm_$sm" -o "$OUT/${name}_sm$sm.cubin" "$OUT/$name.ptx"
  done
  default_sm="$(awk '/^\.target/{print $2; exit}' "$OUT/${name}_default.ptx")"
  "$ptxas" -arch="$default_sm" -o "$OUT/${name}_default.cubin" "$OUT/${name}_default.ptx"
  version="$(python3 -c 'import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); a,b=ctypes.c_int(),ctypes.c_int(); l.nvrtcVersion(ctypes.byref(a),ctypes.byref(b)); print(f"{a.value}.{b.value}")' "$nvrtc")"
  echo "fused.cu: NVRTC $version: $(grep -c '\.entry' "$OUT/$name.ptx") kernels compiled (compute_80 PTX) for sm_89 and sm_90, $(grep -c '\.entry' "$OUT/${name}_default.ptx") without the tensor-core ones for $default_sm"
}
compile cuda13 "$(wheel_dir cu13)/lib/libnvrtc.so.13" "$(wheel_dir cu13)/bin/ptxas"
compile cuda12 "$(wheel_dir cuda_nvrtc)/lib/libnvrtc.so.12" "$(wheel_dir cuda_nvcc)/bin/ptxas"
entries="$(grep -oE '\.entry [A-Za-z0-9_]+' "$OUT/cuda13.ptx" | awk '{print $2}' | sort -u)"
[[ "$entries" == "$(grep -oE '\.entry [A-Za-z0-9_]+' "$OUT/cuda12.ptx" | awk '{print $2}' | sort -u)" ]] ||
  { echo "error: NVRTC 12 and 13 compiled different kernels from $SRC" >&2; exit 1; }
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
echo "fused.cu: every kernel fused_cuda.rs names is there, and tests/cuda_emulated runs each of the $(wc -l <<<"$entries")"
command -v g++ >/dev/null || { echo "error: g++ (C++20) is needed for tests/cuda_emulated: install it (apt-get install g++)" >&2; exit 1; }
for test in attention rows; do
  g++ -std=c++20 -O2 -pthread -x c++ "tests/cuda_emulated/$test.cpp" -o "$OUT/$test"
  "$OUT/$test"
done
