#!/usr/bin/env bash
# The test command: installs what the tests need (Python and Node.js SDKs for the compatibility
# suites, the packages of the Python and Node.js example components, redis-server), then runs every
# Rust test in the workspace and the Python and Node.js suites (which also run the example
# components against plugd and through `plugd conformance`) against the freshly built binaries.
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

# The Node.js SDK suite needs node (>= 20) and npm; its packages are pinned in
# tests/node/package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node and npm (Node.js >= 20) are required by the Node.js SDK tests (tests/node); install them and run again" >&2
    exit 1
fi

python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
# The components in other languages (sdk-examples/): their packages, pinned.
python3 -m pip install --quiet --disable-pip-version-check -r sdk-examples/python/requirements.txt
npm ci --prefix sdk-examples/node --no-audit --no-fund --loglevel=error
cargo test --workspace --all-targets
cargo build --workspace --bins
PLUGD_BIN_DIR="$PWD/target/debug" python3 -m pytest -q tests/python
PLUGD_BIN_DIR="$PWD/target/debug" npm test --prefix tests/node --silent
