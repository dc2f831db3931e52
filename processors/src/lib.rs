//! trellis stream processors: read `events.raw` by partition, write deduplicated events,
//! sessions, issues and windowed aggregates.
//!
//! - [`runtime`]: the framework. A pure [`runtime::Processor`] per input partition, driven by
//!   [`runtime::run`], a consumer loop that publishes outputs, checkpoints state with the input
//!   offsets it reflects, and restores it on restart or when a partition moves.
//! - [`pipeline`]: the `process` stage: dedupe, sessions and release health.
//! - [`grouping`]: error fingerprints and issues.
//! - [`detect`]: the `detect` stage: release regressions, judged by a sequential test.
//! - [`metrics`]: counters exported on `/metrics`.
#![warn(missing_docs)]

pub mod detect;
pub mod grouping;
pub mod issues;
pub mod metrics;
pub mod pipeline;
pub mod runtime;
pub mod sim;

pub use metrics::ProcessorMetrics;
pub use pipeline::{Pipeline, PipelineFactory, ProcessorConfig};
