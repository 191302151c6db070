//! Collectives over NCCL for CUDA tensors, with ranks started and connected by MPI.
//!
//! NCCL is loaded at run time (cudarc's `dynamic-loading`), so this module builds and links
//! on machines without CUDA; [`Nccl::init`] checks for the driver and `libnccl.so` before
//! touching either and hands the MPI connection back when it cannot be used. Rank 0 creates
//! the NCCL unique id and broadcasts it over MPI. Tensors are reduced in place on the
//! legacy default CUDA stream (libtorch's default stream), then the context is synchronised,
//! so callers see the result as after any other in-place op. CPU tensors (e.g. the loop's
//! token counts) go through MPI.

use std::ffi::{c_char, c_int};
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::nccl::{result, sys};
use tch::{Device, Kind, Tensor};

use crate::dist::Collective;
use crate::mpi::Mpi;

/// Bytes in an NCCL unique id.
const ID_BYTES: usize = 128;

/// Why NCCL cannot be used; carries the MPI connection back for a fallback.
#[derive(Debug)]
pub struct NcclUnavailable {
    pub mpi: Mpi,
    pub reason: String,
}

/// Whether this process can load the CUDA driver and NCCL (without panicking when it
/// cannot: cudarc panics on first use of a missing library).
pub fn libraries_present() -> Result<(), String> {
    // SAFETY: these only try `dlopen` on cudarc's candidate names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver (libcuda.so) is not installed".into());
    }
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "libnccl.so is not on the library path (the Python wheel ships only \
             libnccl.so.2: add a `libnccl.so` link next to it and put that folder on \
             LD_LIBRARY_PATH)"
                .into(),
        );
    }
    Ok(())
}

/// An NCCL communicator over all MPI ranks, one CUDA device per rank.
pub struct Nccl {
    comm: sys::ncclComm_t,
    ctx: Arc<CudaContext>,
    device: Device,
    version: i32,
    mpi: Mpi,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("device", &self.device)
            .field("version", &self.version)
            .field("mpi", &self.mpi)
            .finish()
    }
}

impl Nccl {
    /// Connects every MPI rank's `device` (CUDA) with NCCL. All ranks must call this; they
    /// agree on success, so either every rank gets NCCL or every rank gets its MPI back.
    pub fn init(mut mpi: Mpi, device: Device) -> Result<Nccl, Box<NcclUnavailable>> {
        let local = match device {
            Device::Cuda(n) => libraries_present().map(|()| n),
            other => Err(format!("device {other:?} is not a CUDA device")),
        };
        let ordinal = match agree(&mut mpi, local) {
            Ok(n) => n,
            Err(reason) => return Err(Box::new(NcclUnavailable { mpi, reason })),
        };
        let ctx = match CudaContext::new(ordinal).and_then(|c| c.bind_to_thread().map(|()| c)) {
            Ok(c) => Ok(c),
            Err(e) => Err(format!("CUDA device {ordinal}: {e}")),
        };
        let ctx = match agree(&mut mpi, ctx) {
            Ok(c) => c,
            Err(reason) => return Err(Box::new(NcclUnavailable { mpi, reason })),
        };

        // Rank 0 makes the id; byte 0 of the message says whether it could.
        let mut msg = [0u8; 1 + ID_BYTES];
        if mpi.rank() == 0 {
            match result::get_uniqueid() {
                Ok(id) => {
                    msg[0] = 1;
                    for (dst, &src) in msg[1..].iter_mut().zip(id.internal.iter()) {
                        *dst = src as u8;
                    }
                }
                Err(e) => tracing::warn!("ncclGetUniqueId: {e:?}"),
            }
        }
        mpi.broadcast_slice(&mut msg[..], 0);
        if msg[0] != 1 {
            let reason = "rank 0 could not create an NCCL unique id".to_string();
            return Err(Box::new(NcclUnavailable { mpi, reason }));
        }
        let mut id = sys::ncclUniqueId {
            internal: [0 as c_char; ID_BYTES],
        };
        for (dst, &src) in id.internal.iter_mut().zip(msg[1..].iter()) {
            *dst = src as c_char;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank passes the same id and world
        // size and its own rank, with its device's context current.
        let made = unsafe {
            result::comm_init_rank(&mut comm, mpi.world() as c_int, id, mpi.rank() as c_int)
        };
        let made = made.map_err(|e| format!("ncclCommInitRank: {e:?}"));
        let failed = made.is_err();
        if let Err(reason) = agree(&mut mpi, made) {
            if !failed {
                // SAFETY: created above and not used since.
                let _ = unsafe { result::comm_abort(comm) };
            }
            return Err(Box::new(NcclUnavailable { mpi, reason }));
        }
        let version = result::get_nccl_version().unwrap_or(0);
        Ok(Nccl {
            comm,
            ctx,
            device,
            version,
            mpi,
        })
    }

    /// The NCCL version number, e.g. 22703 for 2.27.3.
    pub fn version(&self) -> i32 {
        self.version
    }

    fn checked(&self, t: &Tensor, what: &str) -> sys::ncclDataType_t {
        assert!(
            t.device() == self.device && t.is_contiguous(),
            "NCCL {what}: expected a contiguous tensor on {:?}, got {:?} (contiguous: {})",
            self.device,
            t.device(),
            t.is_contiguous()
        );
        match t.kind() {
            Kind::Float => sys::ncclDataType_t::ncclFloat32,
            Kind::Double => sys::ncclDataType_t::ncclFloat64,
            Kind::Half => sys::ncclDataType_t::ncclFloat16,
            Kind::BFloat16 => sys::ncclDataType_t::ncclBfloat16,
            Kind::Int64 => sys::ncclDataType_t::ncclInt64,
            Kind::Int => sys::ncclDataType_t::ncclInt32,
            other => panic!("NCCL {what}: unsupported kind {other:?}"),
        }
    }

    fn sync(&self, what: &str) {
        if let Err(e) = self.ctx.synchronize() {
            panic!("NCCL {what}: CUDA synchronize failed: {e}");
        }
    }
}

/// Every rank's `local` outcome, made collective: `Ok` on all ranks only if it is `Ok`
/// on every rank; otherwise every rank gets the first failing rank's kind of error.
fn agree<T>(mpi: &mut Mpi, local: Result<T, String>) -> Result<T, String> {
    let mut failures = [f64::from(local.is_err())];
    mpi.all_reduce_slice(&mut failures[..]);
    match local {
        Ok(v) if failures[0] == 0.0 => Ok(v),
        Ok(_) => Err(format!("{} other rank(s) could not use NCCL", failures[0])),
        Err(e) => Err(e),
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by `init` and is dropped once.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn world(&self) -> usize {
        self.mpi.world()
    }

    fn all_reduce_sum(&mut self, t: &mut Tensor) {
        if t.device() == Device::Cpu {
            return self.mpi.all_reduce_sum(t);
        }
        if self.world() == 1 || t.numel() == 0 {
            return;
        }
        let dtype = self.checked(t, "all-reduce");
        let ptr = t.data_ptr();
        // SAFETY: `t` is a contiguous tensor on this communicator's device with `numel`
        // elements of `dtype`; it is reduced in place on the stream libtorch used to
        // produce it, and we synchronise before returning.
        let r = unsafe {
            result::all_reduce(
                ptr,
                ptr,
                t.numel(),
                dtype,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        if let Err(e) = r {
            panic!("ncclAllReduce of {} elements: {e:?}", t.numel());
        }
        self.sync("all-reduce");
    }

    fn broadcast(&mut self, t: &mut Tensor, root: usize) {
        if t.device() == Device::Cpu {
            return self.mpi.broadcast(t, root);
        }
        if self.world() == 1 || t.numel() == 0 {
            return;
        }
        let dtype = self.checked(t, "broadcast");
        let ptr = t.data_ptr();
        // SAFETY: as in `all_reduce_sum`.
        let r = unsafe {
            result::broadcast(
                ptr,
                ptr,
                t.numel(),
                dtype,
                root as c_int,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        if let Err(e) = r {
            panic!("ncclBroadcast of {} elements: {e:?}", t.numel());
        }
        self.sync("broadcast");
    }

    fn barrier(&mut self) {
        self.mpi.barrier();
    }

    fn describe(&self) -> String {
        let v = self.version;
        format!(
            "NCCL {}.{}.{} on {:?}, {} ranks (over {})",
            v / 10000,
            (v / 100) % 100,
            v % 100,
            self.device,
            self.world(),
            self.mpi.describe()
        )
    }
}
