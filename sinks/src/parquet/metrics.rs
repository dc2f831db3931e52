//! The Parquet sink's metrics, in Prometheus text format (prefix `trellis_sink_parquet`).
//!
//! - `trellis_sink_parquet_rows_written_total{table}`: rows in files that were renamed into place
//!   (a replayed segment counts again: the rename replaced the earlier file).
//! - `trellis_sink_parquet_files_written_total{table}`: files renamed into place.
//! - `trellis_sink_parquet_dead_letters_total{topic}`: input records that did not decode, sent to
//!   the dead-letter topic.
//! - `trellis_sink_parquet_restarts_total{reason}`: times the sink dropped what it had open and
//!   started again from the committed offsets after a fault it waits out (`io`: a file could not
//!   be written, for example on a full disk; `bus`: the bus failed for a while).
//! - `trellis_sink_parquet_lag`: input records not yet read (the end of each assigned input
//!   partition minus the sink's position in it), read every second on the embedded log.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The Parquet sink's counters.
#[derive(Default)]
pub struct ParquetMetrics {
    rows: Family<Labels, Counter>,
    files: Family<Labels, Counter>,
    dead: Family<Labels, Counter>,
    restarts: Family<Labels, Counter>,
    lag: Gauge,
    expired_files: Counter,
    expired_bytes: Counter,
    /// Every table's rows, for the status line (the labelled `rows` are what is exported).
    rows_total: Counter,
}

impl ParquetMetrics {
    /// Registers every Parquet sink metric in `registry`, under `trellis_sink_parquet`: the one
    /// list of them, for [`ParquetMetrics::encode`] and for the one `/metrics` of `trellis run`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("trellis_sink_parquet");
        registry.register(
            "rows_written",
            "Rows in files renamed into place",
            self.rows.clone(),
        );
        registry.register(
            "files_written",
            "Files renamed into place",
            self.files.clone(),
        );
        registry.register(
            "dead_letters",
            "Input records that did not decode",
            self.dead.clone(),
        );
        registry.register(
            "restarts",
            "Restarts from the committed offsets after a fault",
            self.restarts.clone(),
        );
        registry.register("lag", "Input records not yet read", self.lag.clone());
        registry.register(
            "expired_files",
            "Files removed by retention",
            self.expired_files.clone(),
        );
        registry.register(
            "expired_bytes",
            "Bytes of the files removed by retention",
            self.expired_bytes.clone(),
        );
    }

    /// Counts what a retention pass removed.
    pub fn expired(&self, expired: super::retention::Expired) {
        self.expired_files.inc_by(expired.files);
        self.expired_bytes.inc_by(expired.bytes);
    }

    /// Files removed by retention so far.
    pub fn expired_files(&self) -> u64 {
        self.expired_files.get()
    }

    /// Counts one file of `table` with `rows` rows renamed into place.
    pub fn file_written(&self, table: &str, rows: u64) {
        let labels = vec![("table", table.to_string())];
        self.rows.get_or_create(&labels).inc_by(rows);
        self.files.get_or_create(&labels).inc();
        self.rows_total.inc_by(rows);
    }

    /// Rows written to every table so far.
    pub fn rows_total(&self) -> u64 {
        self.rows_total.get()
    }

    /// Sets how many input records the sink has not read yet.
    pub fn set_lag(&self, records: u64) {
        self.lag.set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// How many input records the sink had not read at its last measurement.
    pub fn lag(&self) -> u64 {
        u64::try_from(self.lag.get()).unwrap_or_default()
    }

    /// Counts a restart after a fault of kind `reason`.
    pub fn restart(&self, reason: &'static str) {
        self.restarts
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Restarts after faults of kind `reason` so far.
    pub fn restarts(&self, reason: &'static str) -> u64 {
        self.restarts
            .get_or_create(&vec![("reason", reason.to_string())])
            .get()
    }

    /// Counts a dead-lettered input record of `topic`.
    pub fn dead_letter(&self, topic: &str) {
        self.dead
            .get_or_create(&vec![("topic", topic.to_string())])
            .inc();
    }

    /// Rows written to `table` so far.
    pub fn rows_written(&self, table: &str) -> u64 {
        self.rows
            .get_or_create(&vec![("table", table.to_string())])
            .get()
    }

    /// Files written to `table` so far.
    pub fn files_written(&self, table: &str) -> u64 {
        self.files
            .get_or_create(&vec![("table", table.to_string())])
            .get()
    }

    /// Dead letters from `topic` so far.
    pub fn dead_letters(&self, topic: &str) -> u64 {
        self.dead
            .get_or_create(&vec![("topic", topic.to_string())])
            .get()
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
