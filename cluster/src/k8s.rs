//! Kubernetes backend: renders manifests for `kubectl apply -f`.
//!
//! - `configmap.yaml`: the train config, mounted at [`CONFIG_DIR`] in trainer pods.
//! - `teacher.yaml` (with a `[teacher]` section): a Deployment of teacher replicas whose
//!   readiness, startup and liveness probes use the gRPC health service, and a Service in
//!   front of them.
//! - `trainer.yaml`: either a Kubeflow MPIJob (`kubeflow.org/v2beta1`, needs the MPI
//!   Operator and an image with Open MPI and sshd) or an Indexed Job with a headless Service,
//!   whose pods get `EDKD_RANK`, `EDKD_WORLD_SIZE` and `EDKD_MASTER_ADDR`. Trainer pods
//!   wait for the teacher Service first; they pass `--resume` whenever the run folder already
//!   holds a checkpoint, so a retried pod continues where the failed one stopped.
//!
//! With `k8s.volume_claim`, every container mounts the claim at `k8s.mount_path` and starts
//! there, so the spec's relative paths point into the claim; without it, the model, data and
//! output paths must exist in the image (and the output is lost with the pod).

use std::path::Path;

use serde_norway::{Mapping, Value};

use crate::error::{Error, Result};
use crate::shell::{join, quote};
use crate::spec::{Device, JobSpec, K8sMode, K8sSpec, Resources, TeacherSpec};

/// Folder in trainer containers where the train config ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/edkd";
/// File name of the train config inside [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "train.toml";
/// Seconds between teacher probes.
const PROBE_PERIOD_S: u64 = 10;
/// Startup probe failures allowed: with [`PROBE_PERIOD_S`] this gives a large teacher 15
/// minutes to load.
const STARTUP_FAILURE_THRESHOLD: u64 = 90;
/// Requests of the MPIJob launcher pod, which only runs `mpirun`.
const LAUNCHER_CPU: &str = "1";
const LAUNCHER_MEMORY: &str = "1Gi";
const WORK_VOLUME: &str = "work";
const CONFIG_VOLUME: &str = "train-config";

fn k8s_spec(spec: &JobSpec) -> Result<&K8sSpec> {
    spec.k8s.as_ref().ok_or_else(|| {
        Error::invalid(
            "k8s",
            "the Kubernetes backend needs a [k8s] section (namespace, image, ...)",
        )
    })
}

/// Renders the manifests of `spec` as `(file name, YAML)` pairs; `train_config` is the
/// content of the train config file, stored in a ConfigMap. Fails only when `spec` has no
/// `[k8s]` section.
pub fn render(spec: &JobSpec, train_config: &str) -> Result<Vec<(String, String)>> {
    let k8s = k8s_spec(spec)?;
    let objects = Objects { spec, k8s };
    let mut files = vec![(
        "configmap.yaml".to_owned(),
        to_yaml(&[objects.config_map(train_config)]),
    )];
    if let Some(teacher) = &spec.teacher {
        files.push((
            "teacher.yaml".to_owned(),
            to_yaml(&[
                objects.teacher_deployment(teacher),
                objects.teacher_service(teacher),
            ]),
        ));
    }
    let trainer = match k8s.mode {
        K8sMode::MpiJob => vec![objects.mpi_job()],
        K8sMode::IndexedJob => vec![objects.trainer_service(), objects.indexed_job()],
    };
    files.push(("trainer.yaml".to_owned(), to_yaml(&trainer)));
    Ok(files)
}

/// Writes rendered files into `dir` (created if missing).
pub fn write_dir(dir: &Path, files: &[(String, String)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    for (name, yaml) in files {
        let path = dir.join(name);
        std::fs::write(&path, yaml).map_err(|e| Error::io("writing", &path, e))?;
    }
    Ok(())
}

/// Joins rendered files into one multi-document YAML stream (for stdout / `kubectl apply -f -`).
pub fn to_stream(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(name, yaml)| format!("# {name}\n{yaml}"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn to_yaml(documents: &[Value]) -> String {
    documents
        .iter()
        // A Value tree of strings, numbers and maps always serializes.
        .map(|document| serde_norway::to_string(document).expect("YAML of a plain value tree"))
        .collect::<Vec<_>>()
        .join("---\n")
}

struct Objects<'a> {
    spec: &'a JobSpec,
    k8s: &'a K8sSpec,
}

impl Objects<'_> {
    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.spec.name)
    }

    fn labels(&self, component: &str) -> Value {
        map([
            ("app.kubernetes.io/name", s("edkd")),
            ("app.kubernetes.io/instance", s(&self.spec.name)),
            ("app.kubernetes.io/component", s(component)),
        ])
    }

    fn metadata(&self, suffix: &str, component: &str) -> Value {
        map([
            ("name", s(&self.name(suffix))),
            ("namespace", s(&self.k8s.namespace)),
            ("labels", self.labels(component)),
        ])
    }

    fn teacher_addr(&self, teacher: &TeacherSpec) -> String {
        format!(
            "{}.{}.svc:{}",
            self.name("teacher"),
            self.k8s.namespace,
            teacher.base_port
        )
    }

    fn config_map(&self, train_config: &str) -> Value {
        map([
            ("apiVersion", s("v1")),
            ("kind", s("ConfigMap")),
            ("metadata", self.metadata("train-config", "trainer")),
            ("data", map([(CONFIG_FILE, s(train_config))])),
        ])
    }

    fn volumes(&self, with_config: bool) -> Value {
        let mut volumes = Vec::new();
        if let Some(claim) = &self.k8s.volume_claim {
            volumes.push(map([
                ("name", s(WORK_VOLUME)),
                ("persistentVolumeClaim", map([("claimName", s(claim))])),
            ]));
        }
        if with_config {
            volumes.push(map([
                ("name", s(CONFIG_VOLUME)),
                ("configMap", map([("name", s(&self.name("train-config")))])),
            ]));
        }
        Value::Sequence(volumes)
    }

    fn volume_mounts(&self, with_config: bool) -> Value {
        let mut mounts = Vec::new();
        if self.k8s.volume_claim.is_some() {
            mounts.push(map([
                ("name", s(WORK_VOLUME)),
                ("mountPath", s(&self.k8s.mount_path)),
            ]));
        }
        if with_config {
            mounts.push(map([
                ("name", s(CONFIG_VOLUME)),
                ("mountPath", s(CONFIG_DIR)),
                ("readOnly", Value::Bool(true)),
            ]));
        }
        Value::Sequence(mounts)
    }

    /// A container with image, working dir, command, resources and mounts.
    fn container(
        &self,
        name: &str,
        command: Vec<String>,
        resources: Value,
        with_config: bool,
    ) -> Mapping {
        let mut fields = vec![("name", s(name)), ("image", s(&self.k8s.image))];
        if self.k8s.volume_claim.is_some() {
            fields.push(("workingDir", s(&self.k8s.mount_path)));
        }
        fields.extend([
            ("command", strings(command)),
            ("resources", resources),
            ("volumeMounts", self.volume_mounts(with_config)),
        ]);
        let Value::Mapping(container) = map(fields) else {
            unreachable!("map() builds a mapping")
        };
        container
    }

    fn pod_spec(&self, containers: Vec<Mapping>, with_config: bool) -> Mapping {
        let Value::Mapping(pod) = map([
            (
                "containers",
                Value::Sequence(containers.into_iter().map(Value::Mapping).collect()),
            ),
            ("volumes", self.volumes(with_config)),
        ]) else {
            unreachable!("map() builds a mapping")
        };
        pod
    }

    fn teacher_deployment(&self, teacher: &TeacherSpec) -> Value {
        // Each pod owns its GPUs, so a GPU teacher always sees cuda:0.
        let device = if self.k8s.teacher_resources.gpus > 0 {
            Device::Cuda(0)
        } else {
            Device::Cpu
        };
        let port = teacher.base_port;
        let command = [
            "edkd",
            "teacher",
            "serve",
            "--model",
            &teacher.model.to_string_lossy(),
            "--device",
            &device.to_string(),
            "--dtype",
            &teacher.dtype.to_string(),
            "--listen",
            &format!("0.0.0.0:{port}"),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut container = self.container(
            "teacher",
            command,
            resources(&self.k8s.teacher_resources),
            false,
        );
        let probe = |failure_threshold: u64| {
            map([
                ("grpc", map([("port", num(port.into()))])),
                ("periodSeconds", num(PROBE_PERIOD_S)),
                ("failureThreshold", num(failure_threshold)),
            ])
        };
        container.insert(
            s("ports"),
            Value::Sequence(vec![map([
                ("name", s("grpc")),
                ("containerPort", num(port.into())),
                ("protocol", s("TCP")),
            ])]),
        );
        container.insert(s("startupProbe"), probe(STARTUP_FAILURE_THRESHOLD));
        container.insert(s("readinessProbe"), probe(3));
        container.insert(s("livenessProbe"), probe(3));
        let labels = self.labels("teacher");
        map([
            ("apiVersion", s("apps/v1")),
            ("kind", s("Deployment")),
            ("metadata", self.metadata("teacher", "teacher")),
            (
                "spec",
                map([
                    ("replicas", num(teacher.replicas.into())),
                    ("selector", map([("matchLabels", labels.clone())])),
                    (
                        "template",
                        map([
                            ("metadata", map([("labels", labels)])),
                            (
                                "spec",
                                Value::Mapping(self.pod_spec(vec![container], false)),
                            ),
                        ]),
                    ),
                ]),
            ),
        ])
    }

    fn teacher_service(&self, teacher: &TeacherSpec) -> Value {
        map([
            ("apiVersion", s("v1")),
            ("kind", s("Service")),
            ("metadata", self.metadata("teacher", "teacher")),
            (
                "spec",
                map([
                    ("selector", self.labels("teacher")),
                    (
                        "ports",
                        Value::Sequence(vec![map([
                            ("name", s("grpc")),
                            ("port", num(teacher.base_port.into())),
                            ("targetPort", s("grpc")),
                            ("protocol", s("TCP")),
                        ])]),
                    ),
                ]),
            ),
        ])
    }

    /// Init containers that hold a trainer pod until the teacher Service has a ready pod.
    fn wait_for_teacher(&self) -> Option<Value> {
        let teacher = self.spec.teacher.as_ref()?;
        let host = format!("{}.{}.svc", self.name("teacher"), self.k8s.namespace);
        let port = teacher.base_port;
        let script = format!(
            "until (exec 3<>/dev/tcp/{host}/{port}) 2>/dev/null; do echo waiting for teacher {host}:{port}; sleep 5; done"
        );
        let Value::Mapping(mut container) = map([
            ("name", s("wait-for-teacher")),
            ("image", s(&self.k8s.image)),
            ("command", strings(vec!["bash".into(), "-c".into(), script])),
        ]) else {
            unreachable!("map() builds a mapping")
        };
        container.insert(
            s("resources"),
            resources(&Resources {
                cpu: "100m".into(),
                memory: "64Mi".into(),
                gpus: 0,
            }),
        );
        Some(Value::Sequence(vec![Value::Mapping(container)]))
    }

    /// `sh -c` script: run `launch` with `--resume` appended when a checkpoint exists.
    fn resume_wrapper(&self, launch: &[String]) -> Vec<String> {
        let checkpoints = self.spec.output.join("checkpoints").join("step-*");
        let checkpoints = checkpoints.to_string_lossy();
        // The glob must stay unquoted; only the folder part needs quoting.
        let (folder, glob) = checkpoints.split_at(checkpoints.len() - "step-*".len());
        let script = format!(
            "set --; if ls -d {}{glob} >/dev/null 2>&1; then set -- --resume; fi; exec {} \"$@\"",
            quote(folder),
            join(launch)
        );
        vec!["sh".into(), "-c".into(), script]
    }

    fn train_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "edkd".into(),
            "train".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            "--out".into(),
            self.spec.output.to_string_lossy().into_owned(),
        ];
        if let Some(teacher) = &self.spec.teacher {
            args.push("--teacher-addr".into());
            args.push(self.teacher_addr(teacher));
        }
        args.extend(self.spec.trainer.extra_args.iter().cloned());
        args
    }

    fn mpi_job(&self) -> Value {
        let ranks = self.spec.trainer.ranks;
        let mut mpirun: Vec<String> = [
            "mpirun",
            "--allow-run-as-root",
            "-np",
            &ranks.to_string(),
            "--tag-output",
        ]
        .map(str::to_owned)
        .to_vec();
        mpirun.extend(self.train_args());
        let launcher = self.container(
            "launcher",
            self.resume_wrapper(&mpirun),
            resources(&Resources {
                cpu: LAUNCHER_CPU.into(),
                memory: LAUNCHER_MEMORY.into(),
                gpus: 0,
            }),
            true,
        );
        let mut launcher_pod = self.pod_spec(vec![launcher], true);
        if let Some(init) = self.wait_for_teacher() {
            launcher_pod.insert(s("initContainers"), init);
        }
        let worker = self.container(
            "worker",
            vec!["/usr/sbin/sshd".into(), "-De".into()],
            resources(&self.k8s.trainer_resources),
            true,
        );
        let worker_pod = self.pod_spec(vec![worker], true);
        let replica = |replicas: u32, pod: Mapping| {
            map([
                ("replicas", num(replicas.into())),
                ("restartPolicy", s("OnFailure")),
                (
                    "template",
                    map([
                        ("metadata", map([("labels", self.labels("trainer"))])),
                        ("spec", Value::Mapping(pod)),
                    ]),
                ),
            ])
        };
        map([
            ("apiVersion", s("kubeflow.org/v2beta1")),
            ("kind", s("MPIJob")),
            ("metadata", self.metadata("trainer", "trainer")),
            (
                "spec",
                map([
                    ("slotsPerWorker", num(1)),
                    ("mpiImplementation", s("OpenMPI")),
                    (
                        "runPolicy",
                        map([
                            ("cleanPodPolicy", s("Running")),
                            ("backoffLimit", num(self.spec.max_restarts.into())),
                        ]),
                    ),
                    (
                        "mpiReplicaSpecs",
                        map([
                            ("Launcher", replica(1, launcher_pod)),
                            ("Worker", replica(ranks, worker_pod)),
                        ]),
                    ),
                ]),
            ),
        ])
    }

    fn trainer_service(&self) -> Value {
        map([
            ("apiVersion", s("v1")),
            ("kind", s("Service")),
            ("metadata", self.metadata("trainer", "trainer")),
            (
                "spec",
                map([
                    ("clusterIP", s("None")),
                    ("publishNotReadyAddresses", Value::Bool(true)),
                    ("selector", self.labels("trainer")),
                ]),
            ),
        ])
    }

    fn indexed_job(&self) -> Value {
        let ranks = self.spec.trainer.ranks;
        let service = self.name("trainer");
        let mut container = self.container(
            "trainer",
            self.resume_wrapper(&self.train_args()),
            resources(&self.k8s.trainer_resources),
            true,
        );
        let rank_from_index = map([(
            "fieldRef",
            map([(
                "fieldPath",
                s("metadata.annotations['batch.kubernetes.io/job-completion-index']"),
            )]),
        )]);
        container.insert(
            s("env"),
            Value::Sequence(vec![
                map([("name", s("EDKD_RANK")), ("valueFrom", rank_from_index)]),
                map([
                    ("name", s("EDKD_WORLD_SIZE")),
                    ("value", s(&ranks.to_string())),
                ]),
                map([
                    ("name", s("EDKD_MASTER_ADDR")),
                    (
                        "value",
                        s(&format!("{service}-0.{service}.{}.svc", self.k8s.namespace)),
                    ),
                ]),
            ]),
        );
        let mut pod = self.pod_spec(vec![container], true);
        pod.insert(s("subdomain"), s(&service));
        pod.insert(s("restartPolicy"), s("OnFailure"));
        if let Some(init) = self.wait_for_teacher() {
            pod.insert(s("initContainers"), init);
        }
        map([
            ("apiVersion", s("batch/v1")),
            ("kind", s("Job")),
            ("metadata", self.metadata("trainer", "trainer")),
            (
                "spec",
                map([
                    ("completionMode", s("Indexed")),
                    ("completions", num(ranks.into())),
                    ("parallelism", num(ranks.into())),
                    ("backoffLimit", num(self.spec.max_restarts.into())),
                    (
                        "template",
                        map([
                            ("metadata", map([("labels", self.labels("trainer"))])),
                            ("spec", Value::Mapping(pod)),
                        ]),
                    ),
                ]),
            ),
        ])
    }
}

fn resources(resources: &Resources) -> Value {
    let mut amounts = vec![("cpu", s(&resources.cpu)), ("memory", s(&resources.memory))];
    if resources.gpus > 0 {
        amounts.push(("nvidia.com/gpu", s(&resources.gpus.to_string())));
    }
    let amounts = map(amounts);
    map([("requests", amounts.clone()), ("limits", amounts)])
}

fn map<'k>(pairs: impl IntoIterator<Item = (&'k str, Value)>) -> Value {
    Value::Mapping(
        pairs
            .into_iter()
            .map(|(key, value)| (s(key), value))
            .collect(),
    )
}

fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn num(n: u64) -> Value {
    Value::Number(n.into())
}

fn strings(words: Vec<String>) -> Value {
    Value::Sequence(words.into_iter().map(Value::String).collect())
}
