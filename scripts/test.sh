#!/usr/bin/env bash
# The README's test command: installs what is missing (idempotent), then runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Benchmarks (benches/) are run by hand in release mode, not as tests.
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --lib --bins --tests --no-fail-fast "$@"
