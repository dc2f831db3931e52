//! A test-only ClickHouse sink process on the Kafka bus, for the crash test (the `trellis`
//! binary wires the sink for users). Settings come from the environment:
//! `TRELLIS_KAFKA` (brokers), `TRELLIS_PREFIX` (topic prefix), `TRELLIS_CLICKHOUSE_URL`,
//! `TRELLIS_CLICKHOUSE_DATABASE`, `TRELLIS_CLICKHOUSE_GROUP`, `TRELLIS_CLICKHOUSE_BATCH_ROWS`.
//! It runs until SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use trellis_bus::Bus;
use trellis_bus::config::KafkaConfig;
use trellis_bus::kafka::KafkaBus;
use trellis_schemas::topics::Names;
use trellis_sinks::clickhouse::{ClickHouseConfig, run};

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus: Arc<dyn Bus> = Arc::new(KafkaBus::new(&KafkaConfig {
        brokers: env("TRELLIS_KAFKA")?,
        ..Default::default()
    })?);
    let config = ClickHouseConfig {
        url: env("TRELLIS_CLICKHOUSE_URL")?,
        database: env("TRELLIS_CLICKHOUSE_DATABASE")?,
        group: env("TRELLIS_CLICKHOUSE_GROUP")?,
        batch_rows: env("TRELLIS_CLICKHOUSE_BATCH_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ClickHouseConfig::default().batch_rows),
        batch_age: Duration::from_millis(200),
        // The crash tests' fixtures carry fixed times.
        retention: trellis_sinks::retention::Retention::off(),
        ..Default::default()
    };
    let names = Names::new(&env("TRELLIS_PREFIX").unwrap_or_default());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    run(bus, names, config, shutdown).await?;
    Ok(())
}
