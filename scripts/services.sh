#!/usr/bin/env bash
# Installs what is missing and starts Meterline's backing services on loopback:
# ClickHouse (Debian package, HTTP 8123), tansu (Kafka protocol, 9092), and PostgreSQL (5432)
# and Redis (6379) when none are running. Idempotent: a service that already answers is left
# alone. Logs and data go in .local/ (git-ignored).
#
#   scripts/services.sh up|down|status
#
# Environment:
#   TANSU_STORAGE  tansu storage engine URL (default sqlite://.local/tansu/tansu.db, relative to
#                  the repository root, so data and offsets survive a broker restart)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
LOG="$LOCAL/log"
mkdir -p "$LOG"
TANSU_STORAGE="${TANSU_STORAGE:-sqlite://.local/tansu/tansu.db}"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 4))); do
    if "$@" >/dev/null 2>&1; then say "$name is ready"; return 0; fi
    sleep 0.25
  done
  say "$name did not become ready in ${secs}s; see $LOG"; return 1
}

APT_UPDATED=0
apt_install() { # packages...
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$LOG/apt.log" 2>&1 \
    || { tail -20 "$LOG/apt.log" >&2; return 1; }
}

build_deps() {
  # librdkafka is built from source (rdkafka's cmake-build feature).
  apt_install cmake libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev libzstd-dev
}

clickhouse_ready() { curl -fsS 'http://127.0.0.1:8123/?query=SELECT%201' 2>/dev/null | grep -q 1; }

clickhouse_up() {
  if clickhouse_ready; then say "clickhouse already answers on 8123"; return 0; fi
  apt_install clickhouse-server clickhouse-client curl
  local dir="$LOCAL/clickhouse"
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files"
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$LOG/clickhouse.log</log><errorlog>$LOG/clickhouse.err.log</errorlog><size>100M</size><count>2</count></logger>
  <http_port>8123</http_port>
  <tcp_port>9000</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>536870912</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
  say "starting clickhouse"
  # `cd || exit` rather than `cd &&`: with `&&`, `&` would background the whole list and $!
  # would be a subshell's pid, not the server's.
  (cd "$dir" || exit 1; nohup clickhouse-server --config-file="$dir/config.xml" >"$LOG/clickhouse.out" 2>&1 & echo $! >"$dir/pid")
  wait_for clickhouse 60 clickhouse_ready
}

# Our own tansu, still listening, whose storage task panicked: it accepts connections and
# answers every request with an error, so it counts as down (seen with tansu 0.6.0's SQLite
# storage: "more or less than one row" in a consumer group update).
tansu_wedged() {
  [ -f "$LOCAL/tansu/pid" ] && kill -0 "$(cat "$LOCAL/tansu/pid")" 2>/dev/null \
    && grep -q 'panicked at' "$LOG/tansu.log" 2>/dev/null
}

tansu_up() {
  if tansu_wedged; then
    say "tansu's storage task panicked (kept in $LOG/tansu.panicked.log); restarting it"
    cp "$LOG/tansu.log" "$LOG/tansu.panicked.log"
    kill "$(cat "$LOCAL/tansu/pid")"
    for _ in $(seq 1 40); do port_open 9092 || break; sleep 0.25; done
    if port_open 9092; then kill -9 "$(cat "$LOCAL/tansu/pid")" 2>/dev/null; sleep 1; fi
  fi
  if port_open 9092; then say "a broker already listens on 9092"; return 0; fi
  if ! command -v tansu >/dev/null; then
    build_deps
    apt_install pkg-config
    say "installing tansu from crates.io (about 10 minutes on 2 cores)"
    cargo install --locked tansu --features dynostore,libsql >"$LOG/tansu-install.log" 2>&1 \
      || { tail -30 "$LOG/tansu-install.log" >&2; return 1; }
  fi
  mkdir -p "$LOCAL/tansu"
  say "starting tansu ($TANSU_STORAGE)"
  (cd "$ROOT" || exit 1; nohup tansu broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine "$TANSU_STORAGE" >"$LOG/tansu.log" 2>&1 & echo $! >"$LOCAL/tansu/pid")
  wait_for tansu 30 port_open 9092
}

postgres_ready() { pg_isready -h 127.0.0.1 -p 5432 -q; }

postgres_up() {
  if command -v pg_isready >/dev/null && postgres_ready; then say "postgres already answers on 5432"; return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
  local ver; ver=$(ls /etc/postgresql | sort -V | tail -1)
  # Local trust auth for loopback, as the tests and the default configuration expect.
  local hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  say "starting postgres $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_for postgres 30 postgres_ready
}

redis_ready() { redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG; }

redis_up() {
  if command -v redis-cli >/dev/null && redis_ready; then say "redis already answers on 6379"; return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$LOCAL" --logfile "$LOG/redis.log"
  wait_for redis 15 redis_ready
}

stop_pidfile() { # name pidfile
  if [ -f "$2" ] && kill -0 "$(cat "$2")" 2>/dev/null; then
    say "stopping $1"; kill "$(cat "$2")"; rm -f "$2"
  fi
}

case "${1:-up}" in
  up)
    command -v curl >/dev/null || apt_install curl
    build_deps
    postgres_up
    redis_up
    clickhouse_up
    tansu_up
    ;;
  down)
    stop_pidfile tansu "$LOCAL/tansu/pid"
    stop_pidfile clickhouse "$LOCAL/clickhouse/pid"
    ;;
  status)
    for s in postgres:5432 redis:6379 clickhouse:8123 kafka:9092; do
      if port_open "${s#*:}"; then echo "${s%:*} up (${s#*:})"; else echo "${s%:*} down (${s#*:})"; fi
    done
    ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
