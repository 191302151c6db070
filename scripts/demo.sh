#!/usr/bin/env bash
# The README's main-job command: installs what is missing (idempotent), builds edkd in
# release mode and runs the main job on an embedded default (no model or data needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release -p edkd
exec ./target/release/edkd demo "$@"
