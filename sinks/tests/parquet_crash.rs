//! The Parquet sink SIGKILLed mid-file and restarted, on the embedded log and on the real
//! broker: no row lost, none twice, and no partial file visible to `query`, while rolls by age
//! (which a replay cannot repeat by itself) cut the segments.
//!
//! The sink runs in a child process: this test binary re-executes itself with `--ignored
//! --exact sink_child` and the settings in `TRELLIS_SINK_CHILD`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Outputs, counts, files, publish, unique};
use trellis_bus::Bus;
use trellis_bus::config::EmbeddedConfig;
use trellis_bus::embedded::EmbeddedBus;
use trellis_schemas::topics;
use trellis_sinks::parquet::{self, ParquetConfig};

const CHILD_ENV: &str = "TRELLIS_SINK_CHILD";

/// The consumer group session of the children: trellis's default. A child restarted within it of
/// a SIGKILL can find tansu naming the killed member the group's leader, and get no partitions
/// for good (ARCHITECTURE.md, Test infrastructure); Kafka waits the session out itself, so the
/// tests wait it out before restarting. Shorter sessions expired under load, tansu being slow to
/// answer heartbeats then.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The bus the test and its children share: `kafka` (the broker of `TEST_TRELLIS_KAFKA`) or
/// `embedded` (a log under `dir`, opened by one process at a time).
fn bus(kind: &str, dir: &Path) -> Arc<dyn Bus> {
    if kind == "kafka" {
        let brokers = std::env::var("TEST_TRELLIS_KAFKA").expect(
            "TEST_TRELLIS_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker",
        );
        return Arc::new(
            trellis_bus::kafka::KafkaBus::new(&trellis_bus::config::KafkaConfig {
                brokers,
                session_timeout: SESSION_TIMEOUT,
                ..Default::default()
            })
            .unwrap(),
        );
    }
    Arc::new(
        EmbeddedBus::open(&EmbeddedConfig {
            path: dir.join("bus.redb"),
            ..EmbeddedConfig::default()
        })
        .unwrap(),
    )
}

/// The child: runs the sink until the stop file appears.
/// Arguments (tab-separated in `TRELLIS_SINK_CHILD`): bus kind, dir, topic prefix, group.
#[test]
#[ignore = "run by the crash test in a child process"]
fn sink_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<&str> = args.split('\t').collect();
    let (kind, dir, prefix, group) = (args[0], PathBuf::from(args[1]), args[2], args[3]);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bus = bus(kind, &dir);
        let config = ParquetConfig {
            root: dir.join("parquet"),
            group: group.to_string(),
            max_rows: 2000,
            max_age: Duration::from_millis(150),
            poll_max: 100,
            poll_timeout: Duration::from_millis(50),
            retention: parquet::retention::Retention::off(),
            ..ParquetConfig::default()
        };
        let stop = dir.join("stop");
        parquet::run(bus, topics::Names::new(prefix), config, async move {
            while !stop.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    });
}

/// A sink child process, SIGKILLed when dropped (also when the test fails).
struct SinkChild(Child);

impl SinkChild {
    fn spawn(kind: &str, dir: &Path, prefix: &str, group: &str) -> Self {
        SinkChild(
            Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "sink_child", "--nocapture"])
                .env(
                    CHILD_ENV,
                    format!("{kind}\t{}\t{prefix}\t{group}", dir.display()),
                )
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SinkChild {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_mid_file_and_restarted_stores_every_row_once() {
    killed_mid_file_and_restarted("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_sink_killed_mid_file_and_restarted_stores_every_row_once() {
    killed_mid_file_and_restarted("kafka").await;
}

async fn killed_mid_file_and_restarted(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let prefix = format!("{}.", unique("crash"));
    let names = topics::Names::new(&prefix);
    let group = unique("sink");
    let outputs = Outputs::of_fleet(600, 17);
    let expected = outputs.expected();
    {
        let bus = bus(kind, dir.path());
        publish(&bus, &names, outputs.messages(&names, 3)).await;
    }

    // Kill a child three times, each once more files are renamed and others are being
    // written, at numbers of files a seed draws each run; the third restart runs to the end.
    let mut rng = fastrand::Rng::with_seed(support::fault_seed());
    let thresholds = [
        1 + rng.usize(0..15),
        25 + rng.usize(0..40),
        80 + rng.usize(0..40),
    ];
    println!("killing the sink at {thresholds:?} files");
    let mut killed_ranges = Vec::new();
    let mut mid_file = 0;
    for threshold in thresholds {
        let mut child = SinkChild::spawn(kind, dir.path(), &prefix, &group);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let now = files(&root, &names);
            if now.files >= threshold && now.temps > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the sink wrote nothing in 120 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill();
        if kind == "kafka" {
            std::thread::sleep(SESSION_TIMEOUT + Duration::from_secs(1));
        }
        let killed = files(&root, &names);
        let partial = counts(&root).await;
        println!(
            "killed with {} files and {} temporary files: {partial:?}",
            killed.files, killed.temps
        );
        // The sink may finish its files between the look that saw them open and the kill: that
        // kill lands between files, still a crash to recover from.
        mid_file += usize::from(killed.temps > 0);
        assert!(partial != expected, "killed before the end: {partial:?}");
        for (table, n) in &partial {
            assert!(
                n <= &expected[table],
                "{table}: {n} rows before the restart"
            );
        }
        killed_ranges.push(killed.ranges);
    }
    assert!(
        mid_file > 0,
        "killed mid-file at least once: temporary files were left behind"
    );

    let mut second = SinkChild::spawn(kind, dir.path(), &prefix, &group);
    let deadline = Instant::now() + Duration::from_secs(180);
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
            "incomplete after restart: {seen:?} of {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(dir.path().join("stop"), b"").unwrap();
    let status = second.0.wait().unwrap();
    assert!(status.success(), "the last sink stopped cleanly: {status}");

    assert_eq!(counts(&root).await, expected);
    let after = files(&root, &names);
    assert_eq!(after.temps, 0, "no temporary file left");
    println!("{} files at the end", after.files);
    // The killed runs' renamed ranges were rebuilt under the same names, never beside them.
    for killed in &killed_ranges {
        for (key, ranges) in killed {
            for range in ranges {
                assert!(
                    after.ranges[key].contains(range),
                    "{key:?} {range:?} kept its name"
                );
            }
        }
    }
    let bus = bus(kind, dir.path());
    let consumer = bus.consumer(&group, &[&names.events]).await.unwrap();
    let mut committed = 0;
    for p in 0..support::PARTITIONS {
        committed += consumer
            .committed(&names.events, p)
            .await
            .unwrap()
            .unwrap_or(0);
    }
    let events = outputs.events.len() as u64 + 3;
    assert_eq!(committed, events, "every events offset committed");
}
