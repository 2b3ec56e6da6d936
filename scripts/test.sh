#!/usr/bin/env bash
# The whole test suite, on real servers: brings the services up (installing what is missing),
# then runs every unit and integration test in the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/services.sh up
cargo test --workspace --all-targets --locked "$@"
