//! Record batches of the busiest tables (`events`, `errors`, `perf`) built with Arrow's builders
//! directly, column by column.
//!
//! `serde_arrow` finds each value's column by the field name serde hands it and dispatches on
//! the column's type at run time; for these tables that was a third of the Parquet sink's time.
//! The builders here append each field straight to its typed column. The columns follow the
//! traced schema ([`super::fields`]), whose field order is the types' declaration order; a field
//! out of place or of another type fails [`StructArray::try_new`], and the tests compare every
//! batch with the one `serde_arrow` builds from the same events.

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    StringDictionaryBuilder,
};
use arrow_array::types::UInt32Type;
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, Schema};

use crate::model::{
    AnalyticsEvent, Breadcrumb, Common, ErrorEvent, Exception, Frame, Level, PerformanceSample, Tag,
};

type Result<T, E = ArrowError> = std::result::Result<T, E>;

fn children(field: &Field) -> Result<&Fields> {
    match field.data_type() {
        DataType::Struct(fields) => Ok(fields),
        other => Err(ArrowError::SchemaError(format!(
            "{} is {other}, not a struct",
            field.name()
        ))),
    }
}

fn item(field: &Field) -> Result<&FieldRef> {
    match field.data_type() {
        DataType::List(item) => Ok(item),
        other => Err(ArrowError::SchemaError(format!(
            "{} is {other}, not a list",
            field.name()
        ))),
    }
}

/// The struct array of `field` from its columns, in its field order.
fn structure(field: &Field, columns: Vec<ArrayRef>) -> Result<ArrayRef> {
    Ok(Arc::new(StructArray::try_new(
        children(field)?.clone(),
        columns,
        None,
    )?))
}

/// The list array of `field` from its offsets and the column its items were appended to.
fn list(field: &Field, offsets: Vec<i32>, values: ArrayRef) -> Result<ArrayRef> {
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    Ok(Arc::new(ListArray::try_new(
        item(field)?.clone(),
        offsets,
        values,
        None,
    )?))
}

fn column(fields: &Fields, i: usize) -> Result<&Field> {
    fields
        .get(i)
        .map(|f| f.as_ref())
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {i}")))
}

fn finish(builder: &mut StringBuilder) -> ArrayRef {
    Arc::new(builder.finish())
}

/// List offsets: one per row, after the row's items.
struct Offsets(Vec<i32>);

impl Offsets {
    fn new(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Offsets(offsets)
    }

    fn end_row(&mut self, items: usize) -> Result<()> {
        let items = i32::try_from(items)
            .map_err(|_| ArrowError::ComputeError("a list column exceeds i32 offsets".into()))?;
        self.0.push(items);
        Ok(())
    }
}

/// The columns of [`Common`]: its scalars, then `release`, `device` and `sdk`, all strings.
struct CommonColumns {
    event_id: StringBuilder,
    project: StringBuilder,
    timestamp_ms: Int64Builder,
    sent_at_ms: Int64Builder,
    received_at_ms: Int64Builder,
    device_id: StringBuilder,
    user_id: StringBuilder,
    session_id: StringBuilder,
    release: [StringBuilder; 7],
    device: [StringBuilder; 5],
    sdk: [StringBuilder; 2],
}

impl CommonColumns {
    fn new(rows: usize) -> Self {
        let strings = || StringBuilder::with_capacity(rows, rows * 16);
        CommonColumns {
            event_id: strings(),
            project: strings(),
            timestamp_ms: Int64Builder::with_capacity(rows),
            sent_at_ms: Int64Builder::with_capacity(rows),
            received_at_ms: Int64Builder::with_capacity(rows),
            device_id: strings(),
            user_id: strings(),
            session_id: strings(),
            release: std::array::from_fn(|_| strings()),
            device: std::array::from_fn(|_| strings()),
            sdk: std::array::from_fn(|_| strings()),
        }
    }

    fn append(&mut self, c: &Common) {
        self.event_id.append_value(&c.event_id);
        self.project.append_value(&c.project);
        self.timestamp_ms.append_value(c.timestamp_ms);
        self.sent_at_ms.append_option(c.sent_at_ms);
        self.received_at_ms.append_value(c.received_at_ms);
        self.device_id.append_option(c.device_id.as_deref());
        self.user_id.append_option(c.user_id.as_deref());
        self.session_id.append_option(c.session_id.as_deref());
        let r = &c.release;
        let release = [
            Some(r.platform.as_str()),
            Some(r.app_version.as_str()),
            r.build.as_deref(),
            r.runtime_version.as_deref(),
            r.update_id.as_deref(),
            r.channel.as_deref(),
            r.environment.as_deref(),
        ];
        for (builder, value) in self.release.iter_mut().zip(release) {
            builder.append_option(value);
        }
        let d = &c.device;
        let device = [&d.model, &d.os_name, &d.os_version, &d.locale, &d.timezone];
        for (builder, value) in self.device.iter_mut().zip(device) {
            builder.append_option(value.as_deref());
        }
        self.sdk[0].append_value(&c.sdk.name);
        self.sdk[1].append_value(&c.sdk.version);
    }

    fn finish(mut self, field: &Field) -> Result<ArrayRef> {
        let fields = children(field)?;
        let nested = |i: usize, builders: &mut [StringBuilder]| {
            structure(
                column(fields, i)?,
                builders.iter_mut().map(finish).collect(),
            )
        };
        let release = nested(8, &mut self.release)?;
        let device = nested(9, &mut self.device)?;
        let sdk = nested(10, &mut self.sdk)?;
        structure(
            field,
            vec![
                finish(&mut self.event_id),
                finish(&mut self.project),
                Arc::new(self.timestamp_ms.finish()),
                Arc::new(self.sent_at_ms.finish()),
                Arc::new(self.received_at_ms.finish()),
                finish(&mut self.device_id),
                finish(&mut self.user_id),
                finish(&mut self.session_id),
                release,
                device,
                sdk,
            ],
        )
    }
}

/// A list of [`Tag`]s per row.
struct TagColumns {
    offsets: Offsets,
    key: StringBuilder,
    value: StringBuilder,
}

impl TagColumns {
    fn new(rows: usize) -> Self {
        TagColumns {
            offsets: Offsets::new(rows),
            key: StringBuilder::new(),
            value: StringBuilder::new(),
        }
    }

    fn append(&mut self, tags: &[Tag]) -> Result<()> {
        for tag in tags {
            self.key.append_value(&tag.key);
            self.value.append_value(&tag.value);
        }
        self.offsets.end_row(self.key.len())
    }

    fn finish(mut self, field: &Field) -> Result<ArrayRef> {
        let values = structure(
            item(field)?,
            vec![finish(&mut self.key), finish(&mut self.value)],
        )?;
        list(field, self.offsets.0, values)
    }
}

fn batch(schema: &[FieldRef], columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(Arc::new(Schema::new(schema.to_vec())), columns)
}

/// The `events` table's batch of analytics events.
pub fn analytics(schema: &[FieldRef], events: &[AnalyticsEvent]) -> Result<RecordBatch> {
    let rows = events.len();
    let mut common = CommonColumns::new(rows);
    let mut name = StringBuilder::with_capacity(rows, rows * 16);
    let mut screen = StringBuilder::with_capacity(rows, rows * 16);
    let mut properties = StringBuilder::with_capacity(rows, rows * 64);
    for e in events {
        common.append(&e.common);
        name.append_value(&e.name);
        screen.append_option(e.screen.as_deref());
        properties.append_value(&e.properties);
    }
    let common = common.finish(column_of(schema, 0)?)?;
    batch(
        schema,
        vec![
            common,
            finish(&mut name),
            finish(&mut screen),
            finish(&mut properties),
        ],
    )
}

/// The `perf` table's batch of performance samples.
pub fn performance(schema: &[FieldRef], samples: &[PerformanceSample]) -> Result<RecordBatch> {
    let rows = samples.len();
    let mut common = CommonColumns::new(rows);
    let mut metric = StringBuilder::with_capacity(rows, rows * 16);
    let mut value = Float64Builder::with_capacity(rows);
    let mut unit = StringBuilder::with_capacity(rows, rows * 16);
    let mut screen = StringBuilder::with_capacity(rows, rows * 16);
    let mut attributes = TagColumns::new(rows);
    for s in samples {
        common.append(&s.common);
        metric.append_value(&s.metric);
        value.append_value(s.value);
        unit.append_value(&s.unit);
        screen.append_option(s.screen.as_deref());
        attributes.append(&s.attributes)?;
    }
    let common = common.finish(column_of(schema, 0)?)?;
    let attributes = attributes.finish(column_of(schema, 5)?)?;
    batch(
        schema,
        vec![
            common,
            finish(&mut metric),
            Arc::new(value.finish()),
            finish(&mut unit),
            finish(&mut screen),
            attributes,
        ],
    )
}

fn column_of(schema: &[FieldRef], i: usize) -> Result<&Field> {
    schema
        .get(i)
        .map(|f| f.as_ref())
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {i}")))
}

/// The columns of a list of [`Frame`]s per exception.
struct FrameColumns {
    offsets: Offsets,
    strings: [StringBuilder; 4],
    lineno: Int64Builder,
    colno: Int64Builder,
    in_app: BooleanBuilder,
}

impl FrameColumns {
    fn append(&mut self, frames: &[Frame]) -> Result<()> {
        for f in frames {
            let strings = [&f.function, &f.module, &f.filename, &f.abs_path];
            for (builder, value) in self.strings.iter_mut().zip(strings) {
                builder.append_option(value.as_deref());
            }
            self.lineno.append_option(f.lineno);
            self.colno.append_option(f.colno);
            self.in_app.append_value(f.in_app);
        }
        self.offsets.end_row(self.in_app.len())
    }

    fn finish(mut self, field: &Field) -> Result<ArrayRef> {
        let mut columns: Vec<ArrayRef> = self.strings.iter_mut().map(finish).collect();
        columns.push(Arc::new(self.lineno.finish()));
        columns.push(Arc::new(self.colno.finish()));
        columns.push(Arc::new(self.in_app.finish()));
        list(field, self.offsets.0, structure(item(field)?, columns)?)
    }
}

/// The columns of a list of [`Exception`]s per event, with their frames.
struct ExceptionColumns {
    offsets: Offsets,
    exception_type: StringBuilder,
    strings: [StringBuilder; 3],
    frames: FrameColumns,
}

impl ExceptionColumns {
    fn append(&mut self, exceptions: &[Exception]) -> Result<()> {
        for e in exceptions {
            self.exception_type.append_value(&e.exception_type);
            let strings = [&e.value, &e.module, &e.mechanism];
            for (builder, value) in self.strings.iter_mut().zip(strings) {
                builder.append_option(value.as_deref());
            }
            self.frames.append(&e.frames)?;
        }
        self.offsets.end_row(self.exception_type.len())
    }

    fn finish(mut self, field: &Field) -> Result<ArrayRef> {
        let item = item(field)?;
        let frames = self.frames.finish(column(children(item)?, 4)?)?;
        let mut columns = vec![finish(&mut self.exception_type)];
        columns.extend(self.strings.iter_mut().map(finish));
        columns.push(frames);
        list(field, self.offsets.0, structure(item, columns)?)
    }
}

/// The columns of a list of [`Breadcrumb`]s per event.
struct BreadcrumbColumns {
    offsets: Offsets,
    timestamp_ms: Int64Builder,
    strings: [StringBuilder; 4],
    data: StringBuilder,
}

impl BreadcrumbColumns {
    fn append(&mut self, breadcrumbs: &[Breadcrumb]) -> Result<()> {
        for b in breadcrumbs {
            self.timestamp_ms.append_value(b.timestamp_ms);
            let strings = [&b.breadcrumb_type, &b.category, &b.message, &b.level];
            for (builder, value) in self.strings.iter_mut().zip(strings) {
                builder.append_option(value.as_deref());
            }
            self.data.append_value(&b.data);
        }
        self.offsets.end_row(self.data.len())
    }

    fn finish(mut self, field: &Field) -> Result<ArrayRef> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.timestamp_ms.finish())];
        columns.extend(self.strings.iter_mut().map(finish));
        columns.push(finish(&mut self.data));
        list(field, self.offsets.0, structure(item(field)?, columns)?)
    }
}

/// A level as serde names it (`#[serde(rename_all = "snake_case")]`).
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warning => "warning",
        Level::Error => "error",
        Level::Fatal => "fatal",
    }
}

/// The `errors` table's batch of error events.
pub fn errors(schema: &[FieldRef], events: &[ErrorEvent]) -> Result<RecordBatch> {
    let rows = events.len();
    let strings = || StringBuilder::with_capacity(rows, rows * 16);
    let mut common = CommonColumns::new(rows);
    let mut level = StringDictionaryBuilder::<UInt32Type>::new();
    let mut handled = BooleanBuilder::with_capacity(rows);
    let mut message = strings();
    let mut exceptions = ExceptionColumns {
        offsets: Offsets::new(rows),
        exception_type: strings(),
        strings: std::array::from_fn(|_| strings()),
        frames: FrameColumns {
            offsets: Offsets::new(rows),
            strings: std::array::from_fn(|_| StringBuilder::new()),
            lineno: Int64Builder::new(),
            colno: Int64Builder::new(),
            in_app: BooleanBuilder::new(),
        },
    };
    let mut breadcrumbs = BreadcrumbColumns {
        offsets: Offsets::new(rows),
        timestamp_ms: Int64Builder::new(),
        strings: std::array::from_fn(|_| StringBuilder::new()),
        data: StringBuilder::new(),
    };
    let mut tags = TagColumns::new(rows);
    let mut fingerprint_offsets = Offsets::new(rows);
    let mut fingerprint = StringBuilder::new();
    let mut transaction = strings();
    let mut contexts = StringBuilder::with_capacity(rows, rows * 64);
    let mut issue_id = strings();
    for e in events {
        common.append(&e.common);
        level.append_value(level_name(e.level));
        handled.append_value(e.handled);
        message.append_option(e.message.as_deref());
        exceptions.append(&e.exceptions)?;
        breadcrumbs.append(&e.breadcrumbs)?;
        tags.append(&e.tags)?;
        for part in &e.fingerprint {
            fingerprint.append_value(part);
        }
        fingerprint_offsets.end_row(fingerprint.len())?;
        transaction.append_option(e.transaction.as_deref());
        contexts.append_value(&e.contexts);
        issue_id.append_option(e.issue_id.as_deref());
    }
    let columns = vec![
        common.finish(column_of(schema, 0)?)?,
        Arc::new(level.finish()),
        Arc::new(handled.finish()),
        finish(&mut message),
        exceptions.finish(column_of(schema, 4)?)?,
        breadcrumbs.finish(column_of(schema, 5)?)?,
        tags.finish(column_of(schema, 6)?)?,
        list(
            column_of(schema, 7)?,
            fingerprint_offsets.0,
            finish(&mut fingerprint),
        )?,
        finish(&mut transaction),
        finish(&mut contexts),
        finish(&mut issue_id),
    ];
    batch(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Kind};
    use crate::sample;

    fn events(kind: Kind) -> Vec<Event> {
        (0..3_000)
            .map(|n| sample::event("p", n % 70, n))
            .filter(|e| e.kind() == kind)
            .collect()
    }

    /// Every field set and every field empty, so each column sees values and nulls.
    fn edge_cases(mut e: Event) -> Vec<Event> {
        let full = e.clone();
        let c = e.common_mut();
        c.sent_at_ms = None;
        c.device_id = None;
        c.user_id = None;
        c.session_id = None;
        c.release = Default::default();
        c.device = Default::default();
        vec![full, e]
    }

    #[test]
    fn analytics_batches_equal_serde_arrows() {
        let mut rows: Vec<AnalyticsEvent> = Vec::new();
        for e in events(Kind::Analytics) {
            for e in edge_cases(e) {
                let Event::Analytics(mut e) = e else {
                    unreachable!()
                };
                rows.push(e.clone());
                e.screen = None;
                e.name.clear();
                rows.push(e);
            }
        }
        let fields = super::super::fields(Kind::Analytics);
        let expected = serde_arrow::to_record_batch(&fields, &rows).unwrap();
        assert_eq!(analytics(&fields, &rows).unwrap(), expected);
    }

    #[test]
    fn performance_batches_equal_serde_arrows() {
        let mut rows: Vec<PerformanceSample> = Vec::new();
        for e in events(Kind::Performance) {
            for e in edge_cases(e) {
                let Event::Performance(mut e) = e else {
                    unreachable!()
                };
                e.attributes.push(Tag {
                    key: "k".into(),
                    value: String::new(),
                });
                rows.push(e.clone());
                e.screen = None;
                e.attributes.clear();
                e.value = f64::NAN.min(-0.5);
                rows.push(e);
            }
        }
        let fields = super::super::fields(Kind::Performance);
        let expected = serde_arrow::to_record_batch(&fields, &rows).unwrap();
        assert_eq!(performance(&fields, &rows).unwrap(), expected);
    }

    #[test]
    fn error_batches_equal_serde_arrows() {
        let mut rows: Vec<ErrorEvent> = Vec::new();
        let levels = [
            Level::Debug,
            Level::Info,
            Level::Warning,
            Level::Error,
            Level::Fatal,
        ];
        for (i, e) in events(Kind::Error).into_iter().enumerate() {
            for e in edge_cases(e) {
                let Event::Error(mut e) = e else {
                    unreachable!()
                };
                e.level = levels[i % levels.len()];
                e.issue_id = Some(format!("issue-{i}"));
                rows.push(e.clone());
                e.message = None;
                e.transaction = None;
                e.issue_id = None;
                e.exceptions.push(Exception::default());
                e.exceptions[0].frames.clear();
                e.breadcrumbs.push(Breadcrumb::default());
                e.fingerprint = vec!["a".into(), String::new()];
                rows.push(e.clone());
                e.exceptions.clear();
                e.breadcrumbs.clear();
                e.tags.clear();
                e.fingerprint.clear();
                rows.push(e);
            }
        }
        let fields = super::super::fields(Kind::Error);
        let expected = serde_arrow::to_record_batch(&fields, &rows).unwrap();
        assert_eq!(errors(&fields, &rows).unwrap(), expected);
    }

    #[test]
    fn an_empty_batch_has_the_schema() {
        let fields = super::super::fields(Kind::Error);
        let batch = errors(&fields, &[]).unwrap();
        assert_eq!(batch.num_rows(), 0);
        assert_eq!(batch.schema().fields(), &Fields::from(fields));
    }
}
