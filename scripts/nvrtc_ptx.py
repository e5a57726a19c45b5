#!/usr/bin/env python3
"""Compiles a CUDA source to PTX with NVRTC, the run-time compiler, the way a GPU run of tinygpt
compiles model/fused.cu at first use (model/fused_cuda.rs: cudarc's `compile_ptx_with_opts`,
with `--gpu-architecture=compute_80` on GPUs with bf16 tensor cores, no option otherwise).

NVRTC is not nvcc: it has no implicit `cuda_runtime.h` and its own built-in headers, so a
source that nvcc compiles may still fail here. Needs only libnvrtc (scripts/cuda-env.sh installs
CUDA 13.0's from PyPI), no GPU.

    nvrtc_ptx.py LIBNVRTC SOURCE.cu OUT.ptx [ARCH]      # ARCH e.g. compute_80; none: NVRTC's default
"""
import ctypes, sys


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    lib_path, source, out = sys.argv[1:4]
    arch = sys.argv[4] if len(sys.argv) == 5 else None
    nvrtc = ctypes.CDLL(lib_path)
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(result, what):
        if result != 0:
            sys.exit(f"{source}: {what}: {nvrtc.nvrtcGetErrorString(result).decode()}")

    program = ctypes.c_void_p()
    with open(source, "rb") as f:
        text = f.read()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), text, None, 0, None, None), "nvrtcCreateProgram")
    options = [f"--gpu-architecture={arch}".encode()] if arch else []
    result = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    if log.value.strip():
        print(log.value.decode(), file=sys.stderr)
    check(result, f"NVRTC ({arch or 'its default architecture'})")
    nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    check(nvrtc.nvrtcGetPTX(program, ptx), "nvrtcGetPTX")
    with open(out, "wb") as f:
        f.write(ptx.value)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


if __name__ == "__main__":
    main()
