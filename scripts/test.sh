#!/usr/bin/env bash
# The whole test suite, on real servers: brings the services up (installing what is missing),
# runs every unit and integration test in the workspace (the hot-state writer's tests, the
# pipeline's exactly-once tests, the read path's and the rebuild's on a local Redis Cluster as
# well, scripts/redis-cluster.sh), then Schemathesis against the served
# /openapi.json (scripts/schemathesis.sh; SCHEMATHESIS_MAX_EXAMPLES examples per operation,
# 20 by default, which keeps it to a few minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The console's browser tests need chromium, chromium-driver and axe-core (installed when missing).
scripts/console-test-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
scripts/services.sh up
# Those tests also run on a local three-master Redis Cluster (tests/common hot_deployments and
# Deployment). Not METERLINE_…: the binary reads every METERLINE_ variable as configuration.
TEST_REDIS_CLUSTER="$(scripts/redis-cluster.sh up)"
export TEST_REDIS_CLUSTER
# What earlier runs' tests left in the services (their databases and keys).
scripts/clean-test-data.sh "$TEST_REDIS_CLUSTER"
cargo test --workspace --all-targets --locked "$@"
scripts/schemathesis.sh --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-20}"
