#!/usr/bin/env bash
# The README's test command: installs what is missing (idempotent), then runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets "$@"
