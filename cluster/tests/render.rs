//! Golden tests of the Slurm and Kubernetes renderers, plus checks that the output is valid.
//!
//! Each folder under `tests/golden/` holds an input `job.toml` + `train.toml` and the
//! expected `job.sbatch` and `*.yaml`. `EDKD_BLESS=1 cargo test -p edkd-cluster --test render`
//! rewrites the expected files. The YAML always gets a structural schema check; when
//! `kubernetes-validate` (PyPI; scripts/setup.sh puts it in `.venv`) is there it also
//! validates the built-in kinds against the Kubernetes OpenAPI schemas, and when
//! `shellcheck` is on PATH it lints the sbatch script.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use edkd_cluster::{JobSpec, k8s, slurm};
use serde_norway::Value;

const CASES: &[&str] = &["gpu", "cpu", "no-teacher"];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

fn bless() -> bool {
    std::env::var_os("EDKD_BLESS").is_some_and(|value| value == "1")
}

/// Compares `actual` with the golden file, or rewrites it when blessing.
fn check_golden(path: &Path, actual: &str) -> Result<()> {
    if bless() {
        std::fs::write(path, actual).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (run with EDKD_BLESS=1 to create it)",
            path.display()
        )
    })?;
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        bail!(
            "{} differs from the rendered output at line {} (expected {:?}, got {:?}); \
             rerun with EDKD_BLESS=1 if the change is intended",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
    Ok(())
}

fn load(case: &str) -> Result<(JobSpec, String)> {
    let dir = case_dir(case);
    let spec = JobSpec::load(&dir.join("job.toml"))?;
    let train = std::fs::read_to_string(dir.join("train.toml"))?;
    Ok((spec, train))
}

#[test]
fn slurm_scripts_match_golden_files() -> Result<()> {
    for case in CASES {
        let (spec, _) = load(case)?;
        let script = slurm::render(&spec)?;
        check_golden(&case_dir(case).join("job.sbatch"), &script)?;
    }
    Ok(())
}

#[test]
fn k8s_manifests_match_golden_files() -> Result<()> {
    for case in CASES {
        let (spec, train) = load(case)?;
        let files = k8s::render(&spec, &train)?;
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        let expected: &[&str] = if spec.teacher.is_some() {
            &["configmap.yaml", "teacher.yaml", "trainer.yaml"]
        } else {
            &["configmap.yaml", "trainer.yaml"]
        };
        assert_eq!(names, expected, "{case}");
        for (name, yaml) in &files {
            check_golden(&case_dir(case).join(name), yaml)?;
        }
    }
    Ok(())
}

#[test]
fn slurm_scripts_are_valid_bash() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for case in CASES {
        let (spec, _) = load(case)?;
        let path = dir.path().join(format!("{case}.sbatch"));
        std::fs::write(&path, slurm::render(&spec)?)?;
        let status = Command::new("bash").arg("-n").arg(&path).status()?;
        ensure!(status.success(), "bash -n rejects the {case} script");
        if let Ok(output) = Command::new("shellcheck")
            .args(["--shell=bash", "--severity=warning"])
            .arg(&path)
            .output()
        {
            ensure!(
                output.status.success(),
                "shellcheck on the {case} script:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        } else {
            eprintln!("shellcheck not on PATH: skipped linting {case}");
        }
    }
    Ok(())
}

#[test]
fn slurm_script_requests_what_the_spec_asks_for() -> Result<()> {
    let (spec, _) = load("gpu")?;
    let script = slurm::render(&spec)?;
    for expected in [
        "#SBATCH --partition=gpu\n",
        "#SBATCH --account=distill\n",
        "#SBATCH --nodes=2\n",
        "#SBATCH --ntasks=4\n",
        "#SBATCH --gpus-per-node=4\n",
        "#SBATCH --requeue\n",
        "#SBATCH --signal=B:USR1@300\n",
        "RUN_DIR=/shared/runs/mu-distill\n",
        "TRAINER_SRUN_ARGS=(--ntasks=4 --cpus-per-task=8 --gpus-per-task=1)\n",
        "TEACHER_SRUN_ARGS=(--cpus-per-task=8 --gpus-per-task=1)\n",
        "TEACHER_DEVICE=cuda:0\n",
        "srun --overlap",
        "srun --mpi=pmix",
        "SLURM_RESTART_COUNT",
    ] {
        ensure!(script.contains(expected), "script lacks {expected:?}");
    }
    Ok(())
}

/// A YAML path lookup: `get(doc, "spec.template.spec")`.
fn get<'a>(value: &'a Value, path: &str) -> Result<&'a Value> {
    path.split('.').try_fold(value, |value, key| {
        value
            .get(key)
            .with_context(|| format!("missing `{key}` of `{path}`"))
    })
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str> {
    let found = get(value, path)?;
    let text = found
        .as_str()
        .with_context(|| format!("`{path}` is not a string: {found:?}"))?;
    ensure!(!text.is_empty(), "`{path}` is empty");
    Ok(text)
}

fn int(value: &Value, path: &str) -> Result<u64> {
    let found = get(value, path)?;
    found
        .as_u64()
        .with_context(|| format!("`{path}` is not a non-negative integer: {found:?}"))
}

fn seq<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>> {
    let found = get(value, path)?;
    found
        .as_sequence()
        .with_context(|| format!("`{path}` is not a list: {found:?}"))
}

/// Checks what the API server would reject or what would make the job not run.
fn check_pod_spec(pod: &Value, volumes_needed: bool) -> Result<()> {
    let containers = seq(pod, "containers")?;
    ensure!(!containers.is_empty(), "pod has no containers");
    let volume_names: Vec<&str> = seq(pod, "volumes")?
        .iter()
        .map(|volume| string(volume, "name"))
        .collect::<Result<_>>()?;
    let mut all = containers.clone();
    if let Some(init) = pod.get("initContainers") {
        all.extend(
            init.as_sequence()
                .context("initContainers is not a list")?
                .clone(),
        );
    }
    for container in &all {
        string(container, "name")?;
        string(container, "image")?;
        let command = seq(container, "command")?;
        ensure!(
            !command.is_empty() && command.iter().all(Value::is_string),
            "command must be a non-empty list of strings"
        );
        for amount in ["requests", "limits"] {
            let amounts = get(container, &format!("resources.{amount}"))?
                .as_mapping()
                .context("resources are not a map")?;
            for (key, quantity) in amounts {
                ensure!(
                    quantity.is_string(),
                    "quantity {key:?} must be a string: {quantity:?}"
                );
            }
        }
        if let Some(mounts) = container.get("volumeMounts") {
            for mount in mounts.as_sequence().context("volumeMounts is not a list")? {
                let name = string(mount, "name")?;
                ensure!(
                    volume_names.contains(&name),
                    "mount of undeclared volume {name}"
                );
                ensure!(string(mount, "mountPath")?.starts_with('/'));
            }
        }
        if let Some(ports) = container.get("ports") {
            for port in ports.as_sequence().context("ports is not a list")? {
                let number = int(port, "containerPort")?;
                ensure!((1..=65535).contains(&number));
            }
        }
        for probe in ["readinessProbe", "startupProbe", "livenessProbe"] {
            if let Some(probe) = container.get(probe) {
                int(probe, "grpc.port")?;
                int(probe, "periodSeconds")?;
            }
        }
    }
    ensure!(
        !volumes_needed || !volume_names.is_empty(),
        "pod lacks volumes"
    );
    Ok(())
}

fn check_document(doc: &Value, namespace: &str) -> Result<()> {
    let kind = string(doc, "kind")?;
    let api = string(doc, "apiVersion")?;
    let name = string(doc, "metadata.name")?;
    ensure!(
        name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{name} is not a DNS label"
    );
    ensure!(string(doc, "metadata.namespace")? == namespace);
    match (api, kind) {
        ("v1", "ConfigMap") => {
            get(doc, "data")?
                .as_mapping()
                .context("data is not a map")?
                .values()
                .try_for_each(|v| {
                    ensure!(v.is_string(), "ConfigMap values must be strings");
                    Ok(())
                })?;
        }
        ("v1", "Service") => {
            get(doc, "spec.selector")?;
            if let Ok(ports) = seq(doc, "spec.ports") {
                for port in ports {
                    int(port, "port")?;
                }
            } else {
                ensure!(
                    string(doc, "spec.clusterIP")? == "None",
                    "Service without ports"
                );
            }
        }
        ("apps/v1", "Deployment") => {
            ensure!(int(doc, "spec.replicas")? >= 1);
            let selector = get(doc, "spec.selector.matchLabels")?;
            ensure!(selector == get(doc, "spec.template.metadata.labels")?);
            let pod = get(doc, "spec.template.spec")?;
            check_pod_spec(pod, false)?;
            let container = &seq(pod, "containers")?[0];
            let port = int(container, "readinessProbe.grpc.port")?;
            ensure!(int(&seq(container, "ports")?[0], "containerPort")? == port);
        }
        ("batch/v1", "Job") => {
            ensure!(string(doc, "spec.completionMode")? == "Indexed");
            ensure!(int(doc, "spec.completions")? == int(doc, "spec.parallelism")?);
            int(doc, "spec.backoffLimit")?;
            let pod = get(doc, "spec.template.spec")?;
            ensure!(["OnFailure", "Never"].contains(&string(pod, "restartPolicy")?));
            string(pod, "subdomain")?;
            check_pod_spec(pod, true)?;
        }
        ("kubeflow.org/v2beta1", "MPIJob") => {
            ensure!(int(doc, "spec.slotsPerWorker")? >= 1);
            ensure!(
                ["OpenMPI", "Intel", "MPICH"].contains(&string(doc, "spec.mpiImplementation")?)
            );
            int(doc, "spec.runPolicy.backoffLimit")?;
            for role in ["Launcher", "Worker"] {
                let replica = get(doc, &format!("spec.mpiReplicaSpecs.{role}"))?;
                int(replica, "replicas")?;
                string(replica, "restartPolicy")?;
                check_pod_spec(get(replica, "template.spec")?, true)?;
            }
            ensure!(int(doc, "spec.mpiReplicaSpecs.Launcher.replicas")? == 1);
        }
        other => bail!("unexpected object {other:?}"),
    }
    Ok(())
}

fn documents(yaml: &str) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).context("parsing YAML"))
        .collect()
}

#[test]
fn k8s_manifests_pass_the_structural_schema_check() -> Result<()> {
    for case in CASES {
        let (spec, train) = load(case)?;
        let namespace = &spec.k8s.as_ref().context("case without [k8s]")?.namespace;
        for (name, yaml) in k8s::render(&spec, &train)? {
            for doc in documents(&yaml)? {
                check_document(&doc, namespace).with_context(|| format!("{case}/{name}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn k8s_wiring_is_consistent() -> Result<()> {
    let (spec, train) = load("gpu")?;
    let files = k8s::render(&spec, &train)?;
    let docs: Vec<Value> = files
        .iter()
        .map(|(_, yaml)| documents(yaml))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let find = |kind: &str| {
        docs.iter()
            .find(|doc| doc.get("kind").and_then(Value::as_str) == Some(kind))
            .with_context(|| format!("no {kind}"))
    };
    // The train config travels verbatim.
    let config = get(find("ConfigMap")?, "data")?
        .get("train.toml")
        .context("no train.toml")?;
    assert_eq!(config.as_str(), Some(train.as_str()));
    // The launcher reaches the teacher through its Service, resumes from checkpoints, and
    // mpirun gets one rank per worker.
    let mpijob = find("MPIJob")?;
    let launcher = &seq(
        mpijob,
        "spec.mpiReplicaSpecs.Launcher.template.spec.containers",
    )?[0];
    let script = seq(launcher, "command")?[2].as_str().context("script")?;
    assert!(
        script.contains("--teacher-addr mu-distill-teacher.edkd.svc:50051"),
        "{script}"
    );
    assert!(script.contains("-np 4"), "{script}");
    assert!(script.contains("set -- --resume"), "{script}");
    assert!(script.contains("--config /etc/edkd/train.toml"), "{script}");
    assert_eq!(int(mpijob, "spec.mpiReplicaSpecs.Worker.replicas")?, 4);
    let service = docs
        .iter()
        .find(|doc| string(doc, "kind").ok() == Some("Service"))
        .context("no Service")?;
    assert_eq!(string(service, "metadata.name")?, "mu-distill-teacher");
    assert_eq!(
        get(service, "spec.selector")?,
        get(find("Deployment")?, "spec.template.metadata.labels")?
    );
    Ok(())
}

/// kubernetes-validate (installed into `.venv` by scripts/setup.sh) checks the built-in
/// kinds against the real OpenAPI schemas; the MPIJob is a custom resource it has no
/// schema for.
#[test]
fn k8s_manifests_pass_kubernetes_validate_when_installed() -> Result<()> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/kubernetes-validate");
    let program = std::env::var("EDKD_K8S_VALIDATE").unwrap_or_else(|_| {
        if venv.is_file() {
            venv.display().to_string()
        } else {
            "kubernetes-validate".into()
        }
    });
    if Command::new(&program).arg("--version").output().is_err() {
        eprintln!("{program} not found: skipped (pip install kubernetes-validate)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for case in CASES {
        let (spec, train) = load(case)?;
        for (name, yaml) in k8s::render(&spec, &train)? {
            for (index, doc) in documents(&yaml)?.into_iter().enumerate() {
                if string(&doc, "kind")? == "MPIJob" {
                    continue;
                }
                let path = dir.path().join(format!("{case}-{index}-{name}"));
                std::fs::write(&path, serde_norway::to_string(&doc)?)?;
                paths.push(path);
            }
        }
    }
    let output = Command::new(&program)
        .args(["--strict", "--quiet"])
        .args(&paths)
        .output()?;
    ensure!(
        output.status.success(),
        "{program} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
