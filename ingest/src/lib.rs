//! The trellis HTTP ingest.
//!
//! SDKs POST here in three dialects: trellis's native batches ([`native`]), Sentry envelopes
//! ([`sentry`]) and PostHog batches ([`posthog`]). Each request is authenticated by its project
//! key, decompressed within limits, parsed into events, normalized ([`normalize`]: server time,
//! clock drift, IP policy, PII scrubbing) and published to `events.raw` as Avro. Ingest answers
//! 200 only once the bus has acknowledged every accepted event of the request; if it cannot, it
//! answers 503 with `Retry-After`. PostHog SDKs and native clients send the request again (event
//! ids make the retry idempotent downstream); most Sentry SDKs drop an envelope that got a 5xx
//! and count it in their next client report. Refused events go to the dead-letter topic with
//! their reason.
//!
//! The same server carries the admin API ([`admin`]): authenticated issue commands, published
//! to the issues stage.
//!
//! [`run`] serves on a listener until the shutdown future resolves, then drains in-flight
//! requests, so tests start it on port 0 in-process.
#![warn(missing_docs)]

pub mod accept;
pub mod admin;
mod capped;
pub mod config;
pub mod deploys;
pub mod metrics;
pub mod native;
pub mod normalize;
pub mod posthog;
pub mod push;
pub mod sentry;
mod server;
pub mod time;
pub mod trim;

pub use config::IngestConfig;
pub use server::{AppState, MetricsSource, OPENAPI, router, run, state, state_with};
