#!/usr/bin/env bash
# The test command: installs what the tests need (Python SDK for the compatibility suite), then runs
# every Rust test in the workspace and the Python SDK suite against the freshly built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
cargo test --workspace --all-targets
cargo build --workspace --bins
PLUGD_BIN_DIR="$PWD/target/debug" python3 -m pytest -q tests/python
