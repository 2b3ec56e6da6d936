#!/usr/bin/env bash
# What an insert's size costs ClickHouse (BENCHMARKS.md, issue 21): the same events inserted
# into `usage_events` (and through its materialized views into the four rollups and the
# watermarks) in RowBinary inserts of each size given, as the aggregator's insert task sends
# them, with the ClickHouse server's CPU time read from /proc: during the inserts, with the
# merges that follow, and with every table then merged to one part (OPTIMIZE … FINAL), so that
# sizes that leave their merges for later are not flattered.
#
#   scripts/bench-insert-size.sh [EVENTS] [SIZE…]      # defaults: 300000 17647 60000
#
# It needs the local ClickHouse (scripts/services.sh up) and a built `meterline` ($BIN, or
# target/release). The run has a database of its own, dropped at the end; its Kafka topics
# are named after the run, as the other benchmarks' are.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EVENTS="${1:-300000}"
shift || true
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(17647 60000); fi
BIN="${BIN:-target/release}"
CH="${CLICKHOUSE_URL:-http://127.0.0.1:8123/}"
RUN="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DB="meterline_bench_inserts_$RUN"
WORK="$(mktemp -d)"
q() { curl -sS --fail-with-body "$CH" --data-binary "$1"; }
trap 'q "DROP DATABASE IF EXISTS $DB" >/dev/null || true; rm -rf "$WORK"' EXIT

q "CREATE DATABASE $DB"
METERLINE_CLICKHOUSE__DATABASE="$DB" \
  METERLINE_KAFKA__USAGE_TOPIC="bench-$RUN-usage" \
  METERLINE_KAFKA__ACCOUNT_TOPIC="bench-$RUN-account" \
  METERLINE_KAFKA__DEAD_LETTER_TOPIC="bench-$RUN-dlq" \
  METERLINE_KAFKA__SIGNAL_TOPIC="bench-$RUN-signals" \
  "$BIN/meterline" migrate > "$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log"; exit 1; }

# Events shaped as `meterline-bench`'s (10,000 accounts, four models, five sessions and twenty
# users an account, one minute), kept in memory, in offset order.
q "CREATE TABLE $DB.staged ENGINE = Memory AS SELECT * FROM $DB.usage_events WHERE 0"
q "INSERT INTO $DB.staged SELECT
    concat(hex(rand64(1)), hex(number)), now(), now(),
    concat('bench-$RUN-', toString(a)), concat('key-', toString(a)), concat('gw-', toString(a % 8)),
    arrayElement(['us-east-1', 'eu-west-1', 'ap-south-1'], a % 3 + 1), 'aws', 'openai',
    arrayElement(['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'llama-3-70b'], rand(2) % 4 + 1),
    rand(3) % 4000, rand(4) % 1000, rand(5) % 5000, rand(6) % 3000, 200,
    concat('s-', toString(a), '-', toString(rand(7) % 5)), concat('u-', toString(rand(8) % 20)),
    [], 0, toString(cityHash64(a % 250)), '', hex(rand64(9)),
    toUInt32(number % 6), number, 'bench-$RUN-usage'
  FROM (SELECT number, rand(10) % 10000 AS a FROM system.numbers LIMIT $EVENTS)"

pid="$(pgrep -f clickhouse-server | head -1)"
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
secs() { echo "scale=2; ($1) / $(getconf CLK_TCK)" | bc; }
TABLES=(usage_events usage_minute usage_hour usage_day usage_month topic_watermarks)
echo "ClickHouse's CPU for $EVENTS events, by insert size (seconds of CPU):"
for size in "${SIZES[@]}"; do
  rm -f "$WORK"/chunk.*
  for ((o = 0; o < EVENTS; o += size)); do
    q "SELECT * FROM $DB.staged ORDER BY kafka_offset LIMIT $o, $size FORMAT RowBinary" \
      > "$WORK/chunk.$(printf %09d "$o")"
  done
  for t in "${TABLES[@]}"; do q "TRUNCATE TABLE $DB.$t"; done
  sleep 2
  c0="$(cpu)"
  t0="$(date +%s.%N)"
  for f in "$WORK"/chunk.*; do
    curl -sS --fail-with-body "$CH?query=INSERT+INTO+$DB.usage_events+FORMAT+RowBinary" --data-binary "@$f"
  done
  t1="$(date +%s.%N)"
  c1="$(cpu)"
  for _ in $(seq 1 60); do
    [ "$(q "SELECT count() FROM system.merges WHERE database = '$DB'")" = 0 ] && break
    sleep 0.5
  done
  sleep 3
  c2="$(cpu)"
  for t in "${TABLES[@]}"; do q "OPTIMIZE TABLE $DB.$t FINAL"; done
  c3="$(cpu)"
  printf '  inserts of %7d: %3d inserts in %5.2f s; CPU during them %5.2f, with the merges after %5.2f, and merged to one part %5.2f\n' \
    "$size" "$(( (EVENTS + size - 1) / size ))" "$(echo "$t1 - $t0" | bc)" \
    "$(secs "$c1 - $c0")" "$(secs "$c2 - $c0")" "$(secs "$c3 - $c0")"
done
