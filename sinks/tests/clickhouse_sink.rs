//! The ClickHouse sink against the real server (`TEST_TRELLIS_CLICKHOUSE_URL`): a normal run
//! writes every row exactly once and the rollups agree; rows the server refuses and payloads that
//! do not decode go to the dead-letter topic with the reason; ClickHouse unreachable for 60 s
//! mid-stream loses and duplicates nothing.

mod clickhouse_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse_support::*;
use trellis_bus::{Bus, DeadLetter, Message};
use trellis_schemas::records::Detection;
use trellis_schemas::{AnalyticsEvent, Common, Event, avro, topics};
use trellis_sinks::clickhouse::batch::Batch;
use trellis_sinks::clickhouse::encode::plan;
use trellis_sinks::clickhouse::migrations::{ServerVersion, migrations};
use trellis_sinks::clickhouse::{self, migrate};

fn embedded(dir: &std::path::Path) -> Arc<dyn Bus> {
    let config = trellis_bus::config::EmbeddedConfig {
        path: dir.join("bus.redb"),
        ..Default::default()
    };
    Arc::new(trellis_bus::embedded::EmbeddedBus::open(&config).unwrap())
}

type Stop = tokio::sync::oneshot::Sender<()>;
type Task = tokio::task::JoinHandle<Result<(), clickhouse::Error>>;

fn start(
    bus: &Arc<dyn Bus>,
    names: &topics::Names,
    config: clickhouse::ClickHouseConfig,
) -> (Stop, Task) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(clickhouse::run(
        bus.clone(),
        names.clone(),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_run_writes_every_row_once_and_the_rollups_agree() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("normal")));
    create_topics(&bus, &names).await;
    let data = fleet_data(300, 5);
    let expected = data.expected();
    publish(&bus, &data.messages(&names)).await;

    let db = unique("ch_normal");
    let config = config(&db);
    let first = migrate(&config).await.unwrap();
    assert_eq!(first.applied, [1, 2, 3, 4, 5, 6, 7, 8]);
    let (stop, task) = start(&bus, &names, config.clone());
    wait_for(&db, &expected, Duration::from_secs(120)).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    assert_exact(&db, &expected);
    let events: u64 = expected
        .iter()
        .filter(|(t, _)| {
            matches!(
                trellis_schemas::tables::Table::named(t),
                Some(trellis_schemas::tables::Table::Event(_))
            )
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        count(&db, "SELECT uniqExactMerge(events) FROM events_daily"),
        events,
        "events_daily counts every event once"
    );
    assert_eq!(
        count(&db, "SELECT uniqExactMerge(sessions) FROM release_health"),
        expected["sessions"]
    );
    // Migrations ran once: a second run applies nothing.
    let again = migrate(&config).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(
        query(
            &db,
            "SELECT version FROM schema_migrations ORDER BY version"
        ),
        "1\n2\n3\n4\n5\n6\n7\n8\n"
    );
    // Each detection's newest version wins: its status is the last one the stage emitted.
    let mut last: BTreeMap<&str, &Detection> = BTreeMap::new();
    for d in &data.detections {
        last.insert(&d.detection_id, d);
    }
    let statuses = query(
        &db,
        "SELECT detection_id, status FROM detections FINAL ORDER BY detection_id",
    );
    let want: String = last
        .iter()
        .map(|(id, d)| format!("{id}\t{}\n", d.status))
        .collect();
    assert_eq!(statuses, want);
    assert!(want.contains("confirmed"), "{want}");
    // Each issue's newest version wins: its count is every error grouped into it.
    assert_eq!(
        count(&db, "SELECT sum(event_count) FROM issues FINAL"),
        expected["errors"],
        "the newest versions of the issues count every error once"
    );
    assert_eq!(
        count(&db, "SELECT max(version) FROM issues FINAL"),
        data.issues.iter().map(|i| i.version as u64).max().unwrap()
    );
    println!("normal run: {expected:?}");
    execute(&format!("DROP DATABASE {db}"));
}

fn analytics(name: &str, n: usize) -> Event {
    Event::Analytics(AnalyticsEvent {
        common: Common {
            event_id: format!("dlq-{n}"),
            project: "plants".into(),
            timestamp_ms: 1_790_000_000_000 + n as i64,
            received_at_ms: 1_790_000_000_000,
            device_id: Some(format!("d-{n}")),
            ..Default::default()
        },
        name: name.into(),
        screen: None,
        properties: "{}".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_and_undecodable_payloads_are_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("dlq")));
    create_topics(&bus, &names).await;
    let db = unique("ch_dlq");
    let config = config(&db);
    migrate(&config).await.unwrap();
    // A server-side rule the data can break (18.16 has no CHECK constraints; throwIf does the
    // same): ClickHouse refuses any batch holding an event named `poison`, with Code 395.
    execute(&format!(
        "ALTER TABLE {db}.events ADD COLUMN poison UInt8 MATERIALIZED throwIf(name = 'poison')"
    ));
    let mut messages: Vec<Message> = (0..40)
        .map(|n| {
            let name = if n == 17 { "poison" } else { "opened_app" };
            let e = analytics(name, n);
            Message::new(
                names.events.as_str(),
                e.partition_key(),
                avro::encode(&e).unwrap(),
            )
        })
        .collect();
    messages.push(Message::new(
        names.events.as_str(),
        b"k".to_vec(),
        b"not avro".to_vec(),
    ));
    publish(&bus, &messages).await;

    let (stop, task) = start(&bus, &names, config.clone());
    let mut reader = bus
        .consumer(&unique("dlq-reader"), &[&names.dlq])
        .await
        .unwrap();
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while letters.len() < 2 {
        for r in reader.poll(10, Duration::from_millis(200)).await.unwrap() {
            letters.push(DeadLetter::from_record(&r).unwrap());
        }
        assert!(Instant::now() < deadline, "dead letters: {letters:?}");
    }
    wait_for(&db, &[("events", 39)].into(), Duration::from_secs(30)).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    letters.sort_by(|a, b| a.reason.cmp(&b.reason));
    assert_eq!(letters[0].stage, "sink.clickhouse");
    assert!(
        letters[0]
            .reason
            .starts_with("clickhouse refused the row for events: ")
            && letters[0].reason.contains("Code: 395"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        avro::decode(&letters[0].payload).unwrap().common().event_id,
        "dlq-17"
    );
    assert!(
        letters[1].reason.starts_with("payload does not decode"),
        "{}",
        letters[1].reason
    );
    assert_eq!(letters[1].payload, b"not avro");
    assert_eq!(
        count(&db, "SELECT count() FROM events WHERE event_id = 'dlq-17'"),
        0
    );
    // Everything was handled, so everything is committed.
    let mut committed = 0;
    for p in 0..PARTITIONS {
        committed += reader_committed(&bus, &config.group, &names.events, p).await;
    }
    assert_eq!(committed, messages.len() as u64);
    execute(&format!("DROP DATABASE {db}"));
}

async fn reader_committed(bus: &Arc<dyn Bus>, group: &str, topic: &str, partition: u32) -> u64 {
    let consumer = bus.consumer(group, &[topic]).await.unwrap();
    consumer
        .committed(topic, partition)
        .await
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_unreachable_for_60_seconds_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("outage")));
    create_topics(&bus, &names).await;
    let data = fleet_data(300, 9);
    let expected = data.expected();
    let messages = data.messages(&names);
    let (first, second) = messages.split_at(messages.len() / 2);
    publish(&bus, first).await;

    let proxy = Proxy::start(&url()).await;
    let db = unique("ch_outage");
    let mut config = config(&db);
    config.url = proxy.url.clone();
    config.batch_rows = 300;
    migrate(&config).await.unwrap();
    let (stop, task) = start(&bus, &names, config.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while final_counts(&db).values().sum::<u64>() < 1000 {
        assert!(Instant::now() < deadline, "nothing written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.set_cut(true);
    let cut_at = Instant::now();
    publish(&bus, second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = final_counts(&db);
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(cut_at.elapsed())).await;
    assert_eq!(
        final_counts(&db),
        during,
        "nothing is written while ClickHouse is cut off"
    );
    assert!(during.values().sum::<u64>() < expected.values().sum::<u64>());
    proxy.set_cut(false);

    wait_for(&db, &expected, Duration::from_secs(120)).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_exact(&db, &expected);
    println!("outage: {during:?} during the cut, {expected:?} after");
    execute(&format!("DROP DATABASE {db}"));
}

/// Inserts a current server is given, in chDB: the whole batch in one insert (it should be
/// refused), then the sink's inserts (they should all pass); answers what happened and the count.
const CHDB_INSERTS: &str = r#"
import json, sys
from chdb import session
spec = json.load(open(sys.argv[1]))
s = session.Session(spec["path"])
s.query("CREATE DATABASE IF NOT EXISTS " + spec["db"])
for sql in spec["migrations"]:
    s.query(sql)
out = {"version": str(s.query("SELECT version()", "TSV")).strip()}
try:
    s.query(spec["whole"])
    out["whole"] = "written"
except Exception as e:
    out["whole"] = str(e)
for sql in spec["inserts"]:
    s.query(sql)
out["count"] = int(str(s.query("SELECT count() FROM %s.events" % spec["db"], "TSV")).strip())
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_decades_apart_are_written_in_inserts_a_current_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("months")));
    create_topics(&bus, &names).await;
    let db = unique("ch_months");
    let config = config(&db);
    migrate(&config).await.unwrap();
    // 300 events a month apart from 2000 on: about 300 monthly partitions in one batch.
    let events: Vec<Event> = (0..300)
        .map(|n| {
            let mut e = analytics("opened_app", n);
            e.common_mut().timestamp_ms = 946_684_800_000 + n as i64 * 30 * 86_400_000;
            e
        })
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
    publish(&bus, &messages).await;

    let (stop, task) = start(&bus, &names, config.clone());
    wait_for(&db, &[("events", 300)].into(), Duration::from_secs(60)).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(count(&db, "SELECT count() FROM events"), 300);
    let months = count(&db, "SELECT uniqExact(toYYYYMM(event_date)) FROM events");
    assert!(months > 250, "{months} months");

    // 18.16 has no partition limit per insert; ClickHouse 26.x refuses more than 100. The same
    // rows, cut into inserts as the sink cuts them, go into chDB 26.9.
    let mut batch = Batch::default();
    let now = Instant::now();
    for (offset, m) in messages.iter().enumerate() {
        let record = trellis_bus::Record {
            topic: m.topic.clone(),
            partition: 0,
            offset: offset as u64,
            key: m.key.clone(),
            payload: m.payload.clone(),
            headers: vec![],
            timestamp_ms: 0,
        };
        batch.push(&names, record, now);
    }
    let (target, rows) = batch.tables().next().unwrap();
    let insert = |range: std::ops::Range<usize>, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, rows.bytes(range)).unwrap();
        plan(target).insert_sql(&db, target.name()).replace(
            " FORMAT RowBinary",
            &format!(" FROM INFILE '{}' FORMAT RowBinary", path.display()),
        )
    };
    let inserts = rows.inserts();
    assert!(inserts.len() > 1, "{inserts:?}");
    let modern = ServerVersion {
        major: 26,
        minor: 9,
    };
    let spec = serde_json::json!({
        "path": dir.path().join("chdb").display().to_string(),
        "db": db,
        "migrations": migrations(&db, modern).into_iter().flat_map(|m| m.statements).collect::<Vec<_>>(),
        "whole": insert(0..rows.len(), "whole.bin"),
        "inserts": inserts.iter().enumerate().map(|(i, r)| insert(r.clone(), &format!("{i}.bin"))).collect::<Vec<_>>(),
    });
    let result = run_chdb(dir.path(), CHDB_INSERTS, &spec);
    assert!(
        result["whole"].as_str().unwrap().contains("Code: 252"),
        "one insert of every month is what a current server refuses: {result}"
    );
    assert_eq!(result["count"], 300, "{result}");
    execute(&format!("DROP DATABASE {db}"));
}

const DAY_MS: i64 = 86_400_000;

/// Events of `project` on days `ago` before now, named `{project}-{ago}`.
fn aged(project: &str, ago: &[i64], now_ms: i64) -> Vec<Event> {
    ago.iter()
        .map(|days| {
            let mut e = analytics("opened_app", 0);
            let common = e.common_mut();
            common.project = project.into();
            common.event_id = format!("{project}-{days}");
            common.timestamp_ms = now_ms - days * DAY_MS;
            e
        })
        .collect()
}

/// The retention of the retention tests: events keep 90 days, project `long` 400, project
/// `short` 10.
fn aged_retention(interval: Duration) -> trellis_sinks::retention::Retention {
    use trellis_sinks::retention::{ProjectRetention, Retention};
    let days = |n: u64| Some(Duration::from_secs(n * 86_400));
    Retention {
        interval,
        events: Duration::from_secs(90 * 86_400),
        projects: [("long", days(400)), ("short", days(10))]
            .into_iter()
            .map(|(p, events)| {
                let rules = ProjectRetention {
                    events,
                    ..Default::default()
                };
                (p.to_string(), rules)
            })
            .collect(),
        ..Retention::default()
    }
}

/// The events of the retention tests, and the ids retention keeps.
fn aged_fleet(now_ms: i64) -> (Vec<Event>, Vec<String>) {
    let mut events = aged("p", &[500, 91, 89, 0], now_ms);
    events.extend(aged("long", &[450, 300], now_ms));
    events.extend(aged("short", &[20, 5], now_ms));
    let kept = ["long-300", "p-0", "p-89", "short-5"]
        .map(String::from)
        .to_vec();
    (events, kept)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// On ClickHouse 18.16 (no TTL), the running sink drops the months older than every project's
/// retention, deletes the other rows past their project's retention, and keeps every row
/// newer than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_18_16_the_sink_removes_rows_past_their_retention_and_nothing_newer() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded(dir.path());
    let names = topics::Names::new(&format!("{}.", unique("retention")));
    create_topics(&bus, &names).await;
    let db = unique("ch_retention");
    let now = now_ms();
    let (events, kept) = aged_fleet(now);
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
    publish(&bus, &messages).await;
    let config = clickhouse::ClickHouseConfig {
        retention: aged_retention(Duration::from_millis(500)),
        ..config(&db)
    };
    migrate(&config).await.unwrap();
    let (stop, task) = start(&bus, &names, config);
    let ids = || {
        query(&db, "SELECT event_id FROM events FINAL ORDER BY event_id")
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids() != kept {
        assert!(
            Instant::now() < deadline,
            "after 60 s: {:?}, expected {kept:?}",
            ids()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The month of the oldest rows went as a partition, not row by row.
    let oldest = chrono::DateTime::from_timestamp_millis(now - 500 * DAY_MS).unwrap();
    let month = oldest.format("%Y%m").to_string();
    let parts = query(
        "system",
        &format!(
            "SELECT count() FROM parts WHERE database = '{db}' AND table = 'events' AND active AND partition = '{month}'"
        ),
    );
    assert_eq!(parts.trim(), "0", "the partition {month} is still there");
    // Passes go on, and keep what is kept.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ids(), kept);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    execute(&format!("DROP DATABASE {db}"));
}

/// chDB (a current server): the migrations, then each table's `TTL`; rows the sink would
/// write, then merges: what the TTL keeps.
const CHDB_TTL: &str = r#"
import json, sys
from chdb import session
spec = json.load(open(sys.argv[1]))
s = session.Session(spec["path"])
s.query("CREATE DATABASE IF NOT EXISTS " + spec["db"])
for sql in spec["statements"]:
    s.query(sql)
for sql in spec["inserts"]:
    s.query(sql)
s.query("OPTIMIZE TABLE %s.events FINAL" % spec["db"])
ids = str(s.query("SELECT event_id FROM %s.events ORDER BY event_id" % spec["db"], "TSV")).split()
print(json.dumps({"version": str(s.query("SELECT version()", "TSV")).strip(), "ids": ids}))
"#;

/// On a current server the same retention is each table's `TTL`: after a merge, chDB 26.9
/// keeps exactly what the 18.16 passes keep.
#[test]
fn on_a_current_server_the_ttl_keeps_what_the_retention_keeps() {
    use trellis_schemas::tables::Table;
    use trellis_sinks::clickhouse::retention::ttl_statement;
    let dir = tempfile::tempdir().unwrap();
    let names = topics::Names::new("ttl.");
    let db = "ttl";
    let now = now_ms();
    let (events, kept) = aged_fleet(now);
    let retention = aged_retention(Duration::from_secs(3600));
    let modern = ServerVersion {
        major: 26,
        minor: 9,
    };
    assert!(modern.has_ttl() && !ServerVersion::parse("18.16.1").unwrap().has_ttl());
    let mut statements: Vec<String> = migrations(db, modern)
        .into_iter()
        .flat_map(|m| m.statements)
        .collect();
    statements.extend(Table::all().map(|t| ttl_statement(db, t, &retention)));

    let mut batch = Batch::default();
    for (offset, e) in events.iter().enumerate() {
        let m = Message::new(
            names.events.as_str(),
            e.partition_key(),
            avro::encode(e).unwrap(),
        );
        let record = trellis_bus::Record {
            topic: m.topic,
            partition: 0,
            offset: offset as u64,
            key: m.key,
            payload: m.payload,
            headers: vec![],
            timestamp_ms: 0,
        };
        batch.push(&names, record, Instant::now());
    }
    let (target, rows) = batch.tables().next().unwrap();
    let inserts: Vec<String> = rows
        .inserts()
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let path = dir.path().join(format!("{i}.bin"));
            std::fs::write(&path, rows.bytes(range)).unwrap();
            plan(target).insert_sql(db, target.name()).replace(
                " FORMAT RowBinary",
                &format!(" FROM INFILE '{}' FORMAT RowBinary", path.display()),
            )
        })
        .collect();
    let spec = serde_json::json!({
        "path": dir.path().join("chdb").display().to_string(),
        "db": db,
        "statements": statements,
        "inserts": inserts,
    });
    let result = run_chdb(dir.path(), CHDB_TTL, &spec);
    assert_eq!(result["ids"], serde_json::json!(kept), "{result}");
}
