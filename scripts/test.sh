#!/usr/bin/env bash
# The trellis test command: provisions the real Kafka-protocol broker (tansu) and ClickHouse,
# starts them on loopback ports of their own, runs the whole suite against them, and stops them.
# Extra arguments go to the test runner (for example a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

trap services_down EXIT
# The suite's fixtures carry fixed 2026 times: `trellis` processes it starts keep their Parquet
# files and ClickHouse rows whatever the date (retention itself is tested on its own, with its
# own clock).
export TRELLIS_SINKS__PARQUET__RETENTION__INTERVAL=0s
export TRELLIS_SINKS__CLICKHOUSE__RETENTION__INTERVAL=0s
services_up
log "TEST_TRELLIS_KAFKA=$TEST_TRELLIS_KAFKA TEST_TRELLIS_CLICKHOUSE_URL=$TEST_TRELLIS_CLICKHOUSE_URL"

# Every criterion bench runs once on its inputs (test mode: nothing is timed).
cargo test -q --workspace --benches

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
