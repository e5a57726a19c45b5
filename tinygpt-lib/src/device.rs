//! Choosing where tensors live: `--device cpu`, `cuda` or `cuda:N`.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Parses a device spec. `cuda:N` needs a binary built with `--features cuda`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let index = match spec {
        "cpu" => {
            tune_cpu();
            return Ok(Device::Cpu);
        }
        "cuda" => 0,
        s => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => {
                return Err(Error::Invalid(format!(
                    "--device {spec}: expected cpu, cuda or cuda:N (e.g. cuda:0)"
                )))
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Invalid(format!(
            "--device {spec}: this binary was built without CUDA; build it with `scripts/cuda-env.sh cargo build --release --features cuda`"
        )));
    }
    let device = Device::new_cuda(index)
        .map_err(|e| Error::Invalid(format!("--device {spec}: cannot open the GPU ({e})")))?;
    allow_tf32(std::env::var("TINYGPT_TF32").as_deref() != Ok("0"));
    Ok(device)
}

/// Lets the GPU's f32 matrix products use TF32 tensor cores: inputs rounded to 10 bits of
/// mantissa, products summed in f32 (PyTorch's `torch.backends.cuda.matmul.allow_tf32 = True`).
/// An H100's TF32 tensor cores have about 7× its f32 peak (NVIDIA's figures; not measured here).
/// bf16 compute (`--dtype auto`) does not need it: its products are bf16 already. A device opened by
/// [`parse_device`] turns it on unless the environment says `TINYGPT_TF32=0`. Process-wide; the
/// CPU ignores it.
pub fn allow_tf32(on: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(on);
}

/// Parses `--devices`: a comma-separated list of `cpu`, `cuda` or `cuda:N`, where a bare number
/// after a `cuda:N` is another GPU (`cuda:0,1` = `cuda:0,cuda:1`). One data-parallel worker runs
/// per entry; `cpu,cpu` gives two CPU workers (they share the cores: for testing the data-parallel
/// path, not for speed).
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    let mut devices = vec![];
    for item in spec.split(',').map(str::trim) {
        let item = if item.parse::<usize>().is_ok() {
            format!("cuda:{item}")
        } else {
            item.to_string()
        };
        devices.push(
            parse_device(&item).map_err(|e| Error::Invalid(format!("--devices {spec}: {e}")))?,
        );
    }
    Ok(devices)
}

/// Parses `--dtype`: `f32`, `bf16` or `f16`; `auto` means bf16 on a GPU and f32 on the CPU.
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType> {
    Ok(match spec {
        "auto" if device.is_cpu() => DType::F32,
        "auto" | "bf16" => DType::BF16,
        "f32" => DType::F32,
        "f16" => DType::F16,
        _ => {
            return Err(Error::Invalid(format!(
                "--dtype {spec}: expected auto, f32, bf16 or f16"
            )))
        }
    })
}

/// Waits until the device has finished its queued work (for timing).
pub fn synchronize(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Which library computes f32 matrix products on the CPU: the gemm crate (the default), or
/// Intel MKL with the `mkl` feature (`scripts/mkl-env.sh`). Benchmarks print it.
pub fn cpu_matmul_library() -> &'static str {
    if cfg!(feature = "mkl") {
        "mkl"
    } else {
        "gemm"
    }
}

/// Turns candle's own CPU thread pool off, so that everything runs on rayon's threads.
///
/// candle 0.11 spreads element-wise operations over a pool of worker threads that *spin* while
/// they wait for work, next to the matrix-multiplication (rayon) threads. On a machine with few
/// cores the spinning workers steal the cores the matmuls need: on 2 cores a training step of the
/// `tiny` model ran several times faster with the pool off. With it off, our patched candle
/// (vendor/candle-core/PATCH.md) runs the element-wise operations on rayon's pool instead.
/// Must run before candle's first CPU operation; an explicit `CANDLE_NUM_THREADS` is respected.
pub fn tune_cpu() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // SAFETY: called before candle or tinygpt start worker threads that read the environment.
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        keep_freed_memory();
    });
}

/// Asks glibc's allocator to keep freed blocks for reuse instead of handing them back to the
/// kernel. Every candle operation allocates its output; blocks of a few MB (a training step's
/// activations) would otherwise be mapped, zeroed page by page by the kernel and unmapped again
/// at every step. Blocks of any size come from the heap (no `mmap` at all): the logits and
/// their gradient, `(B·T, vocab)`, are larger than the largest mmap threshold glibc accepts
/// (32 MB), and took thousands of page faults each.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        const M_MMAP_MAX: std::ffi::c_int = -4;
        // SAFETY: mallopt only changes tuning parameters of the allocator.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20); // glibc's largest
            mallopt(M_MMAP_MAX, 0); // and above it, the heap too
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
