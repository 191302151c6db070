//! Collectives over MPI (Open MPI from Debian, the `mpi` crate): how ranks started by
//! `mpirun`, Slurm's `srun` or the Kubernetes MPI Operator find each other, and the
//! all-reduce for CPU gradients.
//!
//! Tensors are reduced where they lie: a contiguous CPU tensor's memory is handed to MPI
//! directly (in place under Open MPI, through a reused receive buffer elsewhere). Other
//! tensors (CUDA, non-contiguous, half precision) go through a contiguous CPU copy, f32 for
//! 16-bit kinds; GPU gradients belong to [`crate::nccl`].

use std::ffi::c_void;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::{Count, Threading};
use tch::{Device, Kind, Tensor};

use crate::dist::Collective;

/// Environment variables that MPI launchers set in every rank: Open MPI's `mpirun`, the
/// PMI of MPICH's Hydra, and PMIx (`srun --mpi=pmix`, Open MPI 5).
pub const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// Variables that give a rank's index among the ranks of its node (Open MPI, MPICH, Slurm).
pub const LOCAL_RANK_VARS: [&str; 3] = [
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "SLURM_LOCALID",
];

/// Open MPI's `MPI_IN_PLACE` (`((void *) 1)` in its `mpi.h`); the `mpi` crate does not
/// export the constant, and other implementations use other values.
const OPEN_MPI_IN_PLACE: usize = 1;

/// Elements per MPI call: counts are C `int`s.
const MAX_COUNT: usize = 1 << 30;

/// Whether this process was started by an MPI launcher.
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// This rank's index among the ranks on its node, when the launcher says.
pub fn local_rank() -> Option<usize> {
    LOCAL_RANK_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The ranks of `MPI_COMM_WORLD`. Dropping it finalizes MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    library: String,
    /// The implementation's `MPI_IN_PLACE` (an address), when known.
    in_place: Option<usize>,
    /// Receive buffer of the copying all-reduce, kept between calls (f64: aligned for
    /// every element type reduced here).
    scratch: Vec<f64>,
    // Declared last: dropped (MPI_Finalize) after the communicator.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("library", &self.library)
            .finish()
    }
}

impl Mpi {
    /// Joins the job's ranks when this process was started by an MPI launcher (see
    /// [`launched_by_mpi`]); `None` otherwise, or when MPI was initialised already.
    pub fn init() -> Option<Mpi> {
        if !launched_by_mpi() {
            return None;
        }
        Self::init_always()
    }

    /// Initialises MPI whatever the environment (a lone process becomes a world of one).
    pub fn init_always() -> Option<Mpi> {
        // Only the training thread calls MPI; prefetch and teacher threads never do.
        let (universe, _provided) = mpi::initialize_with_threading(Threading::Funneled)?;
        let world = universe.world();
        let library = mpi::environment::library_version()
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let in_place = library.contains("Open MPI").then_some(OPEN_MPI_IN_PLACE);
        Some(Mpi {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            library,
            in_place,
            scratch: Vec::new(),
            _universe: universe,
        })
    }

    /// The world communicator (for collectives the trait does not cover).
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// The MPI library's name and version, e.g. `Open MPI v4.1.4, ...`.
    pub fn library(&self) -> &str {
        &self.library
    }

    /// Sums `buf` over all ranks, in place.
    pub fn all_reduce_slice<T: Equivalence + Copy>(&mut self, buf: &mut [T]) {
        let op = SystemOperation::sum();
        match self.in_place {
            Some(in_place) => {
                for chunk in buf.chunks_mut(MAX_COUNT) {
                    // SAFETY: `chunk` is a valid, exclusively borrowed buffer of `len`
                    // elements of T's MPI datatype; `in_place` is this library's
                    // MPI_IN_PLACE, so MPI reads and writes only `chunk`.
                    unsafe {
                        mpi::ffi::MPI_Allreduce(
                            in_place as *const c_void,
                            chunk.as_mut_ptr().cast(),
                            chunk.len() as Count,
                            T::equivalent_datatype().as_raw(),
                            op.as_raw(),
                            self.world.as_raw(),
                        );
                    }
                }
            }
            None => {
                assert!(
                    std::mem::align_of::<T>() <= std::mem::align_of::<f64>(),
                    "the copying all-reduce takes elements aligned to at most 8 bytes"
                );
                let words = std::mem::size_of_val(buf).div_ceil(std::mem::size_of::<f64>());
                if self.scratch.len() < words {
                    self.scratch.resize(words, 0.0);
                }
                for chunk in buf.chunks_mut(MAX_COUNT) {
                    let n = chunk.len();
                    let recv = self.scratch.as_mut_ptr().cast::<T>();
                    // SAFETY: the scratch buffer holds at least `n` elements of T and is
                    // not otherwise borrowed; it is 8-byte aligned, enough for T (asserted
                    // above); T is plain data (Equivalence + Copy), so the bytes MPI writes
                    // form valid values of T.
                    let recv = unsafe { std::slice::from_raw_parts_mut(recv, n) };
                    self.world.all_reduce_into(&chunk[..], &mut recv[..], op);
                    chunk.copy_from_slice(recv);
                }
            }
        }
    }

    /// Copies rank `root`'s `buf` into every rank's `buf`.
    pub fn broadcast_slice<T: Equivalence>(&mut self, buf: &mut [T], root: usize) {
        let root = self.world.process_at_rank(root as i32);
        for chunk in buf.chunks_mut(MAX_COUNT) {
            root.broadcast_into(chunk);
        }
    }

    /// Runs `f` on a contiguous CPU tensor of kind f32 or f64 holding `t`'s values, and
    /// writes the result back into `t` when that tensor was a copy.
    fn with_host(&mut self, t: &mut Tensor, f: impl FnOnce(&mut Self, &mut Tensor)) {
        let direct = t.device() == Device::Cpu
            && t.is_contiguous()
            && matches!(t.kind(), Kind::Float | Kind::Double);
        if direct {
            f(self, t);
            return;
        }
        let kind = match t.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        let mut host = t.to_device(Device::Cpu).to_kind(kind).contiguous();
        f(self, &mut host);
        tch::no_grad(|| t.copy_(&host));
    }
}

/// The elements of a contiguous CPU tensor of element type `T`.
///
/// # Safety
/// `t` must be contiguous, on the CPU, of the kind matching `T`, and no other view of its
/// storage may be read or written while the slice lives.
unsafe fn host_slice<T>(t: &mut Tensor) -> &mut [T] {
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    // SAFETY: per the contract, `data_ptr` (which includes the storage offset) points at
    // `n` initialised, properly aligned elements of T.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<T>(), n) }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&mut self, t: &mut Tensor) {
        if self.size == 1 {
            return;
        }
        self.with_host(t, |mpi, h| match h.kind() {
            // SAFETY: `with_host` hands over a contiguous CPU tensor of the matched kind,
            // borrowed exclusively for this call.
            Kind::Double => mpi.all_reduce_slice(unsafe { host_slice::<f64>(h) }),
            _ => mpi.all_reduce_slice(unsafe { host_slice::<f32>(h) }),
        });
    }

    fn broadcast(&mut self, t: &mut Tensor, root: usize) {
        if self.size == 1 {
            return;
        }
        self.with_host(t, |mpi, h| match h.kind() {
            // SAFETY: as in `all_reduce_sum`.
            Kind::Double => mpi.broadcast_slice(unsafe { host_slice::<f64>(h) }, root),
            _ => mpi.broadcast_slice(unsafe { host_slice::<f32>(h) }, root),
        });
    }

    fn barrier(&mut self) {
        self.world.barrier();
    }

    fn describe(&self) -> String {
        let ranks = if self.size == 1 { "rank" } else { "ranks" };
        format!("MPI, {} {ranks} ({})", self.size, self.library)
    }
}
