# Helpers of the end-to-end benchmark scripts; source it from the repository root. Every process started with `start_bg` is stopped (SIGTERM, then SIGKILL)
# by `stop_all`, which the scripts call from their EXIT trap together with `services_down`.

# BIN: the directory of the binaries to measure. Unset, the script builds the release binaries
# and measures those; set (a before/after comparison in one session, or the test suite running a
# script on a tiny input with its debug build), nothing is built.
# BENCH_SERVICES_DIR: where the script's broker and ClickHouse keep their files (default
# target/bench-services); two scripts running at once need two.
if [ -n "${BIN:-}" ]; then BUILD=; else BUILD=1; BIN=$PWD/target/release; fi

# tansu runs on its memory storage: its SQLite storage serves consumers at under 10k records/s.
# The memory storage reports a partition's end offset without the last producer batch, so no
# scenario relies on end offsets; consumers start at offset 0 and never resume, which its
# batch-wise fetches serve correctly. TANSU_STORAGE=sqlite measures the other.
export TEST_TRELLIS_SERVICES_DIR=${BENCH_SERVICES_DIR:-$PWD/target/bench-services}
export TANSU_STORAGE=${TANSU_STORAGE:-memory}
source scripts/services.sh

# start_services [clickhouse]: a scratch directory in $work, the scenario's own broker (and
# ClickHouse), all stopped and removed on exit together with what start_bg started.
start_services() {
  command -v tansu >/dev/null || ensure_tools
  if [ "${1:-}" = clickhouse ]; then command -v clickhouse-server >/dev/null || ensure_tools; fi
  work=$(mktemp -d)
  trap 'stop_all; services_down; rm -rf "$work"' EXIT
  services_down
  start_kafka
  if [ "${1:-}" = clickhouse ]; then start_clickhouse; fi
}

build_release() {
  # One build of both packages, as the features they share are then unified the same way every
  # time (building them apart rebuilds DataFusion for each).
  [ -z "$BUILD" ] || cargo build --release -q --bins -p trellis -p trellis-benchmarks
}
BG_PIDS=()

# start_bg LOGFILE COMMAND...: runs COMMAND in the background; its pid is in $LAST_PID.
start_bg() {
  local logfile=$1; shift
  "$@" >"$logfile" 2>&1 &
  LAST_PID=$!
  BG_PIDS+=("$LAST_PID")
}

# stop PID: SIGTERM, wait up to 20 s for a clean exit, then SIGKILL.
stop() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  log "pid $pid did not stop on SIGTERM; killing it"
  kill -9 "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${BG_PIDS[@]}"; do stop "$pid"; done
  BG_PIDS=()
}

# cpu_s PID: user + system CPU seconds the process has used so far.
cpu_s() {
  awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# jget JSON EXPR: a value of a JSON document, EXPR in Python over `j`, for example "j['rows']".
jget() {
  python3 -c "import json, sys; j = json.loads(sys.argv[1]); print($2)" "$1"
}

tansu_pid() { cat "$TEST_TRELLIS_SERVICES_DIR/tansu/pid"; }
clickhouse_pid() { cat "$TEST_TRELLIS_SERVICES_DIR/clickhouse/pid"; }

# conditions: what else ran on the machine, for the figures' record.
conditions() {
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# With PERF=1, perf_start NAME PID SECONDS samples PID's CPU for SECONDS in the background
# (`perf record`, 999 Hz, call graphs by frame pointers or PERF_CALL_GRAPH=dwarf) into
# target/bench-perf-NAME.data, and perf_report NAME writes its top binaries and symbols by self
# time to target/bench-perf-NAME.txt. Without PERF, both do nothing.
perf_start() {
  [ -n "${PERF:-}" ] || return 0
  start_bg "$work/perf-$1.log" perf record -F 999 --call-graph "${PERF_CALL_GRAPH:-fp}" \
    -o "$PWD/target/bench-perf-$1.data" -p "$2" -- sleep "$3"
  PERF_PIDS["$1"]=$LAST_PID
}
declare -A PERF_PIDS=()
perf_report() {
  [ -n "${PERF:-}" ] || return 0
  local pid=${PERF_PIDS[$1]}
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  local out=$PWD/target/bench-perf-$1.txt
  {
    echo "# by binary (self time)"
    perf report -i "$PWD/target/bench-perf-$1.data" --stdio --no-children --sort dso -g none 2>/dev/null \
      | grep -E '^ +[0-9.]+%' | head -8
    echo "# by symbol (self time, >= 1%)"
    perf report -i "$PWD/target/bench-perf-$1.data" --stdio --no-children --sort dso,symbol --percent-limit 1 \
      -g none 2>/dev/null | grep -E '^ +[0-9.]+%'
  } | sed -E 's/([[:space:]]+-)*[[:space:]]*$//' >"$out" || true
  log "perf profile of $1 (self time by binary and symbol): target/bench-perf-$1.txt"
}
