#!/usr/bin/env bash
# Builds the GPU path (`--features cuda,nccl`: candle's CUDA kernels, the NCCL collective, the
# launch code of our fused kernels, everything behind `#[cfg(feature = "cuda")]`) on any machine,
# without a GPU: the real CUDA 13.0 compiler from PyPI wheels (scripts/cuda-env.sh) compiles
# candle's kernels to PTX, and the binary and the CUDA tests link against stubs of the driver
# libraries. CI runs it so the GPU path cannot rot.
#
# It builds in the dev profile, next to the test build in target/debug: the dependencies there are
# compiled with opt-level 3 as in release (Cargo.toml), so only candle, cudarc and tinygpt are
# compiled again (~9 min cold on two cores, against ~21 min for a release build from nothing).
# The binaries it makes are not for running: scripts/gpu-build.sh builds the release ones that
# scripts/gpu-check.sh runs on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x "${TINYGPT_CUDA_DIR:-.cuda}/venv/bin/python" ]] || scripts/cuda-env.sh setup
scripts/cuda-env.sh cargo build --features cuda,nccl -p tinygpt --all-targets
scripts/cuda-env.sh cargo test --no-run --features nccl -p tinygpt-tests --test cuda
# The same Rust code against cudarc's CUDA 12.4 bindings (CUDARC_CUDA_VERSION overrides the
# version cudarc reads from nvcc), as a build with a CUDA 12 toolkit compiles it for drivers
# older than 580 (docs/GPU.md, "Which CUDA"): only cudarc, candle and tinygpt are compiled again
# (~75 s). candle's kernels are still compiled by CUDA 13.0's nvcc here: PyPI has no CUDA 12 nvcc.
CUDARC_CUDA_VERSION=12040 scripts/cuda-env.sh cargo build --features cuda,nccl -p tinygpt
