//! The processors' metrics, in Prometheus text format.
//!
//! - `trellis_processor_records_total{stage, outcome}`: what became of input records and of
//!   the state they feed. Outcomes: `processed`, `skipped_replayed` (already in a restored
//!   checkpoint), `invalid` (dead-lettered), `duplicate`, `dedupe_beyond_window` (older than the
//!   dedupe window: passed on unchecked), `dedupe_evicted_early` (ids forgotten before the window
//!   ended because the id limit was reached), `late_event` (behind the watermark),
//!   `aggregate_correction` (a late event counted into a correction partial), `aggregate_too_late`
//!   (a late event older than the correction horizon: not in any aggregate),
//!   `session_update_stale` (an older update of a session), `session_event_after_end`,
//!   `sessions_closed`, `session_evicted` (an implicit session ended early: its device had
//!   [`crate::pipeline::sessions::MAX_OPEN_PER_DEVICE`] open), `partials_emitted`,
//!   `output_refused` (an output the bus refused for good, dead-lettered), `perf_series_dropped`
//!   (a performance sample of a series beyond a partial's
//!   [`crate::pipeline::health::MAX_PERF_KEYS`]), `partial_parts_split` (further records a
//!   health partial too large for one was split into, see [`crate::pipeline::health::split`]),
//!   `issues_forgotten` (issues past `processors.max_issues`), `issue_releases_forgotten`
//!   (per-release counts past [`crate::grouping::MAX_ISSUE_RELEASES`]).
//! - `trellis_processor_checkpoints_total{stage}`: checkpoints saved.
//! - `trellis_processor_checkpoint_bytes_total{stage, bytes}`: bytes of state checkpointed
//!   (`state`) and bytes of it written to disk (`written`: the chunks that changed).
//! - `trellis_processor_faults_total{stage, fault}`: what went wrong and was waited out, so an
//!   operator sees a stage stalled by its surroundings. Faults: `checkpoint_failed` (a checkpoint
//!   could not be written or synced, a full or failing disk: nothing was committed past the last
//!   good one, and the next is tried at the next interval), `publish_retried` (the bus refused
//!   outputs for a while, for example the embedded log on a full disk, or a broker down),
//!   `poll_retried` (reading the input failed for a while).
//! - `trellis_processor_lag{stage}`: input records not yet read (the end of each assigned input
//!   partition minus the stage's position in it), measured at each checkpoint interval, on the
//!   embedded log (on Kafka the broker's tools show a consumer group's lag).
//! - `trellis_processor_offset_gaps_total{stage}`: times a partition's input skipped offsets that
//!   no checkpoint covered (records removed by retention before they were processed).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The processors' metrics.
#[derive(Default)]
pub struct ProcessorMetrics {
    records: Family<Labels, Counter>,
    checkpoints: Family<Labels, Counter>,
    gaps: Family<Labels, Counter>,
    faults: Family<Labels, Counter>,
    checkpoint_bytes: Family<Labels, Counter>,
    lag: Family<Labels, Gauge>,
}

impl ProcessorMetrics {
    /// Registers every processor metric in `registry`, under `trellis_processor`: the one list
    /// of them, for [`ProcessorMetrics::encode`] and for the one `/metrics` of `trellis run`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("trellis_processor");
        registry.register(
            "records",
            "What became of input records",
            self.records.clone(),
        );
        registry.register("checkpoints", "Checkpoints saved", self.checkpoints.clone());
        registry.register(
            "offset_gaps",
            "Input offsets skipped that no checkpoint covered",
            self.gaps.clone(),
        );
        registry.register(
            "faults",
            "Faults of the surroundings a stage waited out",
            self.faults.clone(),
        );
        registry.register(
            "checkpoint_bytes",
            "Bytes of state checkpointed, and of it written",
            self.checkpoint_bytes.clone(),
        );
        registry.register("lag", "Input records not yet processed", self.lag.clone());
    }

    /// Adds `n` to the records counter of `stage` and `outcome`.
    pub fn record(&self, stage: &'static str, outcome: &'static str, n: u64) {
        self.records
            .get_or_create(&vec![
                ("stage", stage.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc_by(n);
    }

    /// Counts a saved checkpoint and its bytes.
    pub fn checkpoint(&self, stage: &'static str, saved: &crate::runtime::Saved) {
        self.checkpoints
            .get_or_create(&vec![("stage", stage.to_string())])
            .inc();
        for (bytes, n) in [
            ("state", saved.state_bytes),
            ("written", saved.written_bytes),
        ] {
            self.checkpoint_bytes
                .get_or_create(&vec![
                    ("stage", stage.to_string()),
                    ("bytes", bytes.to_string()),
                ])
                .inc_by(n);
        }
    }

    /// Counts a fault of `stage`'s surroundings that it waits out.
    pub fn fault(&self, stage: &'static str, fault: &'static str) {
        self.faults
            .get_or_create(&vec![
                ("stage", stage.to_string()),
                ("fault", fault.to_string()),
            ])
            .inc();
    }

    /// Sets how many input records `stage` has not processed yet.
    pub fn set_lag(&self, stage: &'static str, records: u64) {
        self.lag
            .get_or_create(&vec![("stage", stage.to_string())])
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// How many input records `stage` had not processed at its last measurement.
    pub fn lag_value(&self, stage: &'static str) -> u64 {
        let lag = self.lag.get_or_create(&vec![("stage", stage.to_string())]);
        u64::try_from(lag.get()).unwrap_or_default()
    }

    /// Counts an offset gap.
    pub fn gap(&self, stage: &'static str) {
        self.gaps
            .get_or_create(&vec![("stage", stage.to_string())])
            .inc();
    }

    /// The current value of a records counter (for tests and the one-machine summary).
    pub fn records_value(&self, stage: &'static str, outcome: &'static str) -> u64 {
        self.records
            .get_or_create(&vec![
                ("stage", stage.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .get()
    }

    /// Every metric in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        let _ = encode(&mut text, &registry);
        text
    }
}
