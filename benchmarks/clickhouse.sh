#!/usr/bin/env bash
# Scenario 3: `events` topic -> ClickHouse sink -> ClickHouse, against a direct insert of the same
# rows into the same server, in one run:
#   1. `preload --into events` fills the `events` topic (the fleet's events as the processors
#      pass them on; nothing to deduplicate);
#   2. `chdirect` reads that topic, encodes it with the sink's own batch and encoder
#      (`encode_record`, RowBinary, batches of `batch_rows`), then times only the inserts, one at
#      a time through the `clickhouse` crate with the sink's client settings (LZ4), into a
#      database migrated by the sink's own migrations (same tables, same rollups);
#   3. `trellis sink clickhouse` over the same topic into another such database: time until
#      ClickHouse holds every row (count() over the event tables, polled every 100 ms);
#   4. the direct insert again; steps 3 and 4 repeat ROUNDS times (default 3). Each sink run is
#      compared with the mean of the two direct inserts around it, and the table gives the median
#      ratio: this shared machine's speed drifts within minutes.
# Usage: benchmarks/clickhouse.sh [EVENTS]   (default 300000). Prints one table.
# PERF=1 also profiles the first sink run for its first 3 s (target/bench-perf-clickhouse-sink.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
ROUNDS=${ROUNDS:-3}
source benchmarks/common.sh
build_release

start_services clickhouse
ch=$TEST_TRELLIS_CLICKHOUSE_URL
log "broker at $TEST_TRELLIS_KAFKA, ClickHouse at $ch; $(conditions)"

pre=$("$BIN/preload" --brokers "$TEST_TRELLIS_KAFKA" --prefix s3. --into events --events "$EVENTS" --json)
log "preloaded: $pre"

server=$(clickhouse_pid)
# direct N: the direct insert into database bench_direct_N; prints its report with the server's
# CPU seconds added.
direct() {
  local cpu0 report
  cpu0=$(cpu_s "$server")
  report=$("$BIN/chdirect" --brokers "$TEST_TRELLIS_KAFKA" --prefix s3. --url "$ch" \
    --database "bench_direct_$1" --expect "$EVENTS" --json)
  python3 -c "import json, sys; j = json.loads(sys.argv[1]); j['server_cpu_s'] = round($(cpu_s "$server") - $cpu0, 1); print(json.dumps(j))" "$report"
}
# sink N: `trellis sink clickhouse` from offset 0 into database bench_sink_N, already migrated
# (as after its first start), until ClickHouse counts every row; prints the progress report
# with the rows the tables hold at the end.
sink() {
  "$BIN/chdirect" --url "$ch" --database "bench_sink_$1" --migrate-only --json
  cat >"$work/sink-$1.toml" <<TOML
data_dir = "$work/data-$1"
log = "warn"
[bus]
kind = "kafka"
brokers = "$TEST_TRELLIS_KAFKA"
[topics]
prefix = "s3."
[sinks.clickhouse]
url = "$ch"
database = "bench_sink_$1"
group = "s3-clickhouse-$1"
TOML
  local union="" t report
  for t in events errors perf transactions session_updates notifications; do
    union+="${union:+ UNION ALL }SELECT count() AS c FROM bench_sink_$1.$t"
  done
  start_bg "$work/sink-$1.log" "$BIN/trellis" sink clickhouse --config "$work/sink-$1.toml"
  local pid=$LAST_PID
  [ "$1" != 1 ] || perf_start clickhouse-sink "$pid" 3
  report=$("$BIN/progress" --cpu sink="$pid" --cpu clickhouse="$server" --cpu broker="$(tansu_pid)" \
    clickhouse --url "$ch" --query "SELECT sum(c) FROM ($union)" --until "$EVENTS")
  [ "$1" != 1 ] || perf_report clickhouse-sink
  stop "$pid"
  grep -iE "error|panic" "$work/sink-$1.log" | head -5 >&2 || true
  local held
  held=$(curl -sf "$ch" --data-binary "SELECT sum(c) FROM ($union)")
  python3 -c "import json, sys; j = json.loads(sys.argv[1]); j['held'] = int(sys.argv[2]); print(json.dumps(j))" "$report" "$held"
}

# Direct, sink, direct, ... : each sink run is compared with the direct inserts just before and
# after it, as this shared machine's speed drifts within minutes. (The functions run in this
# shell, not in a command substitution, so the EXIT trap stops what they start.)
direct 0 >"$work/run-0.json"
runs=("$(cat "$work/run-0.json")")
log "direct insert 0: ${runs[0]}"
for round in $(seq 1 "$ROUNDS"); do
  sink "$round" >"$work/sink-$round.json"
  runs+=("$(cat "$work/sink-$round.json")")
  log "sink $round: ${runs[-1]}"
  direct "$round" >"$work/run-$round.json"
  runs+=("$(cat "$work/run-$round.json")")
  log "direct insert $round: ${runs[-1]}"
done

python3 - "$pre" "${runs[@]}" <<'PY'
import json, statistics, sys
pre = json.loads(sys.argv[1])
runs = [json.loads(a) for a in sys.argv[2:]]
directs, sinks = runs[0::2], runs[1::2]
n = pre["distinct"]
print()
print(f"{n:,} events ({pre['avg_payload_bytes']} B Avro each), ClickHouse {directs[0]['server']}, "
      f"batches of {directs[0]['batch_rows']:,} records ({directs[0]['inserts']} inserts, "
      f"{directs[0]['rowbinary_mb']} MB of RowBinary), LZ4, one insert at a time")
print()
print("| round | direct insert before → after (server CPU) | `trellis sink clickhouse`, first rows to last "
      "(from its start) | CPU: sink, ClickHouse | ratio to the mean of the two direct inserts |")
print("|---|---|---|---|---|")
ratios = []
for i, sink in enumerate(sinks):
    before, after = directs[i], directs[i + 1]
    d = (before["rows_per_s"] + after["rows_per_s"]) / 2
    wall = n / sink["done_s"]
    # From the first rows counted to the last; a small input lands at once, so then the wall rate.
    span = sink["done_s"] - sink["first_change_s"]
    steady = (n - sink["first_value"]) / span if span > 0 else wall
    ratios.append(steady / d)
    cpu = sink["cpu_s"]
    print(f"| {i + 1} | {before['rows_per_s']:,.0f} → {after['rows_per_s']:,.0f} rows/s "
          f"({before['server_cpu_s']} s, {after['server_cpu_s']} s) | {steady:,.0f} rows/s ({wall:,.0f}) "
          f"| {cpu['sink']:.1f} s, {cpu['clickhouse']:.1f} s | {ratios[-1]:.2f} |")
r = statistics.median(ratios)
print(f"| median | | | | **{r:.2f}** (target >= 0.70: {'met' if r >= 0.70 else 'missed'}) |")
print()
encode = statistics.median(d["encode_rows_per_s"] for d in directs)
print(f"The sink's encoding alone (decode Avro + encode RowBinary, one core, in `chdirect`): {encode:,.0f} rows/s.")
held = ", ".join(f"{s['held']:,}" for s in sinks)
print(f"Check: the sink's tables hold {held} rows (expected {n:,} each).")
PY
