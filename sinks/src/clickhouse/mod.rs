//! The ClickHouse sink: reads every topic of the table registry ([`trellis_schemas::tables`])
//! from the bus and writes one row per record into ClickHouse, exactly once after deduplication.
//!
//! Data enters through a consumer group on the bus ([`run`]). Each record is decoded and encoded
//! as a `RowBinary` row of its table ([`encode`]: the event kinds' tables `events`, `errors`,
//! `perf`, `transactions`, `session_updates`, `notifications`, and `sessions`,
//! `health_partials`), collected into a batch by rows, bytes and age ([`batch`]), and inserted
//! per table through the `clickhouse` crate. Offsets are committed only after ClickHouse
//! acknowledged every insert of the batch and the refused records are on the dead-letter topic.
//!
//! Delivery: at-least-once from the bus, made idempotent in the store. Every table is a
//! `ReplacingMergeTree` keyed by the record's deterministic id (event id, session id with its
//! version, health partial id), so a replayed row collapses (`SELECT ... FINAL`); on 22.x+
//! servers each insert also carries an `insert_deduplication_token` built from the batch's topic,
//! partition and offset ranges, so a retried insert is dropped before it reaches the rollups.
//!
//! Failures are classified ([`error::classify`]): network errors, timeouts, 5xx and transient
//! server codes are retried with exponential backoff and jitter until they pass (or shutdown);
//! data the server refuses (codes 27, 53, 117, ...) is narrowed down by halving the insert and
//! the refused records go to the dead-letter topic with ClickHouse's reason; anything else
//! (unknown table, authentication) stops the sink with the reason, offsets uncommitted.
//!
//! The schema is created and migrated at start-up ([`migrate`], versioned in
//! `schema_migrations`), including the rollups ([`rollups`]). `queries.sql` beside this file
//! holds the documented analyst queries, run by the tests on ClickHouse 18.16 and chDB 26.x.
//!
//! Retention ([`retention`], `[sinks.clickhouse.retention]`): a `TTL` per table on servers
//! that have it, a pass every `interval` that drops expired monthly partitions and deletes
//! expired rows on older ones.

pub mod batch;
pub mod config;
pub mod encode;
pub mod error;
pub mod migrations;
pub mod retention;
pub mod rollups;
mod rowbinary;
mod sink;

pub use crate::ConfigError;
pub use config::ClickHouseConfig;
pub use error::Error;
pub use migrations::{Migrated, ServerVersion, migrate};
pub use sink::{STAGE, run};

/// The analyst queries: `-- name: ...` headers, a comment on what each answers, then the SQL,
/// separated by blank lines. Table names are unqualified: run them in the sink's database.
pub const QUERIES: &str = include_str!("queries.sql");

/// The analyst queries of [`QUERIES`], as (name, SQL without comments).
pub fn queries() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for block in QUERIES.split("-- name: ").skip(1) {
        let (name, body) = block.split_once('\n').unwrap_or((block, ""));
        let sql: Vec<&str> = body
            .lines()
            .filter(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
            .collect();
        out.push((
            name.trim(),
            sql.join("\n").trim_end_matches(';').to_string(),
        ));
    }
    out
}
