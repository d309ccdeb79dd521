#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests (nextest), then doc tests
# (nextest does not run those). Usage: scripts/test.sh [extra nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  echo "cargo-nextest not found; falling back to cargo test (install: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace --locked --no-fail-fast "$@"
fi
cargo test --doc --workspace --locked
