//! The trellis event model and the schemas that follow from it.
//!
//! Everything trellis moves is one of the event kinds in [`model`]. From those Rust types come:
//! - the Avro schemas of bus payloads ([`avro`], committed as `schemas/avro/*.avsc`), with the
//!   codec every producer and consumer uses;
//! - the Arrow schemas of the Parquet tables ([`arrow`]);
//! - the ClickHouse DDL ([`clickhouse`]);
//! - the table registry ([`tables`]): every stored table, its topic, type, identity and time.
//!
//! This crate imports no other trellis crate; all of them import it.
#![warn(missing_docs)]

pub mod arrow;
pub mod avro;
pub mod clickhouse;
pub mod model;
pub mod records;
pub mod sample;
pub mod tables;

pub use model::*;

/// The bus topics that connect the stages. Each stage reads and writes only these names.
pub mod topics {
    /// Events as ingest accepted them, keyed by project and device.
    pub const RAW: &str = "events.raw";
    /// Deduplicated, enriched events, from the processors.
    pub const EVENTS: &str = "events";
    /// Session records, from the processors.
    pub const SESSIONS: &str = "sessions";
    /// Issue records (grouped errors), from the processors.
    pub const ISSUES: &str = "issues";
    /// Windowed aggregates (release health, percentiles), from the processors.
    pub const AGGREGATES: &str = "aggregates";
    /// Findings of the `detect` stage (regressions), keyed by project.
    pub const DETECTIONS: &str = "detections";
    /// Alert decisions (the outbox the deliverer sends from), keyed by project.
    pub const ALERTS: &str = "alerts";
    /// The audit trail: guard decisions, overrides, on-call changes, keyed by project.
    pub const AUDIT: &str = "audit";
    /// Deploy markers (builds and OTA updates published, promoted, rolled back), from ingest,
    /// keyed by project.
    pub const DEPLOYS: &str = "deploys";
    /// Push outcomes (Expo's tickets and receipts, as app servers forward them), from ingest,
    /// keyed by project.
    pub const PUSH: &str = "push";
    /// Dead letters: what a stage could not use, with the reason.
    pub const DLQ: &str = "dlq";
    /// Error events and issue commands keyed by project and issue id, from the processors (and
    /// the admin API) to the issues stage, so one instance owns each issue.
    pub const GROUPED: &str = "errors.grouped";
    /// Every topic trellis creates at start-up.
    pub const ALL: [&str; 12] = [
        RAW, EVENTS, SESSIONS, ISSUES, AGGREGATES, DETECTIONS, ALERTS, AUDIT, DEPLOYS, PUSH, DLQ,
        GROUPED,
    ];

    /// The topic names of one deployment: the names above behind an optional prefix, so that
    /// several deployments (or test runs) can share one Kafka cluster.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Names {
        /// The prefix, for example `staging.`; empty by default.
        pub prefix: String,
        /// [`RAW`] with the prefix.
        pub raw: String,
        /// [`EVENTS`] with the prefix.
        pub events: String,
        /// [`SESSIONS`] with the prefix.
        pub sessions: String,
        /// [`ISSUES`] with the prefix.
        pub issues: String,
        /// [`AGGREGATES`] with the prefix.
        pub aggregates: String,
        /// [`DETECTIONS`] with the prefix.
        pub detections: String,
        /// [`ALERTS`] with the prefix.
        pub alerts: String,
        /// [`AUDIT`] with the prefix.
        pub audit: String,
        /// [`DEPLOYS`] with the prefix.
        pub deploys: String,
        /// [`PUSH`] with the prefix.
        pub push: String,
        /// [`DLQ`] with the prefix.
        pub dlq: String,
        /// [`GROUPED`] with the prefix.
        pub grouped: String,
    }

    impl Names {
        /// The names behind `prefix`.
        pub fn new(prefix: &str) -> Self {
            let p = |name: &str| format!("{prefix}{name}");
            Names {
                prefix: prefix.to_string(),
                raw: p(RAW),
                events: p(EVENTS),
                sessions: p(SESSIONS),
                issues: p(ISSUES),
                aggregates: p(AGGREGATES),
                detections: p(DETECTIONS),
                alerts: p(ALERTS),
                audit: p(AUDIT),
                deploys: p(DEPLOYS),
                push: p(PUSH),
                dlq: p(DLQ),
                grouped: p(GROUPED),
            }
        }

        /// Every topic, prefixed.
        pub fn all(&self) -> [&str; 12] {
            [
                &self.raw,
                &self.events,
                &self.sessions,
                &self.issues,
                &self.aggregates,
                &self.detections,
                &self.alerts,
                &self.audit,
                &self.deploys,
                &self.push,
                &self.dlq,
                &self.grouped,
            ]
        }
    }

    impl Default for Names {
        fn default() -> Self {
            Names::new("")
        }
    }
}
