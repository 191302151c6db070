//! Launching and watching edkd distillation runs.
//!
//! One [`JobSpec`] (a TOML file) describes a run: teacher server replicas, MPI trainer ranks,
//! data and output folders, and per-backend settings. From it this crate runs the job on this
//! machine under a supervisor that restarts failed runs with `--resume` ([`local`]), renders
//! an sbatch script for Slurm ([`slurm`]) or manifests for Kubernetes ([`k8s`]), and reads a
//! run folder back into a one-screen progress report ([`status`]). It starts processes and
//! writes files; it never links libtorch.

mod error;
pub mod k8s;
pub mod local;
pub mod restarts;
pub mod shell;
pub mod slurm;
pub mod spec;
pub mod status;

pub use error::{Error, Result};
pub use spec::{
    DataSpec, Device, Dtype, JobSpec, K8sMode, K8sSpec, Resources, SlurmSpec, TeacherSpec,
    TrainerSpec,
};
