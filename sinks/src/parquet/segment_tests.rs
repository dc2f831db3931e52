use std::collections::BTreeSet;

use parquet::file::reader::{FileReader, SerializedFileReader};

use trellis_schemas::sample;

use super::*;

const HOUR: i64 = 3_600_000;

fn limits(max_rows: u64) -> Limits {
    Limits {
        max_rows,
        max_bytes: u64::MAX,
        max_age_ms: 1000,
        zstd_level: 1,
        max_open_files: 64,
    }
}

/// The `n`th record: an event of project `p` (kind `n % 6`), time in hour `(n / 6) % 2`.
fn row(n: u64) -> Row {
    let mut event = sample::event("p", n % 7, n);
    event.common_mut().timestamp_ms = 1_700_000_000_000 / HOUR * HOUR + ((n / 6) % 2) as i64 * HOUR;
    Row::Event(event)
}

/// The distinct offset ranges of the finished files under `root` and the rows they hold; checks
/// that no directory holds overlapping ranges and that no temporary file is left.
fn on_disk(root: &Path) -> (BTreeSet<(u64, u64)>, u64) {
    let mut ranges = BTreeSet::new();
    let mut rows = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut here = Vec::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
                continue;
            }
            assert!(!name.starts_with('.'), "temporary file left: {name}");
            here.push(layout::parse_file_name(&name, "t", 0).unwrap());
            let reader = SerializedFileReader::new(File::open(entry.path()).unwrap()).unwrap();
            rows += reader.metadata().file_metadata().num_rows() as u64;
        }
        here.sort();
        for pair in here.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "overlapping files in {dir:?}: {here:?}"
            );
        }
        ranges.extend(here);
    }
    (ranges, rows)
}

/// The ranges renamed into place while temporary files may still exist.
fn on_disk_ignoring_temps(root: &Path) -> BTreeSet<(u64, u64)> {
    layout::scan(root, "t", 0)
        .unwrap()
        .ranges
        .into_iter()
        .collect()
}

fn temps(root: &Path) -> usize {
    layout::scan(root, "t", 0).unwrap().temps.len()
}

fn nexts(out: &[Finished]) -> Vec<u64> {
    out.iter().map(|f| f.next_offset).collect()
}

#[test]
fn segments_end_by_record_count_and_split_by_table_and_hour() {
    let root = tempfile::tempdir().unwrap();
    let mut w = PartitionWriter::open(root.path(), "t", 0, limits(10)).unwrap();
    let mut out = Vec::new();
    for n in 0..35 {
        w.push(n, 100, Some(row(n)), 0, &mut out).unwrap();
    }
    assert_eq!(nexts(&out), [10, 20, 30]);
    // 30..=34: five kinds in one hour, one open file each.
    assert_eq!(temps(root.path()), 5);
    w.finish(&mut out).unwrap();
    assert_eq!(nexts(&out), [10, 20, 30, 35]);
    let rows: u64 = out.iter().flat_map(|f| &f.files).map(|(_, r)| r).sum();
    assert_eq!(rows, 35);
    // 0..=9: kinds 0-5 in hour 0, kinds 0-3 in hour 1.
    assert_eq!(out[0].files.len(), 10);
    let (ranges, rows) = on_disk(root.path());
    assert_eq!(
        ranges,
        BTreeSet::from([(0, 9), (10, 19), (20, 29), (30, 34)])
    );
    assert_eq!(rows, 35);
}

#[test]
fn bytes_and_age_end_segments_too() {
    let root = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_bytes: 250,
        ..limits(1000)
    };
    let mut w = PartitionWriter::open(root.path(), "t", 0, limits).unwrap();
    let mut out = Vec::new();
    for n in 0..7 {
        w.push(n, 100, Some(row(n)), 0, &mut out).unwrap();
    }
    assert_eq!(nexts(&out), [3, 6]);
    w.tick(999, &mut out).unwrap();
    assert_eq!(nexts(&out), [3, 6], "not old enough yet");
    w.tick(1000, &mut out).unwrap();
    assert_eq!(nexts(&out), [3, 6, 7]);
    assert!(!w.is_open());
}

#[test]
fn rows_hours_apart_end_segments_at_the_open_file_limit() {
    let root = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_open_files: 8,
        ..limits(100_000)
    };
    let mut w = PartitionWriter::open(root.path(), "t", 0, limits).unwrap();
    let mut out = Vec::new();
    // 700 records of one kind, each an hour after the last, each followed by one in hour 0.
    let at = |n: u64, hour: i64| {
        let mut event = sample::event("p", 0, 6 * n); // always an analytics event
        event.common_mut().timestamp_ms = 1_700_000_000_000 / HOUR * HOUR + hour * HOUR;
        Row::Event(event)
    };
    for n in 0..700 {
        w.push(2 * n, 10, Some(at(2 * n, n as i64 + 1)), 0, &mut out)
            .unwrap();
        w.push(2 * n + 1, 10, Some(at(2 * n + 1, 0)), 0, &mut out)
            .unwrap();
        assert!(temps(root.path()) <= 8);
    }
    w.finish(&mut out).unwrap();
    // Each segment holds hour 0 and seven others: 700 hours in 100 segments.
    assert_eq!(out.len(), 100);
    assert!(out.iter().all(|f| f.files.len() <= 8));
    let mut next = 0;
    for f in &out {
        assert!(f.next_offset > next);
        next = f.next_offset;
    }
    assert_eq!(next, 1_400);
    let (ranges, rows) = on_disk(root.path());
    assert_eq!(ranges.len(), 100);
    assert_eq!(rows, 1_400);
}

#[test]
fn a_dead_lettered_record_belongs_to_the_range_without_a_row() {
    let root = tempfile::tempdir().unwrap();
    let mut w = PartitionWriter::open(root.path(), "t", 0, limits(3)).unwrap();
    let mut out = Vec::new();
    w.push(0, 10, None, 0, &mut out).unwrap();
    w.push(1, 10, None, 0, &mut out).unwrap();
    w.push(2, 10, Some(row(0)), 0, &mut out).unwrap();
    w.push(3, 10, None, 0, &mut out).unwrap();
    w.finish(&mut out).unwrap();
    assert_eq!(nexts(&out), [3, 4]);
    assert_eq!(out[1].files, []);
    assert_eq!(on_disk(root.path()), (BTreeSet::from([(0, 2)]), 1));
}

/// A crash after an age-based end renamed its files but before the commit: the replay, with
/// another clock and other limits, ends the segment where the first run did.
#[test]
fn a_replay_rebuilds_the_same_files_whatever_the_clock_says() {
    let root = tempfile::tempdir().unwrap();
    let mut first_run = Vec::new();
    {
        let mut w = PartitionWriter::open(root.path(), "t", 0, limits(100)).unwrap();
        for n in 0..5 {
            w.push(n, 10, Some(row(n)), 0, &mut first_run).unwrap();
        }
        w.tick(5_000, &mut first_run).unwrap();
        for n in 5..12 {
            w.push(n, 10, Some(row(n)), 5_000, &mut first_run).unwrap();
        }
        // Killed here: [0, 4] renamed (not committed), [5, ..] only temporary files.
    }
    assert_eq!(nexts(&first_run), [5]);
    let before = on_disk_ignoring_temps(root.path());
    assert_eq!(before, BTreeSet::from([(0, 4)]));
    assert!(temps(root.path()) > 0);

    let mut w = PartitionWriter::open(root.path(), "t", 0, limits(8)).unwrap();
    assert_eq!(temps(root.path()), 0, "temporary files are deleted on open");
    let mut out = Vec::new();
    for n in 0..20 {
        w.push(n, 10, Some(row(n)), 0, &mut out).unwrap();
    }
    w.tick(1_000_000, &mut out).unwrap();
    assert_eq!(
        nexts(&out),
        [5, 13, 20],
        "pinned at 4, then by count (8) and age"
    );
    let (ranges, rows) = on_disk(root.path());
    assert_eq!(ranges, BTreeSet::from([(0, 4), (5, 12), (13, 19)]));
    assert_eq!(rows, 20, "every record once");
}

#[test]
fn input_already_on_disk_is_skipped_and_new_segments_stop_before_it() {
    let root = tempfile::tempdir().unwrap();
    {
        let mut w = PartitionWriter::open(root.path(), "t", 0, limits(10)).unwrap();
        let mut out = Vec::new();
        for n in 10..20 {
            w.push(n, 10, Some(row(n)), 0, &mut out).unwrap();
        }
        assert_eq!(nexts(&out), [20]);
    }
    // A consumer that resumes inside the range skips it; one that starts before it stops short.
    let mut w = PartitionWriter::open(root.path(), "t", 0, limits(100)).unwrap();
    let mut out = Vec::new();
    for n in 15..25 {
        w.push(n, 10, Some(row(n)), 0, &mut out).unwrap();
    }
    w.finish(&mut out).unwrap();
    assert_eq!(nexts(&out), [16, 17, 18, 19, 20, 25]);
    let mut w = PartitionWriter::open(root.path(), "t", 0, limits(100)).unwrap();
    let mut out = Vec::new();
    for n in 0..30 {
        w.push(n, 10, Some(row(n)), 0, &mut out).unwrap();
    }
    w.finish(&mut out).unwrap();
    assert_eq!(nexts(&out), [10, 20, 25, 30]);
    let (ranges, rows) = on_disk(root.path());
    assert_eq!(
        ranges,
        BTreeSet::from([(0, 9), (10, 19), (20, 24), (25, 29)])
    );
    assert_eq!(rows, 30);
}

#[test]
fn a_pinned_segment_cut_short_keeps_the_earlier_files() {
    let root = tempfile::tempdir().unwrap();
    {
        let mut w = PartitionWriter::open(root.path(), "t", 0, limits(10)).unwrap();
        let mut out = Vec::new();
        for n in 0..10 {
            w.push(n, 10, Some(row(n)), 0, &mut out).unwrap();
        }
    }
    let before = on_disk(root.path());
    let mut w = PartitionWriter::open(root.path(), "t", 0, limits(3)).unwrap();
    let mut out = Vec::new();
    for n in 0..5 {
        w.push(n, 10, Some(row(n)), 0, &mut out).unwrap();
    }
    w.finish(&mut out).unwrap();
    assert_eq!(out, []);
    assert_eq!(on_disk(root.path()), before);
    assert_eq!(before, (BTreeSet::from([(0, 9)]), 10));
    assert_eq!(temps(root.path()), 0);
}
