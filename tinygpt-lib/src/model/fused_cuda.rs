//! The CUDA side of [`super::fused`]: the kernels of `fused.cu`, compiled by NVRTC the first
//! time one is needed (once per process), launched one thread block per row.

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{Layout, Shape};

const SOURCE: &str = include_str!("fused.cu");
const THREADS: u32 = 256;

type Result<T> = candle_core::Result<T>;

fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let ptx = PTX.get_or_init(|| {
        nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    });
    let ptx = ptx
        .as_ref()
        .map_err(|e| candle_core::Error::Msg(format!("compiling fused.cu with NVRTC: {e}")))?;
    Ok(dev
        .get_or_load_custom_func(name, "tinygpt_fused", ptx)?
        .into_cuda_function())
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

/// Launches kernel `name(a, b, out, ints…)` over `n_rows` rows; `out` has `len` elements.
fn launch_rows<T: DeviceRepr>(
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
    builder.arg(a).arg(b).arg(&out);
    for i in ints {
        builder.arg(i);
    }
    // SAFETY: the arguments match the kernel's signature in fused.cu.
    unsafe { builder.launch(rows(n_rows)) }.w()?;
    Ok(out)
}

/// Runs `{kernel}_f32` or `{kernel}_bf16` (by the inputs' dtype) on two inputs of one dtype,
/// one block per row of `a`'s last axis; the output has `a`'s shape.
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
            CudaStorageSlice::F32(launch_rows(dev, &name, inputs, len, ints, n_rows)?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(y)) => {
            let inputs = (&x.slice(ao.0..ao.1), &y.slice(bo.0..bo.1));
            let name = format!("{kernel}_bf16");
            CudaStorageSlice::BF16(launch_rows(dev, &name, inputs, len, ints, n_rows)?)
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

fn f32_and_targets<'a>(
    x: &'a CudaStorage,
    targets: &'a CudaStorage,
) -> Result<(&'a CudaSlice<f32>, &'a CudaSlice<u32>)> {
    match (&x.slice, &targets.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::U32(t)) => Ok((x, t)),
        _ => candle_core::bail!("cross-entropy on CUDA: f32 logits and u32 targets"),
    }
}

/// Per-row cross-entropy `(N)` of logits `(N, V)` (f32) against targets `(N)` (u32).
pub fn cross_entropy(
    x: &CudaStorage,
    lx: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, v) = lx.shape().dims2()?;
    let (xo, to) = (offsets(lx)?, offsets(lt)?);
    let (xs, ts) = f32_and_targets(x, targets)?;
    let dev = &x.device;
    let out = unsafe { dev.alloc::<f32>(n)? };
    let f = function(dev, "cross_entropy_f32")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    let (xs, ts, v) = (xs.slice(xo.0..xo.1), ts.slice(to.0..to.1), v as i32);
    b.arg(&xs).arg(&ts).arg(&out).arg(&v);
    unsafe { b.launch(rows(n)) }.w()?;
    Ok((
        CudaStorage {
            slice: CudaStorageSlice::F32(out),
            device: dev.clone(),
        },
        Shape::from(n),
    ))
}

/// `dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i`: logits `(N, V)`, targets `(N)`, dloss `(N)`.
pub fn cross_entropy_backward(
    x: &CudaStorage,
    lx: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
    dloss: &CudaStorage,
    ld: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, v) = lx.shape().dims2()?;
    let (xo, to, doff) = (offsets(lx)?, offsets(lt)?, offsets(ld)?);
    let (xs, ts) = f32_and_targets(x, targets)?;
    let CudaStorageSlice::F32(ds) = &dloss.slice else {
        candle_core::bail!("cross-entropy backward on CUDA: f32 gradient")
    };
    let dev = &x.device;
    let out = unsafe { dev.alloc::<f32>(n * v)? };
    let f = function(dev, "cross_entropy_backward_f32")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    let (xs, ts, ds) = (
        xs.slice(xo.0..xo.1),
        ts.slice(to.0..to.1),
        ds.slice(doff.0..doff.1),
    );
    let v = v as i32;
    b.arg(&xs).arg(&ts).arg(&ds).arg(&out).arg(&v);
    unsafe { b.launch(rows(n)) }.w()?;
    Ok((
        CudaStorage {
            slice: CudaStorageSlice::F32(out),
            device: dev.clone(),
        },
        lx.shape().clone(),
    ))
}
