#!/usr/bin/env bash
# The long fault suite (RELIABILITY.md): 1,000,000 events with the aggregator SIGKILLed 5 times,
# a 30 s ClickHouse outage, a broker restart under 200,000 events, on the real servers.
# The short versions of the same tests run in CI with `scripts/test.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/services.sh up
export FAULT_EVENTS="${FAULT_EVENTS:-1000000}"
export FAULT_KILLS="${FAULT_KILLS:-5}"
export FAULT_OUTAGE_SECS="${FAULT_OUTAGE_SECS:-30}"
export FAULT_BROKER_EVENTS="${FAULT_BROKER_EVENTS:-200000}"
# One at a time: each test is heavy enough on its own on two cores.
cargo test --locked --test faults -- --test-threads=1 "$@"
