//! ClickHouse tables for each kind, generated from the Arrow schema.
//!
//! Analysts query flat columns, so the mapping flattens the model:
//! - the `common` record contributes its fields with no prefix (`event_id`, `project`, ...);
//! - any other record contributes its fields prefixed with its name (`release_app_version`);
//! - a list of scalars becomes `Array(T)`;
//! - a list of flat records becomes `Nested(...)`: parallel arrays such as `tags.key`, `tags.value`;
//! - a list of records that themselves hold lists or records (an exception chain with its frames,
//!   spans) becomes a `String` holding the list as JSON text, since `Nested` cannot nest;
//! - `bool` becomes `UInt8` and nullable scalars `Nullable(T)`.
//!
//! Every table is a `ReplacingMergeTree` ordered by `(project, event_date, event_id)`, so a row
//! replayed after a crash collapses into the first. The DDL runs on ClickHouse 18.16 (the oldest
//! server trellis supports) and on current releases.

use std::fmt;

use arrow_schema::{DataType, Field};

use crate::model::Kind;

/// A ClickHouse column type, as far as the model needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// `String`.
    String,
    /// `Int64`.
    Int64,
    /// `Int32`.
    Int32,
    /// `Float64`.
    Float64,
    /// `UInt8` (booleans: 0 or 1).
    UInt8,
    /// `Nullable(T)`.
    Nullable(Box<ColumnType>),
    /// `Array(T)`.
    Array(Box<ColumnType>),
    /// `Nested(name T, ...)`.
    Nested(Vec<(String, ColumnType)>),
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::String => f.write_str("String"),
            ColumnType::Int64 => f.write_str("Int64"),
            ColumnType::Int32 => f.write_str("Int32"),
            ColumnType::Float64 => f.write_str("Float64"),
            ColumnType::UInt8 => f.write_str("UInt8"),
            ColumnType::Nullable(t) => write!(f, "Nullable({t})"),
            ColumnType::Array(t) => write!(f, "Array({t})"),
            ColumnType::Nested(cols) => {
                f.write_str("Nested(")?;
                for (i, (name, t)) in cols.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name} {t}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// How a column's values are taken from the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// The value as it is.
    Direct,
    /// The list, serialized as JSON text.
    Json,
}

/// One column of a kind's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Column type.
    pub column_type: ColumnType,
    /// The path of the field in the event (`["common", "release", "app_version"]`).
    pub path: Vec<String>,
    /// How values are encoded.
    pub encoding: Encoding,
}

/// The record whose fields are inlined without a prefix.
pub const INLINED_RECORD: &str = "common";

/// The columns of a kind's table, in field order.
pub fn columns(kind: Kind) -> Vec<Column> {
    let mut out = Vec::new();
    for field in crate::arrow::fields(kind) {
        flatten(&field, "", &mut Vec::new(), &mut out);
    }
    out
}

fn flatten(field: &Field, prefix: &str, path: &mut Vec<String>, out: &mut Vec<Column>) {
    path.push(field.name().clone());
    match field.data_type() {
        DataType::Struct(children) => {
            let child_prefix = if field.name() == INLINED_RECORD {
                prefix.to_string()
            } else {
                format!("{prefix}{}_", field.name())
            };
            for child in children {
                flatten(child, &child_prefix, path, out);
            }
        }
        DataType::List(item) => {
            let (column_type, encoding) = list_type(item);
            out.push(Column {
                name: format!("{prefix}{}", field.name()),
                column_type,
                path: path.clone(),
                encoding,
            });
        }
        other => out.push(Column {
            name: format!("{prefix}{}", field.name()),
            column_type: scalar(other, field.is_nullable()),
            path: path.clone(),
            encoding: Encoding::Direct,
        }),
    }
    path.pop();
}

fn list_type(item: &Field) -> (ColumnType, Encoding) {
    match item.data_type() {
        DataType::Struct(children) => {
            let flat = children
                .iter()
                .all(|c| !matches!(c.data_type(), DataType::Struct(_) | DataType::List(_)));
            if flat {
                let cols = children
                    .iter()
                    .map(|c| (c.name().clone(), scalar(c.data_type(), c.is_nullable())))
                    .collect();
                (ColumnType::Nested(cols), Encoding::Direct)
            } else {
                (ColumnType::String, Encoding::Json)
            }
        }
        DataType::List(_) => (ColumnType::String, Encoding::Json),
        other => (
            ColumnType::Array(Box::new(scalar(other, item.is_nullable()))),
            Encoding::Direct,
        ),
    }
}

fn scalar(data_type: &DataType, nullable: bool) -> ColumnType {
    let base = match data_type {
        DataType::Utf8 | DataType::LargeUtf8 => ColumnType::String,
        // Unit enums (levels, statuses) are dictionary-encoded strings in Arrow.
        DataType::Dictionary(_, value) if **value == DataType::Utf8 => ColumnType::String,
        DataType::Int64 => ColumnType::Int64,
        DataType::Int32 => ColumnType::Int32,
        DataType::Float64 => ColumnType::Float64,
        DataType::Boolean => ColumnType::UInt8,
        other => panic!("the model uses an Arrow type with no ClickHouse mapping: {other}"),
    };
    if nullable {
        ColumnType::Nullable(Box::new(base))
    } else {
        base
    }
}

/// The `CREATE TABLE` statement of a kind's table in `database`.
pub fn create_table(database: &str, kind: Kind) -> String {
    let mut ddl = format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}\n(\n",
        table = kind.table()
    );
    for column in columns(kind) {
        ddl.push_str(&format!("    `{}` {},\n", column.name, column.column_type));
    }
    ddl.push_str(
        "    `event_date` Date MATERIALIZED toDate(toDateTime(intDiv(timestamp_ms, 1000)))\n",
    );
    ddl.push_str(
        ")\nENGINE = ReplacingMergeTree()\nPARTITION BY toYYYYMM(event_date)\n\
         ORDER BY (project, event_date, event_id)\n",
    );
    ddl
}

/// The column names ClickHouse reports for a kind's table (`Nested` columns as `name.field`),
/// with their types, as `system.columns` lists them.
pub fn physical_columns(kind: Kind) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for column in columns(kind) {
        match &column.column_type {
            ColumnType::Nested(cols) => {
                for (name, t) in cols {
                    out.push((format!("{}.{name}", column.name), format!("Array({t})")));
                }
            }
            t => out.push((column.name.clone(), t.to_string())),
        }
    }
    out.push(("event_date".into(), "Date".into()));
    out
}

/// The tables of the records the processors derive (see [`crate::records`]), beside the event
/// tables. They follow the same flattening rules as the event tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordTable {
    /// [`crate::records::SessionRecord`]s from the `sessions` topic:
    /// `ReplacingMergeTree(version)` ordered by `(project, session_id)`, so the latest version of
    /// a session replaces the earlier ones and a replayed record collapses.
    Sessions,
    /// [`crate::records::HealthPartial`]s from the `aggregates` topic: `ReplacingMergeTree`
    /// ordered by `(project, window_start_ms, partial_id)`; a window's answer is the merge of its
    /// partials (counts add, user hashes unite).
    HealthPartials,
    /// [`crate::records::IssueRecord`]s from the `issues` topic: `ReplacingMergeTree(version)`
    /// ordered by `(project, issue_id)`, so `FINAL` gives each issue's current state.
    Issues,
    /// [`crate::records::Detection`]s from the `detections` topic:
    /// `ReplacingMergeTree(version)` ordered by `(project, detection_id)`, so `FINAL` gives each
    /// finding's current status.
    Detections,
    /// [`crate::records::Alert`]s from the `alerts` topic: `ReplacingMergeTree(version)`
    /// ordered by `(project, alert_id)`, so `FINAL` gives each alert's current state.
    Alerts,
    /// [`crate::records::AuditEntry`]s from the `audit` topic: `ReplacingMergeTree` ordered by
    /// `(project, at_ms, audit_id)`, so a replayed entry collapses.
    Audit,
}

impl RecordTable {
    /// Every record table.
    pub const ALL: [RecordTable; 6] = [
        RecordTable::Sessions,
        RecordTable::HealthPartials,
        RecordTable::Issues,
        RecordTable::Detections,
        RecordTable::Alerts,
        RecordTable::Audit,
    ];

    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            RecordTable::Sessions => "sessions",
            RecordTable::HealthPartials => "health_partials",
            RecordTable::Issues => "issues",
            RecordTable::Detections => "detections",
            RecordTable::Alerts => "alerts",
            RecordTable::Audit => "audit",
        }
    }

    /// The materialized date column and the engine clause.
    fn tail(self) -> (&'static str, &'static str) {
        match self {
            RecordTable::Sessions => (
                "    `started_date` Date MATERIALIZED toDate(toDateTime(intDiv(started_ms, 1000)))\n",
                // No date partition: a later version of a session may move its start (late
                // events), and ReplacingMergeTree only collapses rows within one partition.
                ")\nENGINE = ReplacingMergeTree(version)\nORDER BY (project, session_id)\n",
            ),
            RecordTable::HealthPartials => (
                "    `window_date` Date MATERIALIZED toDate(toDateTime(intDiv(window_start_ms, 1000)))\n",
                ")\nENGINE = ReplacingMergeTree()\nPARTITION BY toYYYYMM(window_date)\n\
                 ORDER BY (project, window_start_ms, partial_id)\n",
            ),
            RecordTable::Issues => (
                "    `first_seen_date` Date MATERIALIZED toDate(toDateTime(intDiv(first_seen_ms, 1000)))\n",
                // No date partition, so every version of an issue collapses into one row.
                ")\nENGINE = ReplacingMergeTree(version)\nORDER BY (project, issue_id)\n",
            ),
            RecordTable::Detections => (
                "    `opened_date` Date MATERIALIZED toDate(toDateTime(intDiv(opened_ms, 1000)))\n",
                // No date partition, so every version of a finding collapses into one row.
                ")\nENGINE = ReplacingMergeTree(version)\nORDER BY (project, detection_id)\n",
            ),
            RecordTable::Alerts => (
                "    `fired_date` Date MATERIALIZED toDate(toDateTime(intDiv(fired_ms, 1000)))\n",
                // No date partition, so every version of an alert collapses into one row.
                ")\nENGINE = ReplacingMergeTree(version)\nORDER BY (project, alert_id)\n",
            ),
            RecordTable::Audit => (
                "    `at_date` Date MATERIALIZED toDate(toDateTime(intDiv(at_ms, 1000)))\n",
                ")\nENGINE = ReplacingMergeTree()\nPARTITION BY toYYYYMM(at_date)\n\
                 ORDER BY (project, at_ms, audit_id)\n",
            ),
        }
    }
}

fn record_fields(table: RecordTable) -> Vec<arrow_schema::FieldRef> {
    use serde_arrow::schema::{SchemaLike, TracingOptions};
    let options = TracingOptions::default()
        .enums_without_data_as_strings(true)
        .strings_as_large_utf8(false)
        .sequence_as_large_list(false);
    let traced = match table {
        RecordTable::Sessions => {
            Vec::<arrow_schema::FieldRef>::from_type::<crate::records::SessionRecord>(options)
        }
        RecordTable::HealthPartials => {
            Vec::<arrow_schema::FieldRef>::from_type::<crate::records::HealthPartial>(options)
        }
        RecordTable::Issues => {
            Vec::<arrow_schema::FieldRef>::from_type::<crate::records::IssueRecord>(options)
        }
        RecordTable::Detections => {
            Vec::<arrow_schema::FieldRef>::from_type::<crate::records::Detection>(options)
        }
        RecordTable::Alerts => {
            Vec::<arrow_schema::FieldRef>::from_type::<crate::records::Alert>(options)
        }
        RecordTable::Audit => {
            Vec::<arrow_schema::FieldRef>::from_type::<crate::records::AuditEntry>(options)
        }
    };
    traced.unwrap_or_else(|e| panic!("{} cannot be traced to Arrow: {e}", table.table()))
}

/// The columns of a record table, in field order.
pub fn record_columns(table: RecordTable) -> Vec<Column> {
    let mut out = Vec::new();
    for field in record_fields(table) {
        flatten(&field, "", &mut Vec::new(), &mut out);
    }
    out
}

/// The `CREATE TABLE` statement of a record table in `database`.
pub fn create_record_table(database: &str, table: RecordTable) -> String {
    let mut ddl = format!(
        "CREATE TABLE IF NOT EXISTS {database}.{name}\n(\n",
        name = table.table()
    );
    for column in record_columns(table) {
        ddl.push_str(&format!("    `{}` {},\n", column.name, column.column_type));
    }
    let (date, engine) = table.tail();
    ddl.push_str(date);
    ddl.push_str(engine);
    ddl
}

/// The column names and types `system.columns` lists for a record table.
pub fn record_physical_columns(table: RecordTable) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for column in record_columns(table) {
        match &column.column_type {
            ColumnType::Nested(cols) => {
                for (name, t) in cols {
                    out.push((format!("{}.{name}", column.name), format!("Array({t})")));
                }
            }
            t => out.push((column.name.clone(), t.to_string())),
        }
    }
    out.push(match table {
        RecordTable::Sessions => ("started_date".into(), "Date".into()),
        RecordTable::HealthPartials => ("window_date".into(), "Date".into()),
        RecordTable::Issues => ("first_seen_date".into(), "Date".into()),
        RecordTable::Detections => ("opened_date".into(), "Date".into()),
        RecordTable::Alerts => ("fired_date".into(), "Date".into()),
        RecordTable::Audit => ("at_date".into(), "Date".into()),
    });
    out
}
