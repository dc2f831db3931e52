//! A batch: the encoded rows of consecutive records, per table, with the records they came from
//! and the offsets they cover. Pure: time is passed in.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use trellis_bus::{Offsets, Record};
use trellis_schemas::topics::Names;

use super::encode::encode_record;
use trellis_schemas::tables::Table;

/// The span of time rows are counted in when an insert's partitions are bounded: 28 days.
///
/// Tables are partitioned by month of their date column. Any 28 days of row time fall in at most
/// two months, whatever the server's time zone, and in at most three where the server's `Date`
/// wraps (times before 1970 or after 2106), so `WINDOWS_PER_INSERT` windows stay under the
/// 100 partitions current servers accept in one insert (`max_partitions_per_insert_block`,
/// exception 252): more would be retried for ever.
const WINDOW_MS: i64 = 28 * 86_400_000;

/// The most distinct [`WINDOW_MS`] windows one insert holds: about two years of row time.
pub const WINDOWS_PER_INSERT: usize = 25;

/// One table's rows in `RowBinary`, back to back.
#[derive(Debug, Default)]
pub struct EncodedRows {
    data: Vec<u8>,
    /// End of each row in `data`.
    ends: Vec<usize>,
    /// Index of each row's record in the batch.
    sources: Vec<usize>,
    /// The [`WINDOW_MS`] window of each row's partition time.
    windows: Vec<i64>,
}

impl EncodedRows {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of rows `range`.
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        let start = if range.start == 0 {
            0
        } else {
            self.ends[range.start - 1]
        };
        let end = if range.end == 0 {
            0
        } else {
            self.ends[range.end - 1]
        };
        &self.data[start..end]
    }

    /// The batch index of the record row `row` came from.
    pub fn source(&self, row: usize) -> usize {
        self.sources[row]
    }

    /// The rows cut into consecutive inserts of at most [`WINDOWS_PER_INSERT`] distinct time
    /// windows each: one insert for rows of a few months, more for rows years apart.
    pub fn inserts(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut start = 0;
        for (row, window) in self.windows.iter().enumerate() {
            if !seen.contains(window) && seen.len() == WINDOWS_PER_INSERT {
                out.push(start..row);
                start = row;
                seen.clear();
            }
            seen.insert(*window);
        }
        if start < self.len() {
            out.push(start..self.len());
        }
        out
    }
}

/// Records read since the last commit, encoded per table.
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<Record>,
    tables: BTreeMap<Table, EncodedRows>,
    refused: Vec<(usize, String)>,
    ranges: BTreeMap<(String, u32), (u64, u64)>,
    bytes: usize,
    opened: Option<Instant>,
}

impl Batch {
    /// Encodes `record` into its table's rows; a record that cannot be encoded is kept aside
    /// with the reason, for the dead-letter topic.
    pub fn push(&mut self, topics: &Names, record: Record, now: Instant) {
        let index = self.records.len();
        self.opened.get_or_insert(now);
        let range = self
            .ranges
            .entry((record.topic.clone(), record.partition))
            .or_insert((record.offset, record.offset));
        range.0 = range.0.min(record.offset);
        range.1 = range.1.max(record.offset);
        let mut row = Vec::new();
        match encode_record(topics, &record.topic, &record.payload, &mut row) {
            Ok(None) => {}
            Ok(Some((target, at_ms))) => {
                let rows = self.tables.entry(target).or_default();
                rows.data.extend_from_slice(&row);
                rows.ends.push(rows.data.len());
                rows.sources.push(index);
                rows.windows.push(at_ms.div_euclid(WINDOW_MS));
                self.bytes += row.len();
            }
            Err(e) => self.refused.push((index, e.to_string())),
        }
        self.records.push(record);
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the batch should be written now: full by rows or bytes, or old enough.
    pub fn is_ready(&self, rows: usize, bytes: usize, age: Duration, now: Instant) -> bool {
        self.records.len() >= rows
            || self.bytes >= bytes
            || self.opened.is_some_and(|o| now.duration_since(o) >= age)
    }

    /// The tables with rows, and their rows.
    pub fn tables(&self) -> impl Iterator<Item = (Table, &EncodedRows)> {
        self.tables.iter().map(|(t, r)| (*t, r))
    }

    /// Records that could not be encoded, with the reason.
    pub fn refused(&self) -> &[(usize, String)] {
        &self.refused
    }

    /// The record at batch index `index`.
    pub fn record(&self, index: usize) -> &Record {
        &self.records[index]
    }

    /// The insert deduplication token of rows `rows` of `target`: the table, the offset range
    /// of every partition in the batch and the rows, so that re-sending the same batch (after a
    /// timeout that hid a success) is dropped by servers that support tokens.
    pub fn token(&self, target: Table, rows: Range<usize>) -> String {
        let mut token = format!("trellis:{}", target.name());
        for ((topic, partition), (first, last)) in &self.ranges {
            token.push_str(&format!(":{topic}/{partition}/{first}-{last}"));
        }
        token.push_str(&format!(":rows/{}-{}", rows.start, rows.end));
        token
    }

    /// The offsets to commit once every row is written or dead-lettered.
    pub fn offsets(&self) -> Offsets {
        Offsets::after(&self.records)
    }
}

#[cfg(test)]
// A list of one range is what `inserts` answers for one insert.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use trellis_schemas::{AnalyticsEvent, Event, avro};

    fn record(names: &Names, partition: u32, offset: u64, payload: Vec<u8>) -> Record {
        Record {
            topic: names.events.clone(),
            partition,
            offset,
            key: vec![],
            payload,
            headers: vec![],
            timestamp_ms: 0,
        }
    }

    #[test]
    fn rows_offsets_tokens_and_readiness() {
        let names = Names::new("");
        let event = avro::encode(&Event::Analytics(AnalyticsEvent::default())).unwrap();
        let t0 = Instant::now();
        let mut batch = Batch::default();
        assert!(!batch.is_ready(2, 1 << 20, Duration::from_secs(1), t0));
        batch.push(&names, record(&names, 0, 7, event.clone()), t0);
        batch.push(&names, record(&names, 1, 3, b"bad".to_vec()), t0);
        batch.push(&names, record(&names, 0, 8, event.clone()), t0);
        assert_eq!(batch.len(), 3);
        assert!(batch.is_ready(3, 1 << 20, Duration::from_secs(1), t0));
        assert!(!batch.is_ready(4, 1 << 20, Duration::from_secs(1), t0));
        assert!(batch.is_ready(
            4,
            1 << 20,
            Duration::from_secs(1),
            t0 + Duration::from_secs(1)
        ));
        let (target, rows) = batch.tables().next().unwrap();
        assert_eq!(target.name(), "events");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.bytes(0..2).len(), batch.bytes());
        assert_eq!(rows.bytes(1..2).len() * 2, batch.bytes());
        assert_eq!(rows.source(1), 2);
        assert_eq!(batch.refused().len(), 1);
        assert_eq!(batch.refused()[0].0, 1);
        assert_eq!(
            batch.token(target, 0..2),
            "trellis:events:events/0/7-8:events/1/3-3:rows/0-2"
        );
        let offsets = batch.offsets();
        assert_eq!(offsets.get("events", 0), Some(9));
        assert_eq!(offsets.get("events", 1), Some(4));
        assert_eq!(rows.inserts(), [0..2]);
    }

    #[test]
    fn rows_years_apart_are_cut_into_inserts_of_bounded_windows() {
        let names = Names::new("");
        let at = |day: i64| {
            let mut event = AnalyticsEvent::default();
            event.common.timestamp_ms = day * 86_400_000;
            avro::encode(&Event::Analytics(event)).unwrap()
        };
        let t0 = Instant::now();
        let mut batch = Batch::default();
        // 60 windows, each row followed by one in a window already seen.
        for (offset, window) in (0..60).enumerate() {
            let day = window * 28 - 20_000;
            batch.push(&names, record(&names, 0, 2 * offset as u64, at(day)), t0);
            batch.push(
                &names,
                record(&names, 0, 2 * offset as u64 + 1, at(-20_000)),
                t0,
            );
        }
        let (_, rows) = batch.tables().next().unwrap();
        assert_eq!(rows.inserts(), [0..50, 50..98, 98..120]);
        for range in rows.inserts() {
            let windows: std::collections::HashSet<_> = rows.windows[range].iter().collect();
            assert!(windows.len() <= WINDOWS_PER_INSERT);
        }
        // A batch of one day is one insert.
        let mut batch = Batch::default();
        for offset in 0..1000 {
            batch.push(&names, record(&names, 0, offset, at(20_000)), t0);
        }
        assert_eq!(batch.tables().next().unwrap().1.inserts(), [0..1000]);
    }
}
