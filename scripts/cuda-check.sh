#!/usr/bin/env bash
# Type-checks the GPU path (`--features cuda,nccl`: the NCCL collective, the fused CUDA kernels'
# launch code, everything behind `#[cfg(feature = "cuda")]`) on any machine, without CUDA: a fake
# `nvcc` answers the build scripts of candle and cudarc, whose GPU code is not compiled. CI runs it
# so the GPU path cannot rot; it builds no binary (scripts/cuda-env.sh makes real ones).
set -euo pipefail
cd "$(dirname "$0")/.."
FAKE="$(mktemp -d)"
trap 'rm -rf "$FAKE"' EXIT
mkdir -p "$FAKE/bin" "$FAKE/cuda/lib64" "$FAKE/cuda/include"
cat > "$FAKE/bin/nvcc" <<'NVCC'
#!/usr/bin/env bash
# A stand-in for nvcc: reports CUDA 13.0.
case " $* " in *" --version "*)
  printf '%s\n' "nvcc: NVIDIA (R) Cuda compiler driver (a stand-in)" "" "" \
    "Cuda compilation tools, release 13.0, V13.0.88" "Build cuda_13.0"
  exit 0 ;;
esac
# Writes what a real one would, empty: the -o file, or with --ptx one NAME.ptx per NAME.cu in
# the --output-directory.
prev="" outdir="" ptx="" sources=()
for a in "$@"; do
  case $prev in -o) : > "$a" ;; --output-directory) outdir=$a ;; esac
  case $a in --ptx) ptx=1 ;; *.cu) sources+=("$a") ;; esac
  prev=$a
done
if [[ -n $ptx ]]; then
  for cu in "${sources[@]}"; do : > "${outdir:-.}/$(basename "${cu%.cu}").ptx"; done
fi
NVCC
chmod +x "$FAKE/bin/nvcc"
PATH="$FAKE/bin:$PATH" CUDA_ROOT="$FAKE/cuda" CUDA_PATH="$FAKE/cuda" CUDA_HOME="$FAKE/cuda" \
  CUDA_COMPUTE_CAP=90 cargo check --target-dir target/cuda-check --workspace --all-targets --features tinygpt/nccl,tinygpt-tests/nccl
