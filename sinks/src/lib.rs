//! trellis sinks: read the processed topics and write Parquet files and ClickHouse tables.
//!
//! [`parquet`]: a consumer group on the topics of every table of the registry
//! ([`trellis_schemas::tables`]) writes zstd Parquet
//! files under `ROOT/<table>/project=<p>/date=YYYY-MM-DD/hour=HH/`, each named by the input
//! offset range it holds (`<topic>-<partition>-<first>-<last>.parquet`), written under a hidden
//! temporary name and renamed, with the offsets committed only after the rename is durable; a
//! replay after a crash rebuilds the same files, so every row is stored exactly once.
//! [`query`] answers SQL over those files with DataFusion, one table per directory, while the
//! sink writes.
#![warn(missing_docs)]

pub mod clickhouse;
pub mod parquet;
pub mod query;
pub mod retention;

/// A sink setting that cannot work, named by its key (`sinks.parquet.max_rows`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sinks.{sink}.{key}: {reason}")]
pub struct ConfigError {
    /// The sink's section: `parquet` or `clickhouse`.
    pub sink: &'static str,
    /// The key in it.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}
