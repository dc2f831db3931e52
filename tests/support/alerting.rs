//! Shared by the alerting tests (`alerts.rs`, `overrides.rs`): a configuration of `trellis` with
//! a topic prefix of its own, the bad update's finding, and readers of the topics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_bus::{Bus, Message};
use trellis_schemas::Release;
use trellis_schemas::records::{self, Detection};
use trellis_schemas::topics;

use super::{SESSION_TIMEOUT, Trellis, brokers, free_port};

pub const SECRET: &str = "rollback-service-secret";

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub names: topics::Names,
    pub bus: Arc<dyn Bus>,
    pub metrics_port: u16,
}

/// A configuration for `trellis alert` with a topic prefix of its own: the guard halts on a
/// critical release regression by calling `url`.
pub fn setup(name: &str, url: &str, attempts: u32) -> Setup {
    setup_with(
        name,
        &format!(
            "[alerts.delivery]\nattempts = {attempts}\nbackoff_min = \"100ms\"\n\
             backoff_max = \"400ms\"\ntimeout = \"2s\"\n\
             [alerts.destinations.rollback]\nkind = \"webhook\"\nurl = {url:?}\n\
             secret = {SECRET:?}\n\
             [[alerts.rules]]\nname = \"guard\"\naction = \"halt\"\nmin_severity = \"critical\"\n\
             destinations = [\"rollback\"]\n"
        ),
    )
}

/// A configuration for `trellis alert` with a topic prefix of its own and `alerts` (TOML
/// tables under `[alerts]`).
pub fn setup_with(name: &str, alerts: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let prefix = format!("alerts-{name}-{}-{metrics_port}.", std::process::id());
    let config = dir.path().join("trellis.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [bus]\nkind = \"kafka\"\nbrokers = {brokers:?}\nsession_timeout = \"{session}s\"\n\
             [topics]\npartitions = 2\nprefix = {prefix:?}\n\
             [processors]\ncheckpoint_interval = \"300ms\"\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             group = \"{prefix}process\"\nissues_group = \"{prefix}issues\"\n\
             [processors.detect]\ngroup = \"{prefix}detect\"\nperf_group = \"{prefix}detect-perf\"\n\
             [sinks.parquet]\ngroup = \"{prefix}parquet\"\nmax_age = \"1s\"\n\
             [alerts]\ngroup = \"{prefix}alert\"\ndeliver_group = \"{prefix}deliver\"\n\
             {alerts}",
            data = dir.path().display().to_string(),
            brokers = brokers(),
            session = SESSION_TIMEOUT.as_secs(),
        ),
    )
    .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::kafka::KafkaBus::new(&trellis_bus::config::KafkaConfig {
            brokers: brokers(),
            ..Default::default()
        })
        .unwrap(),
    );
    Setup {
        dir,
        config,
        names: topics::Names::new(&prefix),
        bus,
        metrics_port,
    }
}

pub fn release() -> Release {
    Release {
        platform: "android".into(),
        app_version: "5.2.0".into(),
        build: Some("5200".into()),
        runtime_version: Some("5.2".into()),
        update_id: Some("0b7e-upd".into()),
        channel: Some("production".into()),
        environment: Some("production".into()),
    }
}

/// The bad update's crash-rate finding, at `status` (version `version`).
pub fn finding(status: &str, version: i64) -> Detection {
    Detection {
        detection_id: "0f".repeat(16),
        project: "shop".into(),
        kind: "release_regression".into(),
        release: release(),
        metric: "crash_rate".into(),
        baseline: "fleet".into(),
        baseline_value: 0.01,
        baseline_count: 20_000,
        candidate_value: 0.04,
        candidate_count: 1_200,
        statistic: 9.5,
        threshold: 5.3,
        window_start_ms: 1_764_900_000_000,
        window_end_ms: 1_764_903_600_000 + version * 60_000,
        opened_ms: 1_764_903_600_000,
        status: status.into(),
        summary: "Crash rate 4.00% against 1.00% on the fleet".into(),
        version,
        ..Detection::default()
    }
}

pub async fn publish(s: &Setup, detection: &Detection) {
    // Every topic, as `trellis alert` creates them, so the test can read them from the start.
    for topic in s.names.all() {
        s.bus.create_topic(topic, 2).await.unwrap();
    }
    s.bus
        .producer()
        .unwrap()
        .publish(vec![Message::new(
            s.names.detections.as_str(),
            detection.project.as_bytes().to_vec(),
            records::encode(detection).unwrap(),
        )])
        .await
        .unwrap();
}

pub fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "after {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn alert(config: &Path) -> Trellis {
    Trellis::spawn(config, "alert")
}

/// Reads `topic` from the start until `done` holds for what was read.
pub async fn read_until<T: trellis_schemas::records::Record>(
    s: &Setup,
    topic: &str,
    secs: u64,
    done: impl Fn(&[T]) -> bool,
) -> Vec<T> {
    let mut consumer = s
        .bus
        .consumer(&format!("{}read-{topic}", s.names.prefix), &[topic])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "after {secs} s, {topic} held {} records",
            seen.len()
        );
        for r in consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            seen.push(records::decode::<T>(&r.payload).unwrap());
        }
    }
    seen
}
