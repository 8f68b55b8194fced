#!/usr/bin/env bash
# The test command: installs what the tests need (Python SDK for the compatibility suite,
# redis-server), then runs every Rust test in the workspace and the Python SDK suite against the
# freshly built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis Streams pub/sub tests start their own redis-server on a free loopback port.
if ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    else
        echo "redis-server is required by the tests; install it and run again" >&2
        exit 1
    fi
fi

python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
cargo test --workspace --all-targets
cargo build --workspace --bins
PLUGD_BIN_DIR="$PWD/target/debug" python3 -m pytest -q tests/python
