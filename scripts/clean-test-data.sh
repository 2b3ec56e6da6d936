#!/usr/bin/env bash
# Removes what earlier test runs left on the local services: every test names its PostgreSQL
# and ClickHouse databases `mlt_<id>` and its Redis keys `mlt:<id>:…` or `mlt_<id>:…`
# (tests/common `isolated_config`), and none of them drops its own. Two CI runs left 170
# databases in each, 6,800 ClickHouse tables and 58,000 Redis keys, on a machine whose services
# outlive the runs. scripts/test.sh runs this before the tests, so it must not run while
# another test run uses the services (they are not shared between runs at the same time in any
# case: the suite fills both cores). Kafka topics (`mlt-<id>-…`) are left: tansu has no way to
# delete them from here, and they are small.
#
#   scripts/clean-test-data.sh [REDIS_CLUSTER_URLS]   # the cluster's nodes, as TEST_REDIS_CLUSTER
set -euo pipefail
CH="${CLICKHOUSE_URL:-http://127.0.0.1:8123/}"
PG=(psql -h 127.0.0.1 -U postgres -d postgres -tAq)

ch_dbs="$(curl -fsS "$CH" --data-binary "SELECT name FROM system.databases WHERE startsWith(name, 'mlt_')")"
for db in $ch_dbs; do
  curl -fsS "$CH" --data-binary "DROP DATABASE IF EXISTS \`$db\`" >/dev/null
done

pg_dbs="$("${PG[@]}" -c "SELECT datname FROM pg_database WHERE left(datname, 4) = 'mlt_'")"
pg_left=0
for db in $pg_dbs; do
  # A database still in use is left for the next run.
  "${PG[@]}" -c "DROP DATABASE IF EXISTS \"$db\"" 2>/dev/null || pg_left=$((pg_left + 1))
done

# Each key is unlinked on the node that holds it (scanned there), one command a key; says how
# many keys the node lost.
unlink_on() {
  local before
  before="$(redis-cli -h "$1" -p "$2" dbsize)"
  redis-cli -h "$1" -p "$2" --scan --pattern 'mlt[:_]*' | awk '{ print "UNLINK", $0 }' \
    | redis-cli -h "$1" -p "$2" >/dev/null
  echo $((before - $(redis-cli -h "$1" -p "$2" dbsize)))
}
redis_keys="$(unlink_on 127.0.0.1 6379)"
for url in ${1//,/ }; do
  node="${url#redis://}"
  redis_keys=$((redis_keys + $(unlink_on "${node%:*}" "${node##*:}")))
done

echo "[clean-test-data] removed $(echo "$ch_dbs" | grep -c . || true) ClickHouse and $(( $(echo "$pg_dbs" | grep -c . || true) - pg_left )) PostgreSQL test databases and $redis_keys Redis keys of earlier test runs"
