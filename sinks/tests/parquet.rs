//! The Parquet sink on the embedded log: exact row counts through `query`, dead letters, files
//! rolled by size with contiguous offset ranges, and a full disk waited out.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Outputs, counts, files, number, publish, stored_counts, unique};
use trellis_bus::embedded::EmbeddedBus;
use trellis_bus::{Bus, Message, config::EmbeddedConfig};
use trellis_schemas::{avro, topics};
use trellis_sinks::parquet::{self, ParquetConfig, ParquetMetrics};
use trellis_sinks::query::{OutputFormat, query};

fn embedded(dir: &std::path::Path) -> Arc<dyn Bus> {
    Arc::new(
        EmbeddedBus::open(&EmbeddedConfig {
            path: dir.join("bus.redb"),
            ..EmbeddedConfig::default()
        })
        .unwrap(),
    )
}

/// A sink under `root` with a group of its own that ends segments and polls quickly.
fn quick(root: &std::path::Path) -> ParquetConfig {
    ParquetConfig {
        root: root.to_path_buf(),
        group: unique("sink"),
        max_age: Duration::from_millis(300),
        poll_timeout: Duration::from_millis(100),
        // The fleet's times are fixed in 2026: no retention pass may take them.
        retention: trellis_sinks::parquet::retention::Retention::off(),
        ..ParquetConfig::default()
    }
}

/// Starts the sink; returns its stop switch and task.
fn start(
    bus: &Arc<dyn Bus>,
    names: &topics::Names,
    config: ParquetConfig,
    metrics: Arc<ParquetMetrics>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), parquet::Error>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(parquet::run_with_metrics(
        bus.clone(),
        names.clone(),
        config,
        metrics,
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

/// A stage that replays its input after a crash writes its records again, at new offsets: the
/// files hold both copies, and `trellis query` counts each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_replaying_stage_wrote_twice_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("replay")));
    let outputs = Outputs::of_fleet(200, 3);
    let expected = outputs.expected();
    let mut twice = outputs.messages(&names, 0);
    twice.extend(outputs.messages(&names, 0));
    publish(&bus, &names, twice).await;

    let config = quick(&root);
    let (stop, task) = start(&bus, &names, config, Arc::new(ParquetMetrics::default()));
    let doubled: std::collections::BTreeMap<_, _> =
        expected.iter().map(|(t, n)| (*t, 2 * n)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_counts(&root).await != doubled {
        assert!(
            Instant::now() < deadline,
            "incomplete after 120 s: {:?} of {doubled:?}",
            stored_counts(&root).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(counts(&root).await, expected, "each record once");
    // What analysts compute over the views is what one copy gives.
    let errors = number(&root, "SELECT count(DISTINCT common.event_id) FROM errors").await;
    assert_eq!(errors, expected["errors"]);
    let newest = number(
        &root,
        "SELECT sum(i.event_count) FROM issues i JOIN \
         (SELECT issue_id, max(version) AS newest FROM issues GROUP BY issue_id) n \
         ON i.issue_id = n.issue_id AND i.version = n.newest",
    )
    .await;
    assert_eq!(newest, expected["errors"]);
    // Views combine as tables do (the benchmark scripts' check).
    let mut union = String::new();
    for t in [
        "events",
        "errors",
        "perf",
        "session_updates",
        "notifications",
        "transactions",
    ] {
        if !union.is_empty() {
            union.push_str(" UNION ALL ");
        }
        union.push_str(&format!("SELECT common.event_id AS event_id FROM {t}"));
    }
    let ids = number(
        &root,
        &format!("SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM ({union})"),
    )
    .await;
    assert_eq!(ids as usize, outputs.events.len());
    // A filter on the partition columns still answers through the view.
    let project = number(
        &root,
        "SELECT count(*) FROM sessions WHERE project = 'plants'",
    )
    .await;
    assert_eq!(project, expected["sessions"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_lands_in_parquet_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("pq")));
    let outputs = Outputs::of_fleet(400, 5);
    let expected = outputs.expected();
    let garbage = 7;
    publish(&bus, &names, outputs.messages(&names, garbage)).await;

    let metrics = Arc::new(ParquetMetrics::default());
    let config = ParquetConfig {
        max_rows: 3000,
        ..quick(&root)
    };
    let (stop, task) = start(&bus, &names, config, metrics.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = counts(&root).await;
        for (table, n) in &seen {
            assert!(
                n <= &expected[table],
                "{table}: {n} rows, more than {}",
                expected[table]
            );
        }
        if seen == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "incomplete after 120 s: {seen:?} of {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    assert_eq!(counts(&root).await, expected, "after shutdown");
    let events = outputs.events.len() as u64;
    println!(
        "{expected:?}: {events} events, {} files",
        files(&root, &names).files
    );
    assert!(
        expected.values().all(|&n| n > 0),
        "every table gets rows: {expected:?}"
    );
    for table in [
        "events",
        "errors",
        "perf",
        "transactions",
        "session_updates",
        "notifications",
    ] {
        let distinct = number(
            &root,
            &format!("SELECT count(DISTINCT get_field(common, 'event_id')) FROM {table}"),
        )
        .await;
        assert_eq!(distinct, expected[table], "{table}: no event twice");
    }
    // The content, not only the counts: an event round-trips through its file.
    let first = &outputs.events[0];
    let id = &first.common().event_id;
    let table = first.kind().table();
    let json = query(
        &root,
        &format!("SELECT common FROM {table} WHERE get_field(common, 'event_id') = '{id}'"),
        OutputFormat::Json,
    )
    .await
    .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{json}");
    assert_eq!(
        rows[0]["common"]["timestamp_ms"].as_i64(),
        Some(first.common().timestamp_ms)
    );

    // Partition pruning columns: the hour directories split the rows exactly.
    let by_hour: u64 = number(
        &root,
        "SELECT sum(n) FROM (SELECT date, hour, count(*) AS n FROM events GROUP BY date, hour)",
    )
    .await;
    assert_eq!(by_hour, expected["events"]);
    let (y, m, d, h) = parquet::layout::date_hour(first.common().timestamp_ms);
    let in_hour = outputs
        .events
        .iter()
        .filter(|e| {
            e.kind() == first.kind()
                && parquet::layout::date_hour(e.common().timestamp_ms) == (y, m, d, h)
        })
        .count() as u64;
    let sql = format!(
        "SELECT count(*) FROM {table} WHERE project = 'plants' \
         AND date = DATE '{y:04}-{m:02}-{d:02}' AND hour = {h}"
    );
    assert_eq!(number(&root, &sql).await, in_hour, "{sql}");
    let sessions_project = number(
        &root,
        "SELECT count(*) FROM sessions WHERE project = 'plants'",
    )
    .await;
    assert_eq!(sessions_project, expected["sessions"]);
    // Issues: every version is a row; each issue's newest version counts every error once.
    let newest_counts = number(
        &root,
        "SELECT sum(i.event_count) FROM issues i JOIN \
         (SELECT issue_id, max(version) AS newest FROM issues GROUP BY issue_id) n \
         ON i.issue_id = n.issue_id AND i.version = n.newest",
    )
    .await;
    assert_eq!(newest_counts, expected["errors"]);

    // Dead letters: counted, and on the dead-letter topic with the sink's stage.
    assert_eq!(metrics.dead_letters(&names.events), garbage as u64);
    assert_eq!(metrics.dead_letters(&names.sessions), garbage as u64);
    assert!(
        metrics
            .encode()
            .contains("trellis_sink_parquet_dead_letters_total")
    );
    let rows_metric: u64 = expected.keys().map(|t| metrics.rows_written(t)).sum();
    assert_eq!(rows_metric, expected.values().sum::<u64>());
    let mut dlq = bus.consumer(&unique("dlq"), &[&names.dlq]).await.unwrap();
    let mut letters = Vec::new();
    for _ in 0..20 {
        letters.extend(dlq.poll(1000, Duration::from_millis(100)).await.unwrap());
    }
    assert_eq!(letters.len(), 2 * garbage);
    let letter = trellis_bus::DeadLetter::from_record(&letters[0]).unwrap();
    assert_eq!(letter.stage, parquet::STAGE);

    // The table format prints a header.
    for table in ["events", "sessions"] {
        let text = query(
            &root,
            &format!("SELECT count(*) AS n FROM {table}"),
            OutputFormat::Table,
        )
        .await
        .unwrap();
        assert!(text.contains("| n "), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_roll_by_size_with_contiguous_offset_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("roll")));
    for name in names.all() {
        bus.create_topic(name, 1).await.unwrap();
    }
    let events: Vec<_> = (0..4500)
        .map(|n| trellis_schemas::sample::event("p", n % 30, n))
        .collect();
    let messages: Vec<Message> = events
        .iter()
        .map(|e| {
            Message::new(
                names.events.as_str(),
                e.partition_key(),
                avro::encode(e).unwrap(),
            )
        })
        .collect();
    bus.producer().unwrap().publish(messages).await.unwrap();

    let metrics = Arc::new(ParquetMetrics::default());
    let config = ParquetConfig {
        root: root.clone(),
        group: unique("sink"),
        max_rows: 1000,
        max_age: Duration::from_secs(3600),
        poll_max: 300,
        ..ParquetConfig::default()
    };
    let (stop, task) = start(&bus, &names, config, metrics.clone());
    // By count alone, four segments of 1000 end; the last 500 wait for the age limit.
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(&root, &names)
        .ranges
        .values()
        .map(|r| r.len())
        .sum::<usize>()
        < 4
    {
        assert!(Instant::now() < deadline, "no files after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = files(&root, &names);
    assert!(before.temps > 0, "the last 500 are still being written");
    assert_eq!(
        before.ranges[&(names.events.clone(), 0)],
        [(0, 999), (1000, 1999), (2000, 2999), (3000, 3999)]
            .into_iter()
            .collect(),
    );
    assert_eq!(
        number(&root, "SELECT count(*) FROM events").await
            + number(&root, "SELECT count(*) FROM errors").await
            + number(&root, "SELECT count(*) FROM perf").await
            + number(&root, "SELECT count(*) FROM transactions").await
            + number(&root, "SELECT count(*) FROM session_updates").await
            + number(&root, "SELECT count(*) FROM notifications").await,
        4000
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let after = files(&root, &names);
    assert_eq!(after.temps, 0);
    assert_eq!(
        after.ranges[&(names.events.clone(), 0)],
        [
            (0, 999),
            (1000, 1999),
            (2000, 2999),
            (3000, 3999),
            (4000, 4499)
        ]
        .into_iter()
        .collect(),
    );
    // One file per (kind, hour) of each segment.
    let expected_files: usize = events
        .chunks(1000)
        .map(|segment| {
            segment
                .iter()
                .map(|e| {
                    (
                        e.kind(),
                        parquet::layout::hour_start(e.common().timestamp_ms),
                    )
                })
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .sum();
    assert_eq!(after.files, expected_files);
    let total: u64 = [
        "events",
        "errors",
        "perf",
        "transactions",
        "session_updates",
        "notifications",
    ]
    .iter()
    .map(|t| metrics.rows_written(t))
    .sum();
    assert_eq!(total, 4500);
}

/// Unmounts a test filesystem when the test ends, also when it fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The sink's root on a full disk: it writes nothing, counts its restarts and never exits; once
/// space returns, every row lands, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_sink_until_space_returns_and_then_every_row_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("TRELLIS_TEST_NO_MOUNT").is_some(),
            "mounting an 8 MB tmpfs failed (it needs root or CAP_SYS_ADMIN); set \
             TRELLIS_TEST_NO_MOUNT=1 to skip this test knowingly"
        );
        eprintln!("skipped: no tmpfs, and TRELLIS_TEST_NO_MOUNT is set");
        return;
    }
    let _unmount = Unmount(mount.clone());
    let root = mount.join("parquet");
    std::fs::create_dir(&root).unwrap();
    // Fill the disk to the last page.
    let ballast = mount.join("ballast");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&ballast).unwrap();
        while file.write_all(&[7u8; 1 << 16]).is_ok() {}
        let _ = file.flush();
    }

    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("full")));
    let outputs = Outputs::of_fleet(200, 5);
    let expected = outputs.expected();
    publish(&bus, &names, outputs.messages(&names, 0)).await;
    let config = quick(&root);
    let metrics = Arc::new(ParquetMetrics::default());
    let (stop, task) = start(&bus, &names, config, metrics.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.restarts("io") < 2 {
        assert!(!task.is_finished(), "the sink ended on a full disk");
        assert!(
            Instant::now() < deadline,
            "no restart counted on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!task.is_finished(), "the sink ended on a full disk");
    assert_eq!(counts(&root).await.values().sum::<u64>(), 0, "nothing fits");

    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while counts(&root).await != expected {
        assert!(
            Instant::now() < deadline,
            "incomplete after space returned: {:?} of {expected:?}",
            counts(&root).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stored_counts(&root).await, expected, "no row stored twice");
    println!(
        "{} restarts on the full disk; afterwards {expected:?}",
        metrics.restarts("io")
    );
}

/// Retention in the running sink: with the event tables keeping a day, every event file of the
/// fleet (days in the past) is removed once written, and the derived tables, kept for ever,
/// stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_sink_removes_what_is_past_its_retention_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("retention")));
    let outputs = Outputs::of_fleet(100, 11);
    let expected = outputs.expected();
    publish(&bus, &names, outputs.messages(&names, 0)).await;
    let config = ParquetConfig {
        retention: trellis_sinks::parquet::retention::Retention {
            interval: Duration::from_millis(200),
            events: Duration::from_secs(86_400),
            records: Duration::ZERO,
            ..Default::default()
        },
        ..quick(&root)
    };
    let metrics = Arc::new(ParquetMetrics::default());
    let (stop, task) = start(&bus, &names, config, metrics.clone());
    let event_tables = trellis_schemas::Kind::ALL.map(|k| k.table().name());
    let kept: std::collections::BTreeMap<_, _> = expected
        .iter()
        .filter(|(t, n)| !event_tables.contains(t) && **n > 0)
        .map(|(t, n)| (*t, *n))
        .collect();
    // Every event row written (rows, not files: the files metric counts a segment's files of a
    // table once; a restart after a lost race with the retention pass writes some again), and
    // none of them left on disk.
    let event_rows: u64 = expected
        .iter()
        .filter(|(t, _)| event_tables.contains(t))
        .map(|(_, n)| n)
        .sum();
    let rows_written = || {
        event_tables
            .iter()
            .map(|t| metrics.rows_written(t))
            .sum::<u64>()
    };
    // Files on disk, per event table (not through DataFusion: a query that lists a file the
    // retention pass removes before it is read fails, and is run again by whoever asked).
    let on_disk = |table: &str| {
        let mut n = 0;
        let mut stack = vec![root.join(table)];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    n += 1;
                }
            }
        }
        n
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut records = std::collections::BTreeMap::new();
        for table in kept.keys() {
            let sql = format!("SELECT count(*) FROM stored_{table}");
            records.insert(*table, number(&root, &sql).await);
        }
        let events_left: u64 = event_tables.iter().map(|t| on_disk(t)).sum();
        if records == kept
            && events_left == 0
            && rows_written() >= event_rows
            && metrics.expired_files() > 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s: {records:?} of {kept:?}, {events_left} event files left, {} of \
             {event_rows} event rows written, {} files removed",
            rows_written(),
            metrics.expired_files()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
