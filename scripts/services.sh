#!/usr/bin/env bash
# Installs (if missing), starts and stops the real services the integration tests use:
# the tansu Kafka-protocol broker and ClickHouse, each on free loopback ports with its own data
# directory under $TEST_TRELLIS_SERVICES_DIR. Source it, then call `services_up` and `services_down`.
# After `services_up`, TEST_TRELLIS_KAFKA and TEST_TRELLIS_CLICKHOUSE_URL name the services.

TANSU_VERSION=0.6.0
: "${TEST_TRELLIS_SERVICES_DIR:=$PWD/target/test-services}"

log() { echo "[services] $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # wait_for NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$name did not answer within ${seconds}s"
  return 1
}

apt_install() {
  if [ -z "${TEST_TRELLIS_APT_UPDATED:-}" ]; then
    log "apt-get update"
    apt-get update -qq >&2
    TEST_TRELLIS_APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_tools() {
  if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    if [ -x "$HOME/.cargo/bin/tansu" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
  fi
  if ! command -v tansu >/dev/null; then
    # tansu's SQLite (libsql-ffi) and TLS (aws-lc-sys) dependencies build with cmake.
    local build_deps=()
    command -v cmake >/dev/null || build_deps+=(cmake)
    command -v pkg-config >/dev/null || build_deps+=(pkg-config)
    command -v g++ >/dev/null || build_deps+=(g++)
    if [ ${#build_deps[@]} -gt 0 ]; then apt_install "${build_deps[@]}"; fi
    log "building the tansu broker $TANSU_VERSION (once, about 9 minutes)"
    cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql >&2
  fi
  local missing=()
  command -v clickhouse-server >/dev/null || missing+=(clickhouse-server clickhouse-client)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v curl >/dev/null || missing+=(curl)
  command -v strace >/dev/null || missing+=(strace) # injects fsync errors in the fault tests
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# The real SDK clients the ingest tests drive, pinned to the versions of the captured fixtures.
# They go into target/ (a venv and a node_modules of their own), never into the system.
SENTRY_PY_VERSION=2.75.0
POSTHOG_PY_VERSION=7.91.1
ZSTANDARD_VERSION=0.25.0 # posthog[zstd]: the v1 capture API's zstd bodies
CHDB_CORE_VERSION=26.9.0 # ClickHouse 26.x in-process: the ClickHouse sink's modern-server check
SENTRY_NODE_VERSION=10.78.0
POSTHOG_NODE_VERSION=5.70.0
ensure_sdks() {
  local venv=$PWD/target/sdk-venv node=$PWD/target/sdk-node
  if ! "$venv/bin/python" -c "import sentry_sdk, posthog, chdb, zstandard; assert sentry_sdk.VERSION == '$SENTRY_PY_VERSION'" 2>/dev/null; then
    log "installing sentry-sdk $SENTRY_PY_VERSION, posthog $POSTHOG_PY_VERSION, zstandard $ZSTANDARD_VERSION and chdb-core $CHDB_CORE_VERSION into $venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q "sentry-sdk==$SENTRY_PY_VERSION" "posthog==$POSTHOG_PY_VERSION" "zstandard==$ZSTANDARD_VERSION" "chdb-core==$CHDB_CORE_VERSION" >&2
  fi
  command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -f "$node/.installed-$SENTRY_NODE_VERSION-$POSTHOG_NODE_VERSION" ]; then
    log "installing @sentry/node $SENTRY_NODE_VERSION and posthog-node $POSTHOG_NODE_VERSION into $node"
    mkdir -p "$node"
    (cd "$node" && [ -f package.json ] || echo '{"private": true}' >package.json)
    npm install --prefix "$node" --no-audit --no-fund --silent "@sentry/node@$SENTRY_NODE_VERSION" "posthog-node@$POSTHOG_NODE_VERSION" >&2
    touch "$node/.installed-$SENTRY_NODE_VERSION-$POSTHOG_NODE_VERSION"
  fi
  export TEST_TRELLIS_PYTHON=$venv/bin/python
  export TEST_TRELLIS_NODE_MODULES=$node/node_modules
}

# tansu 0.6.0 stores records per row in its SQLite engine and fetches from any offset. Its memory
# engine fetches whole batches by base offset, so a consumer resuming from a committed offset in
# the middle of a producer batch would skip the rest of that batch; Kafka itself returns the batch.
# Tests use SQLite; produce-only benchmarks set TANSU_STORAGE=memory.
start_kafka() {
  local port dir=$TEST_TRELLIS_SERVICES_DIR/tansu
  rm -rf "$dir"; mkdir -p "$dir"
  port=$(free_port)
  log "starting tansu on 127.0.0.1:$port"
  # tansu reads the path of a sqlite:// URL relative to its working directory.
  (cd "$dir" && exec tansu broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$([ "${TANSU_STORAGE:-sqlite}" = memory ] && echo memory://tansu/ || echo sqlite://tansu.db)" \
    --silent >"$dir/tansu.log" 2>&1) &
  echo $! >"$dir/pid"
  if ! wait_for tansu 60 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"; then
    tail -20 "$dir/tansu.log" >&2
    return 1
  fi
  export TEST_TRELLIS_KAFKA=127.0.0.1:$port
}

start_clickhouse() {
  local http tcp dir=$TEST_TRELLIS_SERVICES_DIR/clickhouse
  rm -rf "$dir"; mkdir -p "$dir"/{data,tmp,user_files,log,format_schemas}
  http=$(free_port); tcp=$(free_port)
  cat >"$dir/users.xml" <<XML
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
XML
  cat >"$dir/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$http</http_port>
  <tcp_port>$tcp</tcp_port>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
  log "starting clickhouse-server on 127.0.0.1:$http (http), $tcp (native)"
  clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  if ! wait_for clickhouse 60 curl -sf "http://127.0.0.1:$http/ping"; then
    tail -20 "$dir/log/stdout.log" "$dir/log/error.log" >&2 || true
    return 1
  fi
  export TEST_TRELLIS_CLICKHOUSE_URL=http://127.0.0.1:$http
}

services_up() {
  ensure_tools
  ensure_sdks
  services_down
  start_kafka
  start_clickhouse
}

services_down() {
  local pidfile
  for pidfile in "$TEST_TRELLIS_SERVICES_DIR"/tansu/pid "$TEST_TRELLIS_SERVICES_DIR"/clickhouse/pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null && log "stopped $(basename "$(dirname "$pidfile")")"
    rm -f "$pidfile"
  done
}
