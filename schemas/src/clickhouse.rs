//! ClickHouse tables for every table of the registry ([`crate::tables`]), generated from its
//! Arrow schema.
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
//! Every table is a `ReplacingMergeTree` (the event tables ordered by `(project, event_date,
//! event_id)`), so a row replayed after a crash collapses into the first. The DDL runs on
//! ClickHouse 18.16 (the oldest server trellis supports) and on current releases.

use std::fmt;

use arrow_schema::{DataType, Field};

use crate::tables::Table;

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

/// One column of a table.
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

/// The columns of a table, in field order.
pub fn columns(table: Table) -> Vec<Column> {
    let mut out = Vec::new();
    for field in table.schema().fields() {
        flatten(field, "", &mut Vec::new(), &mut out);
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

/// How ClickHouse lays out a table: its materialized date column, whether it is partitioned
/// by the month of that date, and its sort key. Every table is a `ReplacingMergeTree` (on its
/// [`Spec::version`](crate::tables::Spec::version) where it keeps versions), so a replayed row
/// collapses into the first, and `FINAL` gives each versioned thing's current state.
fn layout(table: Table) -> (&'static str, bool, &'static str) {
    match table {
        Table::Event(_) => ("event_date", true, "project, event_date, event_id"),
        // No date partition: a later version of a session may move its start (late events),
        // and ReplacingMergeTree only collapses rows within one partition.
        Table::Sessions => ("started_date", false, "project, session_id"),
        Table::HealthPartials => ("window_date", true, "project, window_start_ms, partial_id"),
        // No date partition, so every version of an issue collapses into one row.
        Table::Issues => ("first_seen_date", false, "project, issue_id"),
        // Likewise for every version of a finding, and of an alert.
        Table::Detections => ("opened_date", false, "project, detection_id"),
        Table::Alerts => ("fired_date", false, "project, alert_id"),
        Table::Audit => ("at_date", true, "project, at_ms, audit_id"),
        Table::Deploys => ("deployed_date", true, "project, deployed_ms, deploy_id"),
        // No date partition, so an outcome forwarded again at another time collapses into one.
        Table::Push => ("at_date", false, "project, outcome_id"),
    }
}

/// The materialized date column of a table: its rows' day, the unit retention removes.
pub fn date_column(table: Table) -> &'static str {
    layout(table).0
}

/// Whether a table is partitioned by the month of its date column (`toYYYYMM`), so that a
/// month can be dropped at once.
pub fn monthly(table: Table) -> bool {
    layout(table).1
}

/// The `CREATE TABLE` statement of a table in `database`.
pub fn create_table(database: &str, table: Table) -> String {
    let spec = table.spec();
    let mut ddl = format!("CREATE TABLE IF NOT EXISTS {database}.{table}\n(\n");
    for column in columns(table) {
        ddl.push_str(&format!("    `{}` {},\n", column.name, column.column_type));
    }
    let (date, monthly, order) = layout(table);
    // The event tables inline `common`, so their time column has no prefix.
    let time = spec.time.trim_start_matches("common.");
    ddl.push_str(&format!(
        "    `{date}` Date MATERIALIZED toDate(toDateTime(intDiv({time}, 1000)))\n"
    ));
    ddl.push_str(&format!(
        ")\nENGINE = ReplacingMergeTree({})\n",
        spec.version.unwrap_or_default()
    ));
    if monthly {
        ddl.push_str(&format!("PARTITION BY toYYYYMM({date})\n"));
    }
    ddl.push_str(&format!("ORDER BY ({order})\n"));
    ddl
}

/// The column names ClickHouse reports for a table (`Nested` columns as `name.field`), with
/// their types, as `system.columns` lists them.
pub fn physical_columns(table: Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for column in columns(table) {
        match &column.column_type {
            ColumnType::Nested(cols) => {
                for (name, t) in cols {
                    out.push((format!("{}.{name}", column.name), format!("Array({t})")));
                }
            }
            t => out.push((column.name.clone(), t.to_string())),
        }
    }
    out.push((layout(table).0.into(), "Date".into()));
    out
}
