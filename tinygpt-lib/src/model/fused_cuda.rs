//! The CUDA side of the fused kernels ([`super::fused`], [`super::fused_norm`],
//! [`super::embedding`], `train/adamw_fused.rs`, `train/sum_squares.rs`): the kernels of
//! `fused.cu`, compiled by NVRTC the first time one is needed (once per process). The
//! cross-entropy runs one thread block per row (rows of 50,304 logits); the softmax and the norms
//! one warp per row (rows of hundreds); the attention kernels a warp per token, or a block of four
//! warps per 64 tokens; element-wise ones and the sum of squares stride over the elements.
//! Each function picks the `_f32` or `_bf16` kernel by the inputs' dtype.

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{Layout, Shape};

const SOURCE: &str = include_str!("fused.cu");
const THREADS: u32 = 256;

type Result<T> = candle_core::Result<T>;

/// Kernel `name` of `fused.cu`, compiled to PTX once per process: for compute capability 8.0
/// (which the tensor-core attention needs; the PTX runs on every later GPU too) where the
/// device has it, else for NVRTC's default target, without those kernels.
fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    type Compiled = OnceLock<std::result::Result<String, String>>;
    static PTX: [Compiled; 2] = [OnceLock::new(), OnceLock::new()];
    let sm80 = tensor_cores(dev)?;
    let ptx = PTX[usize::from(sm80)].get_or_init(|| {
        let options = nvrtc::CompileOptions {
            arch: sm80.then_some("compute_80"),
            ..Default::default()
        };
        nvrtc::compile_ptx_with_opts(SOURCE, options)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    });
    let ptx = ptx
        .as_ref()
        .map_err(|e| candle_core::Error::Msg(format!("compiling fused.cu with NVRTC: {e}")))?;
    let loaded = dev
        .get_or_load_custom_func(name, "tinygpt_fused", ptx)
        .map_err(|e| {
            let advice = crate::device::gpu_failure_advice(&e);
            candle_core::Error::Msg(format!("loading fused.cu's {name}: {e}{advice}"))
        })?;
    Ok(loaded.into_cuda_function())
}

/// Whether the GPU has bf16 tensor cores that `mma.sync` reaches: compute capability ≥ 8.0.
/// Every kernel launch asks ([`function`]), so the answer is kept per GPU (by ordinal).
fn tensor_cores(dev: &CudaDevice) -> Result<bool> {
    static KNOWN: [OnceLock<bool>; 16] = [const { OnceLock::new() }; 16];
    let stream = dev.cuda_stream();
    let context = stream.context();
    let known = KNOWN.get(context.ordinal());
    if let Some(&answer) = known.and_then(OnceLock::get) {
        return Ok(answer);
    }
    let (major, _) = context.compute_capability().map_err(|e| {
        candle_core::Error::Msg(format!("reading the GPU's compute capability: {e}"))
    })?;
    if let Some(cell) = known {
        let _ = cell.set(major >= 8);
    }
    Ok(major >= 8)
}

/// One block per row.
fn rows(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn offsets(l: &Layout) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused kernel: input not contiguous".into()))
}

/// Launches kernel `name(a, b, out, n_rows, ints…)`, one warp per row; `out` has `len` elements.
fn launch_warp_rows<T: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    (a, b): (&CudaView<T>, &CudaView<T>),
    len: usize,
    ints: &[i32],
    n_rows: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: the kernel writes all `len` elements.
    let out = unsafe { dev.alloc::<T>(len)? };
    let f = function(dev, name)?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&f);
    let n64 = n_rows as i64;
    builder.arg(a).arg(b).arg(&out).arg(&n64);
    for i in ints {
        builder.arg(i);
    }
    // SAFETY: the arguments match the kernel's signature in fused.cu.
    unsafe { builder.launch(warps(n_rows)) }.w()?;
    Ok(out)
}

/// Runs `{kernel}_f32` or `{kernel}_bf16` (by the inputs' dtype) on two inputs of one dtype,
/// one warp per row of `a`'s last axis; the output has `a`'s shape.
fn two_inputs(
    kernel: &str,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    ints: &[i32],
) -> Result<(CudaStorage, Shape)> {
    let n_rows = la.shape().elem_count() / la.dims().last().expect("a row axis");
    let (ao, bo) = (offsets(la)?, offsets(lb)?);
    let (dev, len) = (&a.device, ao.1 - ao.0);
    let slice = match (&a.slice, &b.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(y)) => {
            let inputs = (&x.slice(ao.0..ao.1), &y.slice(bo.0..bo.1));
            let name = format!("{kernel}_f32");
            CudaStorageSlice::F32(launch_warp_rows(dev, &name, inputs, len, ints, n_rows)?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(y)) => {
            let inputs = (&x.slice(ao.0..ao.1), &y.slice(bo.0..bo.1));
            let name = format!("{kernel}_bf16");
            CudaStorageSlice::BF16(launch_warp_rows(dev, &name, inputs, len, ints, n_rows)?)
        }
        _ => candle_core::bail!("{kernel} on CUDA: f32 or bf16 inputs of one dtype"),
    };
    Ok((
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        la.shape().clone(),
    ))
}

/// `softmax(x + mask)`: x `(B, H, T, Tk)`, mask `(B or 1, 1, T, Tk)`, same dtype (f32 or bf16).
pub fn masked_softmax(
    x: &CudaStorage,
    lx: &Layout,
    mask: &CudaStorage,
    lm: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let d = lx.dims();
    let ints = [d[1] as i32, d[2] as i32, d[3] as i32, lm.dims()[0] as i32];
    two_inputs("masked_softmax", (x, lx), (mask, lm), &ints)
}

/// `dx = y ⊙ (dy − Σ dy⊙y)` over the last axis.
pub fn softmax_backward(
    y: &CudaStorage,
    ly: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let n = *ly.dims().last().expect("a row axis") as i32;
    two_inputs("softmax_backward", (y, ly), (dy, ldy), &[n])
}

/// A compiled kernel and the device's stream, ready to launch.
struct Kernel {
    f: CudaFunction,
    stream: std::sync::Arc<CudaStream>,
}

fn kernel(dev: &CudaDevice, name: &str) -> Result<Kernel> {
    Ok(Kernel {
        f: function(dev, name)?,
        stream: dev.cuda_stream(),
    })
}

impl Kernel {
    /// Launches with the arguments `push` adds, in the order of the kernel's signature.
    fn run<'a>(
        &'a self,
        config: LaunchConfig,
        push: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> Result<()> {
        let mut builder = self.stream.launch_builder(&self.f);
        push(&mut builder);
        // SAFETY: every caller pushes the arguments of the kernel's signature in fused.cu.
        unsafe { builder.launch(config) }.w()?;
        Ok(())
    }
}

fn storage(slice: CudaStorageSlice, dev: &CudaDevice) -> CudaStorage {
    CudaStorage {
        slice,
        device: dev.clone(),
    }
}

fn targets_of<'a>(targets: &'a CudaStorage, lt: &Layout) -> Result<CudaView<'a, u32>> {
    let to = offsets(lt)?;
    match &targets.slice {
        CudaStorageSlice::U32(t) => Ok(t.slice(to.0..to.1)),
        _ => candle_core::bail!("cross-entropy on CUDA: u32 targets"),
    }
}

/// Per-row cross-entropy `(N)`, f32, of logits `(N, V)` (f32 or bf16: read as they are, no f32
/// copy of the big tensor) against targets `(N)` (u32).
pub fn cross_entropy(
    x: &CudaStorage,
    lx: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, v) = lx.shape().dims2()?;
    let (xo, ts, v32) = (offsets(lx)?, targets_of(targets, lt)?, v as i32);
    let dev = &x.device;
    // SAFETY: the kernel writes all `n` losses.
    let out = unsafe { dev.alloc::<f32>(n)? };
    match &x.slice {
        CudaStorageSlice::F32(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            kernel(dev, "cross_entropy_f32")?.run(rows(n), |b| {
                b.arg(&xs).arg(&ts).arg(&out).arg(&v32);
            })?
        }
        CudaStorageSlice::BF16(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            kernel(dev, "cross_entropy_bf16")?.run(rows(n), |b| {
                b.arg(&xs).arg(&ts).arg(&out).arg(&v32);
            })?
        }
        _ => candle_core::bail!("cross-entropy on CUDA: f32 or bf16 logits"),
    }
    Ok((storage(CudaStorageSlice::F32(out), dev), Shape::from(n)))
}

/// `dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i`: logits `(N, V)` (f32 or bf16; `dx` the same),
/// targets `(N)`, and the forward's loss above its gradient, `(2, N)` f32 (see `fused.rs`).
pub fn cross_entropy_backward(
    x: &CudaStorage,
    lx: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
    loss_and_dloss: &CudaStorage,
    ld: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, v) = lx.shape().dims2()?;
    let (xo, lo, ts) = (offsets(lx)?, offsets(ld)?, targets_of(targets, lt)?);
    let CudaStorageSlice::F32(ls) = &loss_and_dloss.slice else {
        candle_core::bail!("cross-entropy backward on CUDA: f32 loss and gradient")
    };
    let loss_dloss = (ls.slice(lo.0..lo.0 + n), ls.slice(lo.0 + n..lo.1));
    let dev = &x.device;
    let slice = match &x.slice {
        CudaStorageSlice::F32(xs) => CudaStorageSlice::F32(cross_entropy_backward_as(
            kernel(dev, "cross_entropy_backward_f32")?,
            dev,
            &xs.slice(xo.0..xo.1),
            &ts,
            &loss_dloss,
            (n, v),
        )?),
        CudaStorageSlice::BF16(xs) => CudaStorageSlice::BF16(cross_entropy_backward_as(
            kernel(dev, "cross_entropy_backward_bf16")?,
            dev,
            &xs.slice(xo.0..xo.1),
            &ts,
            &loss_dloss,
            (n, v),
        )?),
        _ => candle_core::bail!("cross-entropy backward on CUDA: f32 or bf16 logits"),
    };
    Ok((storage(slice, dev), lx.shape().clone()))
}

/// Runs the cross-entropy backward kernel `k` on `(n, v)` logits of element type `T`: `dx`, as `T`.
fn cross_entropy_backward_as<T: DeviceRepr>(
    k: Kernel,
    dev: &CudaDevice,
    xs: &CudaView<T>,
    ts: &CudaView<u32>,
    (loss, dloss): &(CudaView<f32>, CudaView<f32>),
    (n, v): (usize, usize),
) -> Result<CudaSlice<T>> {
    let v32 = v as i32;
    // SAFETY: the kernel writes all n·v gradients.
    let dx = unsafe { dev.alloc::<T>(n * v)? };
    k.run(rows(n), |b| {
        b.arg(xs).arg(ts).arg(loss).arg(dloss).arg(&dx).arg(&v32);
    })?;
    Ok(dx)
}

/// The gain of a norm: f32 on CUDA whatever the activations' dtype.
fn gain<'a>(w: &'a CudaStorage, lw: &Layout) -> Result<CudaView<'a, f32>> {
    let wo = offsets(lw)?;
    match &w.slice {
        CudaStorageSlice::F32(w) => Ok(w.slice(wo.0..wo.1)),
        _ => candle_core::bail!("norm on CUDA: an f32 gain"),
    }
}

/// LayerNorm / RMSNorm forward: `x` `(N, C)` f32 or bf16, gain `(C)` f32 → `y` like `x`.
pub fn norm_forward(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    rms: bool,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let c = *lx.dims().last().expect("a row axis");
    let n = lx.shape().elem_count() / c;
    let (xo, w, dev) = (offsets(lx)?, gain(w, lw)?, &x.device);
    let (n64, c32, rms, eps) = (n as i64, c as i32, rms as i32, eps as f32);
    let slice = match &x.slice {
        CudaStorageSlice::F32(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<f32>(n * c)? };
            kernel(dev, "norm_forward_f32")?.run(warps(n), |b| {
                b.arg(&xs).arg(&w).arg(&y).arg(&n64).arg(&c32);
                b.arg(&rms).arg(&eps);
            })?;
            CudaStorageSlice::F32(y)
        }
        CudaStorageSlice::BF16(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            // SAFETY: as above.
            let y = unsafe { dev.alloc::<half::bf16>(n * c)? };
            kernel(dev, "norm_forward_bf16")?.run(warps(n), |b| {
                b.arg(&xs).arg(&w).arg(&y).arg(&n64).arg(&c32);
                b.arg(&rms).arg(&eps);
            })?;
            CudaStorageSlice::BF16(y)
        }
        _ => candle_core::bail!("norm on CUDA: f32 or bf16 activations"),
    };
    Ok((storage(slice, dev), lx.shape().clone()))
}

/// Norm backward for the input: `dx` from `x`, gain `w` (f32) and `dy` (like `x`).
pub fn norm_backward_x(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    rms: bool,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let c = *lx.dims().last().expect("a row axis");
    let n = lx.shape().elem_count() / c;
    let (xo, dyo, w, dev) = (offsets(lx)?, offsets(ldy)?, gain(w, lw)?, &x.device);
    let (n64, c32, rms, eps) = (n as i64, c as i32, rms as i32, eps as f32);
    let slice = match (&x.slice, &dy.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(dys)) => {
            let (xs, dys) = (xs.slice(xo.0..xo.1), dys.slice(dyo.0..dyo.1));
            // SAFETY: the kernel writes every element.
            let dx = unsafe { dev.alloc::<f32>(n * c)? };
            kernel(dev, "norm_backward_x_f32")?.run(warps(n), |b| {
                b.arg(&xs).arg(&w).arg(&dys).arg(&dx);
                b.arg(&n64).arg(&c32).arg(&rms).arg(&eps);
            })?;
            CudaStorageSlice::F32(dx)
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(dys)) => {
            let (xs, dys) = (xs.slice(xo.0..xo.1), dys.slice(dyo.0..dyo.1));
            // SAFETY: as above.
            let dx = unsafe { dev.alloc::<half::bf16>(n * c)? };
            kernel(dev, "norm_backward_x_bf16")?.run(warps(n), |b| {
                b.arg(&xs).arg(&w).arg(&dys).arg(&dx);
                b.arg(&n64).arg(&c32).arg(&rms).arg(&eps);
            })?;
            CudaStorageSlice::BF16(dx)
        }
        _ => candle_core::bail!("norm backward on CUDA: x and dy of one dtype, f32 or bf16"),
    };
    Ok((storage(slice, dev), lx.shape().clone()))
}

/// Norm backward for the gain: `dw = Σ_rows dy ⊙ x̂`, `(C)` f32. Blocks of up to 8 warps (a
/// warp per row at a time, each warp with its own `C` sums in shared memory) sum strided sets of
/// rows into `(blocks, C)` partial sums, which [`sum_columns`] then adds up.
pub fn norm_backward_w(
    (x, lx): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    rms: bool,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let c = *lx.dims().last().expect("a row axis");
    let n = lx.shape().elem_count() / c;
    // Warps a block: their sums fill at most the 48 KB of shared memory a block gets by default.
    let w = (12_288 / c.max(1)).clamp(1, 8);
    if c * w * 4 > 49_152 {
        candle_core::bail!("norm backward on CUDA: rows of {c} numbers, at most 12,288")
    }
    // About 16 rows per warp, at most 256 blocks.
    let blocks = n.div_ceil(16 * w).clamp(1, 256);
    let (xo, dyo, dev) = (offsets(lx)?, offsets(ldy)?, &x.device);
    let (n32, c32, rms, eps) = (n as i32, c as i32, rms as i32, eps as f32);
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (32 * w as u32, 1, 1),
        shared_mem_bytes: (w * c * 4) as u32,
    };
    // SAFETY: the kernel writes all blocks·c partial sums.
    let partial = unsafe { dev.alloc::<f32>(blocks * c)? };
    match (&x.slice, &dy.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(dys)) => {
            let (xs, dys) = (xs.slice(xo.0..xo.1), dys.slice(dyo.0..dyo.1));
            kernel(dev, "norm_backward_w_f32")?.run(config, |b| {
                b.arg(&xs)
                    .arg(&dys)
                    .arg(&partial)
                    .arg(&n32)
                    .arg(&c32)
                    .arg(&rms)
                    .arg(&eps);
            })?
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(dys)) => {
            let (xs, dys) = (xs.slice(xo.0..xo.1), dys.slice(dyo.0..dyo.1));
            kernel(dev, "norm_backward_w_bf16")?.run(config, |b| {
                b.arg(&xs)
                    .arg(&dys)
                    .arg(&partial)
                    .arg(&n32)
                    .arg(&c32)
                    .arg(&rms)
                    .arg(&eps);
            })?
        }
        _ => candle_core::bail!("norm backward on CUDA: x and dy of one dtype, f32 or bf16"),
    }
    // SAFETY: the kernel writes all c sums.
    let dw = unsafe { dev.alloc::<f32>(c)? };
    let blocks32 = blocks as i32;
    kernel(dev, "sum_columns_f32")?.run(sum_columns(c), |b| {
        b.arg(&partial).arg(&dw).arg(&blocks32).arg(&c32);
    })?;
    Ok((storage(CudaStorageSlice::F32(dw), dev), Shape::from(c)))
}

/// The launch of `sum_columns` over `c` columns: a block of 32 × 32 threads per 32 columns.
fn sum_columns(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.div_ceil(32) as u32, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 32 * 33 * 4,
    }
}

/// Enough blocks of `THREADS` to give every element a thread, capped (the kernels stride).
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// For the kernels that read 16 bytes at a time (`map_each` in fused.cu): a thread for every 8
/// elements (a pack of bf16, two of f32).
fn packed(n: usize) -> LaunchConfig {
    elementwise(n.div_ceil(8))
}

/// GELU forward, element by element, f32 or bf16.
pub fn gelu_forward(x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
    let (xo, dev) = (offsets(lx)?, &x.device);
    let n = xo.1 - xo.0;
    let n64 = n as i64;
    let slice = match &x.slice {
        CudaStorageSlice::F32(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<f32>(n)? };
            kernel(dev, "gelu_forward_f32")?.run(packed(n), |b| {
                b.arg(&xs).arg(&y).arg(&n64);
            })?;
            CudaStorageSlice::F32(y)
        }
        CudaStorageSlice::BF16(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            // SAFETY: as above.
            let y = unsafe { dev.alloc::<half::bf16>(n)? };
            kernel(dev, "gelu_forward_bf16")?.run(packed(n), |b| {
                b.arg(&xs).arg(&y).arg(&n64);
            })?;
            CudaStorageSlice::BF16(y)
        }
        _ => candle_core::bail!("gelu on CUDA: f32 or bf16"),
    };
    Ok((storage(slice, dev), lx.shape().clone()))
}

/// GELU backward: `dx` from `x` and `dy` (one dtype, f32 or bf16).
pub fn gelu_backward(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (xo, dyo, dev) = (offsets(lx)?, offsets(ldy)?, &x.device);
    let n = xo.1 - xo.0;
    let n64 = n as i64;
    let slice = match (&x.slice, &dy.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(dys)) => {
            let (xs, dys) = (xs.slice(xo.0..xo.1), dys.slice(dyo.0..dyo.1));
            // SAFETY: the kernel writes every element.
            let dx = unsafe { dev.alloc::<f32>(n)? };
            kernel(dev, "gelu_backward_f32")?.run(packed(n), |b| {
                b.arg(&xs).arg(&dys).arg(&dx).arg(&n64);
            })?;
            CudaStorageSlice::F32(dx)
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(dys)) => {
            let (xs, dys) = (xs.slice(xo.0..xo.1), dys.slice(dyo.0..dyo.1));
            // SAFETY: as above.
            let dx = unsafe { dev.alloc::<half::bf16>(n)? };
            kernel(dev, "gelu_backward_bf16")?.run(packed(n), |b| {
                b.arg(&xs).arg(&dys).arg(&dx).arg(&n64);
            })?;
            CudaStorageSlice::BF16(dx)
        }
        _ => candle_core::bail!("gelu backward on CUDA: x and dy of one dtype, f32 or bf16"),
    };
    Ok((storage(slice, dev), lx.shape().clone()))
}

fn f32_mut<'a>(
    s: &'a mut CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaViewMut<'a, f32>> {
    let o = offsets(l)?;
    match &mut s.slice {
        CudaStorageSlice::F32(x) => Ok(x.slice_mut(o.0..o.1)),
        _ => candle_core::bail!("fused kernel on CUDA: an f32 tensor expected"),
    }
}

fn f32_view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    let o = offsets(l)?;
    match &s.slice {
        CudaStorageSlice::F32(x) => Ok(x.slice(o.0..o.1)),
        _ => candle_core::bail!("fused kernel on CUDA: an f32 tensor expected"),
    }
}

/// AdamW's moments in place, all weights at once: `[m; v]` `(2, N)` and the gradients `(N)`
/// (see `train/adamw_fused.rs`).
pub fn adamw_moments(
    (mv, lmv): (&mut CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    op: &crate::train::adamw_fused::Moments,
) -> Result<()> {
    let dev = mv.device.clone();
    let n = lg.shape().elem_count();
    if lmv.shape().elem_count() != 2 * n {
        candle_core::bail!("AdamW moments: [m; v] must hold twice the gradient's numbers");
    }
    let (mut mvs, gs) = (f32_mut(mv, lmv)?, f32_view(g, lg)?);
    let (n64, beta1, beta2, scale) = (n as i64, op.beta1 as f32, op.beta2 as f32, op.scale as f32);
    kernel(&dev, "adamw_moments")?.run(elementwise(n), |b| {
        b.arg(&mut mvs)
            .arg(&gs)
            .arg(&n64)
            .arg(&beta1)
            .arg(&beta2)
            .arg(&scale);
    })
}

/// AdamW's weight update in place (see `train/adamw_fused.rs`).
pub fn adamw_update(
    (theta, lt): (&mut CudaStorage, &Layout),
    (m, lm): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
    op: &crate::train::adamw_fused::Update,
) -> Result<()> {
    let dev = theta.device.clone();
    let n = lt.shape().elem_count();
    let (mut ts, ms, vs) = (f32_mut(theta, lt)?, f32_view(m, lm)?, f32_view(v, lv)?);
    let n64 = n as i64;
    let (decay, step) = (op.decay as f32, op.step as f32);
    let (bias2_sqrt, eps) = (op.bias2_sqrt as f32, op.eps as f32);
    kernel(&dev, "adamw_update")?.run(elementwise(n), |b| {
        b.arg(&mut ts)
            .arg(&ms)
            .arg(&vs)
            .arg(&n64)
            .arg(&decay)
            .arg(&step)
            .arg(&bias2_sqrt)
            .arg(&eps);
    })
}

/// `Σ x²` of an f32 vector, as an f32 tensor of shape `()` (see `train/sum_squares.rs`): up to
/// 1,024 blocks of partial sums (at least 4,096 numbers each), then one block that adds them.
pub fn sum_of_squares(x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
    let (xs, dev) = (f32_view(x, lx)?, &x.device);
    let n = lx.shape().elem_count();
    let blocks = n.div_ceil(THREADS as usize * 16).clamp(1, 1024);
    // SAFETY: every block writes its partial sum; the last kernel writes the one output.
    let (partial, out) = unsafe { (dev.alloc::<f32>(blocks)?, dev.alloc::<f32>(1)?) };
    let (n64, blocks32) = (n as i64, blocks as i32);
    let grid = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    kernel(dev, "sum_squares_partial")?.run(grid, |b| {
        b.arg(&xs).arg(&partial).arg(&n64);
    })?;
    let one_block = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    kernel(dev, "sum_in_order")?.run(one_block, |b| {
        b.arg(&partial).arg(&out).arg(&blocks32);
    })?;
    Ok((storage(CudaStorageSlice::F32(out), dev), Shape::from(())))
}

/// `y = x + b` row by row: `x` `(N, C)`, `b` `(C)`, one dtype (f32 or bf16).
pub fn add_bias(
    x: &CudaStorage,
    lx: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let c = *lx.dims().last().expect("a row axis");
    let (xo, bo, dev) = (offsets(lx)?, offsets(lb)?, &x.device);
    let n = xo.1 - xo.0;
    let (n64, c32) = (n as i64, c as i32);
    let slice = match (&x.slice, &b.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(bs)) => {
            let (xs, bs) = (xs.slice(xo.0..xo.1), bs.slice(bo.0..bo.1));
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<f32>(n)? };
            kernel(dev, "add_bias_f32")?.run(packed(n), |a| {
                a.arg(&xs).arg(&bs).arg(&y).arg(&n64).arg(&c32);
            })?;
            CudaStorageSlice::F32(y)
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(bs)) => {
            let (xs, bs) = (xs.slice(xo.0..xo.1), bs.slice(bo.0..bo.1));
            // SAFETY: as above.
            let y = unsafe { dev.alloc::<half::bf16>(n)? };
            kernel(dev, "add_bias_bf16")?.run(packed(n), |a| {
                a.arg(&xs).arg(&bs).arg(&y).arg(&n64).arg(&c32);
            })?;
            CudaStorageSlice::BF16(y)
        }
        _ => candle_core::bail!("bias add on CUDA: x and b of one dtype, f32 or bf16"),
    };
    Ok((storage(slice, dev), lx.shape().clone()))
}

/// `Σ_rows x` for `x` `(…, C)`: `(C)` in `x`'s dtype (f32 or bf16), summed in f32.
pub fn column_sum(x: &CudaStorage, lx: &Layout, c: usize) -> Result<(CudaStorage, Shape)> {
    let (xo, dev) = (offsets(lx)?, &x.device);
    let n = (xo.1 - xo.0) / c;
    // Chunks of about 32 rows (a thread adds one column of a chunk), at most 1,024 of them.
    let chunks = n.div_ceil(32).clamp(1, 1024);
    let config = LaunchConfig {
        grid_dim: (c.div_ceil(THREADS as usize) as u32, chunks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let columns = sum_columns(c);
    let (n32, c32, chunks32) = (n as i32, c as i32, chunks as i32);
    // SAFETY: the kernel writes all chunks·c partial sums.
    let partial = unsafe { dev.alloc::<f32>(chunks * c)? };
    let slice = match &x.slice {
        CudaStorageSlice::F32(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            kernel(dev, "column_partial_sums_f32")?.run(config, |a| {
                a.arg(&xs).arg(&partial).arg(&n32).arg(&c32);
            })?;
            // SAFETY: the kernel writes all c sums.
            let out = unsafe { dev.alloc::<f32>(c)? };
            kernel(dev, "sum_columns_f32")?.run(columns, |a| {
                a.arg(&partial).arg(&out).arg(&chunks32).arg(&c32);
            })?;
            CudaStorageSlice::F32(out)
        }
        CudaStorageSlice::BF16(xs) => {
            let xs = xs.slice(xo.0..xo.1);
            kernel(dev, "column_partial_sums_bf16")?.run(config, |a| {
                a.arg(&xs).arg(&partial).arg(&n32).arg(&c32);
            })?;
            // SAFETY: as above.
            let out = unsafe { dev.alloc::<half::bf16>(c)? };
            kernel(dev, "sum_columns_bf16")?.run(columns, |a| {
                a.arg(&partial).arg(&out).arg(&chunks32).arg(&c32);
            })?;
            CudaStorageSlice::BF16(out)
        }
        _ => candle_core::bail!("column sum on CUDA: f32 or bf16"),
    };
    Ok((storage(slice, dev), Shape::from(c)))
}

fn ids_of<'a>(ids: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, u32>> {
    let o = offsets(l)?;
    match &ids.slice {
        CudaStorageSlice::U32(x) => Ok(x.slice(o.0..o.1)),
        _ => candle_core::bail!("embedding on CUDA: u32 ids"),
    }
}

/// Rows `ids` `(N)` of an f32 `table` `(V, C)`: `(N, C)`.
pub fn embedding_forward(
    (table, lt): (&CudaStorage, &Layout),
    (ids, li): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (rows, c) = lt.shape().dims2()?;
    let (ts, is, dev) = (f32_view(table, lt)?, ids_of(ids, li)?, &table.device);
    let n = li.shape().elem_count();
    let (n64, c32, rows32) = (n as i64, c as i32, rows as i32);
    // SAFETY: the kernel writes all n·c numbers.
    let out = unsafe { dev.alloc::<f32>(n * c)? };
    kernel(dev, "embedding_forward")?.run(elementwise(n * c), |b| {
        b.arg(&ts)
            .arg(&is)
            .arg(&out)
            .arg(&n64)
            .arg(&c32)
            .arg(&rows32);
    })?;
    Ok((
        storage(CudaStorageSlice::F32(out), dev),
        Shape::from((n, c)),
    ))
}

/// The table's gradient `(rows, C)` f32: `dy[i]` added into row `ids[i]`.
pub fn embedding_backward(
    (ids, li): (&CudaStorage, &Layout),
    (dy, ld): (&CudaStorage, &Layout),
    rows: usize,
) -> Result<(CudaStorage, Shape)> {
    let (n, c) = ld.shape().dims2()?;
    let (is, ds, dev) = (ids_of(ids, li)?, f32_view(dy, ld)?, &ids.device);
    let (n64, c32, rows32) = (n as i64, c as i32, rows as i32);
    let dtable = dev.alloc_zeros::<f32>(rows * c)?;
    kernel(dev, "embedding_backward")?.run(elementwise(n * c), |b| {
        b.arg(&is)
            .arg(&ds)
            .arg(&dtable)
            .arg(&n64)
            .arg(&c32)
            .arg(&rows32);
    })?;
    Ok((
        storage(CudaStorageSlice::F32(dtable), dev),
        Shape::from((rows, c)),
    ))
}

/// `start` `(B, T)` u32 from the document ids `(B, T)` u32 (see `fused_attention::Documents`):
/// one block per row, a running maximum of the positions where the id changes.
pub fn document_starts((doc, l): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let (rows, t) = l.shape().dims2()?;
    let (ids, dev) = (u32_view(doc, l, "document starts")?, &doc.device);
    let t32 = t as i32;
    // SAFETY: the kernel writes every position of every row.
    let start = unsafe { dev.alloc::<u32>(rows * t)? };
    let config = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (SCAN_THREADS, 1, 1),
        shared_mem_bytes: SCAN_THREADS * 4,
    };
    kernel(dev, "document_starts")?.run(config, |b| {
        b.arg(&ids).arg(&start).arg(&t32);
    })?;
    Ok((
        storage(CudaStorageSlice::U32(start), dev),
        l.shape().clone(),
    ))
}

/// Threads of `document_starts` (and positions scanned per step): `SCAN` in fused.cu.
const SCAN_THREADS: u32 = 256;

fn u32_view<'a>(x: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, u32>> {
    let o = offsets(l)?;
    match &x.slice {
        CudaStorageSlice::U32(x) => Ok(x.slice(o.0..o.1)),
        _ => candle_core::bail!("{what} on CUDA: u32 input"),
    }
}

/// One warp per item (a row of a norm or a softmax, a query or a key), four warps per block.
fn warps(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n * 32).div_ceil(128) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The shape of a document attention: batch, time, query heads, key/value heads, head size.
#[derive(Clone, Copy)]
pub struct AttentionDims {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

impl AttentionDims {
    /// The kernels' integer arguments: `t, nh, nkv, hd` and the scale `1/√hd`.
    fn args(&self) -> (i32, i32, i32, i32, f32) {
        let d = self;
        let scale = 1.0 / (d.hd as f32).sqrt();
        (d.t as i32, d.nh as i32, d.nkv as i32, d.hd as i32, scale)
    }
}

/// The largest head the attention kernels hold in a warp's registers (`ATT_E` in fused.cu).
pub const ATTENTION_MAX_HEAD: usize = 256;

/// The tensor-core kernels of fused.cu (forward, backward_q, backward_kv) by head size.
const MMA_KERNELS: [(usize, [&str; 3]); 2] = [
    (
        64,
        [
            "attention_mma_forward_hd64",
            "attention_mma_backward_q_hd64",
            "attention_mma_backward_kv_hd64",
        ],
    ),
    (
        128,
        [
            "attention_mma_forward_hd128",
            "attention_mma_backward_q_hd128",
            "attention_mma_backward_kv_hd128",
        ],
    ),
];

/// Warps per block of the tensor-core kernels and the queries (or keys) a block takes, 16 per
/// warp (`MMA_WARPS`, `MMA_ROWS` in fused.cu).
const MMA_WARPS: usize = 4;
const MMA_ROWS: usize = 16 * MMA_WARPS;

/// The tensor-core kernels for this attention, where they apply: bf16, a head size they are
/// compiled for, compute capability 8.0 or later, and unless `TINYGPT_CUDA_ATTENTION=fused-warp`
/// asks for the warp kernels. Inputs start 16-byte aligned (offsets: in elements).
fn mma_kernels(
    dev: &CudaDevice,
    dims: AttentionDims,
    offsets: &[usize],
) -> Result<Option<[&'static str; 3]>> {
    if std::env::var("TINYGPT_CUDA_ATTENTION").as_deref() == Ok("fused-warp")
        || offsets.iter().any(|o| o % 8 != 0)
        || !tensor_cores(dev)?
    {
        return Ok(None);
    }
    Ok(MMA_KERNELS
        .iter()
        .find(|(hd, _)| *hd == dims.hd)
        .map(|(_, names)| *names))
}

/// Launch configuration of a tensor-core kernel over `heads` heads: blocks of `MMA_ROWS` tokens.
fn mma_blocks(dims: AttentionDims, heads: usize, shared_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            dims.t.div_ceil(MMA_ROWS) as u32,
            heads as u32,
            dims.b as u32,
        ),
        block_dim: (32 * MMA_WARPS as u32, 1, 1),
        shared_mem_bytes: shared_bytes as u32,
    }
}

/// Shared memory of the tensor-core kernels: `rows` tokens' heads of `hd` bf16 (rows padded by 8).
fn tiles_bytes(rows: usize, hd: usize) -> usize {
    rows * (hd + 8) * 2
}

/// Document-masked attention forward (`model/fused_attention.rs`): `qkv` `(B, T, (nh + 2·nkv)·hd)`
/// f32 or bf16 → `y` `(B, T, nh·hd)` in the same dtype. `start` `(B, T)` u32: where token `i`'s
/// story begins in its row.
pub fn attention_forward(
    (qkv, l): (&CudaStorage, &Layout),
    (start, ls): (&CudaStorage, &Layout),
    dims: AttentionDims,
) -> Result<(CudaStorage, Shape)> {
    let (o, dev) = (offsets(l)?, &qkv.device);
    let starts = u32_view(start, ls, "fused attention")?;
    let slice = match &qkv.slice {
        CudaStorageSlice::F32(x) => {
            let y = attention_forward_as(
                dev,
                "attention_forward_f32",
                &x.slice(o.0..o.1),
                &starts,
                dims,
            )?;
            CudaStorageSlice::F32(y)
        }
        CudaStorageSlice::BF16(x) => {
            let x = x.slice(o.0..o.1);
            let y = match mma_kernels(dev, dims, &[o.0])? {
                Some([forward, _, _]) => attention_mma_forward(dev, forward, &x, &starts, dims)?,
                None => attention_forward_as(dev, "attention_forward_bf16", &x, &starts, dims)?,
            };
            CudaStorageSlice::BF16(y)
        }
        _ => candle_core::bail!("attention on CUDA: f32 or bf16 qkv"),
    };
    let shape = Shape::from((dims.b, dims.t, dims.nh * dims.hd));
    Ok((storage(slice, dev), shape))
}

/// [`attention_forward`] for one dtype, with its warp kernel `name`.
fn attention_forward_as<T: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    qkv: &CudaView<T>,
    starts: &CudaView<u32>,
    dims: AttentionDims,
) -> Result<CudaSlice<T>> {
    let (t, nh, nkv, hd, scale) = dims.args();
    let n = dims.b * dims.nh * dims.t;
    let n64 = n as i64;
    // SAFETY: one warp per query writes its hd numbers: all of y.
    let y = unsafe { dev.alloc::<T>(n * dims.hd)? };
    kernel(dev, name)?.run(warps(n), |b| {
        b.arg(qkv).arg(starts).arg(&y);
        b.arg(&t).arg(&nh).arg(&nkv).arg(&hd).arg(&scale).arg(&n64);
    })?;
    Ok(y)
}

/// [`attention_forward`] on tensor cores (bf16).
fn attention_mma_forward<T: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    qkv: &CudaView<T>,
    starts: &CudaView<u32>,
    dims: AttentionDims,
) -> Result<CudaSlice<T>> {
    let (t, nh, nkv, _, scale) = dims.args();
    // SAFETY: every query of every head is some warp's: all of y is written.
    let y = unsafe { dev.alloc::<T>(dims.b * dims.t * dims.nh * dims.hd)? };
    // Two tiles of 64 keys and values.
    let config = mma_blocks(dims, dims.nh, 2 * tiles_bytes(64, dims.hd));
    kernel(dev, name)?.run(config, |b| {
        b.arg(qkv).arg(starts).arg(&y);
        b.arg(&t).arg(&nh).arg(&nkv).arg(&scale);
    })?;
    Ok(y)
}

/// Its backward: `dqkv` (like `qkv`) from `qkv`, the forward's output `y` and `dy` (both
/// `(B, T, nh·hd)`, one dtype). Two kernels: per query (`dq`, and each query's softmax
/// statistics), then per key (`dk`, `dv`).
pub fn attention_backward(
    [(qkv, lq), (y, ly), (dy, ld)]: [(&CudaStorage, &Layout); 3],
    (start, ls): (&CudaStorage, &Layout),
    dims: AttentionDims,
) -> Result<(CudaStorage, Shape)> {
    let (oq, oy, od, dev) = (offsets(lq)?, offsets(ly)?, offsets(ld)?, &qkv.device);
    let starts = u32_view(start, ls, "fused attention backward")?;
    let slice = match (&qkv.slice, &y.slice, &dy.slice) {
        (CudaStorageSlice::F32(x), _, CudaStorageSlice::F32(g)) => {
            let (x, g) = (x.slice(oq.0..oq.1), g.slice(od.0..od.1));
            CudaStorageSlice::F32(attention_backward_as(
                dev,
                ("attention_backward_q_f32", "attention_backward_kv_f32"),
                (&x, &g),
                &starts,
                dims,
            )?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(y), CudaStorageSlice::BF16(g)) => {
            let (x, y, g) = (
                x.slice(oq.0..oq.1),
                y.slice(oy.0..oy.1),
                g.slice(od.0..od.1),
            );
            CudaStorageSlice::BF16(match mma_kernels(dev, dims, &[oq.0, oy.0, od.0])? {
                Some([_, q, kv]) => {
                    attention_mma_backward(dev, (q, kv), (&x, &y, &g), &starts, dims)?
                }
                None => attention_backward_as(
                    dev,
                    ("attention_backward_q_bf16", "attention_backward_kv_bf16"),
                    (&x, &g),
                    &starts,
                    dims,
                )?,
            })
        }
        _ => candle_core::bail!("attention backward on CUDA: f32 or bf16 qkv and dy, one dtype"),
    };
    Ok((storage(slice, dev), lq.shape().clone()))
}

/// [`attention_backward`] for one dtype, with its two warp kernels' names.
fn attention_backward_as<T: DeviceRepr>(
    dev: &CudaDevice,
    (q_kernel, kv_kernel): (&str, &str),
    (qkv, dy): (&CudaView<T>, &CudaView<T>),
    starts: &CudaView<u32>,
    dims: AttentionDims,
) -> Result<CudaSlice<T>> {
    let (t, nh, nkv, hd, scale) = dims.args();
    let (nq, nk) = (dims.b * dims.nh * dims.t, dims.b * dims.nkv * dims.t);
    let (nq64, nk64) = (nq as i64, nk as i64);
    // SAFETY: backward_q writes the statistics of every query and every query slot of dqkv;
    // backward_kv every key and value slot.
    let (lse, dsum) = unsafe { (dev.alloc::<f32>(nq)?, dev.alloc::<f32>(nq)?) };
    let dqkv = unsafe { dev.alloc::<T>(qkv.len())? };
    kernel(dev, q_kernel)?.run(warps(nq), |b| {
        b.arg(qkv)
            .arg(dy)
            .arg(starts)
            .arg(&dqkv)
            .arg(&lse)
            .arg(&dsum);
        b.arg(&t).arg(&nh).arg(&nkv).arg(&hd).arg(&scale).arg(&nq64);
    })?;
    kernel(dev, kv_kernel)?.run(warps(nk), |b| {
        b.arg(qkv)
            .arg(dy)
            .arg(starts)
            .arg(&lse)
            .arg(&dsum)
            .arg(&dqkv);
        b.arg(&t).arg(&nh).arg(&nkv).arg(&hd).arg(&scale).arg(&nk64);
    })?;
    Ok(dqkv)
}

/// [`attention_backward`] on tensor cores (bf16), with its two kernels' names.
fn attention_mma_backward<T: DeviceRepr>(
    dev: &CudaDevice,
    (q_kernel, kv_kernel): (&str, &str),
    (qkv, y, dy): (&CudaView<T>, &CudaView<T>, &CudaView<T>),
    starts: &CudaView<u32>,
    dims: AttentionDims,
) -> Result<CudaSlice<T>> {
    let (t, nh, nkv, _, scale) = dims.args();
    let nq = dims.b * dims.nh * dims.t;
    // SAFETY: as in attention_backward_as: every query's statistics and query slot, then every
    // key and value slot, are some warp's.
    let (lse, dsum) = unsafe { (dev.alloc::<f32>(nq)?, dev.alloc::<f32>(nq)?) };
    let dqkv = unsafe { dev.alloc::<T>(qkv.len())? };
    // backward_q: tiles of 32 keys and values; backward_kv: the block's 64 keys and values, a
    // tile of 16 queries and their dy, L and D.
    let q_config = mma_blocks(dims, dims.nh, 2 * tiles_bytes(32, dims.hd));
    let kv_config = mma_blocks(
        dims,
        dims.nkv,
        2 * tiles_bytes(MMA_ROWS, dims.hd) + 2 * tiles_bytes(16, dims.hd) + 2 * 16 * 4,
    );
    kernel(dev, q_kernel)?.run(q_config, |b| {
        b.arg(qkv).arg(y).arg(dy).arg(starts).arg(&dqkv);
        b.arg(&lse).arg(&dsum);
        b.arg(&t).arg(&nh).arg(&nkv).arg(&scale);
    })?;
    kernel(dev, kv_kernel)?.run(kv_config, |b| {
        b.arg(qkv).arg(dy).arg(starts).arg(&lse).arg(&dsum);
        b.arg(&dqkv);
        b.arg(&t).arg(&nh).arg(&nkv).arg(&scale);
    })?;
    Ok(dqkv)
}
