//! The trellis HTTP ingest.
//!
//! App SDKs POST batches here; ingest answers only once the bus has acknowledged every event it
//! accepted. [`run`] serves on a listener until the shutdown future resolves, then drains
//! in-flight requests, so tests start it on port 0 in-process.
#![warn(missing_docs)]

pub mod config;
mod server;

pub use config::IngestConfig;
pub use server::{State, router, run};
