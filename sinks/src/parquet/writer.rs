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
use trellis_schemas::tables::{RowType, Stored};
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
#[derive(Debug)]
pub enum Row {
    /// An event, for its kind's table.
    Event(Event),
    /// A derived record (session, health partial, issue version, ...), for its own table.
    Record(Box<dyn StoredRow>),
}

impl Row {
    /// A derived record as a row.
    pub fn record<T: Stored>(record: T) -> Row {
        Row::Record(Box::new(record))
    }

    /// The table the row belongs to.
    pub fn table(&self) -> Table {
        match self {
            Row::Event(e) => Table::Event(e.kind()),
            Row::Record(r) => r.table(),
        }
    }

    /// The row's project.
    pub fn project(&self) -> &str {
        match self {
            Row::Event(e) => &e.common().project,
            Row::Record(r) => r.project(),
        }
    }

    /// The time that places the row in a date and hour: event time, or the registry's time
    /// column of the record's table ([`trellis_schemas::tables::Spec::time`]).
    pub fn time_ms(&self) -> i64 {
        match self {
            Row::Event(e) => e.common().timestamp_ms,
            Row::Record(r) => r.time_ms(),
        }
    }
}

/// A derived record as the writer holds it: any [`Stored`] type.
pub trait StoredRow: std::fmt::Debug + Send {
    /// Its table.
    fn table(&self) -> Table;
    /// Its project.
    fn project(&self) -> &str;
    /// Its table's time column.
    fn time_ms(&self) -> i64;
    /// Adds it to `rows` if they are its table's buffer; hands it back if not.
    fn push_into(self: Box<Self>, rows: &mut dyn RecordRows) -> Result<(), Box<dyn StoredRow>>;
}

impl<T: Stored> StoredRow for T {
    fn table(&self) -> Table {
        T::TABLE
    }
    fn project(&self) -> &str {
        Stored::project(self)
    }
    fn time_ms(&self) -> i64 {
        Stored::time_ms(self)
    }
    fn push_into(self: Box<Self>, rows: &mut dyn RecordRows) -> Result<(), Box<dyn StoredRow>> {
        match rows.as_any_mut().downcast_mut::<Vec<T>>() {
            Some(buffer) => {
                buffer.push(*self);
                Ok(())
            }
            None => Err(self),
        }
    }
}

/// The buffer of a derived record table: a `Vec` of its [`Stored`] type.
pub trait RecordRows: std::fmt::Debug + Send {
    /// Its table.
    fn table(&self) -> Table;
    /// Rows waiting.
    fn len(&self) -> usize;
    /// Whether no row is waiting.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The waiting rows as a record batch; the buffer is emptied.
    fn take_batch(&mut self) -> Result<RecordBatch, EncodeError>;
    /// The buffer itself, for [`StoredRow::push_into`].
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: Stored> RecordRows for Vec<T> {
    fn table(&self) -> Table {
        T::TABLE
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn take_batch(&mut self) -> Result<RecordBatch, EncodeError> {
        let batch = arrow_schemas::records_to_batch(self)?;
        self.clear();
        Ok(batch)
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
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
    /// A derived record table.
    Records(Box<dyn RecordRows>),
}

/// [`Rows::new`] for each kind of table.
struct NewRows;

impl RowType for NewRows {
    type Out = Rows;

    fn event(self, kind: Kind) -> Rows {
        match kind {
            Kind::Analytics => Rows::Analytics(Vec::new()),
            Kind::Error => Rows::Error(Vec::new()),
            Kind::Performance => Rows::Performance(Vec::new()),
            Kind::Transaction => Rows::Transaction(Vec::new()),
            Kind::Session => Rows::Session(Vec::new()),
            Kind::Notification => Rows::Notification(Vec::new()),
        }
    }

    fn record<T: Stored>(self) -> Rows {
        Rows::Records(Box::new(Vec::<T>::new()))
    }
}

impl Rows {
    /// An empty buffer for `table`.
    pub fn new(table: Table) -> Rows {
        table.with_row_type(NewRows)
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
            Rows::Records(r) => r.table(),
        }
    }

    /// Adds a row of this buffer's table.
    pub fn push(&mut self, row: Row) -> Result<(), EncodeError> {
        let table = self.table();
        let wrong = |row: &Row| EncodeError::WrongTable {
            row: row.table().name(),
            table: table.name(),
        };
        match (self, row) {
            (Rows::Analytics(v), Row::Event(Event::Analytics(e))) => v.push(e),
            (Rows::Error(v), Row::Event(Event::Error(e))) => v.push(e),
            (Rows::Performance(v), Row::Event(Event::Performance(e))) => v.push(e),
            (Rows::Transaction(v), Row::Event(Event::Transaction(e))) => v.push(e),
            (Rows::Session(v), Row::Event(Event::Session(e))) => v.push(e),
            (Rows::Notification(v), Row::Event(Event::Notification(e))) => v.push(e),
            (Rows::Records(v), Row::Record(r)) => {
                r.push_into(v.as_mut())
                    .map_err(|r| wrong(&Row::Record(r)))?;
            }
            (_, row) => return Err(wrong(&row)),
        }
        Ok(())
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        match self {
            Rows::Analytics(v) => v.len(),
            Rows::Error(v) => v.len(),
            Rows::Performance(v) => v.len(),
            Rows::Transaction(v) => v.len(),
            Rows::Session(v) => v.len(),
            Rows::Notification(v) => v.len(),
            Rows::Records(r) => r.len(),
        }
    }

    /// Whether no row is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The waiting rows as a record batch of the table's schema; the buffer is emptied.
    pub fn take_batch(&mut self) -> Result<RecordBatch, EncodeError> {
        fn taken<T>(v: &mut Vec<T>, batch: RecordBatch) -> RecordBatch {
            v.clear();
            batch
        }
        Ok(match self {
            Rows::Analytics(v) => taken(v, arrow_schemas::analytics_batch(v)?),
            Rows::Error(v) => taken(v, arrow_schemas::error_batch(v)?),
            Rows::Performance(v) => taken(v, arrow_schemas::performance_batch(v)?),
            Rows::Transaction(v) => taken(v, arrow_schemas::to_batch(Kind::Transaction, v)?),
            Rows::Session(v) => taken(v, arrow_schemas::to_batch(Kind::Session, v)?),
            Rows::Notification(v) => taken(v, arrow_schemas::to_batch(Kind::Notification, v)?),
            Rows::Records(r) => r.take_batch()?,
        })
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
            .push(Row::record(
                trellis_schemas::records::HealthPartial::default(),
            ))
            .unwrap_err();
        assert!(matches!(err, EncodeError::WrongTable { .. }), "{err}");
        rows.push(Row::record(
            trellis_schemas::records::SessionRecord::default(),
        ))
        .unwrap();
        assert_eq!(rows.len(), 1);
        let event = trellis_schemas::sample::event("p", 0, 1);
        let err = rows.push(Row::Event(event)).unwrap_err();
        assert!(matches!(err, EncodeError::WrongTable { .. }), "{err}");
    }
}
