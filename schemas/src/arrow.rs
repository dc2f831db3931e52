//! Arrow schemas (for Parquet and DataFusion) and conversions between events and record batches.
//!
//! The Arrow schema of each kind is traced from its Rust type by `serde_arrow`, so it cannot drift
//! from the model; `tests/agreement.rs` checks it against the Avro schema field by field.
//! Batches are built by `serde_arrow` too, except for the busiest tables (`events`, `errors`,
//! `perf`), whose columns are appended with Arrow's builders directly ([`analytics_batch`] and
//! its siblings), tested against `serde_arrow`'s batches of the same events.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{FieldRef, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_arrow::schema::{SchemaLike, TracingOptions};

use crate::model::{
    AnalyticsEvent, ErrorEvent, Kind, Notification, PerformanceSample, SessionUpdate, Transaction,
};

mod columns;

/// Why events could not be converted to or from Arrow.
#[derive(Debug, thiserror::Error)]
#[error("arrow conversion for {kind} failed: {source}")]
pub struct ArrowError {
    /// The kind being converted.
    pub kind: Kind,
    /// What serde_arrow reported.
    #[source]
    pub source: serde_arrow::Error,
}

fn options() -> TracingOptions {
    TracingOptions::default()
        .enums_without_data_as_strings(true)
        .strings_as_large_utf8(false)
        .sequence_as_large_list(false)
}

fn trace<T: DeserializeOwned>(kind: Kind) -> Vec<FieldRef> {
    Vec::<FieldRef>::from_type::<T>(options())
        .unwrap_or_else(|e| panic!("the {kind} type cannot be traced to Arrow: {e}"))
}

/// The Arrow fields of a kind's table.
pub fn fields(kind: Kind) -> Vec<FieldRef> {
    match kind {
        Kind::Analytics => trace::<AnalyticsEvent>(kind),
        Kind::Error => trace::<ErrorEvent>(kind),
        Kind::Performance => trace::<PerformanceSample>(kind),
        Kind::Transaction => trace::<Transaction>(kind),
        Kind::Session => trace::<SessionUpdate>(kind),
        Kind::Notification => trace::<Notification>(kind),
    }
}

/// The Arrow schema of a kind's table.
pub fn schema(kind: Kind) -> Arc<Schema> {
    Arc::new(Schema::new(fields(kind)))
}

/// Converts events of one kind into a record batch with [`fields`] as its schema.
pub fn to_batch<T: Serialize>(kind: Kind, events: &[T]) -> Result<RecordBatch, ArrowError> {
    serde_arrow::to_record_batch(&fields(kind), &events)
        .map_err(|source| ArrowError { kind, source })
}

fn built(
    kind: Kind,
    batch: Result<RecordBatch, arrow_schema::ArrowError>,
) -> Result<RecordBatch, ArrowError> {
    batch.map_err(|e| ArrowError {
        kind,
        source: <serde_arrow::Error as serde::ser::Error>::custom(e),
    })
}

/// [`to_batch`] for analytics events, built with Arrow's builders directly: several times
/// faster (`benchmarks/README.md`, Parquet encoding).
pub fn analytics_batch(events: &[AnalyticsEvent]) -> Result<RecordBatch, ArrowError> {
    let kind = Kind::Analytics;
    built(kind, columns::analytics(&fields(kind), events))
}

/// [`to_batch`] for performance samples, built with Arrow's builders directly.
pub fn performance_batch(samples: &[PerformanceSample]) -> Result<RecordBatch, ArrowError> {
    let kind = Kind::Performance;
    built(kind, columns::performance(&fields(kind), samples))
}

/// [`to_batch`] for error events, built with Arrow's builders directly.
pub fn error_batch(events: &[ErrorEvent]) -> Result<RecordBatch, ArrowError> {
    let kind = Kind::Error;
    built(kind, columns::errors(&fields(kind), events))
}

/// Converts a record batch of one kind back into events.
pub fn from_batch<T: DeserializeOwned>(
    kind: Kind,
    batch: &RecordBatch,
) -> Result<Vec<T>, ArrowError> {
    serde_arrow::from_record_batch(batch).map_err(|source| ArrowError { kind, source })
}

/// Why derived records (sessions, health partials) could not be converted to or from Arrow.
#[derive(Debug, thiserror::Error)]
#[error("arrow conversion of {record} records failed: {source}")]
pub struct RecordArrowError {
    /// The record type's name (`session_record`, `health_partial`).
    pub record: &'static str,
    /// What serde_arrow reported.
    #[source]
    pub source: serde_arrow::Error,
}

/// The Arrow fields of a derived record type's table, traced like the event kinds'.
pub fn record_fields<T: crate::records::Record>() -> Vec<FieldRef> {
    Vec::<FieldRef>::from_type::<T>(options())
        .unwrap_or_else(|e| panic!("the {} type cannot be traced to Arrow: {e}", T::NAME))
}

/// The Arrow schema of a derived record type's table.
pub fn record_schema<T: crate::records::Record>() -> Arc<Schema> {
    Arc::new(Schema::new(record_fields::<T>()))
}

/// Converts derived records into a record batch with [`record_fields`] as its schema.
pub fn records_to_batch<T: crate::records::Record>(
    records: &[T],
) -> Result<RecordBatch, RecordArrowError> {
    serde_arrow::to_record_batch(&record_fields::<T>(), &records).map_err(|source| {
        RecordArrowError {
            record: T::NAME,
            source,
        }
    })
}

/// Converts a record batch back into derived records.
pub fn records_from_batch<T: crate::records::Record>(
    batch: &RecordBatch,
) -> Result<Vec<T>, RecordArrowError> {
    serde_arrow::from_record_batch(batch).map_err(|source| RecordArrowError {
        record: T::NAME,
        source,
    })
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use crate::records::{HealthPartial, KindCount, SessionRecord};

    #[test]
    fn derived_records_round_trip_through_arrow() {
        let sessions = vec![SessionRecord {
            session_id: "s1".into(),
            project: "p".into(),
            screens: vec!["Home".into()],
            started_ms: 1_700_000_000_000,
            version: 2,
            ..Default::default()
        }];
        let batch = records_to_batch(&sessions).unwrap();
        assert_eq!(batch.schema(), record_schema::<SessionRecord>());
        assert_eq!(
            records_from_batch::<SessionRecord>(&batch).unwrap(),
            sessions
        );
        let partials = vec![HealthPartial {
            partial_id: "x".into(),
            users: vec![-1, 7],
            events: vec![KindCount {
                kind: "error".into(),
                count: 2,
            }],
            ..Default::default()
        }];
        let batch = records_to_batch(&partials).unwrap();
        assert_eq!(
            records_from_batch::<HealthPartial>(&batch).unwrap(),
            partials
        );
    }
}
