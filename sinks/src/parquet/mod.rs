//! The Parquet sink: reads every topic of the table registry ([`trellis_schemas::tables`]) from
//! the bus and writes zstd Parquet files that DataFusion ([`crate::query`]) and any Parquet reader can scan.
//!
//! Layout: `ROOT/<table>/project=<p>/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first>-<last>.parquet`
//! ([`layout`]). Events go to their kind's table (`events`, `errors`, `perf`, `transactions`,
//! `session_updates`, `notifications`) by event time (`timestamp_ms`, UTC); session records to
//! `sessions` by `started_ms`; health partials (from the `aggregates` topic) to
//! `health_partials` by `window_start_ms`; issue
//! records (every version) to `issues` by `first_seen_ms`; detections (every version) to
//! `detections` by `opened_ms`. The directories are hive-style, so a
//! query filtering on `project`, `date` or `hour` skips the rest.
//!
//! Delivery ([`segment`]): each input partition is cut into *segments*, consecutive offset
//! ranges that end by input record count, input bytes or age ([`ParquetConfig`]). A segment's
//! rows are streamed into one file per (table, project, date, hour) under a dot-prefixed
//! temporary name that readers skip; when the segment ends, every file is fsynced, renamed to the
//! segment's offset range and the directories fsynced, and only then is the offset after the
//! segment committed. A file therefore holds rows of one input partition only, and a replay after
//! a crash rebuilds files of the same names (a rename replaces the file before it), never a row
//! twice. A count- or size-based end is a function of the input; an age-based end is not, so when
//! a partition is assigned the sink lists the ranges already on disk for it and *pins* a replayed
//! segment to end exactly where the file before the crash ended (input inside a range that began
//! before the resume point is skipped as already written). Leftover temporary files of the
//! partition are deleted at that point.
//!
//! Retention ([`retention`]): once an `interval` (an hour), the sink removes the days of each
//! table wholly older than the table's retention (90 days for events, 400 for derived records by
//! default; per table and per project in `[sinks.parquet.retention]`).
//!
//! Payloads that do not decode are dead-lettered (`dlq`, stage `sink.parquet`) and counted
//! ([`ParquetMetrics`]); the consumer loop is [`run`].

pub mod config;
pub mod layout;
pub mod metrics;
pub mod retention;
pub mod segment;
mod sink;
pub mod writer;

pub use crate::ConfigError;
pub use config::ParquetConfig;
pub use layout::Table;
pub use metrics::ParquetMetrics;
pub use sink::{STAGE, run, run_with_metrics};

use std::path::PathBuf;

/// Why the Parquet sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bus failed in a way retrying does not fix.
    #[error("bus: {0}")]
    Bus(#[from] trellis_bus::BusError),
    /// A file or directory could not be written, renamed, synced or listed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Rows could not be encoded to Parquet.
    #[error(transparent)]
    Encode(#[from] writer::EncodeError),
    /// The blocking writer task failed.
    #[error("writer task: {0}")]
    Task(String),
}

impl Error {
    /// Whether running the sink again (for example after the disk has space) can succeed; the
    /// committed offsets are consistent in every case, so a restart resumes without loss.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bus(e) => e.is_retryable(),
            Error::Io { .. } | Error::Task(_) => true,
            Error::Config(_) | Error::Encode(_) => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
