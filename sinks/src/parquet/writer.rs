//! Encoding: decoded rows of one table into a zstd Parquet stream. Pure of the bus and the clock;
//! the output is any `Write` (a temporary file in the sink, memory in the benchmark).

use std::io::Write;

use arrow_array::RecordBatch;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use trellis_schemas::arrow::{self as arrow_schemas, ArrowError, RecordArrowError};
use trellis_schemas::records::{
    Alert, AuditEntry, Deploy, Detection, HealthPartial, IssueRecord, SessionRecord,
};
use trellis_schemas::{
    AnalyticsEvent, ErrorEvent, Event, Kind, Notification, PerformanceSample, SessionUpdate,
    Transaction,
};

use super::layout::Table;

/// Rows are converted to Arrow and handed to the Parquet writer this many at a time.
pub const BATCH_ROWS: usize = 8192;
/// Most rows in one row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Why rows could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// An event batch did not convert to Arrow.
    #[error(transparent)]
    Event(#[from] ArrowError),
    /// A record batch did not convert to Arrow.
    #[error(transparent)]
    Record(#[from] RecordArrowError),
    /// The Parquet writer failed (including I/O errors of its output).
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// A row was pushed to another table's writer (a bug).
    #[error("a {row} row cannot go to table {table}")]
    WrongTable {
        /// The row's table.
        row: &'static str,
        /// The writer's table.
        table: &'static str,
    },
}

/// One decoded input record, ready for its table.
// Rows live only between decoding and their typed buffer, so boxing events would add an
// allocation per row for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// An event, for its kind's table.
    Event(Event),
    /// A session record, for `sessions`.
    Session(SessionRecord),
    /// A health partial, for `health_partials`.
    HealthPartial(HealthPartial),
    /// A version of an issue, for `issues`.
    Issue(IssueRecord),
    /// A version of a detection, for `detections`.
    Detection(Detection),
    /// A version of an alert, for `alerts`.
    Alert(Alert),
    /// An audit entry, for `audit`.
    Audit(AuditEntry),
    /// A deploy marker, for `deploys`.
    Deploy(Deploy),
}

impl Row {
    /// The table the row belongs to.
    pub fn table(&self) -> Table {
        match self {
            Row::Event(e) => Table::Event(e.kind()),
            Row::Session(_) => Table::Sessions,
            Row::HealthPartial(_) => Table::HealthPartials,
            Row::Issue(_) => Table::Issues,
            Row::Detection(_) => Table::Detections,
            Row::Alert(_) => Table::Alerts,
            Row::Audit(_) => Table::Audit,
            Row::Deploy(_) => Table::Deploys,
        }
    }

    /// The row's project.
    pub fn project(&self) -> &str {
        match self {
            Row::Event(e) => &e.common().project,
            Row::Session(s) => &s.project,
            Row::HealthPartial(a) => &a.project,
            Row::Issue(i) => &i.project,
            Row::Detection(d) => &d.project,
            Row::Alert(a) => &a.project,
            Row::Audit(a) => &a.project,
            Row::Deploy(d) => &d.project,
        }
    }

    /// The time that places the row in a date and hour: event time, session start, window start,
    /// an issue's first event (so every version of an issue lands in the same directory), the
    /// time a detection opened or an alert fired (likewise), an audit entry's or a deploy's time.
    pub fn time_ms(&self) -> i64 {
        match self {
            Row::Event(e) => e.common().timestamp_ms,
            Row::Session(s) => s.started_ms,
            Row::HealthPartial(a) => a.window_start_ms,
            Row::Issue(i) => i.first_seen_ms,
            Row::Detection(d) => d.opened_ms,
            Row::Alert(a) => a.fired_ms,
            Row::Audit(a) => a.at_ms,
            Row::Deploy(d) => d.deployed_ms,
        }
    }
}

/// Rows of one table, waiting to become a record batch.
#[derive(Debug)]
pub enum Rows {
    /// `events`.
    Analytics(Vec<AnalyticsEvent>),
    /// `errors`.
    Error(Vec<ErrorEvent>),
    /// `perf`.
    Performance(Vec<PerformanceSample>),
    /// `transactions`.
    Transaction(Vec<Transaction>),
    /// `session_updates`.
    Session(Vec<SessionUpdate>),
    /// `notifications`.
    Notification(Vec<Notification>),
    /// `sessions`.
    Sessions(Vec<SessionRecord>),
    /// `health_partials`.
    HealthPartials(Vec<HealthPartial>),
    /// `issues`.
    Issues(Vec<IssueRecord>),
    /// `detections`.
    Detections(Vec<Detection>),
    /// `alerts`.
    Alerts(Vec<Alert>),
    /// `audit`.
    Audit(Vec<AuditEntry>),
    /// `deploys`.
    Deploys(Vec<Deploy>),
}

macro_rules! each {
    ($rows:expr, $v:ident => $body:expr) => {
        match $rows {
            Rows::Analytics($v) => $body,
            Rows::Error($v) => $body,
            Rows::Performance($v) => $body,
            Rows::Transaction($v) => $body,
            Rows::Session($v) => $body,
            Rows::Notification($v) => $body,
            Rows::Sessions($v) => $body,
            Rows::HealthPartials($v) => $body,
            Rows::Issues($v) => $body,
            Rows::Detections($v) => $body,
            Rows::Alerts($v) => $body,
            Rows::Audit($v) => $body,
            Rows::Deploys($v) => $body,
        }
    };
}

impl Rows {
    /// An empty buffer for `table`.
    pub fn new(table: Table) -> Rows {
        match table {
            Table::Event(Kind::Analytics) => Rows::Analytics(Vec::new()),
            Table::Event(Kind::Error) => Rows::Error(Vec::new()),
            Table::Event(Kind::Performance) => Rows::Performance(Vec::new()),
            Table::Event(Kind::Transaction) => Rows::Transaction(Vec::new()),
            Table::Event(Kind::Session) => Rows::Session(Vec::new()),
            Table::Event(Kind::Notification) => Rows::Notification(Vec::new()),
            Table::Sessions => Rows::Sessions(Vec::new()),
            Table::HealthPartials => Rows::HealthPartials(Vec::new()),
            Table::Issues => Rows::Issues(Vec::new()),
            Table::Detections => Rows::Detections(Vec::new()),
            Table::Alerts => Rows::Alerts(Vec::new()),
            Table::Audit => Rows::Audit(Vec::new()),
            Table::Deploys => Rows::Deploys(Vec::new()),
        }
    }

    /// The buffer's table.
    pub fn table(&self) -> Table {
        match self {
            Rows::Analytics(_) => Table::Event(Kind::Analytics),
            Rows::Error(_) => Table::Event(Kind::Error),
            Rows::Performance(_) => Table::Event(Kind::Performance),
            Rows::Transaction(_) => Table::Event(Kind::Transaction),
            Rows::Session(_) => Table::Event(Kind::Session),
            Rows::Notification(_) => Table::Event(Kind::Notification),
            Rows::Sessions(_) => Table::Sessions,
            Rows::HealthPartials(_) => Table::HealthPartials,
            Rows::Issues(_) => Table::Issues,
            Rows::Detections(_) => Table::Detections,
            Rows::Alerts(_) => Table::Alerts,
            Rows::Audit(_) => Table::Audit,
            Rows::Deploys(_) => Table::Deploys,
        }
    }

    /// Adds a row of this buffer's table.
    pub fn push(&mut self, row: Row) -> Result<(), EncodeError> {
        match (self, row) {
            (Rows::Analytics(v), Row::Event(Event::Analytics(e))) => v.push(e),
            (Rows::Error(v), Row::Event(Event::Error(e))) => v.push(e),
            (Rows::Performance(v), Row::Event(Event::Performance(e))) => v.push(e),
            (Rows::Transaction(v), Row::Event(Event::Transaction(e))) => v.push(e),
            (Rows::Session(v), Row::Event(Event::Session(e))) => v.push(e),
            (Rows::Notification(v), Row::Event(Event::Notification(e))) => v.push(e),
            (Rows::Sessions(v), Row::Session(s)) => v.push(s),
            (Rows::HealthPartials(v), Row::HealthPartial(a)) => v.push(a),
            (Rows::Issues(v), Row::Issue(i)) => v.push(i),
            (Rows::Detections(v), Row::Detection(d)) => v.push(d),
            (Rows::Alerts(v), Row::Alert(a)) => v.push(a),
            (Rows::Audit(v), Row::Audit(a)) => v.push(a),
            (Rows::Deploys(v), Row::Deploy(d)) => v.push(d),
            (rows, row) => {
                return Err(EncodeError::WrongTable {
                    row: row.table().name(),
                    table: rows.table().name(),
                });
            }
        }
        Ok(())
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    /// Whether no row is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The waiting rows as a record batch of the table's schema; the buffer is emptied.
    pub fn take_batch(&mut self) -> Result<RecordBatch, EncodeError> {
        let batch = match self {
            Rows::Analytics(v) => arrow_schemas::analytics_batch(v)?,
            Rows::Error(v) => arrow_schemas::error_batch(v)?,
            Rows::Performance(v) => arrow_schemas::performance_batch(v)?,
            Rows::Transaction(v) => arrow_schemas::to_batch(Kind::Transaction, v)?,
            Rows::Session(v) => arrow_schemas::to_batch(Kind::Session, v)?,
            Rows::Notification(v) => arrow_schemas::to_batch(Kind::Notification, v)?,
            Rows::Sessions(v) => arrow_schemas::records_to_batch(v)?,
            Rows::HealthPartials(v) => arrow_schemas::records_to_batch(v)?,
            Rows::Issues(v) => arrow_schemas::records_to_batch(v)?,
            Rows::Detections(v) => arrow_schemas::records_to_batch(v)?,
            Rows::Alerts(v) => arrow_schemas::records_to_batch(v)?,
            Rows::Audit(v) => arrow_schemas::records_to_batch(v)?,
            Rows::Deploys(v) => arrow_schemas::records_to_batch(v)?,
        };
        each!(self, v => v.clear());
        Ok(batch)
    }
}

/// Columns whose values are unique by construction: event ids and times, trace and span ids and
/// times. A dictionary of them only grows until it passes its page limit and the writer falls
/// back to plain encoding; hashing every value on the way cost about a tenth of the encoding
/// time, and the files of the sample fleet came out 30% larger than without.
const PLAIN_COLUMNS: &[&str] = &[
    "common.event_id",
    "common.timestamp_ms",
    "common.sent_at_ms",
    "common.received_at_ms",
    "breadcrumbs.list.element.timestamp_ms",
    "trace_id",
    "span_id",
    "start_us",
    "end_us",
    "spans.list.element.span_id",
    "spans.list.element.parent_span_id",
    "spans.list.element.start_us",
    "spans.list.element.end_us",
];

/// The writer properties of every file: zstd at `level`, bounded row groups, no dictionary for
/// [`PLAIN_COLUMNS`] (a path a table does not have is ignored), and no statistics for columns
/// inside lists: a query cannot prune on a list's items, and the min and max of every item cost
/// about a tenth of the writer's time on `errors`.
pub fn properties(zstd_level: i32) -> Result<WriterProperties, EncodeError> {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(64 << 20));
    for path in PLAIN_COLUMNS {
        let path = ColumnPath::new(path.split('.').map(str::to_string).collect());
        builder = builder.set_column_dictionary_enabled(path, false);
    }
    for table in Table::all() {
        let schema = ArrowSchemaConverter::new().convert(&table.schema())?;
        for column in schema.columns().iter().filter(|c| c.max_rep_level() > 0) {
            builder = builder
                .set_column_statistics_enabled(column.path().clone(), EnabledStatistics::None);
        }
    }
    Ok(builder.build())
}

/// One Parquet file of one table being written.
pub struct FileWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    pending: Rows,
    rows: u64,
}

impl<W: Write + Send> FileWriter<W> {
    /// Starts a file of `table` on `out`.
    pub fn new(out: W, table: Table, properties: WriterProperties) -> Result<Self, EncodeError> {
        let schema = table.schema();
        Ok(FileWriter {
            writer: ArrowWriter::try_new(out, schema, Some(properties))?,
            pending: Rows::new(table),
            rows: 0,
        })
    }

    /// Adds a row; every [`BATCH_ROWS`] rows are encoded.
    pub fn push(&mut self, row: Row) -> Result<(), EncodeError> {
        self.pending.push(row)?;
        self.rows += 1;
        if self.pending.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Encodes the waiting rows.
    fn flush(&mut self) -> Result<(), EncodeError> {
        if !self.pending.is_empty() {
            let batch = self.pending.take_batch()?;
            self.writer.write(&batch)?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the remaining rows and the footer; returns the output and the row count.
    pub fn finish(mut self) -> Result<(W, u64), EncodeError> {
        self.flush()?;
        let out = self.writer.into_inner()?;
        Ok((out, self.rows))
    }
}

/// Encodes `rows` (all of one table) into one Parquet file in memory: what the benchmark measures.
pub fn encode_to_vec(
    table: Table,
    rows: impl IntoIterator<Item = Row>,
    zstd_level: i32,
) -> Result<Vec<u8>, EncodeError> {
    let mut writer = FileWriter::new(Vec::new(), table, properties(zstd_level)?)?;
    for row in rows {
        writer.push(row)?;
    }
    Ok(writer.finish()?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use trellis_schemas::sample;

    #[test]
    fn rows_round_trip_through_a_parquet_file() {
        let events: Vec<Event> = (0..60_000)
            .map(|n| sample::event("p", n % 40, n))
            .filter(|e| e.kind() == Kind::Error)
            .collect();
        assert!(
            events.len() > BATCH_ROWS / 8,
            "enough rows: {}",
            events.len()
        );
        let bytes = encode_to_vec(
            Table::Event(Kind::Error),
            events.iter().cloned().map(Row::Event),
            3,
        )
        .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap();
        let mut back = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            back.extend(arrow_schemas::from_batch::<ErrorEvent>(Kind::Error, &batch).unwrap());
        }
        let expected: Vec<ErrorEvent> = events
            .into_iter()
            .map(|e| match e {
                Event::Error(e) => e,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(back, expected);
    }

    /// The first row group of a file of the sample fleet's events of `kind`.
    fn sample_row_group(kind: Kind) -> parquet::file::metadata::RowGroupMetaData {
        let events = (0..3_000)
            .map(|n| sample::event("p", n % 40, n))
            .filter(|e| e.kind() == kind);
        let bytes = encode_to_vec(Table::Event(kind), events.map(Row::Event), 3).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        reader.metadata().row_group(0).clone()
    }

    fn column<'a>(
        group: &'a parquet::file::metadata::RowGroupMetaData,
        path: &str,
    ) -> &'a parquet::file::metadata::ColumnChunkMetaData {
        group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == path)
            .unwrap_or_else(|| panic!("no column {path}"))
    }

    #[test]
    fn unique_columns_are_written_without_a_dictionary() {
        let group = sample_row_group(Kind::Analytics);
        let dictionary = |path: &str| column(&group, path).dictionary_page_offset().is_some();
        assert!(!dictionary("common.event_id"));
        assert!(!dictionary("common.timestamp_ms"));
        assert!(dictionary("common.project"));
        assert!(dictionary("name"));
    }

    #[test]
    fn list_items_have_no_statistics() {
        let group = sample_row_group(Kind::Error);
        let statistics = |path: &str| column(&group, path).statistics().is_some();
        assert!(!statistics(
            "exceptions.list.element.frames.list.element.function"
        ));
        assert!(!statistics("tags.list.element.key"));
        assert!(statistics("common.timestamp_ms"));
        assert!(statistics("message"));
    }

    #[test]
    fn every_plain_column_is_a_column_of_some_table() {
        let paths: Vec<String> = Kind::ALL
            .iter()
            .flat_map(|&kind| {
                let schema = parquet::arrow::ArrowSchemaConverter::new()
                    .convert(&Table::Event(kind).schema())
                    .unwrap();
                schema
                    .columns()
                    .iter()
                    .map(|c| c.path().string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for path in PLAIN_COLUMNS {
            assert!(paths.iter().any(|p| p == path), "{path} is no column");
        }
    }

    #[test]
    fn a_row_of_another_table_is_refused() {
        let mut rows = Rows::new(Table::Sessions);
        let err = rows
            .push(Row::HealthPartial(HealthPartial::default()))
            .unwrap_err();
        assert!(matches!(err, EncodeError::WrongTable { .. }), "{err}");
    }
}
