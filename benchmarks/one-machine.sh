#!/usr/bin/env bash
# Scenario 4: one machine, `trellis run` end to end (ingest, processors and the Parquet sink in
# one process on the embedded log), driven by the load generator on the same machine:
#   - accepted events/s at full speed (32 connections, 100-event batches, every event distinct);
#   - the rate at which rows reach Parquet: rows in renamed files at the end of the load, and the
#     time from the start of the load until every accepted event is in a file.
# The load generator shares the two cores with trellis; nothing else should run.
# Usage: benchmarks/one-machine.sh [SECONDS]   (default 20). Prints one table.
# PERF=1 also profiles `trellis run` for 5 s under load and for the first 5 s after it
# (target/bench-perf-run.txt, target/bench-perf-drain.txt).
# MAX_AGE (default 5s) is `sinks.parquet.max_age`: below max_rows per partition a segment ends by
# age, so with the default 60 s no row would reach Parquet within a 20 s run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_OF_LOAD=${1:-20}
MAX_AGE=${MAX_AGE:-5s}
CONNECTIONS=32
source benchmarks/common.sh
build_release

work=$(mktemp -d)
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT
port=$(free_port)
cat >"$work/trellis.toml" <<TOML
data_dir = "$work/data"
log = "warn"
[ingest]
listen = "127.0.0.1:$port"
[ingest.rate_limit]
per_key_per_second = 0
per_key_burst = 0
[[ingest.projects]]
name = "bench"
keys = ["bench_key_0001"]
[sinks.parquet]
max_age = "$MAX_AGE"
TOML
start_bg "$work/trellis.log" "$BIN/trellis" run --config "$work/trellis.toml"
trellis_pid=$LAST_PID
wait_for trellis 60 curl -sf "http://127.0.0.1:$port/readyz"
log "trellis run on 127.0.0.1:$port; $(conditions)"

# Enough distinct batches that no event is sent twice at up to 150k events/s (beyond that,
# loadgen reports the distinct events it sent).
prepared=$(( (SECONDS_OF_LOAD * 150000) / (CONNECTIONS * 100) + 1 ))
cpu0=$(cpu_s "$trellis_pid")
# loadgen prepares its batches first (several seconds), so the profile starts once trellis is busy.
if [ -n "${PERF:-}" ]; then
  (
    before=$(cpu_s "$trellis_pid")
    while sleep 0.5; do
      now=$(cpu_s "$trellis_pid")
      if python3 -c "import sys; sys.exit(0 if $now - $before > 0.4 else 1)"; then break; fi
      before=$now
    done
    exec perf record -F 999 --call-graph "${PERF_CALL_GRAPH:-fp}" -o "$PWD/target/bench-perf-run.data" \
      -p "$trellis_pid" -- sleep 5
  ) >"$work/perf-run.log" 2>&1 &
  PERF_PIDS[run]=$!
  BG_PIDS+=("$!")
fi
load=$("$BIN/loadgen" --url "http://127.0.0.1:$port" --key bench_key_0001 --connections "$CONNECTIONS" \
  --duration "${SECONDS_OF_LOAD}s" --prepared "$prepared" --json)
load_cpu=$(python3 -c "print(round($(cpu_s "$trellis_pid") - $cpu0, 1))")
log "load: $load"
perf_report run
distinct=$(jget "$load" "j['distinct_events']")
t0=$(jget "$load" "j['started_unix_s']")
perf_start drain "$trellis_pid" 5
drain=$("$BIN/progress" --t0 "$t0" --interval 250ms --timeout 300s --cpu trellis="$trellis_pid" \
  parquet --root "$work/data/parquet" --topic events --until "$distinct")
log "drain: $drain"
perf_report drain
union=""
for t in events errors perf session_updates notifications; do
  union+="${union:+ UNION ALL }SELECT common.event_id AS event_id FROM $t"
done
check=$("$BIN/trellis" query --config "$work/trellis.toml" --format csv \
  "SELECT count(*) AS rows, count(DISTINCT event_id) AS ids FROM ($union)" | tail -1)
grep -iE "error|panic" "$work/trellis.log" | head -5 >&2 || true

python3 - "$load" "$drain" "$load_cpu" "$check" "$MAX_AGE" <<'PY'
import json, sys
load, drain = json.loads(sys.argv[1]), json.loads(sys.argv[2])
load_cpu, check, max_age = float(sys.argv[3]), sys.argv[4], sys.argv[5]
secs = load["seconds"]
accepted = load["events_per_s"]
n = load["distinct_events"]
at_end = drain["start_value"]
print()
print(f"`trellis run` (embedded log), loadgen with {load['connections']} connections x {load['batch']}-event batches "
      f"({load['avg_event_bytes']} B of JSON per event) on the same 2 cores; sinks.parquet.max_age = {max_age}")
print()
print("| measurement | figure | target |")
print("|---|---|---|")
print(f"| accepted by ingest, {secs:.0f} s at full speed | **{accepted:,.0f} events/s** "
      f"(p50 {load['latency_ms']['p50']} ms, p99 {load['latency_ms']['p99']} ms) "
      f"| >= 100k events/s: {'met' if accepted >= 100_000 else 'missed'} |")
print(f"| rows in Parquet when the load stopped | {at_end:,} of {n:,} ({at_end / secs:,.0f} rows/s over the load) | |")
print(f"| every accepted event in Parquet | {drain['done_s']:.1f} s after the load began: "
      f"**{n / drain['done_s']:,.0f} rows/s** end to end | >= 100k/s: {'met' if n / drain['done_s'] >= 100_000 else 'missed'} |")
print(f"| ratio: end to end / accepted by ingest | **{n / drain['done_s'] / accepted:.2f}** | |")
print(f"| CPU of `trellis run` | {load_cpu:.1f} s during the load ({load_cpu / secs:.2f} cores), "
      f"{drain['cpu_s']['trellis']:.1f} s draining | |")
print()
print(f"Check: Parquet rows, distinct event ids: {check} (expected {n:,} distinct).")
PY
