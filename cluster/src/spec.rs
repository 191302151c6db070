//! The job spec: one TOML file that describes a distillation run for every backend.
//!
//! ```toml
//! name = "mu-distill"
//! output = "runs/mu"
//! max_restarts = 3
//!
//! [teacher]                 # optional: leave out when the train config reads a logit cache
//! model = "models/phi-3.5-mini"
//! replicas = 2
//! devices = ["cuda:0", "cuda:1"]   # replica i runs on devices[i % len]
//! dtype = "bf16"
//! base_port = 50051
//!
//! [trainer]
//! ranks = 2
//! devices_per_rank = 1      # GPUs per rank, 0 = CPU
//! config = "configs/train.toml"
//! extra_args = []
//!
//! [data]
//! manifest = "data/shards"  # folder holding manifest.json
//!
//! [slurm]                   # only for `slurm::render` / `slurm::submit`
//! partition = "gpu"
//! nodes = 1
//! gpus_per_node = 4
//! cpus_per_task = 8
//! time = "24:00:00"
//! shared_dir = "/shared/runs/mu"
//!
//! [k8s]                     # only for `k8s::render`
//! namespace = "edkd"
//! image = "registry.example/edkd:0.1"
//! mode = "mpijob"
//! volume_claim = "edkd-work"
//! teacher_resources = { cpu = "8", memory = "32Gi", gpus = 1 }
//! trainer_resources = { cpu = "8", memory = "32Gi", gpus = 1 }
//! ```
//!
//! Relative paths are used as written: relative to the launcher's working directory for the
//! local backend, to the submit directory for Slurm, and to the container's working directory
//! for Kubernetes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest allowed job name: Kubernetes object names get suffixes such as `-train-config`
/// appended and must stay within 63 characters.
pub const MAX_NAME_LEN: usize = 40;

/// Largest `teacher.threads` / `trainer.threads_per_rank`.
pub const MAX_THREADS: u32 = 4096;

/// A whole distillation job. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name: lowercase letters, digits and `-` (a DNS label), at most [`MAX_NAME_LEN`].
    pub name: String,
    /// Run output folder: the trainer's `--out` (metrics, checkpoints, `restarts.json`).
    pub output: PathBuf,
    /// How many times a failed run is restarted (with `--resume`) before giving up.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Teacher servers; absent when the train config uses an in-process teacher or a cache.
    #[serde(default)]
    pub teacher: Option<TeacherSpec>,
    /// The data-parallel trainer.
    pub trainer: TrainerSpec,
    /// The prepared data.
    pub data: DataSpec,
    /// Settings for the Slurm backend.
    #[serde(default)]
    pub slurm: Option<SlurmSpec>,
    /// Settings for the Kubernetes backend.
    #[serde(default)]
    pub k8s: Option<K8sSpec>,
}

/// Teacher server replicas (`edkd teacher serve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// Hugging Face checkpoint folder of the teacher.
    pub model: PathBuf,
    /// Number of server processes.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Devices, used round-robin: replica `i` runs on `devices[i % devices.len()]`.
    #[serde(default = "default_devices")]
    pub devices: Vec<Device>,
    /// Weight and compute dtype of the teacher.
    #[serde(default)]
    pub dtype: Dtype,
    /// Replica `i` listens on `base_port + i`.
    #[serde(default = "default_base_port")]
    pub base_port: u16,
    /// libtorch threads of each replica that runs on the CPU. Default (local backend):
    /// the machine's cores split between every CPU replica and CPU rank
    /// ([`crate::local::split_cores`]), so processes that share cores do not each start a
    /// team as wide as the machine.
    #[serde(default)]
    pub threads: Option<u32>,
}

/// The MPI-launched trainer (`edkd train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerSpec {
    /// Number of MPI ranks.
    #[serde(default = "one")]
    pub ranks: u32,
    /// GPUs per rank; 0 trains on CPU.
    #[serde(default)]
    pub devices_per_rank: u32,
    /// The train config (`edkd train --config`).
    pub config: PathBuf,
    /// Extra arguments appended to `edkd train`.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// libtorch threads of each CPU rank (`--set threads=N`). Default (local backend): as
    /// for `teacher.threads`.
    #[serde(default)]
    pub threads_per_rank: Option<u32>,
}

/// Where the prepared data lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Folder holding `manifest.json` and the Arrow shards.
    pub manifest: PathBuf,
}

/// Slurm settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `--partition`.
    pub partition: String,
    /// `--nodes`.
    #[serde(default = "one")]
    pub nodes: u32,
    /// `--gpus-per-node`; 0 requests no GPUs.
    #[serde(default)]
    pub gpus_per_node: u32,
    /// `--cpus-per-task` of every trainer rank and teacher replica.
    #[serde(default = "one")]
    pub cpus_per_task: u32,
    /// `--time` limit, e.g. `24:00:00` or `2-00:00:00`.
    pub time: String,
    /// `--account`, if the cluster wants one.
    #[serde(default)]
    pub account: Option<String>,
    /// Run folder on storage every node sees (checkpoints survive requeues there); defaults
    /// to `output`.
    #[serde(default)]
    pub shared_dir: Option<PathBuf>,
    /// The `edkd` binary on the compute nodes.
    #[serde(default = "default_edkd")]
    pub edkd: String,
    /// Seconds to wait for every teacher to accept connections.
    #[serde(default = "default_teacher_timeout_s")]
    pub teacher_timeout_s: u32,
}

/// Kubernetes settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sSpec {
    /// Namespace of every object.
    pub namespace: String,
    /// Container image with `edkd` (and Open MPI + sshd for `mpijob`) on PATH.
    pub image: String,
    /// How trainer ranks are started.
    #[serde(default)]
    pub mode: K8sMode,
    /// Resources of one teacher pod.
    pub teacher_resources: Resources,
    /// Resources of one trainer rank pod.
    pub trainer_resources: Resources,
    /// PersistentVolumeClaim holding the model, data and output, mounted at `mount_path`.
    #[serde(default)]
    pub volume_claim: Option<String>,
    /// Where `volume_claim` is mounted in every container.
    #[serde(default = "default_mount_path")]
    pub mount_path: String,
}

/// Requests (= limits) of one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU quantity, e.g. `"8"` or `"500m"`.
    pub cpu: String,
    /// Memory quantity, e.g. `"32Gi"`.
    pub memory: String,
    /// `nvidia.com/gpu` count; 0 requests none.
    #[serde(default)]
    pub gpus: u32,
}

/// How the Kubernetes backend starts trainer ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum K8sMode {
    /// A Kubeflow MPIJob (`kubeflow.org/v2beta1`): the MPI Operator runs `mpirun` in a
    /// launcher pod against worker pods.
    #[default]
    #[serde(rename = "mpijob")]
    MpiJob,
    /// An Indexed Job plus a headless Service; every pod gets `EDKD_RANK`, `EDKD_WORLD_SIZE`
    /// and `EDKD_MASTER_ADDR` instead of an MPI launcher.
    #[serde(rename = "indexed-job")]
    IndexedJob,
}

/// Teacher dtype.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    #[default]
    Bf16,
    /// float16.
    F16,
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        })
    }
}

/// A compute device as `edkd --device` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// `cpu`
    Cpu,
    /// `cuda:N`
    Cuda(u32),
}

impl Device {
    /// Whether this is a GPU.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|index| index.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("device `{s}` is neither `cpu` nor `cuda:N`"))
    }
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

impl TeacherSpec {
    /// Device of replica `replica` (round-robin over `devices`).
    pub fn device(&self, replica: u32) -> Device {
        self.devices[replica as usize % self.devices.len()]
    }

    /// Port of replica `replica`.
    pub fn port(&self, replica: u32) -> u16 {
        // validate() guarantees base_port + replicas - 1 fits in u16.
        self.base_port + replica as u16
    }

    /// Whether any replica runs on a GPU.
    pub fn uses_cuda(&self) -> bool {
        self.devices.iter().any(|device| device.is_cuda())
    }
}

impl JobSpec {
    /// Reads and validates a job spec file.
    pub fn load(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        JobSpec::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates a job spec; `origin` names the source in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<JobSpec> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| Error::SpecParse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks ranges and consistency that the types alone do not express.
    pub fn validate(&self) -> Result<()> {
        check_dns_label("name", &self.name, MAX_NAME_LEN)?;
        if let Some(teacher) = &self.teacher {
            if teacher.replicas == 0 {
                return Err(Error::invalid("teacher.replicas", "must be at least 1"));
            }
            if teacher.devices.is_empty() {
                return Err(Error::invalid(
                    "teacher.devices",
                    "must list at least one device",
                ));
            }
            if teacher.base_port == 0
                || u32::from(teacher.base_port) + teacher.replicas - 1 > u32::from(u16::MAX)
            {
                return Err(Error::invalid(
                    "teacher.base_port",
                    format!(
                        "ports {}..{} must lie in 1..=65535",
                        teacher.base_port,
                        u32::from(teacher.base_port) + teacher.replicas
                    ),
                ));
            }
        }
        if self.trainer.ranks == 0 {
            return Err(Error::invalid("trainer.ranks", "must be at least 1"));
        }
        let threads = [
            (
                "teacher.threads",
                self.teacher.as_ref().and_then(|t| t.threads),
            ),
            ("trainer.threads_per_rank", self.trainer.threads_per_rank),
        ];
        for (field, value) in threads {
            if let Some(n) = value.filter(|n| !(1..=MAX_THREADS).contains(n)) {
                return Err(Error::invalid(
                    field,
                    format!("{n} must lie in 1..={MAX_THREADS} (leave it out to split the cores)"),
                ));
            }
        }
        if let Some(slurm) = &self.slurm {
            self.validate_slurm(slurm)?;
        }
        if let Some(k8s) = &self.k8s {
            check_dns_label("k8s.namespace", &k8s.namespace, 63)?;
            if k8s.image.trim().is_empty() {
                return Err(Error::invalid("k8s.image", "must not be empty"));
            }
            if k8s.trainer_resources.gpus != self.trainer.devices_per_rank {
                return Err(Error::invalid(
                    "k8s.trainer_resources.gpus",
                    format!(
                        "{} differs from trainer.devices_per_rank = {} (one pod per rank)",
                        k8s.trainer_resources.gpus, self.trainer.devices_per_rank
                    ),
                ));
            }
            if !k8s.mount_path.starts_with('/') {
                return Err(Error::invalid(
                    "k8s.mount_path",
                    format!("`{}` must be an absolute path", k8s.mount_path),
                ));
            }
        }
        Ok(())
    }

    fn validate_slurm(&self, slurm: &SlurmSpec) -> Result<()> {
        check_sbatch_word("slurm.partition", &slurm.partition)?;
        check_sbatch_word("slurm.time", &slurm.time)?;
        if let Some(account) = &slurm.account {
            check_sbatch_word("slurm.account", account)?;
        }
        // The run folder also appears in `#SBATCH --output=`, which cannot be quoted.
        let run_dir_field = if slurm.shared_dir.is_some() {
            "slurm.shared_dir"
        } else {
            "output"
        };
        check_sbatch_word(run_dir_field, &self.slurm_run_dir().to_string_lossy())?;
        if slurm.nodes == 0 {
            return Err(Error::invalid("slurm.nodes", "must be at least 1"));
        }
        if slurm.cpus_per_task == 0 {
            return Err(Error::invalid("slurm.cpus_per_task", "must be at least 1"));
        }
        let trainer_gpus = self.trainer.ranks * self.trainer.devices_per_rank;
        let allocated = slurm.nodes * slurm.gpus_per_node;
        if trainer_gpus > allocated {
            return Err(Error::invalid(
                "slurm.gpus_per_node",
                format!(
                    "{} ranks x {} GPUs need {trainer_gpus} GPUs but {} nodes x {} GPUs give {allocated}",
                    self.trainer.ranks,
                    self.trainer.devices_per_rank,
                    slurm.nodes,
                    slurm.gpus_per_node
                ),
            ));
        }
        if let Some(teacher) = &self.teacher
            && teacher.uses_cuda()
            && teacher.replicas > slurm.gpus_per_node
        {
            return Err(Error::invalid(
                "slurm.gpus_per_node",
                format!(
                    "{} GPU teacher replicas run on the first node, which has only {} GPUs",
                    teacher.replicas, slurm.gpus_per_node
                ),
            ));
        }
        Ok(())
    }

    /// The run folder the trainer writes to under Slurm: `slurm.shared_dir` or `output`.
    pub fn slurm_run_dir(&self) -> &Path {
        self.slurm
            .as_ref()
            .and_then(|slurm| slurm.shared_dir.as_deref())
            .unwrap_or(&self.output)
    }
}

fn check_dns_label(field: &str, value: &str, max_len: usize) -> Result<()> {
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid_ends = value
        .bytes()
        .next()
        .zip(value.bytes().last())
        .is_some_and(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if value.len() > max_len || !valid_chars || !valid_ends {
        return Err(Error::invalid(
            field,
            format!(
                "`{value}` must be 1..={max_len} lowercase letters, digits or `-`, starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// `#SBATCH` values cannot be quoted, so they must be single non-empty words.
fn check_sbatch_word(field: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    {
        return Err(Error::invalid(
            field,
            format!("`{value}` must be one non-empty word without spaces or quotes"),
        ));
    }
    Ok(())
}

fn one() -> u32 {
    1
}

fn default_max_restarts() -> u32 {
    3
}

fn default_devices() -> Vec<Device> {
    vec![Device::Cpu]
}

fn default_base_port() -> u16 {
    50051
}

fn default_edkd() -> String {
    "edkd".to_owned()
}

fn default_teacher_timeout_s() -> u32 {
    900
}

fn default_mount_path() -> String {
    "/workspace".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "tiny"
output = "runs/tiny"
[trainer]
config = "train.toml"
[data]
manifest = "data"
"#;

    fn parse(text: &str) -> Result<JobSpec> {
        JobSpec::from_toml_str(text, "test.toml")
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(spec.max_restarts, 3);
        assert_eq!(spec.trainer.ranks, 1);
        assert!(spec.teacher.is_none() && spec.slurm.is_none() && spec.k8s.is_none());
    }

    #[test]
    fn teacher_devices_round_robin_and_ports() {
        let text = format!(
            "{MINIMAL}[teacher]\nmodel = \"m\"\nreplicas = 3\ndevices = [\"cuda:0\", \"cuda:1\"]\nbase_port = 6000\n"
        );
        let teacher = parse(&text).unwrap().teacher.unwrap();
        assert_eq!(teacher.device(2), Device::Cuda(0));
        assert_eq!(teacher.device(1), Device::Cuda(1));
        assert_eq!(teacher.port(2), 6002);
        assert_eq!(teacher.dtype, Dtype::Bf16);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("[data]", "[data]\nmanifets = \"x\"");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("manifets"), "{message}");
        assert!(message.contains("test.toml"), "{message}");
    }

    #[test]
    fn missing_field_is_named() {
        let text = MINIMAL.replace("config = \"train.toml\"", "");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("config"), "{message}");
    }

    #[test]
    fn bad_device_is_named() {
        let text = format!("{MINIMAL}[teacher]\nmodel = \"m\"\ndevices = [\"gpu0\"]\n");
        let message = parse(&text).unwrap_err().to_string();
        assert!(
            message.contains("gpu0") && message.contains("cuda:N"),
            "{message}"
        );
    }

    #[test]
    fn bad_name_and_port_range_are_rejected() {
        let message = parse(&MINIMAL.replace("\"tiny\"", "\"Tiny_Run\""))
            .unwrap_err()
            .to_string();
        assert!(message.contains("`name`"), "{message}");
        let text = format!("{MINIMAL}[teacher]\nmodel = \"m\"\nreplicas = 2\nbase_port = 65535\n");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("teacher.base_port"), "{message}");
    }

    #[test]
    fn slurm_run_dir_must_be_one_word() {
        let text = format!(
            "{MINIMAL}[slurm]\npartition = \"cpu\"\ntime = \"1:00:00\"\nshared_dir = \"/a b\"\n"
        );
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("slurm.shared_dir"), "{message}");
    }

    #[test]
    fn slurm_gpu_budget_is_checked() {
        let text = MINIMAL.replace("[trainer]", "[trainer]\nranks = 4\ndevices_per_rank = 2")
            + "[slurm]\npartition = \"gpu\"\ntime = \"1:00:00\"\ngpus_per_node = 4\n";
        let message = parse(&text).unwrap_err().to_string();
        assert!(
            message.contains("slurm.gpus_per_node") && message.contains("8 GPUs"),
            "{message}"
        );
    }
}
