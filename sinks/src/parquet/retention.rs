//! Retention of the Parquet files: days of a table older than its retention are removed.
//!
//! Files are laid out by the day of their rows' time (`<table>/project=<p>/date=YYYY-MM-DD/`),
//! so a whole day goes at once, and only once all of it is older than the retention: a day is
//! removed when its end (the next midnight, UTC) is at least the retention before now. Nothing
//! newer than the retention is ever removed. Only committed files (`*.parquet`) are removed;
//! temporary files of a segment being written stay, and a directory goes once it is empty.
//!
//! Retention is per table and per project ([`Retention`]): raw event tables keep 90 days by
//! default, derived records (sessions, health partials, issues, detections, alerts, audit,
//! deploys) 400; a zero duration keeps a table for ever.

use std::io;
use std::path::Path;

use trellis_schemas::tables::Table;

use super::layout::EXTENSION;
pub use crate::retention::{ProjectRetention, Retention};

const DAY_MS: i64 = 86_400_000;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Removes, under `root`, the days of every table that are wholly older than their retention at
/// `now_ms`.
pub fn expire(root: &Path, retention: &Retention, now_ms: i64) -> io::Result<Expired> {
    let mut expired = Expired::default();
    for table in Table::all() {
        let dir = root.join(table.name());
        let Ok(projects) = std::fs::read_dir(&dir) else {
            continue;
        };
        for project_dir in projects {
            let project_dir = project_dir?.path();
            let Some(project) = dir_value(&project_dir, "project=") else {
                continue;
            };
            let project = percent_decode(&project);
            let Some(keep) = retention.of(table, &project) else {
                continue;
            };
            let cutoff_ms = now_ms.saturating_sub(keep.as_millis() as i64);
            for day_dir in std::fs::read_dir(&project_dir)? {
                let day_dir = day_dir?.path();
                let Some(day_ms) = dir_value(&day_dir, "date=")
                    .as_deref()
                    .and_then(day_start_ms)
                else {
                    continue;
                };
                if day_ms + DAY_MS <= cutoff_ms {
                    remove_files(&day_dir, &mut expired)?;
                }
            }
        }
    }
    Ok(expired)
}

/// Removes the committed files under `dir`, then the directories left empty.
fn remove_files(dir: &Path, expired: &mut Expired) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_files(&path, expired)?;
        } else if path.extension().is_some_and(|e| e == EXTENSION) {
            let bytes = entry.metadata()?.len();
            std::fs::remove_file(&path)?;
            expired.files += 1;
            expired.bytes += bytes;
        }
    }
    // A directory that still holds something (a file being written) stays.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

fn dir_value(path: &Path, prefix: &str) -> Option<String> {
    Some(
        path.file_name()?
            .to_str()?
            .strip_prefix(prefix)?
            .to_string(),
    )
}

fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// `YYYY-MM-DD` as the ms its day starts at, UTC.
fn day_start_ms(date: &str) -> Option<i64> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some(day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn file(root: &Path, rel: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"rows").unwrap();
    }

    fn left(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn whole_days_older_than_the_retention_go_and_nothing_newer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Now is 2026-12-06 12:00 UTC; events keep 10 days: the cutoff is 2026-11-26 12:00.
        let now = day_start_ms("2026-12-06").unwrap() + 12 * 3_600_000;
        let retention = Retention {
            events: Duration::from_secs(10 * 86_400),
            records: Duration::from_secs(20 * 86_400),
            tables: BTreeMap::from([("perf".to_string(), Duration::from_secs(2 * 86_400))]),
            projects: BTreeMap::from([(
                "forever".to_string(),
                ProjectRetention {
                    events: Some(Duration::ZERO),
                    ..Default::default()
                },
            )]),
            ..Retention::default()
        };
        for rel in [
            // Ends 2026-11-26 00:00, before the cutoff: goes.
            "events/project=p/date=2026-11-25/hour=23/events-0-0-9.parquet",
            // Ends 2026-11-27 00:00, after the cutoff (half of it is newer): stays.
            "events/project=p/date=2026-11-26/hour=00/events-0-10-19.parquet",
            // A file being written stays, and so does its directory.
            "events/project=p/date=2026-11-20/hour=05/.events-0-20.parquet.inprogress",
            "events/project=p/date=2026-11-20/hour=05/events-0-21-30.parquet",
            // perf keeps 2 days: the 3rd goes, the 4th stays.
            "perf/project=p/date=2026-12-03/hour=10/events-1-0-9.parquet",
            "perf/project=p/date=2026-12-04/hour=10/events-1-10-19.parquet",
            // Records keep 20 days.
            "sessions/project=p/date=2026-11-15/hour=10/sessions-0-0-9.parquet",
            "sessions/project=p/date=2026-11-17/hour=10/sessions-0-10-19.parquet",
            // A project that keeps its events for ever.
            "events/project=forever/date=2020-01-01/hour=00/events-0-0-9.parquet",
            // Not a day directory: left alone.
            "events/project=p/notes/readme.parquet",
        ] {
            file(root, rel);
        }
        let expired = expire(root, &retention, now).unwrap();
        assert_eq!(
            expired,
            Expired {
                files: 4,
                bytes: 16
            }
        );
        assert_eq!(
            left(root),
            [
                "events/project=forever/date=2020-01-01/hour=00/events-0-0-9.parquet",
                "events/project=p/date=2026-11-20/hour=05/.events-0-20.parquet.inprogress",
                "events/project=p/date=2026-11-26/hour=00/events-0-10-19.parquet",
                "events/project=p/notes/readme.parquet",
                "perf/project=p/date=2026-12-04/hour=10/events-1-10-19.parquet",
                "sessions/project=p/date=2026-11-17/hour=10/sessions-0-10-19.parquet",
            ]
        );
        // Emptied days are gone; the day with a file being written stays.
        assert!(!root.join("events/project=p/date=2026-11-25").exists());
        assert!(
            root.join("events/project=p/date=2026-11-20/hour=05")
                .exists()
        );
        // A second pass finds nothing more.
        assert_eq!(expire(root, &retention, now).unwrap(), Expired::default());
    }

    #[test]
    fn project_and_table_settings_override_the_defaults_in_order() {
        let d = |days: u64| Duration::from_secs(days * 86_400);
        let retention = Retention {
            tables: BTreeMap::from([("errors".to_string(), d(30))]),
            projects: BTreeMap::from([(
                "shop".to_string(),
                ProjectRetention {
                    records: Some(d(100)),
                    tables: BTreeMap::from([("errors".to_string(), d(7))]),
                    ..Default::default()
                },
            )]),
            ..Retention::default()
        };
        let events = Table::named("events").unwrap();
        let errors = Table::named("errors").unwrap();
        let issues = Table::named("issues").unwrap();
        assert_eq!(retention.of(events, "other"), Some(d(90)));
        assert_eq!(retention.of(issues, "other"), Some(d(400)));
        assert_eq!(retention.of(errors, "other"), Some(d(30)));
        assert_eq!(retention.of(errors, "shop"), Some(d(7)));
        assert_eq!(retention.of(issues, "shop"), Some(d(100)));
        assert_eq!(retention.of(events, "shop"), Some(d(90)));
        assert_eq!(retention.validate(), Ok(()));
        let bad = Retention {
            tables: BTreeMap::from([("eventz".to_string(), d(1))]),
            ..Retention::default()
        };
        assert_eq!(bad.validate(), Err("no table \"eventz\"".to_string()));
    }
}
