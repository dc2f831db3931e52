//! Rolling: one input partition's records into segments of files named by offset range.
//!
//! A [`PartitionWriter`] owns one (topic, partition). It opens a segment at the first offset it
//! is given, streams each row into the temporary file of its (table, project, hour), and ends the
//! segment by input records, input bytes, age, or before a row that would open one file more than
//! [`Limits::max_open_files`]. Ending fsyncs every file, renames it to
//! `<topic>-<partition>-<first>-<last>.parquet`, fsyncs the directories and reports the offset to
//! commit ([`Finished`]). Time is passed in, never read, so the rules are testable as they are.
//!
//! Replays: [`PartitionWriter::open`] lists the ranges already on disk for the partition. A
//! segment that starts where such a range starts is *pinned* to end where it ended, whatever the
//! limits or the clock say now, so it rebuilds the same files (each rename replaces its earlier
//! copy, including when the crash came between two renames of one segment). A segment that is
//! not pinned ends before it would reach into a range on disk; input inside a range that started
//! earlier is skipped as already written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use parquet::file::properties::WriterProperties;

use super::Error;
use super::layout::{self, Table};
use super::writer::{self, FileWriter, Row};

/// When a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Input records.
    pub max_rows: u64,
    /// Input payload bytes.
    pub max_bytes: u64,
    /// Age in ms, since the segment opened.
    pub max_age_ms: i64,
    /// zstd level of the files.
    pub zstd_level: i32,
    /// Files (one per table, project and hour) a segment may hold open.
    pub max_open_files: usize,
}

/// A segment whose files are durable under their final names: commit `next_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The input topic.
    pub topic: String,
    /// The input partition.
    pub partition: u32,
    /// The offset after the segment's last record.
    pub next_offset: u64,
    /// Files renamed into place, by table, with their rows.
    pub files: Vec<(Table, u64)>,
}

struct OpenFile {
    temp: PathBuf,
    dir: PathBuf,
    writer: FileWriter<BufWriter<File>>,
}

struct Segment {
    first: u64,
    last: u64,
    records: u64,
    bytes: u64,
    opened_ms: i64,
    /// The last offset of the range on disk this segment rebuilds.
    pin: Option<u64>,
    files: HashMap<FileKey, OpenFile>,
    /// Directories whose entries changed because a sub-directory was created.
    created: BTreeSet<PathBuf>,
}

/// Writes one input partition's records into segments.
pub struct PartitionWriter {
    root: PathBuf,
    topic: String,
    partition: u32,
    limits: Limits,
    properties: WriterProperties,
    /// Ranges on disk: first offset to last.
    known: BTreeMap<u64, u64>,
    segment: Option<Segment>,
    next: Option<u64>,
}

impl PartitionWriter {
    /// A writer for `topic`/`partition` under `root`: lists what is on disk for the partition
    /// and deletes its temporary files.
    pub fn open(root: &Path, topic: &str, partition: u32, limits: Limits) -> Result<Self, Error> {
        let existing = layout::scan(root, topic, partition).map_err(Error::io(root))?;
        for temp in &existing.temps {
            match fs::remove_file(temp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(temp)(e)),
            }
        }
        if !existing.temps.is_empty() || !existing.ranges.is_empty() {
            tracing::debug!(
                topic,
                partition,
                temps = existing.temps.len(),
                ranges = existing.ranges.len(),
                "Partition opened over earlier files."
            );
        }
        Ok(PartitionWriter {
            root: root.to_path_buf(),
            topic: topic.to_string(),
            partition,
            limits,
            properties: writer::properties(limits.zstd_level)?,
            known: existing.ranges,
            segment: None,
            next: None,
        })
    }

    /// The offset after the last record given, if any.
    pub fn next_offset(&self) -> Option<u64> {
        self.next
    }

    /// Whether a segment is open.
    pub fn is_open(&self) -> bool {
        self.segment.is_some()
    }

    /// Adds the record at `offset` (`payload_len` input bytes): its row, or `None` for a record
    /// that was dead-lettered (it still belongs to the segment's offset range).
    pub fn push(
        &mut self,
        offset: u64,
        payload_len: usize,
        row: Option<Row>,
        now_ms: i64,
        out: &mut Vec<Finished>,
    ) -> Result<(), Error> {
        if let Some(segment) = &self.segment {
            let reaches_disk = match segment.pin {
                Some(pin) => offset > pin,
                None => {
                    offset > segment.first
                        && self
                            .known
                            .range(segment.first + 1..=offset)
                            .next()
                            .is_some()
                }
            };
            // A row for a file the segment does not hold yet, when it holds all it may: the
            // segment ends before it, so rows hours apart cannot open files without bound.
            let needs_room = segment.pin.is_none()
                && segment.files.len() >= self.limits.max_open_files
                && row
                    .as_ref()
                    .is_some_and(|row| !segment.files.contains_key(&file_key(row)));
            if reaches_disk || needs_room {
                self.finish(out)?;
            }
        }
        self.next = Some(offset + 1);
        if self.segment.is_none() {
            let mut pin = None;
            if let Some((&first, &last)) = self.known.range(..=offset).next_back() {
                if first == offset {
                    pin = Some(last);
                } else if offset <= last {
                    // Written by a segment that began before this input: already on disk.
                    out.push(Finished {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        next_offset: offset + 1,
                        files: Vec::new(),
                    });
                    return Ok(());
                }
            }
            self.segment = Some(Segment {
                first: offset,
                last: offset,
                records: 0,
                bytes: 0,
                opened_ms: now_ms,
                pin,
                files: HashMap::new(),
                created: BTreeSet::new(),
            });
        }
        let Some(segment) = self.segment.as_mut() else {
            return Ok(());
        };
        segment.last = offset;
        segment.records += 1;
        segment.bytes += payload_len as u64;
        if let Some(row) = row {
            let file = match segment.files.entry(file_key(&row)) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let (table, project, hour) = v.key();
                    let dir = layout::partition_dir(&self.root, *table, project, *hour);
                    layout::create_dir(&dir, &mut segment.created).map_err(Error::io(&dir))?;
                    let temp = dir.join(layout::temp_name(
                        &self.topic,
                        self.partition,
                        segment.first,
                    ));
                    let handle = File::create(&temp).map_err(Error::io(&temp))?;
                    let writer = FileWriter::new(
                        BufWriter::with_capacity(256 << 10, handle),
                        *table,
                        self.properties.clone(),
                    )?;
                    v.insert(OpenFile { temp, dir, writer })
                }
            };
            file.writer.push(row)?;
        }
        let full = match segment.pin {
            Some(pin) => offset >= pin,
            None => {
                segment.records >= self.limits.max_rows || segment.bytes >= self.limits.max_bytes
            }
        };
        if full {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Ends the open segment if it is older than the age limit (and not rebuilding a range).
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Finished>) -> Result<(), Error> {
        let expired = self.segment.as_ref().is_some_and(|s| {
            s.pin.is_none() && now_ms.saturating_sub(s.opened_ms) >= self.limits.max_age_ms
        });
        if expired {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Ends the open segment, if any (also at shutdown). A pinned segment that has not reached
    /// the end of its range on disk is dropped instead: the range's files stay whole and its
    /// records uncommitted, so the next run rebuilds it.
    pub fn finish(&mut self, out: &mut Vec<Finished>) -> Result<(), Error> {
        let Some(segment) = self.segment.take() else {
            return Ok(());
        };
        if segment.pin.is_some_and(|pin| segment.last < pin) {
            // Keep the earlier files whole: drop this partial rebuild, commit nothing for it.
            abort_files(segment.files);
            return Ok(());
        }
        let name = layout::file_name(&self.topic, self.partition, segment.first, segment.last);
        let mut done = Vec::with_capacity(segment.files.len());
        let mut dirs = segment.created;
        for ((table, _, _), file) in segment.files {
            let (buffered, rows) = file.writer.finish()?;
            let handle = buffered
                .into_inner()
                .map_err(|e| Error::io(&file.temp)(e.into_error()))?;
            handle.sync_all().map_err(Error::io(&file.temp))?;
            done.push((table, rows, file.temp, file.dir));
        }
        let mut files = Vec::with_capacity(done.len());
        for (table, rows, temp, dir) in done {
            let path = dir.join(&name);
            fs::rename(&temp, &path).map_err(Error::io(&path))?;
            dirs.insert(dir);
            files.push((table, rows));
        }
        for dir in &dirs {
            layout::sync_dir(dir).map_err(Error::io(dir))?;
        }
        if !files.is_empty() {
            self.known.insert(segment.first, segment.last);
        }
        tracing::debug!(
            topic = %self.topic,
            partition = self.partition,
            first = segment.first,
            last = segment.last,
            files = files.len(),
            "Segment written."
        );
        out.push(Finished {
            topic: self.topic.clone(),
            partition: self.partition,
            next_offset: segment.last + 1,
            files,
        });
        Ok(())
    }

    /// Drops the open segment and its temporary files (the partition moved elsewhere, or the
    /// input rewound): nothing of it was committed, so its records come again.
    pub fn abort(&mut self) {
        if let Some(segment) = self.segment.take() {
            abort_files(segment.files);
        }
        self.next = None;
    }
}

/// The file a row goes to within a segment: its table, project and hour.
type FileKey = (Table, String, i64);

fn file_key(row: &Row) -> FileKey {
    (
        row.table(),
        row.project().to_string(),
        layout::hour_start(row.time_ms()),
    )
}

fn abort_files(files: HashMap<FileKey, OpenFile>) {
    for file in files.into_values() {
        drop(file.writer);
        if let Err(e) = fs::remove_file(&file.temp) {
            tracing::warn!(path = %file.temp.display(), error = %e, "Temporary file not removed.");
        }
    }
}

#[cfg(test)]
#[path = "segment_tests.rs"]
mod tests;
