#!/usr/bin/env bash
# The main job, and the demo: services up, migrations, every Meterline component, then a
# simulated month of gateway traffic (`meterline simulate`), a summary of what the pipeline made
# of it, and the pipeline left running until Ctrl-C.
#
#   scripts/run.sh                      # 2,000 accounts, 30 days of event time
#   scripts/run.sh --accounts 300 --days 7 --seed 1     # any `meterline simulate` option
#   METERLINE_DEMO=0 scripts/run.sh     # the pipeline alone, no simulation
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/services.sh up
cargo build --release --locked --bin meterline
BIN=target/release/meterline
$BIN migrate
# A fresh token for the local gateway each run; only its hash is stored. It may post events
# and read usage and quota decisions, as a gateway does.
$BIN tokens revoke local-gateway >/dev/null 2>&1 || true
TOKEN=$($BIN tokens add local-gateway --scope ingest --scope read 2>/dev/null)
mkdir -p .local/log
echo "$TOKEN" > .local/gateway-token
# And one to sign in to the web console with (review scope: it may confirm, clear and retry).
$BIN tokens revoke local-console >/dev/null 2>&1 || true
CONSOLE_TOKEN=$($BIN tokens add local-console --scope review 2>/dev/null)
echo "$CONSOLE_TOKEN" > .local/console-token

LOG=.local/log/meterline.log
$BIN run >>"$LOG" 2>&1 &
RUN_PID=$!
trap 'kill "$RUN_PID" 2>/dev/null; wait "$RUN_PID" 2>/dev/null; exit 0' INT TERM
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
  if ! kill -0 "$RUN_PID" 2>/dev/null; then
    echo "meterline run stopped; the end of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1
  fi
  sleep 0.5
done

if [ "${METERLINE_DEMO:-1}" != 0 ]; then
  # Each run simulates fresh accounts (a new run tag in their ids and fingerprints), so a
  # second run on the same machine neither collides with nor is judged on the first one's data.
  $BIN simulate --check --summary --token "$TOKEN" "$@" \
    || echo "(the simulation's check did not pass: see the table above)"
fi

cat <<MSG

  Meterline is running on http://127.0.0.1:8080 (logs: $LOG)
  Gateway token (also in .local/gateway-token): $TOKEN
  Web console:       http://127.0.0.1:8080/console  (sign in with the token in .local/console-token)
  Notifications (no Slack webhook or HubSpot token configured): .local/notifications/

  Post an event:     see "Try it" in README.md
  Stop:              Ctrl-C

MSG
wait "$RUN_PID"
