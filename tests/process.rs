//! The processors against a simulated fleet: exact dedupe counts, sessions and crash-free rates,
//! computed independently from the fleet's truth, on the pure pipeline, on the embedded log, on
//! the real broker with two instances in one group, and across a SIGKILL and restart.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::oracle::{self, Expected, Observed};
use support::{SESSION_TIMEOUT, Trellis, brokers};
use trellis_bus::{Bus, Message};
use trellis_processors::pipeline::{Handled, Rules};
use trellis_processors::runtime::{self, Checkpoints, RunnerConfig};
use trellis_processors::sim::{Fleet, FleetSpec};
use trellis_processors::{Pipeline, PipelineFactory, ProcessorConfig, ProcessorMetrics};
use trellis_schemas::records::IssueRecord;
use trellis_schemas::{Event, avro, records, topics};

const PARTITIONS: u32 = 4;

fn fleet(devices: usize, seed: u64) -> Fleet {
    Fleet::simulate(&FleetSpec {
        devices,
        seed,
        ..Default::default()
    })
}

fn unique(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{name}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000
    )
}

/// Drives the pure pipeline: each partition's records in arrival order, then the idle flush.
fn drive(fleet: &Fleet, partitions: u32) -> Observed {
    let rules = Rules::from(&ProcessorConfig::default());
    let mut parts = vec![Vec::new(); partitions as usize];
    for e in fleet.wire() {
        parts[trellis_bus::partition_for(&e.partition_key(), partitions) as usize].push(e);
    }
    let mut observed = Observed::default();
    for (partition, events) in parts.into_iter().enumerate() {
        let mut p = Pipeline::new(rules, partition as u32);
        let collect = |p: &mut Pipeline, observed: &mut Observed| {
            let (sessions, partials) = p.take_closed();
            for s in sessions {
                observed.add("sessions", &records::encode(&s).unwrap());
            }
            for h in partials {
                observed.add("aggregates", &records::encode(&h).unwrap());
            }
        };
        for (offset, e) in events.into_iter().enumerate() {
            if let Handled::Passed(e) = p.handle(e.clone(), offset as u64) {
                observed.add("events", &avro::encode(&e).unwrap());
            }
            collect(&mut p, &mut observed);
        }
        p.idle(i64::MAX / 4);
        collect(&mut p, &mut observed);
    }
    observed
}

#[test]
fn the_pipeline_matches_the_fleet_oracle_exactly() {
    let fleet = fleet(3000, 11);
    let expected = oracle::expect(&fleet, 60_000);
    assert!(
        expected.wire > expected.unique,
        "the fleet sends duplicates"
    );
    assert!(
        fleet.sessions.iter().any(|s| s.offline),
        "some sessions arrive hours late"
    );
    let observed = drive(&fleet, 8);
    oracle::check(&expected, &observed);
    println!(
        "{} devices: {} events sent, {} distinct, {} sessions, {} windows",
        3000,
        expected.wire,
        expected.unique,
        expected.sessions.len(),
        expected.windows.len()
    );
}

async fn publish_fleet(bus: &Arc<dyn Bus>, names: &topics::Names, fleet: &Fleet) {
    for name in names.all() {
        bus.create_topic(name, PARTITIONS).await.unwrap();
    }
    let producer = bus.producer().unwrap();
    let messages: Vec<Message> = fleet
        .wire()
        .map(|e| {
            Message::new(
                names.raw.as_str(),
                e.partition_key(),
                avro::encode(e).unwrap(),
            )
        })
        .collect();
    for chunk in messages.chunks(5000) {
        producer.publish(chunk.to_vec()).await.unwrap();
    }
}

fn test_config() -> ProcessorConfig {
    ProcessorConfig {
        checkpoint_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(1),
        poll_max: 500,
        ..ProcessorConfig::default()
    }
}

/// Starts `instances` processors in one group; returns the stop switch and their tasks.
fn start_processors(
    bus: &Arc<dyn Bus>,
    names: &topics::Names,
    group: &str,
    checkpoint_dir: &Path,
    instances: usize,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<Result<(), runtime::RunError>>>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let config = test_config();
    let tasks = (0..instances)
        .map(|_| {
            let mut stopped = stopped.clone();
            let runner = RunnerConfig {
                group: group.to_string(),
                topic: names.raw.clone(),
                dlq: names.dlq.clone(),
                poll_max: config.poll_max,
                poll_timeout: Duration::from_millis(100),
                checkpoint_interval: config.checkpoint_interval,
                idle_timeout: config.idle_timeout,
            };
            tokio::spawn(runtime::run(
                bus.clone(),
                PipelineFactory::new(&config, names.clone()).unwrap(),
                Checkpoints::new(checkpoint_dir, "process"),
                runner,
                Arc::new(ProcessorMetrics::default()),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        })
        .collect();
    (stop, tasks)
}

/// Reads the outputs until every expected event and session has arrived and nothing new came
/// for two seconds.
async fn collect(bus: &Arc<dyn Bus>, names: &topics::Names, expected: &Expected) -> Observed {
    let mut consumer = bus
        .consumer(
            &unique("reader"),
            &[&names.events, &names.sessions, &names.aggregates],
        )
        .await
        .unwrap();
    let mut observed = Observed::default();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut quiet_since = Instant::now();
    loop {
        let records = consumer
            .poll(2000, Duration::from_millis(200))
            .await
            .unwrap();
        if records.is_empty() {
            let complete = observed.events.len() >= expected.unique
                && observed.sessions.len() >= expected.sessions.len();
            if complete && quiet_since.elapsed() > Duration::from_secs(2) {
                return observed;
            }
        } else {
            quiet_since = Instant::now();
        }
        for r in &records {
            let kind = r.topic.strip_prefix(&names.prefix).unwrap();
            observed.add(kind, &r.payload);
        }
        assert!(
            Instant::now() < deadline,
            "outputs incomplete after 240 s: {} of {} events, {} of {} sessions",
            observed.events.len(),
            expected.unique,
            observed.sessions.len(),
            expected.sessions.len()
        );
    }
}

async fn one_and_two_instances_agree(bus: Arc<dyn Bus>, dir: &Path) {
    let fleet = fleet(500, 23);
    let expected = oracle::expect(&fleet, 60_000);
    let mut results = Vec::new();
    for instances in [1, 2] {
        let names = topics::Names::new(&format!("{}.", unique("agree")));
        publish_fleet(&bus, &names, &fleet).await;
        let checkpoints = dir.join(format!("ckpt-{instances}"));
        let (stop, tasks) = start_processors(&bus, &names, &unique("g"), &checkpoints, instances);
        let observed = collect(&bus, &names, &expected).await;
        stop.send(true).unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        oracle::check(&expected, &observed);
        results.push(observed.windows());
    }
    assert_eq!(
        results[0], results[1],
        "two instances give the totals of one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_log_two_instances_give_the_totals_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = trellis_bus::config::EmbeddedConfig {
        path: dir.path().join("bus.redb"),
        ..Default::default()
    };
    let bus: Arc<dyn Bus> = Arc::new(trellis_bus::embedded::EmbeddedBus::open(&config).unwrap());
    one_and_two_instances_agree(bus, dir.path()).await;
}

fn kafka() -> Arc<dyn Bus> {
    let config = trellis_bus::config::KafkaConfig {
        brokers: brokers(),
        session_timeout: SESSION_TIMEOUT,
        ..Default::default()
    };
    Arc::new(trellis_bus::kafka::KafkaBus::new(&config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_two_instances_give_the_totals_of_one() {
    let dir = tempfile::tempdir().unwrap();
    one_and_two_instances_agree(kafka(), dir.path()).await;
}

/// How many outputs of the process stage `watcher` has read, added to `seen`, until there are
/// `until`.
async fn watch_until(watcher: &mut Box<dyn trellis_bus::Consumer>, seen: &mut usize, until: usize) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while *seen < until {
        *seen += watcher
            .poll(1000, Duration::from_millis(100))
            .await
            .unwrap()
            .len();
        assert!(
            Instant::now() < deadline,
            "the processor produced {seen} outputs of {until}"
        );
    }
}

/// The fault matrix's process stage row: its first checkpoints fail their fsync (EIO from the
/// real system call, injected by strace), then it is SIGKILLed at a random point, restarted,
/// SIGKILLed at another and restarted again. The points come from a seed each run prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_stream_and_restarted_outputs_what_an_uninterrupted_run_does() {
    let seed = support::fault_seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let bus = kafka();
    let fleet = fleet(800, 31);
    let expected = oracle::expect(&fleet, 60_000);
    let prefix = format!("{}.", unique("crash"));
    let names = topics::Names::new(&prefix);
    publish_fleet(&bus, &names, &fleet).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trellis.toml");
    let metrics_port = support::free_port();
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [bus]\nkind = \"kafka\"\nbrokers = {brokers:?}\nsession_timeout = \"{session}s\"\n\
             [topics]\npartitions = {PARTITIONS}\nprefix = {prefix:?}\n\
             [processors]\ngroup = {group:?}\nissues_group = {issues_group:?}\n\
             checkpoint_interval = \"300ms\"\nidle_timeout = \"1s\"\npoll_max = 200\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             [processors.detect]\ngroup = {detect_group:?}\nperf_group = {perf_group:?}\n\
             [sinks.parquet]\ngroup = {parquet_group:?}\nmax_age = \"1s\"\n",
            data = dir.path().display().to_string(),
            brokers = brokers(),
            session = SESSION_TIMEOUT.as_secs(),
            group = unique("g"),
            issues_group = unique("issues"),
            detect_group = unique("detect"),
            perf_group = unique("detect-perf"),
            parquet_group = unique("parquet"),
        ),
    )
    .unwrap();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let failed_checkpoints = || {
        support::counter(
            &metrics,
            "trellis_processor_faults_total",
            &["stage=\"process\"", "fault=\"checkpoint_failed\""],
        )
    };
    let kills = [
        expected.unique * (15 + rng.usize(0..25)) / 100,
        expected.unique * (50 + rng.usize(0..30)) / 100,
    ];
    println!(
        "killing the process stage after {kills:?} of {} outputs",
        expected.unique
    );

    // The first run's early checkpoints fail: it goes on, and commits nothing they did not hold.
    let mut first = Trellis::spawn_failing_fsync(&config, &["process"], 6);
    let mut watcher = bus
        .consumer(&unique("watch"), &[&names.events])
        .await
        .unwrap();
    let mut seen = 0;
    watch_until(&mut watcher, &mut seen, kills[0]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while failed_checkpoints() == 0 {
        assert!(
            Instant::now() < deadline,
            "no failed checkpoint counted on {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill();
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;

    // Mid-stream again, between checkpoints.
    let mut second = Trellis::spawn(&config, "process");
    watch_until(&mut watcher, &mut seen, kills[1]).await;
    second.kill();
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    let checkpoints = std::fs::read_dir(dir.path().join("checkpoints/process"))
        .map(|d| d.count())
        .unwrap_or(0);

    // The third run stays up until the issues are read: its issues stage finishes what the
    // killed ones left (killing it as soon as the events were out raced that stage).
    let mut third = Trellis::spawn(&config, "process");
    let observed = collect(&bus, &names, &expected).await;

    assert!(
        checkpoints > 0,
        "the second process checkpointed before it was killed"
    );
    assert!(
        observed.records_read > observed.events.len() + observed.sessions.len(),
        "the restart replayed part of the input ({} records for {} events and {} sessions)",
        observed.records_read,
        observed.events.len(),
        observed.sessions.len()
    );
    oracle::check(&expected, &observed);
    // Exactly what an uninterrupted run emits, record for record (ids included).
    let straight = drive(&fleet, PARTITIONS);
    assert_eq!(observed.events, straight.events);
    assert_eq!(observed.sessions, straight.sessions);
    assert_eq!(observed.partials, straight.partials);

    // The issues stage died with it, and the process stage replayed errors to it: each issue's
    // newest record still counts every distinct error once.
    let errors = straight.events.values().filter_map(|e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    });
    let expected = issue_summaries(trellis_processors::issues::replay(errors));
    assert!(expected.len() >= 2, "the fleet has issues: {expected:?}");
    let observed = read_issues(&bus, &names, &expected).await;
    third.kill();
    assert_eq!(observed, expected);

    // The Parquet files hold what the replay wrote twice; `trellis query` counts it once.
    let _sink = Trellis::spawn_args(&config, &["sink", "parquet"]);
    let number = |sql: &str| -> u64 {
        let text = support::query_csv(&config, sql);
        text.lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
    };
    let event_tables = [
        "events",
        "errors",
        "perf",
        "transactions",
        "session_updates",
        "notifications",
    ];
    let total = |prefix: &str| -> u64 {
        event_tables
            .iter()
            .map(|t| number(&format!("SELECT count(*) FROM {prefix}{t}")))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if total("") as usize == straight.events.len()
            && number("SELECT count(*) FROM health_partials") as usize == straight.partials.len()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Parquet: {} events of {}, {} partials of {}",
            total(""),
            straight.events.len(),
            number("SELECT count(*) FROM health_partials"),
            straight.partials.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Whether the replay re-emitted anything depends on where the kill fell between
    // checkpoints; the sinks' own test writes every record twice for certain.
    // Read once everything is there: a count taken before the last files landed is short.
    let stored = total("stored_") + number("SELECT count(*) FROM stored_health_partials");
    let once = (straight.events.len() + straight.partials.len()) as u64;
    let by_table = || {
        event_tables
            .iter()
            .chain(&["health_partials"])
            .map(|t| {
                let stored = number(&format!("SELECT count(*) FROM stored_{t}"));
                let once = number(&format!("SELECT count(*) FROM {t}"));
                format!("{t}: {stored} stored, {once} once")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    assert!(
        stored >= once,
        "{stored} rows stored for {once} records ({})",
        by_table()
    );
    println!("Parquet holds {stored} rows for {once} records; queries count {once}");
}

/// What a user reads off an issue, by id: everything that does not depend on the order errors
/// arrived in (counts, users, first and last seen, the sample, the title, the releases).
type IssueSummary = (i64, i64, i64, i64, String, String, Vec<String>);

fn issue_summaries(records: Vec<IssueRecord>) -> BTreeMap<String, IssueSummary> {
    let mut newest: BTreeMap<String, IssueRecord> = BTreeMap::new();
    for r in records {
        if newest
            .get(&r.issue_id)
            .is_none_or(|old| old.version <= r.version)
        {
            newest.insert(r.issue_id.clone(), r);
        }
    }
    newest
        .into_iter()
        .map(|(id, r)| {
            let summary = (
                r.event_count,
                r.users_affected,
                r.first_seen_ms,
                r.last_seen_ms,
                r.sample_event_id,
                r.title,
                r.releases,
            );
            (id, summary)
        })
        .collect()
}

/// Reads `issues` until it matches `expected` and stays so for two seconds, or a minute passed.
async fn read_issues(
    bus: &Arc<dyn Bus>,
    names: &topics::Names,
    expected: &BTreeMap<String, IssueSummary>,
) -> BTreeMap<String, IssueSummary> {
    let mut consumer = bus
        .consumer(&unique("issues-reader"), &[&names.issues])
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    loop {
        let polled = consumer
            .poll(2000, Duration::from_millis(200))
            .await
            .unwrap();
        if polled.is_empty() {
            let summaries = issue_summaries(seen.clone());
            let settled = quiet_since.elapsed() > Duration::from_secs(2);
            if (settled && &summaries == expected) || Instant::now() > deadline {
                return summaries;
            }
        } else {
            quiet_since = Instant::now();
        }
        for r in polled {
            seen.push(records::decode::<IssueRecord>(&r.payload).unwrap());
        }
    }
}

/// An error event just under the broker's message limit on `events.raw` grows past it once the
/// process stage adds its issue and session ids: the stage dead-letters that output and goes on,
/// where it would otherwise fail on it at every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_broker_refuses_is_dead_lettered_and_the_stage_goes_on() {
    use trellis_schemas::{Common, ErrorEvent, Exception};
    let dir = tempfile::tempdir().unwrap();
    let bus = kafka();
    let names = topics::Names::new(&format!("{}.", unique("big")));
    for name in names.all() {
        bus.create_topic(name, 1).await.unwrap();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let error = |n: usize, value: String| {
        Event::Error(ErrorEvent {
            common: Common {
                event_id: format!("00000000-0000-4000-8000-{n:012}"),
                project: "plants".into(),
                timestamp_ms: now,
                received_at_ms: now,
                device_id: Some("d-1".into()),
                ..Default::default()
            },
            exceptions: vec![Exception {
                exception_type: "TypeError".into(),
                value: Some(value),
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    // Sized so that the record on `events.raw` is 40 bytes under Kafka's 1,000,000.
    let probe = avro::encode(&error(2, String::new())).unwrap().len();
    let key = error(2, String::new()).partition_key();
    let big = error(2, "x".repeat(1_000_000 - 40 - probe - key.len() - 3));
    let messages: Vec<Message> = [error(1, "small".into()), big, error(3, "small".into())]
        .iter()
        .map(|e| {
            Message::new(
                names.raw.as_str(),
                e.partition_key(),
                avro::encode(e).unwrap(),
            )
        })
        .collect();
    bus.producer().unwrap().publish(messages).await.unwrap();

    let (stop, tasks) = start_processors(&bus, &names, &unique("g"), dir.path(), 1);
    let mut reader = bus
        .consumer(&unique("reader"), &[&names.events, &names.dlq])
        .await
        .unwrap();
    let (mut events, mut letters) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while events.len() < 2 || letters.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "events {events:?}, dead letters {letters:?}"
        );
        for r in reader.poll(100, Duration::from_millis(200)).await.unwrap() {
            if r.topic == names.events {
                events.push(avro::decode(&r.payload).unwrap().common().event_id.clone());
            } else if let Some(letter) = trellis_bus::DeadLetter::from_record(&r) {
                letters.push((letter.stage, letter.reason, letter.payload.len()));
            }
        }
    }
    stop.send(true).unwrap();
    for t in tasks {
        t.await
            .unwrap()
            .expect("the stage ran on and stopped cleanly");
    }
    events.sort();
    assert_eq!(
        events,
        [
            "00000000-0000-4000-8000-000000000001",
            "00000000-0000-4000-8000-000000000003"
        ]
    );
    // The error goes on to the issues stage and to the sinks: both copies are too large.
    letters.sort();
    assert_eq!(letters.len(), 2, "{letters:?}");
    for ((stage, reason, bytes), topic) in letters.iter().zip([&names.grouped, &names.events]) {
        assert_eq!(stage, "process");
        assert!(
            reason.contains(&format!("output to {topic} ")) && reason.contains("too large"),
            "{reason}"
        );
        assert_eq!(*bytes, 4096);
    }
}
