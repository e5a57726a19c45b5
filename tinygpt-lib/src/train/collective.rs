//! Collectives: how data-parallel workers agree on one gradient.
//!
//! In data parallelism every worker holds a full copy (a *replica*) of the model, reads its own
//! share of each batch, and computes gradients on it. Before the optimizer step the workers
//! **all-reduce** their gradients — every worker ends up with the sum of all of them — and divide
//! by the number of workers. Since all replicas start from the same weights and apply the same
//! averaged gradient, they stay identical, and `world_size` workers with micro-batch `B` compute
//! exactly the step one worker would with micro-batch `world_size · B`.
//!
//! A [`Collective`] is one worker's end of that conversation:
//! - [`Single`]: one worker, nothing to exchange;
//! - [`LocalGroup`]: CPU workers (threads of this process) that meet at a barrier and add up
//!   each other's tensors in rank order — the same code path as the GPUs, testable anywhere;
//! - `Nccl` (feature `nccl`): NVIDIA's collective library, one communicator per GPU.
//!
//! Across machines, NCCL works the same way: rank 0 creates a unique id (`ncclGetUniqueId`, 128
//! bytes), sends it to every other process by any side channel (a shared file, a TCP socket,
//! the launcher's environment), and each process calls `ncclCommInitRank(id, rank, world_size)`
//! for its GPUs. See docs/GPU.md.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::Tensor;

use crate::{Error, Result};

/// One worker's view of a group of data-parallel workers.
pub trait Collective: Send + Sync {
    /// This worker's index, `0..world_size`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The element-wise sum of `t` over all workers (every worker calls it with a tensor of the
    /// same shape and gets the same sum back). `t` is 1-D, f32, on this worker's device.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;

    /// Rank 0's `t` on every worker: the others contribute zeros to a sum (`x + 0 = x`
    /// exactly, so the copies are bit-identical).
    fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
        if self.rank() == 0 {
            self.all_reduce_sum(t)
        } else {
            self.all_reduce_sum(&t.zeros_like()?)
        }
    }
}

/// A group of one.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// Workers that are threads of this process (CPU devices): each puts its tensor on a shared
/// table, waits for the others at a barrier, and adds the table up in rank order — so every
/// worker computes the very same sum, bit for bit.
pub struct LocalGroup {
    rank: usize,
    world_size: usize,
    shared: Arc<Shared>,
}

struct Shared {
    barrier: Barrier,
    table: Mutex<Vec<Option<Tensor>>>,
}

impl LocalGroup {
    /// The `world_size` ends of one group; hand one to each worker thread.
    pub fn new(world_size: usize) -> Vec<LocalGroup> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(world_size),
            table: Mutex::new(vec![None; world_size]),
        });
        (0..world_size)
            .map(|rank| LocalGroup {
                rank,
                world_size,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.shared.table.lock().expect("a worker panicked")[self.rank] = Some(t.clone());
        // Everyone has written…
        self.shared.barrier.wait();
        let result = {
            let table = self.shared.table.lock().expect("a worker panicked");
            let mut sum = table[0].clone().expect("rank 0 wrote");
            for other in table[1..].iter() {
                let other = other.as_ref().expect("every rank wrote");
                sum = (sum + other.to_device(t.device())?)?;
            }
            sum
        };
        // …and everyone has read, before anyone may write the next round.
        self.shared.barrier.wait();
        Ok(result)
    }
}

/// One collective per device: [`Single`] for one device, [`LocalGroup`] for several CPUs, NCCL
/// for several GPUs (feature `nccl`).
pub fn for_devices(devices: &[candle_core::Device]) -> Result<Vec<Box<dyn Collective>>> {
    match devices {
        [] => Err(Error::Invalid("--devices: no device given".into())),
        [_] => Ok(vec![Box::new(Single)]),
        _ if devices.iter().all(|d| d.is_cpu()) => Ok(LocalGroup::new(devices.len())
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Collective>)
            .collect()),
        _ if devices.iter().all(|d| d.is_cuda()) => gpu_group(devices),
        _ => Err(Error::Invalid(
            "--devices: mixing CPU and GPU workers is not supported; list only cpu or only cuda:N"
                .into(),
        )),
    }
}

#[cfg(feature = "nccl")]
fn gpu_group(devices: &[candle_core::Device]) -> Result<Vec<Box<dyn Collective>>> {
    Ok(nccl::Nccl::group(devices)?
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Collective>)
        .collect())
}

#[cfg(not(feature = "nccl"))]
fn gpu_group(_devices: &[candle_core::Device]) -> Result<Vec<Box<dyn Collective>>> {
    Err(Error::Invalid(
        "--devices: several GPUs need NCCL; build with `scripts/cuda-env.sh cargo build --release --features cuda,nccl`".into(),
    ))
}

#[cfg(feature = "nccl")]
pub use nccl::Nccl;

#[cfg(feature = "nccl")]
mod nccl {
    use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, ReduceOp};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

    use super::Collective;
    use crate::{Error, Result};

    /// One GPU's NCCL communicator.
    pub struct Nccl {
        comm: Comm,
    }

    // SAFETY: a communicator may be used from any thread as long as one thread at a time uses it;
    // each `Nccl` belongs to exactly one worker thread.
    unsafe impl Send for Nccl {}
    unsafe impl Sync for Nccl {}

    impl Nccl {
        /// Communicators for the GPUs of this process (`ncclCommInitAll`), on candle's streams so
        /// the all-reduce is ordered after the backward pass that produced the gradients.
        pub fn group(devices: &[Device]) -> Result<Vec<Nccl>> {
            let streams = devices
                .iter()
                .map(|d| match d {
                    Device::Cuda(c) => Ok(c.cuda_stream()),
                    _ => Err(Error::Invalid("NCCL needs CUDA devices".into())),
                })
                .collect::<Result<Vec<_>>>()?;
            let comms = Comm::from_devices(streams)
                .map_err(|e| Error::Invalid(format!("NCCL initialisation failed: {e:?}")))?;
            Ok(comms.into_iter().map(|comm| Nccl { comm }).collect())
        }
    }

    impl Collective for Nccl {
        fn rank(&self) -> usize {
            self.comm.rank()
        }
        fn world_size(&self) -> usize {
            self.comm.world_size()
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            Ok(t.contiguous()?.apply_op1_no_bwd(&AllReduce(&self.comm))?)
        }
    }

    /// `ncclAllReduce(sum)` as a candle operation (f32).
    struct AllReduce<'a>(&'a Comm);

    impl CustomOp1 for AllReduce<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-reduce"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-reduce needs a CUDA tensor")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("NCCL all-reduce needs a contiguous tensor")
            };
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            let mut dst = s.device.alloc_zeros::<f32>(end - start)?;
            self.0
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((
                CudaStorage::wrap_cuda_slice(dst, s.device.clone()),
                l.shape().clone(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn local_group_sums_and_broadcasts() {
        let group = LocalGroup::new(3);
        let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let t = Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap();
                        let sum = c.all_reduce_sum(&t).unwrap().to_vec1().unwrap();
                        let b = c.broadcast(&(t + 1.0).unwrap()).unwrap().to_vec1().unwrap();
                        (sum, b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (sum, b) in results {
            assert_eq!(sum, vec![3.0, 30.0]);
            assert_eq!(b, vec![1.0, 1.0]);
        }
        assert_eq!(group[2].world_size(), 3);
    }
}
