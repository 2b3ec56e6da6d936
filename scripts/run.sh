#!/usr/bin/env bash
# The main job: services up, migrations, a local gateway token, then every Meterline component
# in one process until Ctrl-C.
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
mkdir -p .local
echo "$TOKEN" > .local/gateway-token
cat <<MSG

  Meterline is starting on http://127.0.0.1:8080
  Gateway token (also in .local/gateway-token): $TOKEN

  Post an event:     see "Try it" in README.md
  Notifications:     .local/notifications/ (no Slack webhook or HubSpot token configured)
  Stop:              Ctrl-C

MSG
exec $BIN run
