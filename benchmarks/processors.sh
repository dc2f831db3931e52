#!/usr/bin/env bash
# Scenario 2: broker -> processors -> Parquet, in one run:
#   1. `trellis process` alone, from offset 0 of a preloaded events.raw: time until it has handled
#      every record (its metrics: outcome `processed`);
#   2. `trellis sink parquet` alone over that `events` topic: time until its group has committed
#      every event (it commits only after a file is renamed into place, so the rows are readable);
#   3. both together on a second preloaded copy: time until the sink has committed every event.
# The input is the load generator's fleet as ingest would have published it (`preload`: ingest's
# parser, normalization and Avro codec), 5% of it sent twice for the processors to drop. CPU
# seconds of each process come from /proc, so "per core" is rows per CPU-second of the stage.
# Usage: benchmarks/processors.sh [EVENTS]   (distinct events, default 500000). Prints one table.
# PERF=1 also profiles each stage alone for 4 s (target/bench-perf-*.txt).
# MAX_AGE (default 2s) is `sinks.parquet.max_age`: with 8 partitions no segment reaches
# `max_rows` (500,000 records of one partition) at these sizes, so each ends by age, and the
# default 60 s would add up to a minute of waiting to the sink's time.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-500000}
MAX_AGE=${MAX_AGE:-2s}
# tansu's SQLite storage would keep the processors to about 8k events/s at 100% of a core, hence
# its memory storage (common.sh); progress is read from the processors' metrics and the sink's
# committed offsets, never from end offsets.
source benchmarks/common.sh
build_release

start_services
log "broker at $TEST_TRELLIS_KAFKA ($TANSU_STORAGE storage); $(conditions)"

pre_a=$("$BIN/preload" --brokers "$TEST_TRELLIS_KAFKA" --prefix s2a. --events "$EVENTS" --duplicates 5 --json)
log "preloaded: $pre_a"
pre_c=$("$BIN/preload" --brokers "$TEST_TRELLIS_KAFKA" --prefix s2c. --events "$EVENTS" --duplicates 5 --seed 2 --json)
log "preloaded: $pre_c"

# config NAME PREFIX: a Kafka deployment of its own (topics, groups, data directory), with the
# processors' metrics on $metrics_port.
config() {
  metrics_port=$(free_port)
  cat >"$work/$1.toml" <<TOML
data_dir = "$work/$1"
log = "warn"
[bus]
kind = "kafka"
brokers = "$TEST_TRELLIS_KAFKA"
[topics]
prefix = "$2"
[processors]
group = "$1-process"
issues_group = "$1-issues"
metrics_listen = "127.0.0.1:$metrics_port"
[processors.detect]
group = "$1-detect"
perf_group = "$1-detect-perf"
[sinks.parquet]
group = "$1-parquet"
max_age = "$MAX_AGE"
TOML
}

# distinct_in_parquet NAME: distinct event ids over the event tables of that deployment.
distinct_in_parquet() {
  local union="" t
  for t in events errors perf session_updates notifications; do
    union+="${union:+ UNION ALL }SELECT common.event_id AS event_id FROM $t"
  done
  "$BIN/trellis" query --config "$work/$1.toml" --format csv \
    "SELECT count(*) AS rows, count(DISTINCT event_id) AS ids FROM ($union)" | tail -1
}

broker=$(tansu_pid)

# 1. the processors alone.
config a s2a.
start_bg "$work/a-process.log" "$BIN/trellis" process --config "$work/a.toml"
process_pid=$LAST_PID
processed() { # processed [--cpu ...]: waits until the processors on $metrics_port handled $until records
  "$BIN/progress" "$@" metrics --url "http://127.0.0.1:$metrics_port/metrics" \
    --metric 'trellis_processor_records_total{stage="process",outcome="processed"}' --until "$until"
}
until=$(jget "$pre_a" "j['published']")
perf_start process "$process_pid" 4
alone_process=$(processed --cpu process="$process_pid" --cpu broker="$broker")
log "process alone: $alone_process"
perf_report process
stop "$process_pid"

# 2. the Parquet sink alone, over what the processors wrote.
config b s2a.
start_bg "$work/b-sink.log" "$BIN/trellis" sink parquet --config "$work/b.toml"
sink_pid=$LAST_PID
perf_start parquet-sink "$sink_pid" 4
alone_sink=$("$BIN/progress" --cpu sink="$sink_pid" --cpu broker="$broker" \
  group --brokers "$TEST_TRELLIS_KAFKA" --group b-parquet --topics s2a.events --until "$EVENTS")
log "sink alone: $alone_sink"
perf_report parquet-sink
stop "$sink_pid"
check_b=$(distinct_in_parquet b)

# 3. both together, on the second copy.
config c s2c.
start_bg "$work/c-process.log" "$BIN/trellis" process --config "$work/c.toml"
process_pid=$LAST_PID
start_bg "$work/c-sink.log" "$BIN/trellis" sink parquet --config "$work/c.toml"
sink_pid=$LAST_PID
until=$(jget "$pre_c" "j['published']")
processed >"$work/c-processed.json" &
together=$("$BIN/progress" --cpu process="$process_pid" --cpu sink="$sink_pid" --cpu broker="$broker" \
  group --brokers "$TEST_TRELLIS_KAFKA" --group c-parquet --topics s2c.events --until "$EVENTS")
wait $!
together_process=$(cat "$work/c-processed.json")
log "together: $together; the processors: $together_process"
stop "$process_pid"
stop "$sink_pid"
check_c=$(distinct_in_parquet c)
for f in "$work"/*.log; do
  if grep -qiE "error|panic" "$f"; then log "$(basename "$f"):"; grep -iE "error|panic" "$f" | head -5 >&2; fi
done

python3 - "$pre_a" "$pre_c" "$alone_process" "$alone_sink" "$together" "$check_b" "$check_c" \
  "$together_process" "$MAX_AGE" <<'PY'
import json, sys
pre_a, pre_c, proc, sink, both = (json.loads(a) for a in sys.argv[1:6])
check_b, check_c = sys.argv[6], sys.argv[7]
both_proc = json.loads(sys.argv[8])
max_age = sys.argv[9]
def rate(n, s): return f"{n / s:,.0f}" if s else "-"
def row(name, n_in, what, p, stage_cpu, cpu_s=None):
    s = p["done_s"]
    cpu_s = cpu_s or p["cpu_s"]
    cpu = sum(cpu_s[k] for k in stage_cpu)
    split = " + ".join(f"{k} {cpu_s[k]:.1f}" for k in stage_cpu) + " s" if stage_cpu else "(next row)"
    print(f"| {name} | {n_in:,} {what} in {s:.1f} s (first output after {p['first_change_s']:.1f} s) "
          f"| **{rate(n_in, s)}**/s | {split} | **{rate(n_in, cpu)}** | {cpu_s['broker']:.1f} s |")
print()
print(f"{pre_a['distinct']:,} distinct events ({pre_a['avg_payload_bytes']} B Avro each), "
      f"{pre_a['published']:,} on events.raw with the 5% sent twice; sinks.parquet.max_age = {max_age}")
print()
print("| stage | work | per second (wall) | CPU seconds of the stage | per CPU-second (per core) | broker CPU |")
print("|---|---|---|---|---|---|")
row("`trellis process` alone", pre_a["published"], "events.raw records", proc, ["process"])
row("`trellis sink parquet` alone", pre_a["distinct"], "events rows", sink, ["sink"])
row("both together: the processors", pre_c["published"], "events.raw records", both_proc, [],
    {"broker": both["cpu_s"]["broker"]})
row("both together: every row in Parquet", pre_c["distinct"], "events rows", both, ["process", "sink"])
# Events per second of wall time: the pair against the slower of the two stages alone.
slower = min(pre_a["distinct"] / sink["done_s"], pre_a["distinct"] / proc["done_s"])
print(f"| ratio: both together / the slower stage alone, events/s | | **{pre_c['distinct'] / both['done_s'] / slower:.2f}** | | | |")
print()
print("Per CPU-second: records divided by the CPU seconds the stage's process used (all its threads)")
print("between its start and the end; together, both processes until every row was in Parquet.")
print(f"Checks, rows and distinct event ids in Parquet (expected {pre_a['distinct']:,} each): "
      f"{check_b} (sink alone), {check_c} (together).")
PY
