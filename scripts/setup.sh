#!/usr/bin/env bash
# Installs what edkd needs to build and test, idempotently:
#   - Debian packages (C toolchain bits, Open MPI, libclang) when missing;
#   - a project-local Python venv (.venv) with torch==2.11.0 from PyPI. PyPI's Linux
#     wheel is the CUDA build and `import torch` loads cuDNN, cuBLAS, NCCL, ... even on a
#     CPU-only machine, so the full set is installed everywhere (~2.7 GB, about a minute);
#     the smaller libtorch-only set (torch --no-deps + cudart + cupti) links Rust but
#     cannot be imported from Python, which the parity scripts and benchmarks need;
#   - the Python reference packages the parity tests and benchmarks use, among them
#     onnxruntime, whose wheel ships the libonnxruntime.so edkd's ONNX runtime loads.
# A second run with nothing to do finishes in well under 2 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="2.11.0"
# Reference implementations used by parity tests, fixture generators and benchmarks.
REF_DEPS="numpy==2.4.6 safetensors==0.8.0 transformers==5.23.0 tokenizers==0.23.3 pyarrow==26.0.1 grpcio==1.85.1 grpcio-tools==1.85.1 rouge-score==0.1.2 matplotlib==3.11.2 tensorboard==2.21.0 kubernetes-validate==1.37.0 onnxruntime==1.32.0 onnx==1.23.2"
DEBIAN_PKGS="pkg-config libclang-dev libopenmpi-dev openmpi-bin"

log() { printf '[setup] %s\n' "$*" >&2; }

WANT="torch=$TORCH_VERSION ref=$REF_DEPS debian=$DEBIAN_PKGS"
STAMP="$VENV/.edkd-setup"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -e "$VENV/libtorch/lib/libtorch_cpu.so" ] \
    && [ -e "$VENV/libonnxruntime.so" ]; then
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
