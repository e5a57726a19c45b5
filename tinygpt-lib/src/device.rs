//! Choosing where tensors live: `--device cpu`, `cuda` or `cuda:N`.

use candle_core::{DType, Device, Tensor};

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
    let device = Device::new_cuda(index).map_err(|e| {
        Error::Invalid(format!(
            "--device {spec}: cannot open the GPU ({e}){}",
            gpu_failure_advice(&e)
        ))
    })?;
    prepare_gpu(&device)
        .map_err(|e| Error::Invalid(format!("--device {spec}: cannot set the GPU up ({e})")))?;
    allow_tf32(std::env::var("TINYGPT_TF32").as_deref() != Ok("0"));
    // candle loads its kernels at their first use: a driver too old for them would otherwise
    // fail there, deep inside a model, with a bare CUDA error.
    Tensor::new(&[1f32, 2.0], &device)
        .and_then(|x| x.affine(2.0, 1.0)?.to_vec1::<f32>())
        .map_err(|e| {
            Error::Invalid(format!(
                "--device {spec}: the GPU cannot run candle's kernels ({e}){}",
                gpu_failure_advice(&e)
            ))
        })?;
    Ok(device)
}

/// The CUDA version that the GPU's driver supports, as CUDA numbers it (12040 is 12.4); `None`
/// without a GPU.
pub fn driver_cuda_version() -> Option<i32> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let mut version = 0;
        // SAFETY: writes one int (the driver answers before CUDA is initialised, too).
        let result = unsafe { sys::cuDriverGetVersion(&mut version) };
        if result == sys::CUresult::CUDA_SUCCESS {
            return Some(version);
        }
    }
    None
}

/// [`kernel_failure_advice`] for this error and the driver of this machine.
pub(crate) fn gpu_failure_advice(error: &impl std::fmt::Display) -> String {
    kernel_failure_advice(&error.to_string(), driver_cuda_version())
}

/// What to do when a GPU fails to open, or to load or run a kernel. Kernels are compiled to PTX,
/// a virtual instruction set that the driver compiles to machine code; a driver older than the
/// CUDA that wrote the PTX rejects it (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`), and CUDA's
/// libraries refuse a driver older than themselves ("insufficient driver"). `scripts/cuda-env.sh`
/// builds with CUDA 13.0, which needs driver 580 or later; older drivers need a build with an
/// older CUDA toolkit. `driver`: [`driver_cuda_version`].
pub fn kernel_failure_advice(error: &str, driver: Option<i32>) -> String {
    let Some(driver) = driver else {
        return String::new();
    };
    let version = format!("{}.{}", driver / 1000, driver % 1000 / 10);
    let too_old = error.contains("PTX") || error.to_lowercase().contains("insufficient");
    if too_old {
        format!(
            ". The driver supports CUDA {version}, older than the CUDA that compiled the \
             kernels (the build's nvcc; for tinygpt's own, the NVRTC library it loaded): update \
             the driver (CUDA 13 needs 580 or later), or build tinygpt with a CUDA toolkit no \
             newer than {version} and run it with that toolkit's libraries (docs/GPU.md, \
             \"Which CUDA\")"
        )
    } else {
        format!(" (the driver supports CUDA {version})")
    }
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

/// Sets up how a GPU opened by candle hands out memory; [`parse_device`] calls it. Two things
/// that cost time at every allocation or every step, and buy nothing with one stream per GPU:
///
/// - **No events per buffer.** cudarc creates two CUDA events with every buffer (and destroys
///   them with it) so that it can order work across several streams. candle runs all of a GPU's
///   work on one stream, where cudarc never waits on them: a training step allocates over a
///   thousand buffers, each with two needless driver calls to create and two to destroy.
/// - **Freed memory stays in the pool.** Buffers come from the device's memory pool
///   (`cuMemAllocAsync`). By default the pool hands every unused byte back to the driver at each
///   synchronisation — once a step, when the loss is read — and the next step maps the same
///   gigabytes again. Keeping them (a release threshold of "never") is what PyTorch's caching
///   allocator does too.
///
/// `TINYGPT_CUDA_DEFAULTS=1` leaves both as CUDA and cudarc set them, to measure the difference.
/// Does nothing on the CPU.
pub fn prepare_gpu(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(gpu) = device {
        if std::env::var("TINYGPT_CUDA_DEFAULTS").as_deref() == Ok("1") {
            return Ok(());
        }
        // SAFETY: cudarc uses the events only to order work between streams, and every
        // buffer of this device is used on its one stream.
        unsafe { gpu.disable_event_tracking() };
        gpu_pool::set(device, gpu_pool::RELEASE_THRESHOLD, u64::MAX)?;
    }
    let _ = device;
    Ok(())
}

/// What a GPU's memory pool holds, in bytes (tensors only: cuBLAS's and NCCL's own buffers and
/// the CUDA context are not in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuMemory {
    /// What tensors hold now (PyTorch's `memory_allocated`).
    pub in_use: u64,
    /// The most that tensors held at once since the device was opened or
    /// [`reset_gpu_memory_peak`] was last called (PyTorch's `max_memory_allocated`).
    pub peak: u64,
    /// What the pool holds from the driver now, in use or kept for reuse (PyTorch's
    /// `memory_reserved`).
    pub reserved: u64,
}

/// The GPU's memory pool (see [`GpuMemory`]); `None` on the CPU.
pub fn gpu_memory(device: &Device) -> Result<Option<GpuMemory>> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return Ok(Some(GpuMemory {
            in_use: gpu_pool::get(device, gpu_pool::USED_MEM_CURRENT)?,
            peak: gpu_pool::get(device, gpu_pool::USED_MEM_HIGH)?,
            reserved: gpu_pool::get(device, gpu_pool::RESERVED_MEM_CURRENT)?,
        }));
    }
    let _ = device;
    Ok(None)
}

/// Forgets [`GpuMemory::peak`] so far: it counts again from the next allocation on (CUDA can
/// only reset it to zero).
pub fn reset_gpu_memory_peak(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        gpu_pool::set(device, gpu_pool::USED_MEM_HIGH, 0)?;
    }
    let _ = device;
    Ok(())
}

/// The attributes of a GPU's current memory pool, from which `cuMemAllocAsync` takes candle's
/// buffers (all of them `u64`).
#[cfg(feature = "cuda")]
mod gpu_pool {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::Device;

    use crate::{Error, Result};

    pub use sys::CUmemPool_attribute::{
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD as RELEASE_THRESHOLD,
        CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT as RESERVED_MEM_CURRENT,
        CU_MEMPOOL_ATTR_USED_MEM_CURRENT as USED_MEM_CURRENT,
        CU_MEMPOOL_ATTR_USED_MEM_HIGH as USED_MEM_HIGH,
    };

    fn pool(device: &Device) -> Result<sys::CUmemoryPool> {
        let Device::Cuda(gpu) = device else {
            return Err(Error::Invalid("a memory pool needs a CUDA device".into()));
        };
        let context = gpu.cuda_stream().context().clone();
        context.bind_to_thread().map_err(driver_error)?;
        // SAFETY: the device handle comes from the live context that candle opened.
        unsafe { result::device::get_mem_pool(context.cu_device()) }.map_err(driver_error)
    }

    pub fn get(device: &Device, attribute: sys::CUmemPool_attribute) -> Result<u64> {
        let mut value = 0u64;
        // SAFETY: a valid pool, and the attributes used here are all 64-bit numbers.
        unsafe {
            result::mem_pool::get_attribute(
                pool(device)?,
                attribute,
                &mut value as *mut u64 as *mut _,
            )
        }
        .map_err(driver_error)?;
        Ok(value)
    }

    pub fn set(device: &Device, attribute: sys::CUmemPool_attribute, value: u64) -> Result<()> {
        let mut value = value;
        // SAFETY: as in `get`.
        unsafe {
            result::mem_pool::set_attribute(
                pool(device)?,
                attribute,
                &mut value as *mut u64 as *mut _,
            )
        }
        .map_err(driver_error)
    }

    fn driver_error(e: result::DriverError) -> Error {
        Error::Invalid(format!("the GPU's memory pool: {e}"))
    }
}

/// Parses `--devices`: a comma-separated list of `cpu`, `cuda` or `cuda:N`, where a bare number
/// after a `cuda:N` is another GPU (`cuda:0,1` = `cuda:0,cuda:1`). One data-parallel worker runs
/// per entry; `cpu,cpu` gives two CPU workers (they share the cores: for testing the data-parallel
/// path, not for speed).
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    let items: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .map(|item| {
            // The same GPU is spelled the same way: `1`, `cuda:1`, `cuda:01`; `cuda` is `cuda:0`.
            let number = item.strip_prefix("cuda:").unwrap_or(item);
            match number.parse::<usize>() {
                Ok(n) => format!("cuda:{n}"),
                Err(_) if item == "cuda" => "cuda:0".to_string(),
                Err(_) => item.to_string(),
            }
        })
        .collect();
    // Each GPU worker needs a GPU of its own (NCCL refuses to put two ranks on one device).
    for (i, item) in items.iter().enumerate() {
        if item.starts_with("cuda:") && items[..i].contains(item) {
            return Err(Error::Invalid(format!(
                "--devices {spec}: {item} is listed twice; each GPU worker needs a GPU of its own \
                 (for two workers on one machine's GPUs: --devices cuda:0,1)"
            )));
        }
    }
    let mut devices = vec![];
    for item in items {
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
