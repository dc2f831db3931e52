//! Where rows go on disk: tables, hive-style partition directories, file names by offset range,
//! and the scan that finds what an earlier run already wrote for an input partition.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The extension of finished files.
pub const EXTENSION: &str = "parquet";
/// The suffix of files being written (they also start with a dot, so readers skip them).
pub const TEMP_SUFFIX: &str = ".parquet.inprogress";

/// A table: one directory under the root, named by the registry.
pub use trellis_schemas::tables::Table;

/// The UTC date and hour of a time in ms since the epoch: `(year, month, day, hour)`.
pub fn date_hour(ms: i64) -> (i64, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = (secs.rem_euclid(86_400) / 3600) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, hour)
}

/// The start of the UTC hour holding `ms`.
pub fn hour_start(ms: i64) -> i64 {
    ms.div_euclid(3_600_000) * 3_600_000
}

/// A project name as a directory value: bytes other than ASCII letters, digits, `-`, `_` and `.`
/// are percent-encoded (DataFusion decodes them back).
pub fn encode_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The directory of one (table, project, hour): `ROOT/<table>/project=<p>/date=YYYY-MM-DD/hour=HH`.
pub fn partition_dir(root: &Path, table: Table, project: &str, ms: i64) -> PathBuf {
    let (y, m, d, h) = date_hour(ms);
    root.join(table.name())
        .join(format!("project={}", encode_value(project)))
        .join(format!("date={y:04}-{m:02}-{d:02}"))
        .join(format!("hour={h:02}"))
}

/// The name of a finished file: `<topic>-<partition>-<first>-<last>.parquet`.
pub fn file_name(topic: &str, partition: u32, first: u64, last: u64) -> String {
    format!("{topic}-{partition}-{first}-{last}.{EXTENSION}")
}

/// The name of a file being written for the segment that starts at `first`.
pub fn temp_name(topic: &str, partition: u32, first: u64) -> String {
    format!(".{topic}-{partition}-{first}{TEMP_SUFFIX}")
}

/// The offset range of a finished file of `topic`/`partition`, if `name` is one.
pub fn parse_file_name(name: &str, topic: &str, partition: u32) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(topic)?.strip_prefix('-')?;
    let rest = rest
        .strip_prefix(&partition.to_string())?
        .strip_prefix('-')?;
    let rest = rest.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    let (first, last) = rest.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// What an earlier run left on disk for one input partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Existing {
    /// The offset ranges of finished files, first offset to last (inclusive).
    pub ranges: BTreeMap<u64, u64>,
    /// Temporary files of unfinished segments.
    pub temps: Vec<PathBuf>,
}

/// Lists the finished ranges and temporary files of `topic`/`partition` under `root`.
///
/// This walks every table directory; it runs once per partition assignment.
pub fn scan(root: &Path, topic: &str, partition: u32) -> io::Result<Existing> {
    let mut existing = Existing::default();
    let temp_prefix = format!(".{topic}-{partition}-");
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if entry.file_type()?.is_dir() {
                if !name.starts_with('.') {
                    stack.push(entry.path());
                }
            } else if let Some(rest) = name.strip_prefix(&temp_prefix) {
                let first = rest.strip_suffix(TEMP_SUFFIX);
                if first.is_some_and(|f| f.parse::<u64>().is_ok()) {
                    existing.temps.push(entry.path());
                }
            } else if let Some((first, last)) = parse_file_name(name, topic, partition) {
                let end = existing.ranges.entry(first).or_insert(last);
                *end = (*end).max(last);
            }
        }
    }
    Ok(existing)
}

/// Creates `dir` and its missing parents, recording each parent whose entries changed (to fsync).
pub fn create_dir(dir: &Path, changed: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    for m in missing {
        if let Some(parent) = m.parent() {
            changed.insert(parent.to_path_buf());
        }
    }
    Ok(())
}

/// Tables an earlier release stored under another name: `(old directory, table)`.
const RENAMED: &[(&str, Table)] = &[("aggregates", Table::HealthPartials)];

/// Moves the files of tables an earlier release stored under another name to the table's
/// directory, keeping their partition paths, so a data directory from before a rename is read
/// whole. Runs when the sink starts, before anything is written.
pub fn migrate_renamed(root: &Path) -> io::Result<()> {
    for &(old, table) in RENAMED {
        let from = root.join(old);
        if !from.is_dir() {
            continue;
        }
        let to = root.join(table.name());
        tracing::info!(from = %from.display(), to = %to.display(), "Moving a renamed table's files.");
        if to.exists() {
            move_into(&from, &to)?;
        } else {
            fs::rename(&from, &to)?;
        }
        sync_dir(root)?;
    }
    Ok(())
}

/// Moves every file under `from` to the same relative path under `to`, then removes `from`.
/// A file already at its destination (the same segment, written again) is dropped.
fn move_into(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            move_into(&entry.path(), &target)?;
        } else if target.exists() {
            fs::remove_file(entry.path())?;
        } else {
            fs::rename(entry.path(), &target)?;
        }
    }
    sync_dir(to)?;
    fs::remove_dir(from)
}

/// Makes a directory's entries (renames, new files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_schemas::Kind;

    #[test]
    fn a_renamed_tables_files_move_to_its_new_name() {
        let root = tempfile::tempdir().unwrap();
        let old = |hour: &str| {
            root.path()
                .join("aggregates/project=p/date=2026-11-25")
                .join(hour)
        };
        let new = |hour: &str| {
            (root
                .path()
                .join("health_partials/project=p/date=2026-11-25"))
            .join(hour)
        };
        // Only the old directory: it is renamed.
        fs::create_dir_all(old("hour=10")).unwrap();
        fs::write(old("hour=10").join("aggregates-0-0-9.parquet"), b"a").unwrap();
        migrate_renamed(root.path()).unwrap();
        assert!(!root.path().join("aggregates").exists());
        assert_eq!(
            fs::read(new("hour=10").join("aggregates-0-0-9.parquet")).unwrap(),
            b"a"
        );
        // Both: the old files join the new ones, and a segment in both is kept once.
        fs::create_dir_all(old("hour=10")).unwrap();
        fs::create_dir_all(old("hour=11")).unwrap();
        fs::write(old("hour=10").join("aggregates-0-0-9.parquet"), b"a").unwrap();
        fs::write(old("hour=11").join("aggregates-0-10-19.parquet"), b"b").unwrap();
        migrate_renamed(root.path()).unwrap();
        assert!(!root.path().join("aggregates").exists());
        assert_eq!(
            fs::read(new("hour=10").join("aggregates-0-0-9.parquet")).unwrap(),
            b"a"
        );
        assert_eq!(
            fs::read(new("hour=11").join("aggregates-0-10-19.parquet")).unwrap(),
            b"b"
        );
        // Nothing to move: nothing happens.
        migrate_renamed(root.path()).unwrap();
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn dates_and_hours_are_utc() {
        assert_eq!(date_hour(0), (1970, 1, 1, 0));
        // 2024-02-29T23:59:59.999Z
        assert_eq!(date_hour(1_709_251_199_999), (2024, 2, 29, 23));
        assert_eq!(date_hour(1_709_251_200_000), (2024, 3, 1, 0));
        assert_eq!(date_hour(-1), (1969, 12, 31, 23));
        assert_eq!(hour_start(1_709_251_199_999), 1_709_247_600_000);
        let dir = partition_dir(Path::new("/r"), Table::Sessions, "a b/c", 1_709_251_200_000);
        assert_eq!(
            dir,
            Path::new("/r/sessions/project=a%20b%2Fc/date=2024-03-01/hour=00")
        );
    }

    #[test]
    fn file_names_parse_back_only_for_their_partition() {
        let name = file_name("t.events", 3, 100, 199);
        assert_eq!(name, "t.events-3-100-199.parquet");
        assert_eq!(parse_file_name(&name, "t.events", 3), Some((100, 199)));
        assert_eq!(parse_file_name(&name, "t.events", 31), None);
        assert_eq!(parse_file_name(&name, "t", 3), None);
        assert_eq!(parse_file_name(&name, "t.events-3", 100), None);
        assert_eq!(
            parse_file_name("t.events-3-9-2.parquet", "t.events", 3),
            None
        );
        assert_eq!(
            parse_file_name(&temp_name("t.events", 3, 100), "t.events", 3),
            None
        );
    }

    #[test]
    fn scan_finds_ranges_and_temps_of_one_partition() {
        let root = tempfile::tempdir().unwrap();
        let dir = partition_dir(root.path(), Table::Event(Kind::Error), "p", 0);
        fs::create_dir_all(&dir).unwrap();
        for name in [
            file_name("e", 1, 0, 9),
            file_name("e", 1, 10, 19),
            file_name("e", 2, 0, 99),
            temp_name("e", 1, 20),
            temp_name("e", 2, 100),
        ] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        let other = partition_dir(root.path(), Table::Sessions, "p", 0);
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join(file_name("e", 1, 10, 19)), b"x").unwrap();
        let found = scan(root.path(), "e", 1).unwrap();
        assert_eq!(found.ranges, BTreeMap::from([(0, 9), (10, 19)]));
        assert_eq!(found.temps, vec![dir.join(temp_name("e", 1, 20))]);
        assert_eq!(
            scan(&root.path().join("missing"), "e", 1).unwrap(),
            Existing::default()
        );
    }
}
