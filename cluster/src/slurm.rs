//! Slurm backend: renders one sbatch script and submits it.
//!
//! The script starts all teacher replicas as one background job step (`srun --overlap`) on
//! the first node, waits until each accepts connections (with `grpc_health_probe` when the
//! nodes have it, else a bash `/dev/tcp` connect), then runs the trainer ranks with
//! `srun --mpi=pmix`. The job is `--requeue`able: shortly before the time limit Slurm sends
//! `USR1` to the batch shell, which requeues the job; a failed trainer or teacher step
//! requeues it too, up to `max_restarts` times. A requeued job (`SLURM_RESTART_COUNT > 0`)
//! passes `--resume` to the trainer, which continues from the newest checkpoint in the run
//! folder on shared storage. Every requeue is recorded in the run folder's `restarts.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::shell::{join, quote};
use crate::spec::{Device, JobSpec, SlurmSpec};

/// Seconds before the time limit at which Slurm signals the batch shell to requeue.
pub const TIME_LIMIT_SIGNAL_S: u32 = 300;

/// Seconds between liveness checks of the trainer and teacher steps.
const POLL_S: u32 = 10;
/// Seconds between readiness checks of a starting teacher.
const HEALTH_POLL_S: u32 = 5;

/// The part of the script that does not depend on the spec: it reads the variables above it.
const BODY: &str = r#"set -euo pipefail

EVENTS="$RUN_DIR/restarts.events.jsonl"
RESTART_COUNT="${SLURM_RESTART_COUNT:-0}"
TEACHER_PID=""
TRAINER_PID=""
mkdir -p "$RUN_DIR/logs"

# Appends one event and rewrites restarts.json from all events.
record_event() { # component reason action
  printf '{"time":%s,"component":"%s","reason":"%s","action":"%s","slurm_job_id":"%s"}\n' \
    "$(date +%s)" "$1" "$2" "$3" "${SLURM_JOB_ID:-}" >>"$EVENTS"
  local restarts
  restarts=$(grep -c '"action":"restart"' "$EVENTS" || true)
  { printf '{"restarts":%d,"events":[' "$restarts"; paste -sd, "$EVENTS" | tr -d '\n'; printf ']}\n'; } \
    >"$RUN_DIR/restarts.json.tmp"
  mv "$RUN_DIR/restarts.json.tmp" "$RUN_DIR/restarts.json"
}

stop_steps() {
  local pid
  for pid in $TRAINER_PID $TEACHER_PID; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $TRAINER_PID $TEACHER_PID; do wait "$pid" 2>/dev/null || true; done
}

restart_or_give_up() { # component reason
  stop_steps
  local failures=0
  if [[ -f "$EVENTS" ]]; then
    # Requeues keep the job id, so this counts the failures of this submission only.
    failures=$(grep "\"slurm_job_id\":\"$SLURM_JOB_ID\"" "$EVENTS" | grep '"action":"restart"' |
      grep -vc '"component":"slurm"' || true)
  fi
  if ((failures < MAX_RESTARTS)); then
    echo "edkd: $1 failed ($2); requeueing, restart $((failures + 1)) of $MAX_RESTARTS" >&2
    record_event "$1" "$2" restart
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "edkd: $1 failed ($2); giving up after $failures restarts" >&2
  record_event "$1" "$2" give_up
  exit 1
}

on_time_limit() {
  echo "edkd: time limit near; requeueing to resume from the last checkpoint" >&2
  record_event slurm "time limit" restart
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap on_time_limit USR1

teacher_ready() { # host port
  if command -v grpc_health_probe >/dev/null 2>&1; then
    grpc_health_probe -addr="$1:$2" >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  fi
}

wait_for_teacher() { # host port replica
  local deadline=$((SECONDS + TEACHER_TIMEOUT_S))
  until teacher_ready "$1" "$2"; do
    local problem=""
    if ! kill -0 "$TEACHER_PID" 2>/dev/null; then
      problem="the teacher step exited"
    elif ((SECONDS >= deadline)); then
      problem="not ready within ${TEACHER_TIMEOUT_S}s"
    fi
    if [[ -n "$problem" ]]; then
      echo "edkd: teacher$3 at $1:$2: $problem; last lines of $RUN_DIR/logs/teacher$3.log:" >&2
      tail -n 20 "$RUN_DIR/logs/teacher$3.log" >&2 || true
      stop_steps
      exit 1
    fi
    sleep "$HEALTH_POLL_S"
  done
}

if [[ ! -f "$DATA_MANIFEST/manifest.json" ]]; then
  echo "edkd: $DATA_MANIFEST/manifest.json not found (data.manifest)" >&2
  exit 1
fi

TEACHER_ARGS=()
if ((TEACHER_REPLICAS > 0)); then
  TEACHER_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  # Single quotes on purpose: each replica's shell adds its own SLURM_PROCID to the port.
  # shellcheck disable=SC2016
  srun --overlap --nodes=1 --ntasks="$TEACHER_REPLICAS" --nodelist="$TEACHER_HOST" \
    ${TEACHER_SRUN_ARGS[@]+"${TEACHER_SRUN_ARGS[@]}"} \
    --output="$RUN_DIR/logs/teacher%t.log" --open-mode=append \
    bash -c 'exec "$0" teacher serve --model "$1" --device "$2" --dtype "$3" --listen "0.0.0.0:$(($4 + SLURM_PROCID))"' \
    "$EDKD" "$TEACHER_MODEL" "$TEACHER_DEVICE" "$TEACHER_DTYPE" "$TEACHER_BASE_PORT" &
  TEACHER_PID=$!
  TEACHER_ADDRS=""
  for ((i = 0; i < TEACHER_REPLICAS; i++)); do
    wait_for_teacher "$TEACHER_HOST" $((TEACHER_BASE_PORT + i)) "$i"
    TEACHER_ADDRS+="${TEACHER_ADDRS:+,}$TEACHER_HOST:$((TEACHER_BASE_PORT + i))"
  done
  echo "edkd: teachers ready at $TEACHER_ADDRS"
  TEACHER_ARGS=(--teacher-addr "$TEACHER_ADDRS")
fi

RESUME=()
if ((RESTART_COUNT > 0)); then
  RESUME=(--resume)
fi

srun --mpi=pmix --kill-on-bad-exit=1 ${TRAINER_SRUN_ARGS[@]+"${TRAINER_SRUN_ARGS[@]}"} \
  "$EDKD" train --config "$TRAIN_CONFIG" --out "$RUN_DIR" \
  ${TEACHER_ARGS[@]+"${TEACHER_ARGS[@]}"} ${TRAIN_EXTRA_ARGS[@]+"${TRAIN_EXTRA_ARGS[@]}"} \
  ${RESUME[@]+"${RESUME[@]}"} &
TRAINER_PID=$!

# Poll instead of a plain `wait` so that a dead teacher step is noticed; `sleep & wait` keeps
# the USR1 trap responsive.
while kill -0 "$TRAINER_PID" 2>/dev/null; do
  if [[ -n "$TEACHER_PID" ]] && ! kill -0 "$TEACHER_PID" 2>/dev/null; then
    restart_or_give_up teacher "teacher step exited during training"
  fi
  sleep "$POLL_S" &
  wait $! || true
done
set +e
wait "$TRAINER_PID"
TRAINER_STATUS=$?
set -e
if ((TRAINER_STATUS != 0)); then
  restart_or_give_up trainer "exit code $TRAINER_STATUS"
fi
stop_steps
echo "edkd: training finished"
"#;

fn slurm_spec(spec: &JobSpec) -> Result<&SlurmSpec> {
    spec.slurm.as_ref().ok_or_else(|| {
        Error::invalid(
            "slurm",
            "the Slurm backend needs a [slurm] section (partition, time, ...)",
        )
    })
}

/// Renders the sbatch script of `spec`. Fails only when `spec` has no `[slurm]` section.
pub fn render(spec: &JobSpec) -> Result<String> {
    let slurm = slurm_spec(spec)?;
    let run_dir = spec.slurm_run_dir();
    let mut s = String::new();
    let mut line = |text: String| {
        s.push_str(&text);
        s.push('\n');
    };
    line("#!/bin/bash".into());
    line(format!(
        "# edkd job `{}`, rendered by edkd-cluster; submit with `sbatch`.",
        spec.name
    ));
    line(format!("#SBATCH --job-name={}", spec.name));
    line(format!("#SBATCH --partition={}", slurm.partition));
    if let Some(account) = &slurm.account {
        line(format!("#SBATCH --account={account}"));
    }
    line(format!("#SBATCH --nodes={}", slurm.nodes));
    line(format!("#SBATCH --ntasks={}", spec.trainer.ranks));
    line(format!("#SBATCH --cpus-per-task={}", slurm.cpus_per_task));
    if slurm.gpus_per_node > 0 {
        line(format!("#SBATCH --gpus-per-node={}", slurm.gpus_per_node));
    }
    line(format!("#SBATCH --time={}", slurm.time));
    line("#SBATCH --requeue".into());
    line(format!("#SBATCH --signal=B:USR1@{TIME_LIMIT_SIGNAL_S}"));
    line("#SBATCH --open-mode=append".into());
    // sbatch does not expand shell variables, and the folder must exist before the job starts
    // (submit() creates it).
    line(format!(
        "#SBATCH --output={}/logs/slurm-%j.out",
        run_dir.display()
    ));
    line(String::new());

    line(format!("RUN_DIR={}", quote_path(run_dir)));
    line(format!("EDKD={}", quote(&slurm.edkd)));
    line(format!("TRAIN_CONFIG={}", quote_path(&spec.trainer.config)));
    line(format!("DATA_MANIFEST={}", quote_path(&spec.data.manifest)));
    line(format!("MAX_RESTARTS={}", spec.max_restarts));
    line(format!("POLL_S={POLL_S}"));
    line(format!("HEALTH_POLL_S={HEALTH_POLL_S}"));
    line(format!(
        "TRAIN_EXTRA_ARGS=({})",
        join(&spec.trainer.extra_args)
    ));
    let mut trainer_srun = vec![
        format!("--ntasks={}", spec.trainer.ranks),
        format!("--cpus-per-task={}", slurm.cpus_per_task),
    ];
    if spec.trainer.devices_per_rank > 0 {
        trainer_srun.push(format!("--gpus-per-task={}", spec.trainer.devices_per_rank));
    }
    line(format!("TRAINER_SRUN_ARGS=({})", join(&trainer_srun)));
    match &spec.teacher {
        Some(teacher) => {
            // Slurm binds each task to its own GPU, so every replica sees it as cuda:0.
            let device = if teacher.uses_cuda() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            };
            let mut teacher_srun = vec![format!("--cpus-per-task={}", slurm.cpus_per_task)];
            if teacher.uses_cuda() {
                teacher_srun.push("--gpus-per-task=1".into());
            }
            line(format!("TEACHER_REPLICAS={}", teacher.replicas));
            line(format!("TEACHER_MODEL={}", quote_path(&teacher.model)));
            line(format!("TEACHER_DEVICE={device}"));
            line(format!("TEACHER_DTYPE={}", teacher.dtype));
            line(format!("TEACHER_BASE_PORT={}", teacher.base_port));
            line(format!("TEACHER_TIMEOUT_S={}", slurm.teacher_timeout_s));
            line(format!("TEACHER_SRUN_ARGS=({})", join(&teacher_srun)));
        }
        None => line("TEACHER_REPLICAS=0".into()),
    }
    line(String::new());
    s.push_str(BODY);
    Ok(s)
}

fn quote_path(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

/// What [`submit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The rendered script.
    pub script: String,
    /// Where the script was written (`<run dir>/job.sbatch`); `None` for a dry run.
    pub script_path: Option<PathBuf>,
    /// The Slurm job id printed by `sbatch --parsable`; `None` for a dry run.
    pub job_id: Option<String>,
}

/// Renders the script and, unless `dry_run`, writes it to `<run dir>/job.sbatch`, creates
/// `<run dir>/logs` and submits it with `sbatch --parsable`. Fails with
/// [`Error::MissingTool`] when `sbatch` is not on PATH.
pub fn submit(spec: &JobSpec, dry_run: bool) -> Result<Submission> {
    let script = render(spec)?;
    if dry_run {
        return Ok(Submission {
            script,
            script_path: None,
            job_id: None,
        });
    }
    let sbatch = find_on_path("sbatch").ok_or_else(|| Error::MissingTool {
        program: "sbatch".into(),
        hint: "run on a Slurm login node, or render the script with a dry run and submit it there"
            .into(),
    })?;
    let run_dir = spec.slurm_run_dir();
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io("creating", &logs, e))?;
    let script_path = run_dir.join("job.sbatch");
    std::fs::write(&script_path, &script).map_err(|e| Error::io("writing", &script_path, e))?;
    let output = Command::new(&sbatch)
        .arg("--parsable")
        .arg(&script_path)
        .output()
        .map_err(|e| Error::Spawn {
            label: "sbatch".into(),
            program: sbatch.display().to_string(),
            source: e,
        })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            program: "sbatch".into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    // --parsable prints "jobid" or "jobid;cluster".
    let stdout = String::from_utf8_lossy(&output.stdout);
    let job_id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(Submission {
        script,
        script_path: Some(script_path),
        job_id: Some(job_id),
    })
}

/// The first executable file called `program` in a PATH folder.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> JobSpec {
        let text = format!(
            r#"
name = "t"
output = "runs/t"
[trainer]
ranks = 2
config = "train.toml"
extra_args = ["--seed", "7 8"]
[data]
manifest = "data"
[slurm]
partition = "cpu"
time = "1:00:00"
{extra}
"#
        );
        JobSpec::from_toml_str(&text, "test").unwrap()
    }

    #[test]
    fn without_slurm_section_names_it() {
        let mut spec = spec("");
        spec.slurm = None;
        let message = render(&spec).unwrap_err().to_string();
        assert!(message.contains("[slurm]"), "{message}");
    }

    #[test]
    fn cpu_job_has_no_gpu_requests_and_quotes_extra_args() {
        let script = render(&spec("")).unwrap();
        assert!(!script.contains("gpus"), "{script}");
        assert!(script.contains("TEACHER_REPLICAS=0"));
        assert!(script.contains("TRAIN_EXTRA_ARGS=(--seed '7 8')"));
        assert!(script.contains("#SBATCH --output=runs/t/logs/slurm-%j.out"));
    }

    #[test]
    fn shared_dir_is_the_run_dir() {
        let script = render(&spec("shared_dir = \"/shared/t\"")).unwrap();
        assert!(script.contains("RUN_DIR=/shared/t\n"), "{script}");
    }
}
