//! The one line `trellis run` logs every `status_interval`, so a user sees whether the pipeline
//! keeps up with what ingest accepts: rates since the last line, and how far behind its input
//! each stage is.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the figures come from: the counters `/metrics` serves.
pub struct Sources {
    /// Ingest's state, with its counters.
    pub ingest: trellis_ingest::AppState,
    /// The processor stages' counters.
    pub processors: Arc<trellis_processors::ProcessorMetrics>,
    /// The Parquet sink's counters.
    pub parquet: Arc<trellis_sinks::parquet::ParquetMetrics>,
    /// The processor stages that run, in data-flow order.
    pub stages: Vec<&'static str>,
    /// Whether the bus tells the stages their lag (the embedded log does; on Kafka the
    /// broker's tools show a consumer group's lag).
    pub lags_known: bool,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Totals {
    accepted: u64,
    processed: u64,
    parquet_rows: u64,
}

impl Sources {
    fn totals(&self) -> Totals {
        Totals {
            accepted: self.ingest.metrics.accepted_total(),
            processed: self
                .processors
                .records_value(trellis_processors::pipeline::STAGE, "processed"),
            parquet_rows: self.parquet.rows_total(),
        }
    }

    /// `process:0 issues:12 … parquet:0`: each stage's lag, in records.
    fn lags(&self) -> (String, u64) {
        if !self.lags_known {
            return ("unknown on Kafka".into(), 0);
        }
        let mut text = String::new();
        let mut most = 0;
        let lags = (self.stages.iter())
            .map(|&stage| (stage, self.processors.lag_value(stage)))
            .chain([("parquet", self.parquet.lag())]);
        for (stage, lag) in lags {
            let _ = write!(
                text,
                "{}{stage}:{lag}",
                if text.is_empty() { "" } else { " " }
            );
            most = most.max(lag);
        }
        (text, most)
    }
}

/// Logs the status line every `every` until `shutdown` resolves; a line only when something
/// moved or some stage is behind, so an idle pipeline stays quiet.
pub async fn report(sources: Sources, every: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (sources.totals(), Instant::now());
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let now = (sources.totals(), Instant::now());
        let (lag, most) = sources.lags();
        if now.0 != last.0 || most > 0 {
            let seconds = now.1.duration_since(last.1).as_secs_f64().max(1e-3);
            let rate =
                |now: u64, then: u64| (now.saturating_sub(then) as f64 / seconds).round() as u64;
            tracing::info!(
                accepted_per_s = rate(now.0.accepted, last.0.accepted),
                processed_per_s = rate(now.0.processed, last.0.processed),
                parquet_rows_per_s = rate(now.0.parquet_rows, last.0.parquet_rows),
                lag = %lag,
                "Status."
            );
        }
        last = now;
    }
}
