#!/usr/bin/env bash
# Scenario 3: `events` topic -> ClickHouse sink -> ClickHouse, against a direct insert of the same
# rows into the same server, in one run:
#   1. `preload --into events` fills the `events` topic (the fleet's events as the processors
#      pass them on; nothing to deduplicate);
#   2. `chdirect` reads that topic, encodes it with the sink's own batch and encoder
#      (`encode_record`, RowBinary, batches of `batch_rows`), then times only the inserts, one at
#      a time through the `clickhouse` crate with the sink's client settings (LZ4), into a
#      database migrated by the sink's own migrations (same tables, same rollups);
#   3. `trellis sink clickhouse` over the same topic into a second such database: time until
#      ClickHouse holds every row (count() over the event tables, polled every 100 ms);
#   4. the direct insert again, into a third database. The sink is compared with the mean of the
#      two direct inserts around it, as this shared machine's speed drifts within minutes.
# Usage: benchmarks/clickhouse.sh [EVENTS]   (default 300000). Prints one table.
# PERF=1 also profiles the sink for its first 3 s (target/bench-perf-clickhouse-sink.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
# tansu's memory storage (its SQLite storage serves consumers at under 10k records/s). It reports
# a partition's end offset without the last producer batch, so nothing here relies on end offsets;
# consumers start at offset 0 and never resume, which its batch-wise fetches serve correctly.
export TEST_TRELLIS_SERVICES_DIR=${BENCH_SERVICES_DIR:-$PWD/target/bench-services} TANSU_STORAGE=${TANSU_STORAGE:-memory}
source scripts/services.sh
source benchmarks/common.sh
command -v tansu >/dev/null && command -v clickhouse-server >/dev/null || ensure_tools
build_release

work=$(mktemp -d)
cleanup() { stop_all; services_down; rm -rf "$work"; }
trap cleanup EXIT
services_down
start_kafka
start_clickhouse
ch=$TEST_TRELLIS_CLICKHOUSE_URL
log "broker at $TEST_TRELLIS_KAFKA, ClickHouse at $ch; $(conditions)"

pre=$("$BIN/preload" --brokers "$TEST_TRELLIS_KAFKA" --prefix s3. --into events --events "$EVENTS" --json)
log "preloaded: $pre"

# The direct insert.
server=$(clickhouse_pid)
cpu0=$(cpu_s "$server")
direct=$("$BIN/chdirect" --brokers "$TEST_TRELLIS_KAFKA" --prefix s3. --url "$ch" --database bench_direct \
  --expect "$EVENTS" --json)
direct_server_cpu=$(python3 -c "print(round($(cpu_s "$server") - $cpu0, 1))")
log "direct insert: $direct"

# The sink, into a database already migrated (as after its first start), from offset 0.
"$BIN/chdirect" --url "$ch" --database bench_sink --migrate-only
cat >"$work/trellis.toml" <<TOML
data_dir = "$work/data"
log = "warn"
[bus]
kind = "kafka"
brokers = "$TEST_TRELLIS_KAFKA"
[topics]
prefix = "s3."
[sinks.clickhouse]
url = "$ch"
database = "bench_sink"
group = "s3-clickhouse"
TOML
union=""
for t in events errors perf transactions session_updates notifications; do
  union+="${union:+ UNION ALL }SELECT count() AS c FROM bench_sink.$t"
done
count="SELECT sum(c) FROM ($union)"
start_bg "$work/sink.log" "$BIN/trellis" sink clickhouse --config "$work/trellis.toml"
sink_pid=$LAST_PID
perf_start clickhouse-sink "$sink_pid" 3
sink=$("$BIN/progress" --cpu sink="$sink_pid" --cpu clickhouse="$server" --cpu broker="$(tansu_pid)" \
  clickhouse --url "$ch" --query "$count" --until "$EVENTS")
log "sink: $sink"
perf_report clickhouse-sink
stop "$sink_pid"
final=$(curl -sf "$ch" --data-binary "$count")
grep -iE "error|panic" "$work/sink.log" | head -5 >&2 || true
direct_after=$("$BIN/chdirect" --brokers "$TEST_TRELLIS_KAFKA" --prefix s3. --url "$ch" --database bench_direct2 \
  --expect "$EVENTS" --json)
log "direct insert again: $direct_after"

python3 - "$pre" "$direct" "$sink" "$direct_server_cpu" "$final" "$direct_after" <<'PY'
import json, sys
pre, direct, sink = (json.loads(a) for a in sys.argv[1:4])
direct_server_cpu, final = float(sys.argv[4]), int(sys.argv[5])
direct_after = json.loads(sys.argv[6])
n = pre["distinct"]
d = (direct["rows_per_s"] + direct_after["rows_per_s"]) / 2
wall = n / sink["done_s"]
# From the first rows counted to the last; a small input lands at once, so then the wall rate.
span = sink["done_s"] - sink["first_change_s"]
steady = (n - sink["first_value"]) / span if span > 0 else wall
cpu = sink["cpu_s"]
print()
print(f"{n:,} events ({pre['avg_payload_bytes']} B Avro each), ClickHouse {direct['server']}, "
      f"batches of {direct['batch_rows']:,} records, LZ4, one insert at a time")
print()
print("| measurement | rows/s | ratio to the direct insert |")
print("|---|---|---|")
print(f"| direct insert of the sink's RowBinary, before the sink ({direct['inserts']} inserts, {direct['rowbinary_mb']} MB, "
      f"{direct['seconds']:.2f} s; server CPU {direct_server_cpu:.1f} s) | {direct['rows_per_s']:,.0f} | |")
print(f"| the same, after the sink ({direct_after['seconds']:.2f} s) | {direct_after['rows_per_s']:,.0f} | |")
print(f"| direct insert, mean of the two | {d:,.0f} | 1.00 |")
print(f"| `trellis sink clickhouse`, from its start until every row is counted ({sink['done_s']:.2f} s) "
      f"| {wall:,.0f} | {wall / d:.2f} |")
r = steady / d
print(f"| the same, from the first rows landing ({sink['first_change_s']:.2f} s, {sink['first_value']:,} rows) "
      f"to the last | {steady:,.0f} | **{r:.2f}** (target >= 0.70: {'met' if r >= 0.70 else 'missed'}) |")
print(f"| CPU seconds during the sink's run | sink {cpu['sink']:.1f}, ClickHouse {cpu['clickhouse']:.1f}, "
      f"broker {cpu['broker']:.1f} | |")
print(f"| the sink's encoding alone (decode Avro + encode RowBinary, one core, in `chdirect`) "
      f"| {direct['encode_rows_per_s']:,.0f} | |")
print()
print(f"Check: the sink's tables hold {final:,} rows (expected {n:,}).")
PY
