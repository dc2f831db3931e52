#!/usr/bin/env bash
# Scenario 1: ingest -> broker, against the broker's limit and the HTTP limit, in one run.
#   1. a plain rdkafka producer pushes the fleet's events (same bytes) to the broker: the broker's limit;
#   2. the load generator drives `trellis ingest` (Kafka bus) at full speed with 8 and with 32
#      connections: accepted events/s (8 connections are bound by latency, not CPU: each request
#      waits out the producer's 5 ms linger and the broker's ack);
#   3. the load generator at half the 32-connection rate: latency percentiles;
#   4. wrk against /healthz of the same server: the HTTP limit.
# Usage: benchmarks/ingest.sh [SECONDS]   (default 20 per phase). Prints one summary table.
# INGEST_BIN=path measures another trellis binary (for before/after comparisons).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_PHASE=${1:-20}
export TEST_TRELLIS_SERVICES_DIR=$PWD/target/bench-services TANSU_STORAGE=memory
source scripts/services.sh
command -v wrk >/dev/null || apt_install wrk
command -v tansu >/dev/null || ensure_tools
# One build of both packages, as the features they share are then unified the same way every time
# (building them apart rebuilds DataFusion for each).
cargo build --release -q --bins -p trellis -p trellis-benchmarks

cleanup() { [ -n "${INGEST_PID:-}" ] && kill "$INGEST_PID" 2>/dev/null; services_down; }
trap cleanup EXIT
services_down
start_kafka
log "broker at $TEST_TRELLIS_KAFKA (memory storage)"

raw=$(target/release/rawproduce --brokers "$TEST_TRELLIS_KAFKA" --duration "${SECONDS_PER_PHASE}s" --json)
log "raw producer: $raw"

port=$(free_port)
work=$(mktemp -d)
cat >"$work/trellis.toml" <<TOML
log = "warn"
[bus]
kind = "kafka"
brokers = "$TEST_TRELLIS_KAFKA"
[ingest]
listen = "127.0.0.1:$port"
[ingest.rate_limit]
per_key_per_second = 0
per_key_burst = 0
[[ingest.projects]]
name = "bench"
keys = ["bench_key_0001"]
TOML
INGEST_BIN=${INGEST_BIN:-$PWD/target/release/trellis}
(cd "$work" && exec "$INGEST_BIN" ingest --config trellis.toml) &
INGEST_PID=$!
wait_for ingest 60 curl -sf "http://127.0.0.1:$port/readyz"

load() { target/release/loadgen --url "http://127.0.0.1:$port" --key bench_key_0001 --duration "${SECONDS_PER_PHASE}s" --json "$@"; }
full8=$(load --connections 8)
log "ingest at full speed, 8 connections: $full8"
full=$(load --connections 32)
log "ingest at full speed, 32 connections: $full"
half_rate=$(python3 -c "import json,sys; print(int(json.loads(sys.argv[1])['events_per_s'] / 2))" "$full")
half=$(load --connections 32 --rate "$half_rate")
log "ingest at half speed: $half"
wrk_out=$(wrk -t2 -c32 -d"${SECONDS_PER_PHASE}s" "http://127.0.0.1:$port/healthz")
wrk_rps=$(echo "$wrk_out" | awk '/Requests\/sec/ {print $2}')

python3 - "$raw" "$full" "$half" "$wrk_rps" "$full8" <<'PY'
import json, sys
raw, full, half = (json.loads(a) for a in sys.argv[1:4])
wrk = float(sys.argv[4])
full8 = json.loads(sys.argv[5])
r = full["events_per_s"] / raw["events_per_s"]
print()
print("| measurement | figure | ratio |")
print("|---|---|---|")
print(f"| plain rdkafka producer, same {raw['avg_event_bytes']}-byte events | {raw['events_per_s']:,.0f} events/s | 1.00 |")
print(f"| ingest, 100-event batches, 8 connections (latency-bound) | {full8['events_per_s']:,.0f} events/s, p99 {full8['latency_ms']['p99']} ms | {full8['events_per_s']/raw['events_per_s']:.2f} |")
print(f"| ingest, 100-event batches, 32 connections, full speed | {full['events_per_s']:,.0f} events/s ({full['mb_per_s_wire']} MB/s) | {r:.2f} (target >= 0.30: {'met' if r >= 0.30 else 'missed'}) |")
print(f"| ingest latency at full speed | p50 {full['latency_ms']['p50']} ms, p99 {full['latency_ms']['p99']} ms | |")
print(f"| ingest at half speed ({half['rate']:,} events/s offered, {half['events_per_s']:,.0f} accepted) | p50 {half['latency_ms']['p50']} ms, p99 {half['latency_ms']['p99']} ms | target p99 <= 25 ms: {'met' if half['latency_ms']['p99'] <= 25 else 'missed'} |")
print(f"| wrk on /healthz of the same server (HTTP limit) | {wrk:,.0f} requests/s = {wrk*100:,.0f} events/s at 100 per request | {wrk*100/raw['events_per_s']:.2f} |")
PY
