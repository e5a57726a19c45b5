#!/usr/bin/env bash
# Build tinygpt's GPU path (`--features cuda` / `cuda,nccl`) on any Linux machine, with or
# without a GPU. NVIDIA's PyPI wheels give nvcc and the CUDA headers (pinned to CUDA 13.0: the
# lent machines' driver rejects newer PTX); link-only stubs stand in for the driver libraries
# a CPU-only machine lacks. Everything lives in ./.cuda (git-ignored).
#
#   scripts/cuda-env.sh setup                  # once: wheels + stubs (~400 MB)
#   scripts/cuda-env.sh cargo build --release --features cuda,nccl
#
# The binary it builds links libcuda/libcublas/libnccl dynamically: run it where the real
# libraries are (a GPU machine, LD_LIBRARY_PATH at its CUDA 13 libraries). Never ship the stubs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_DIR="${TINYGPT_CUDA_DIR:-$ROOT/.cuda}"
VENV="$CUDA_DIR/venv"
STUBS="$CUDA_DIR/stubs"
CUDARC_VERSION="$(awk '/^name = "cudarc"/{getline; gsub(/[^0-9.]/,""); print}' "$ROOT/Cargo.lock")"
# nvcc and ptxas build candle's kernels; NVRTC (the run-time compiler, which compiles tinygpt's
# own kernels on the GPU) lets scripts/cuda-kernels.sh compile them exactly as a GPU run does.
# CUDA 12.4's NVRTC and ptxas (the oldest CUDA docs/GPU.md supports, for drivers older than 580)
# let it compile them as a CUDA 12 build would too; PyPI has no CUDA 12 nvcc, so a CUDA 12 build
# itself needs a toolkit of its own (docs/GPU.md, "Which CUDA").
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
        nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88
        nvidia-cuda-nvrtc-cu12==12.4.127 nvidia-cuda-nvcc-cu12==12.4.131)

cu13() { "$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))'; }

setup() {
  if [[ ! -x "$VENV/bin/python" ]]; then python3 -m venv "$VENV"; fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${WHEELS[@]}"
  local cu; cu="$(cu13)"
  # cudarc's sources list every function it may call; a stub library defines them all.
  (cd "$ROOT" && cargo fetch --quiet)
  local src; src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC_VERSION" | head -1)"
  mkdir -p "$STUBS/lib"
  local spec
  for spec in driver:cuda:libcuda.so.1 cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13 \
              curand:curand:libcurand.so.10 nccl:nccl:libnccl.so.2 nvrtc:nvrtc:libnvrtc.so.13; do
    IFS=: read -r module lib soname <<<"$spec"
    grep -oE 'pub unsafe fn [A-Za-z0-9_]+' "$src/src/$module/sys/mod.rs" | awk '{print $4}' | sort -u |
      sed 's/.*/int &(void){return 999;}/' > "$STUBS/$lib.c"
    gcc -shared -fPIC -Wl,-soname,"$soname" -o "$STUBS/lib/lib$lib.so" "$STUBS/$lib.c"
  done
  ln -sf "$cu/lib/libcudart.so.13" "$STUBS/lib/libcudart.so"
  echo "CUDA build environment ready in $CUDA_DIR (nvcc: $("$cu/bin/nvcc" --version | tail -1))"
}

case "${1:-}" in
  setup) setup ;;
  "") echo "usage: $0 setup | $0 COMMAND [ARGS...]" >&2; exit 2 ;;
  *)
    [[ -x "$VENV/bin/python" ]] || { echo "run '$0 setup' first" >&2; exit 2; }
    cu="$(cu13)"
    export CUDA_HOME="$cu" CUDA_PATH="$cu" CUDA_ROOT="$STUBS" PATH="$cu/bin:$PATH"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"   # H100 / H200; 89 for RTX 4090
    exec "$@" ;;
esac
