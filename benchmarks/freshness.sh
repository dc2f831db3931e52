#!/usr/bin/env bash
# Scenario 5: freshness, from an SDK's send to visible in Parquet and in ClickHouse. The stages run
# as separate processes on the broker (`trellis ingest`, `trellis process`, `trellis sink
# parquet`, `trellis sink clickhouse`); `freshness` sends analytics events at a modest rate with
# their send time and polls both stores every 50 ms (see src/bin/freshness.rs). A warm-up run
# first (WARMUP, default 5s) lets every consumer join its group; only the second is reported.
# Usage: benchmarks/freshness.sh [RATE] [SECONDS]   (default 1000 events/s for 30 s).
# What bounds freshness is each sink's flush setting, reported with the figures:
#   PARQUET_MAX_AGE (default 1s) is `sinks.parquet.max_age`: a Parquet segment is renamed into
#     place (and becomes readable) when it is this old, so it bounds the Parquet latency from
#     below; the documented default, 60s, makes Parquet about a minute behind at modest rates.
#   CLICKHOUSE_BATCH_AGE (default 1s, the documented default) is `sinks.clickhouse.batch_age`.
#   FETCH_WAIT (default 100ms, the documented default) is `bus.fetch_wait`: how long a consumer's
#     fetch may wait at the broker for new records; tansu answers only when it is up.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-1000}
SECONDS_OF_LOAD=${2:-30}
PARQUET_MAX_AGE=${PARQUET_MAX_AGE:-1s}
CLICKHOUSE_BATCH_AGE=${CLICKHOUSE_BATCH_AGE:-1s}
source benchmarks/common.sh
build_release

start_services clickhouse
port=$(free_port)
FETCH_WAIT=${FETCH_WAIT:-100ms}
cat >"$work/trellis.toml" <<TOML
data_dir = "$work/data"
log = "warn"
[bus]
kind = "kafka"
brokers = "$TEST_TRELLIS_KAFKA"
fetch_wait = "$FETCH_WAIT"
[topics]
prefix = "s5."
[ingest]
listen = "127.0.0.1:$port"
[[ingest.projects]]
name = "bench"
keys = ["bench_key_0001"]
[sinks.parquet]
max_age = "$PARQUET_MAX_AGE"
[sinks.clickhouse]
url = "$TEST_TRELLIS_CLICKHOUSE_URL"
database = "fresh"
batch_age = "$CLICKHOUSE_BATCH_AGE"
TOML
for stage in ingest process "sink parquet" "sink clickhouse"; do
  # shellcheck disable=SC2086 # the stage is two words for the sinks
  start_bg "$work/${stage// /-}.log" "$BIN/trellis" $stage --config "$work/trellis.toml"
done
wait_for ingest 60 curl -sf "http://127.0.0.1:$port/readyz"
wait_for "the ClickHouse sink's schema" 60 \
  bash -c "curl -sf '$TEST_TRELLIS_CLICKHOUSE_URL' --data-binary 'EXISTS TABLE fresh.events' | grep -q 1"
log "pipeline up (ingest on 127.0.0.1:$port); $(conditions)"

fresh() {
  "$BIN/freshness" --url "http://127.0.0.1:$port" --key bench_key_0001 --project bench \
    --parquet-root "$work/data/parquet" --clickhouse-url "$TEST_TRELLIS_CLICKHOUSE_URL" \
    --clickhouse-database fresh --kafka-brokers "$TEST_TRELLIS_KAFKA" \
    --kafka-topics s5.events.raw,s5.events --json "$@"
}
warmup=$(fresh --rate "$RATE" --duration "${WARMUP:-5s}" --wait 120s)
log "warm-up: $warmup"
result=$(fresh --rate "$RATE" --duration "${SECONDS_OF_LOAD}s" --wait 120s)
log "measured: $result"
for f in "$work"/*.log; do
  if grep -qiE "error|panic" "$f"; then log "$(basename "$f"):"; grep -iE "error|panic" "$f" | head -5 >&2; fi
done

python3 - "$result" "$PARQUET_MAX_AGE" "$CLICKHOUSE_BATCH_AGE" "$FETCH_WAIT" <<'PY'
import json, sys
r, max_age, batch_age, fetch_wait = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
print()
print(f"{r['sent']:,} analytics events at {r['rate']:,}/s for {r['seconds']} s ({r['failed_requests']} requests failed), "
      f"stores polled every {r['interval_ms']} ms; ingest, process and both sinks as separate processes on the broker; "
      f"bus.fetch_wait = {fetch_wait}")
print()
print("| visible in | flush setting | seen | p50 | p90 | p99 | max | target p99 <= 2 s |")
print("|---|---|---|---|---|---|---|---|")
rows = [("topic s5.events.raw", "`events.raw` (ingest's output)", "linger 5 ms"),
        ("topic s5.events", "`events` (the processors' output)", "one publish per poll"),
        ("parquet", "**Parquet**", f"max_age = {max_age}"),
        ("clickhouse", "**ClickHouse**", f"batch_age = {batch_age}")]
for key, name, setting in rows:
    s = r[key]
    p99 = s["p99_ms"]
    store = key in ("parquet", "clickhouse")
    verdict = "" if not store else "-" if p99 is None else ("met" if p99 <= 2000 and s["missing"] == 0 else "missed")
    ms = lambda v: "-" if v is None else f"{v / 1000:.2f} s"
    print(f"| {name} | {setting} | {s['seen']:,} ({s['missing']} missing) | {ms(s['p50_ms'])} | {ms(s['p90_ms'])} "
          f"| **{ms(p99)}** | {ms(s['max_ms'])} | {verdict} |")
PY
