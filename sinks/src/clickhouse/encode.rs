//! Bus records to ClickHouse `RowBinary` rows: pure, no I/O.
//!
//! Each table's insert plan is derived from the schema crate's column mapping
//! ([`trellis_schemas::clickhouse`]), so a row can only hold the columns the DDL created, in the
//! order the `INSERT` names them. A record is decoded (Avro) into its model type, which is walked
//! with serde straight into the row ([`super::rowbinary`]; the older path through a serde tree,
//! looking each column up by its path, remains as the reference it is tested against), in
//! `RowBinary`:
//! little-endian numbers, strings and arrays prefixed with a LEB128 length, `Nullable` with a
//! null byte, `Nested` as one array per sub-column, deep lists as JSON text.

use std::sync::OnceLock;

use serde_json::Value;
use trellis_schemas::clickhouse::{self as ddl, Column, ColumnType, Encoding};
use trellis_schemas::records::{self, GuardCommand};
use trellis_schemas::tables::{RowType, Stored, Table};
use trellis_schemas::topics::Names;
use trellis_schemas::{Event, avro};

/// Why a record cannot become a row. Never retryable: the record goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The payload is not a record of its topic's type.
    #[error("payload does not decode: {0}")]
    Decode(#[from] avro::CodecError),
    /// A value does not fit its column (for example a float that is not a number).
    #[error("column {column}: {reason}")]
    Value {
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// The record came from a topic the sink does not write.
    #[error("topic {0:?} is not written to ClickHouse")]
    Topic(String),
}

/// The insert plan of `table`.
pub fn plan(table: Table) -> &'static Plan {
    static PLANS: OnceLock<Vec<(Table, Plan)>> = OnceLock::new();
    let plans = PLANS.get_or_init(|| Table::all().map(|t| (t, Plan::new(t))).collect());
    plans
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, p)| p)
        .expect("every table has a plan")
}

/// How to write one table's rows.
#[derive(Debug)]
pub struct Plan {
    columns: Vec<Column>,
    insert_columns: String,
}

impl Plan {
    fn new(table: Table) -> Plan {
        let columns = ddl::columns(table);
        let mut names = Vec::new();
        for c in &columns {
            match &c.column_type {
                ColumnType::Nested(subs) => {
                    names.extend(subs.iter().map(|(s, _)| format!("`{}.{s}`", c.name)))
                }
                _ => names.push(format!("`{}`", c.name)),
            }
        }
        Plan {
            columns,
            insert_columns: names.join(", "),
        }
    }

    /// The `INSERT` statement for this table in `database`.
    pub fn insert_sql(&self, database: &str, table: &str) -> String {
        format!(
            "INSERT INTO {database}.{table} ({}) FORMAT RowBinary",
            self.insert_columns
        )
    }

    /// Appends the row of a model value (an event or record type) to `out`, walking it with
    /// serde ([`super::rowbinary`]). On an error `out` is left as it was.
    pub fn encode_model<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let start = out.len();
        super::rowbinary::write_row(&self.columns, value, out).map_err(|e| {
            out.truncate(start);
            EncodeError::Value {
                column: e.column,
                reason: e.reason,
            }
        })
    }

    /// Appends one row, taken from the serde tree of a model value, to `out`. On an error `out`
    /// is left as it was. The same bytes as [`Plan::encode_model`], slower: the reference it is
    /// tested against.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self
            .columns
            .iter()
            .try_for_each(|c| encode_column(c, value, out));
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> &'a Value {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .unwrap_or(&Value::Null)
}

fn encode_column(column: &Column, root: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    write_value_column(column, lookup(root, &column.path), out).map_err(|reason| {
        EncodeError::Value {
            column: column.name.clone(),
            reason,
        }
    })
}

/// Writes `column` from its value in the serde tree.
pub(super) fn write_value_column(
    column: &Column,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match (&column.encoding, &column.column_type) {
        (Encoding::Json, _) => {
            let text = match value {
                Value::Null => "[]".to_string(),
                v => serde_json::to_string(v).map_err(|e| e.to_string())?,
            };
            write_str(&text, out);
            Ok(())
        }
        (Encoding::Direct, ColumnType::Nested(subs)) => {
            let items = array(value)?;
            for (name, t) in subs {
                write_len(items.len(), out);
                for item in items {
                    write_typed(t, item.get(name).unwrap_or(&Value::Null), out)
                        .map_err(|r| format!("{name}: {r}"))?;
                }
            }
            Ok(())
        }
        (Encoding::Direct, t) => write_typed(t, value, out),
    }
}

fn array(value: &Value) -> Result<&[Value], String> {
    match value {
        Value::Null => Ok(&[]),
        Value::Array(items) => Ok(items),
        other => Err(format!("expected a list, got {other}")),
    }
}

fn write_typed(t: &ColumnType, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let wrong = || format!("expected {t}, got {value}");
    match t {
        ColumnType::String => write_str(value.as_str().ok_or_else(wrong)?, out),
        ColumnType::Int64 => {
            out.extend_from_slice(&value.as_i64().ok_or_else(wrong)?.to_le_bytes())
        }
        ColumnType::Int32 => {
            let v = value.as_i64().and_then(|v| i32::try_from(v).ok());
            out.extend_from_slice(&v.ok_or_else(wrong)?.to_le_bytes())
        }
        // serde_json turns NaN and infinities into null: they land here and are refused.
        ColumnType::Float64 => {
            out.extend_from_slice(&value.as_f64().ok_or_else(wrong)?.to_le_bytes())
        }
        ColumnType::UInt8 => out.push(match value {
            Value::Bool(b) => u8::from(*b),
            v => v
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(wrong)?,
        }),
        ColumnType::Nullable(inner) => {
            if value.is_null() {
                out.push(1);
            } else {
                out.push(0);
                write_typed(inner, value, out)?;
            }
        }
        ColumnType::Array(inner) => {
            let items = array(value)?;
            write_len(items.len(), out);
            for item in items {
                write_typed(inner, item, out)?;
            }
        }
        ColumnType::Nested(_) => return Err("Nested inside a list".into()),
    }
    Ok(())
}

/// Writes `column` as absent: null, an empty list, or `[]` for JSON text; a column that cannot be
/// null is an error.
pub(super) fn write_null(column: &Column, out: &mut Vec<u8>) -> Result<(), String> {
    write_value_column(column, &Value::Null, out)
}

pub(super) fn write_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(super) fn write_str(s: &str, out: &mut Vec<u8>) {
    write_len(s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
fn tree<T: serde::Serialize>(value: &T) -> Result<Value, EncodeError> {
    serde_json::to_value(value).map_err(|e| EncodeError::Value {
        column: "*".into(),
        reason: e.to_string(),
    })
}

/// Where an encoded row goes: its table, and the time (ms since the epoch) of the date column
/// its table is partitioned by.
pub type Placement = (Table, i64);

/// Decodes a record of a topic the sink reads and appends its row to `out`; returns where it
/// goes, or `None` for the guard's commands on `detections`, which are stored as what they
/// caused (audit entries, alert versions) and have no row of their own.
pub fn encode_record(
    topics: &Names,
    topic: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<Placement>, EncodeError> {
    if topic == topics.detections && records::is::<GuardCommand>(payload) {
        return Ok(None);
    }
    encode_row(topics, topic, payload, out).map(Some)
}

fn encode_row(
    topics: &Names,
    topic: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<Placement, EncodeError> {
    let table =
        Table::of_topic(topics, topic).ok_or_else(|| EncodeError::Topic(topic.to_string()))?;
    table.with_row_type(EncodeRow { payload, out })
}

/// Encodes one payload as a row of its table, whatever the table.
struct EncodeRow<'a> {
    payload: &'a [u8],
    out: &'a mut Vec<u8>,
}

impl RowType for EncodeRow<'_> {
    type Out = Result<Placement, EncodeError>;

    fn event(self, _: trellis_schemas::Kind) -> Self::Out {
        let (payload, out) = (self.payload, self.out);
        let event = avro::decode(payload)?;
        let table = event.kind().table();
        let plan = plan(table);
        match &event {
            Event::Analytics(e) => plan.encode_model(e, out)?,
            Event::Error(e) => plan.encode_model(e, out)?,
            Event::Performance(e) => plan.encode_model(e, out)?,
            Event::Transaction(e) => plan.encode_model(e, out)?,
            Event::Session(e) => plan.encode_model(e, out)?,
            Event::Notification(e) => plan.encode_model(e, out)?,
        }
        Ok((table, event.common().timestamp_ms))
    }

    fn record<T: Stored>(self) -> Self::Out {
        record_row::<T>(self.payload, self.out)
    }
}

fn record_row<T: Stored>(payload: &[u8], out: &mut Vec<u8>) -> Result<Placement, EncodeError> {
    let record = records::decode::<T>(payload)?;
    plan(T::TABLE).encode_model(&record, out)?;
    Ok((T::TABLE, record.time_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_schemas::{Common, Kind, PerformanceSample, Tag};

    #[test]
    fn lengths_are_leb128() {
        let mut out = Vec::new();
        write_len(300, &mut out);
        assert_eq!(out, [0xac, 0x02]);
    }

    #[test]
    fn a_perf_row_is_the_columns_in_order() {
        let sample = PerformanceSample {
            common: Common {
                event_id: "e".into(),
                project: "p".into(),
                timestamp_ms: 5,
                ..Default::default()
            },
            metric: "m".into(),
            value: 1.5,
            unit: "ms".into(),
            screen: None,
            attributes: vec![Tag {
                key: "k".into(),
                value: "v".into(),
            }],
        };
        let event = Event::Performance(sample.clone());
        let names = Names::new("t.");
        let mut out = Vec::new();
        let (target, at_ms) = encode_record(
            &names,
            &names.events,
            &avro::encode(&event).unwrap(),
            &mut out,
        )
        .unwrap()
        .unwrap();
        assert_eq!(target, Table::Event(Kind::Performance));
        assert_eq!(at_ms, 5);
        // Starts with event_id, project, timestamp_ms, sent_at_ms (null) ...
        assert_eq!(&out[..4], &[1, b'e', 1, b'p']);
        assert_eq!(&out[4..12], &5i64.to_le_bytes());
        assert_eq!(out[12], 1);
        // ... and ends with screen (null), attributes.key, attributes.value.
        assert!(out.ends_with(&[1, 1, 1, b'k', 1, 1, b'v']));
        let sql = plan(target).insert_sql("db", target.name());
        assert!(
            sql.ends_with("`attributes.key`, `attributes.value`) FORMAT RowBinary"),
            "{sql}"
        );
    }

    #[test]
    fn bad_payloads_and_values_are_refused_without_a_partial_row() {
        let names = Names::new("");
        let mut out = vec![9];
        assert!(matches!(
            encode_record(&names, &names.events, b"nope", &mut out),
            Err(EncodeError::Decode(_))
        ));
        let plan = plan(Table::Event(Kind::Performance));
        let mut v = tree(&PerformanceSample::default()).unwrap();
        v["value"] = Value::Null; // what NaN becomes
        let e = plan.encode(&v, &mut out).unwrap_err();
        assert!(
            e.to_string().starts_with("column value: expected Float64"),
            "{e}"
        );
        assert_eq!(out, [9]);
        assert!(matches!(
            encode_record(&names, "other", b"", &mut out),
            Err(EncodeError::Topic(_))
        ));
    }

    #[test]
    fn a_guard_command_on_detections_has_no_row_and_is_no_error() {
        let names = Names::new("");
        let command = records::encode(&GuardCommand {
            action: "ignore".into(),
            ..GuardCommand::default()
        })
        .unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            encode_record(&names, &names.detections, &command, &mut out),
            Ok(None)
        ));
        assert!(out.is_empty());
        // Anywhere else it is a payload of the wrong kind.
        assert!(encode_record(&names, &names.alerts, &command, &mut out).is_err());
    }

    fn both_ways<T: serde::Serialize>(target: Table, value: &T) -> Vec<u8> {
        let plan = plan(target);
        let (mut walked, mut from_tree) = (Vec::new(), Vec::new());
        plan.encode_model(value, &mut walked).unwrap();
        plan.encode(&tree(value).unwrap(), &mut from_tree).unwrap();
        assert_eq!(
            walked,
            from_tree,
            "{}: the two encoders disagree",
            target.name()
        );
        walked
    }

    #[test]
    fn walking_the_model_writes_the_bytes_of_the_tree_path() {
        use trellis_processors::pipeline::{Handled, Pipeline, Rules};
        use trellis_processors::sim::{Fleet, FleetSpec};

        let fleet = Fleet::simulate(&FleetSpec {
            devices: 150,
            ..Default::default()
        });
        let mut pipeline = Pipeline::new(Rules::from(&Default::default()), 0);
        let mut events: Vec<Event> = Vec::new();
        for (offset, e) in fleet.wire().enumerate() {
            if let Handled::Passed(e) = pipeline.handle(e.clone(), offset as u64) {
                events.push(*e);
            }
        }
        // Every kind, with the optional parts the fleet leaves out (transactions, spans).
        events.extend((0..60).map(|n| trellis_schemas::sample::event("plants", n % 12, n)));
        let mut kinds = std::collections::BTreeSet::new();
        for e in &events {
            let target = e.kind().table();
            kinds.insert(e.kind());
            match e {
                Event::Analytics(e) => both_ways(target, e),
                Event::Error(e) => both_ways(target, e),
                Event::Performance(e) => both_ways(target, e),
                Event::Transaction(e) => both_ways(target, e),
                Event::Session(e) => both_ways(target, e),
                Event::Notification(e) => both_ways(target, e),
            };
        }
        assert_eq!(kinds.len(), Kind::ALL.len(), "{kinds:?}");
        pipeline.idle(i64::MAX / 4);
        let (sessions, partials) = pipeline.take_closed();
        assert!(!sessions.is_empty() && !partials.is_empty());
        for s in &sessions {
            both_ways(Table::Sessions, s);
        }
        for p in &partials {
            both_ways(Table::HealthPartials, p);
        }
        let errors = events.iter().filter_map(|e| match e {
            Event::Error(e) => Some(e),
            _ => None,
        });
        let issues = trellis_processors::issues::replay(errors);
        assert!(!issues.is_empty());
        for i in &issues {
            both_ways(Table::Issues, i);
        }
    }

    #[test]
    fn a_value_that_does_not_fit_is_refused_by_name_without_a_partial_row() {
        let plan = plan(Table::Event(Kind::Performance));
        let sample = PerformanceSample {
            value: f64::NAN,
            ..Default::default()
        };
        let mut out = vec![9];
        let e = plan.encode_model(&sample, &mut out).unwrap_err();
        assert!(
            e.to_string().starts_with("column value: expected Float64"),
            "{e}"
        );
        assert_eq!(out, [9]);
    }
}
