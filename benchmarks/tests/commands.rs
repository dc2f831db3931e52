//! Each benchmark command runs on a tiny input and reports what it measured. No figure is
//! asserted: speed is measured by running the benchmarks, never by tests.

use std::process::Command;
use std::sync::Arc;

use trellis_bus::Bus;
use trellis_bus::config::EmbeddedConfig;

fn json(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_an_ingest_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::embedded::EmbeddedBus::open(&EmbeddedConfig {
            path: dir.path().join("bus.redb"),
            ..Default::default()
        })
        .unwrap(),
    );
    for topic in trellis_schemas::topics::ALL {
        bus.create_topic(topic, 2).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = trellis_ingest::state(
        trellis_ingest::IngestConfig::default(),
        bus.producer().unwrap(),
    );
    tokio::spawn(trellis_ingest::run(listener, state, std::future::pending()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args([
                "--url",
                &url,
                "--duration",
                "1s",
                "--batch",
                "10",
                "--connections",
                "2",
                "--prepared",
                "2",
                "--json",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = json(out);
    assert!(report["requests_ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["requests_failed"], 0, "{report}");
    for field in ["events_per_s", "mb_per_s_wire", "avg_event_bytes"] {
        assert!(report[field].is_number(), "{field} missing: {report}");
    }
    assert!(report["latency_ms"]["p99"].is_number());
}

#[test]
fn rawproduce_pushes_to_the_broker_and_reports() {
    let brokers = std::env::var("TEST_TRELLIS_KAFKA")
        .expect("TEST_TRELLIS_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker");
    let out = Command::new(env!("CARGO_BIN_EXE_rawproduce"))
        .args([
            "--brokers",
            &brokers,
            "--topic",
            "bench.smoke",
            "--duration",
            "1s",
            "--prepared",
            "100",
            "--json",
        ])
        .output()
        .unwrap();
    let report = json(out);
    assert!(report["acked"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
}

fn kafka() -> String {
    std::env::var("TEST_TRELLIS_KAFKA")
        .expect("TEST_TRELLIS_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker")
}

fn clickhouse() -> String {
    std::env::var("TEST_TRELLIS_CLICKHOUSE_URL").expect(
        "TEST_TRELLIS_CLICKHOUSE_URL is not set: run the suite with scripts/test.sh, which starts ClickHouse",
    )
}

/// A name no other test run uses: topics, groups, databases.
fn unique(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000_000;
    format!(
        "{name}_{}_{}_{ms}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn run(bin: &str, args: &[&str]) -> serde_json::Value {
    json(Command::new(bin).args(args).output().unwrap())
}

/// `preload` of `args` into 2 partitions of `prefix`'s topics; its JSON report.
fn preload(brokers: &str, prefix: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "--brokers",
        brokers,
        "--prefix",
        prefix,
        "--partitions",
        "2",
        "--json",
    ];
    all.extend_from_slice(args);
    run(env!("CARGO_BIN_EXE_preload"), &all)
}

fn clickhouse_sql(sql: &str) -> String {
    let mut response = ureq::post(clickhouse())
        .config()
        .http_status_as_error(false)
        .build()
        .send(sql)
        .unwrap();
    let body = response.body_mut().read_to_string().unwrap();
    assert!(response.status().is_success(), "{sql}: {body}");
    body
}

#[test]
fn preload_fills_events_raw_and_progress_sees_it() {
    let brokers = kafka();
    let prefix = format!("{}.", unique("preload"));
    let report = preload(
        &brokers,
        &prefix,
        &["--events", "300", "--duplicates", "10"],
    );
    assert_eq!(report["distinct"], 300, "{report}");
    let published = report["published"].as_u64().unwrap();
    assert!(published > 300, "10% are sent twice: {report}");

    let raw = format!("{prefix}events.raw");
    let until = published.to_string();
    let seen = run(
        env!("CARGO_BIN_EXE_progress"),
        &[
            "--timeout",
            "30s",
            "topic-end",
            "--brokers",
            &brokers,
            "--topics",
            &raw,
            "--until",
            &until,
        ],
    );
    assert_eq!(seen["value"], published, "{seen}");
    assert!(seen["done_s"].is_number(), "{seen}");
    // A group that never committed has done nothing yet.
    let group = run(
        env!("CARGO_BIN_EXE_progress"),
        &[
            "--timeout",
            "0s",
            "group",
            "--brokers",
            &brokers,
            "--group",
            &unique("nobody"),
            "--topics",
            &raw,
            "--until",
            "0",
        ],
    );
    assert_eq!(group["value"], 0, "{group}");
}

#[test]
fn chdirect_inserts_a_topic_as_the_sink_would() {
    let (brokers, url) = (kafka(), clickhouse());
    let prefix = format!("{}.", unique("chdirect"));
    let database = unique("chdirect");
    preload(&brokers, &prefix, &["--into", "events", "--events", "250"]);
    let report = run(
        env!("CARGO_BIN_EXE_chdirect"),
        &[
            "--brokers",
            &brokers,
            "--prefix",
            &prefix,
            "--url",
            &url,
            "--database",
            &database,
            "--batch-rows",
            "100",
            "--json",
        ],
    );
    assert_eq!(report["rows"], 250, "{report}");
    assert!(report["rows_per_s"].is_number(), "{report}");
    let count = format!(
        "SELECT sum(c) FROM (SELECT count() AS c FROM {database}.events UNION ALL \
         SELECT count() AS c FROM {database}.errors UNION ALL SELECT count() AS c FROM {database}.perf \
         UNION ALL SELECT count() AS c FROM {database}.session_updates UNION ALL \
         SELECT count() AS c FROM {database}.notifications)"
    );
    assert_eq!(clickhouse_sql(&count).trim(), "250");
    let seen = run(
        env!("CARGO_BIN_EXE_progress"),
        &[
            "--timeout",
            "10s",
            "clickhouse",
            "--url",
            &url,
            "--query",
            &count,
            "--until",
            "250",
        ],
    );
    assert_eq!(seen["value"], 250, "{seen}");
    clickhouse_sql(&format!("DROP DATABASE {database}"));
}

/// `trellis run` in miniature (ingest, the process stage and both sinks on one embedded log),
/// with sinks that flush every 100 ms, timed by `freshness`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_times_events_into_parquet_and_clickhouse() {
    use std::time::Duration;
    use trellis_processors::runtime::{self, Checkpoints, RunnerConfig};

    let url = clickhouse();
    let database = unique("fresh");
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::embedded::EmbeddedBus::open(&EmbeddedConfig {
            path: dir.path().join("bus.redb"),
            ..Default::default()
        })
        .unwrap(),
    );
    let names = trellis_schemas::topics::Names::new("");
    for topic in names.all() {
        bus.create_topic(topic, 2).await.unwrap();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let on_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest = format!("http://{}", listener.local_addr().unwrap());
    let state = trellis_ingest::state(
        trellis_ingest::IngestConfig::default(),
        bus.producer().unwrap(),
    );
    tokio::spawn(trellis_ingest::run(
        listener,
        state,
        on_stop(stopped.clone()),
    ));
    let config = trellis_processors::ProcessorConfig::default();
    let process = tokio::spawn(runtime::run(
        bus.clone(),
        trellis_processors::PipelineFactory::new(&config, names.clone()).unwrap(),
        Checkpoints::new(
            dir.path().join("checkpoints"),
            trellis_processors::pipeline::STAGE,
        ),
        RunnerConfig {
            group: "process".into(),
            topic: names.raw.clone(),
            dlq: names.dlq.clone(),
            poll_max: 500,
            poll_timeout: Duration::from_millis(50),
            checkpoint_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
        },
        Arc::new(trellis_processors::ProcessorMetrics::default()),
        on_stop(stopped.clone()),
    ));
    let root = dir.path().join("parquet");
    let parquet = tokio::spawn(trellis_sinks::parquet::run(
        bus.clone(),
        names.clone(),
        trellis_sinks::parquet::ParquetConfig {
            root: root.clone(),
            max_age: Duration::from_millis(100),
            poll_timeout: Duration::from_millis(50),
            retention: trellis_sinks::parquet::retention::Retention::off(),
            ..Default::default()
        },
        on_stop(stopped.clone()),
    ));
    let sink_config = trellis_sinks::clickhouse::ClickHouseConfig {
        url: url.clone(),
        database: database.clone(),
        batch_age: Duration::from_millis(100),
        retention: trellis_sinks::retention::Retention::off(),
        ..Default::default()
    };
    trellis_sinks::clickhouse::migrate(&sink_config)
        .await
        .unwrap();
    let clickhouse = tokio::spawn(trellis_sinks::clickhouse::run(
        bus.clone(),
        names,
        sink_config,
        on_stop(stopped),
    ));

    let args = [
        "--url".to_string(),
        ingest,
        "--rate".into(),
        "100".into(),
        "--duration".into(),
        "1s".into(),
        "--wait".into(),
        "60s".into(),
        "--parquet-root".into(),
        root.display().to_string(),
        "--clickhouse-url".into(),
        url,
        "--clickhouse-database".into(),
        database.clone(),
        "--json".into(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_freshness"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = json(out);
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent >= 50, "{report}");
    for store in ["parquet", "clickhouse"] {
        assert_eq!(report[store]["seen"], sent, "{report}");
        assert_eq!(report[store]["missing"], 0, "{report}");
        assert!(report[store]["p99_ms"].is_number(), "{report}");
    }
    let in_files = tokio::task::spawn_blocking(move || {
        run(
            env!("CARGO_BIN_EXE_progress"),
            &[
                "--timeout",
                "10s",
                "parquet",
                "--root",
                &root.display().to_string(),
                "--topic",
                "events",
                "--until",
                &sent.to_string(),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(in_files["value"], sent, "{in_files}");

    stop.send(true).unwrap();
    process.await.unwrap().unwrap();
    parquet.await.unwrap().unwrap();
    clickhouse.await.unwrap().unwrap();
    clickhouse_sql(&format!("DROP DATABASE {database}"));
}

/// Runs a scenario script with the binaries this test was built with (`BIN`: nothing is built)
/// and services of its own in a temporary directory; returns the table it printed.
fn scenario(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_preload"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        bin.join("trellis").exists(),
        "{} has no trellis binary: run the whole workspace's tests (scripts/test.sh)",
        bin.display()
    );
    let services = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("benchmarks").join(script))
        .args(args)
        .env("BIN", &bin)
        .env("BENCH_SERVICES_DIR", services.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("|---|"),
        "{script} printed no table: {stdout}"
    );
    stdout
}

#[test]
fn the_processors_scenario_runs_and_checks_its_parquet() {
    let table = scenario("processors.sh", &["2000"], &[("MAX_AGE", "500ms")]);
    assert!(
        table.contains("(expected 2,000 each): 2000,2000 (sink alone), 2000,2000 (together)."),
        "{table}"
    );
}

#[test]
fn the_clickhouse_scenario_runs_and_checks_the_sinks_tables() {
    let table = scenario("clickhouse.sh", &["2000"], &[("ROUNDS", "2")]);
    assert!(
        table.contains("Check: the sink's tables hold 2,000, 2,000 rows (expected 2,000 each)."),
        "{table}"
    );
    assert!(table.contains("\n| 2 | "), "{table}");
    assert!(table.contains("\n| median |"), "{table}");
}

#[test]
fn the_one_machine_scenario_runs_and_every_accepted_event_reaches_parquet() {
    let table = scenario("one-machine.sh", &["1"], &[("MAX_AGE", "500ms")]);
    let check = table
        .lines()
        .find_map(|l| l.strip_prefix("Check: Parquet rows, distinct event ids: "))
        .unwrap_or_else(|| panic!("no check line: {table}"));
    let (counts, expected) = check.split_once(" (expected ").unwrap();
    let expected = expected.split(' ').next().unwrap().replace(',', "");
    assert_eq!(counts, format!("{expected},{expected}"), "{table}");
    assert!(expected.parse::<u64>().unwrap() > 0, "{table}");
}

#[test]
fn the_freshness_scenario_runs_and_sees_every_event_in_both_stores() {
    let table = scenario(
        "freshness.sh",
        &["20", "2"],
        &[("WARMUP", "1s"), ("PARQUET_MAX_AGE", "500ms")],
    );
    for store in ["| **Parquet** |", "| **ClickHouse** |"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(store))
            .unwrap_or_else(|| panic!("no {store} row: {table}"));
        assert!(row.contains(" (0 missing) |"), "{row}");
    }
}
