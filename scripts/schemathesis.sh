#!/usr/bin/env bash
# Schemathesis (from PyPI) against /openapi.json of a running ingest + read path: every
# operation with generated valid and invalid input, every check enabled (scripts/schemathesis.toml
# names the two it skips where, and why); it fails on any 5xx and on any response that does not
# match the document. Runs on its own databases, topics and Redis prefix.
#   scripts/schemathesis.sh [extra `st run` options, e.g. --max-examples 200]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/services.sh up
cargo build --locked --bin meterline
venv=.local/venv-schemathesis
st_version=4.32.5
if ! "$venv/bin/pip" show schemathesis 2>/dev/null | grep -qx "Version: $st_version"; then
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$st_version"
fi

export METERLINE_POSTGRES__URL=postgres://postgres@127.0.0.1:5432/meterline_schemathesis
export METERLINE_CLICKHOUSE__DATABASE=meterline_schemathesis
export METERLINE_KAFKA__USAGE_TOPIC=st-usage-events
export METERLINE_KAFKA__ACCOUNT_TOPIC=st-account-events
export METERLINE_KAFKA__DEAD_LETTER_TOPIC=st-dead-letters
export METERLINE_KAFKA__SIGNAL_TOPIC=st-account-signals
export METERLINE_REDIS__KEY_PREFIX=st:
export METERLINE_AGGREGATOR__GROUP_ID=st-aggregator
export METERLINE_HTTP__LISTEN=127.0.0.1:18080
export METERLINE_HTTP__AGGREGATOR_LISTEN=127.0.0.1:18081
export METERLINE_HTTP__SCORER_LISTEN=127.0.0.1:18082
export METERLINE_HTTP__NOTIFIER_LISTEN=127.0.0.1:18083
export METERLINE_NOTIFIER__DATA_DIR=.local/schemathesis/notifications
# Generated traffic is fast; the per-token budget is not what is under test.
export METERLINE_INGEST__RATE_LIMIT_EVENTS_PER_SEC=0
bin="${CARGO_TARGET_DIR:-target}/debug/meterline"
"$bin" migrate >/dev/null
name="schemathesis-$$"
token="$("$bin" tokens add "$name" --scope admin 2>/dev/null)"
mkdir -p .local/log
"$bin" run > .local/log/schemathesis-meterline.log 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; "$bin" tokens revoke "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:18080/healthz >/dev/null && break
    sleep 0.2
done
"$venv/bin/st" --config-file scripts/schemathesis.toml run http://127.0.0.1:18080/openapi.json \
    --header "Authorization: Bearer $token" \
    "$@"
