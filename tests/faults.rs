//! Faults from outside, on the real broker: `trellis ingest` SIGKILLed while clients are sending,
//! at a different point in each of several seeds (every event of a request answered 200 must be
//! on `events.raw`, exactly once; nothing unsent may be there), and the broker itself SIGKILLed
//! and restarted on its durable storage under `trellis run` (every event answered 200 is counted
//! once by `trellis query`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Trellis, brokers, free_port, query_csv};
use trellis_bus::Bus;
use trellis_schemas::{avro, topics};

const CLIENTS: usize = 6;
const BATCH: usize = 50;

fn event_id(client: usize, batch: usize, i: usize) -> String {
    format!("00000000-0000-4000-8{client:03}-{batch:06}{i:06}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn batch(client: usize, batch: usize) -> String {
    let events: Vec<serde_json::Value> = (0..BATCH)
        .map(|i| {
            serde_json::json!({
                "kind": "analytics", "event_id": event_id(client, batch, i), "timestamp": now_ms(),
                "device_id": format!("device-{client}-{i}"),
                "release": {"platform": "ios", "app_version": "1.0.0"},
                "name": "plant_watered", "properties": {"n": i}
            })
        })
        .collect();
    serde_json::json!({ "events": events }).to_string()
}

/// POSTs a native batch; the status and body of the answer, if one came.
fn post_batch(base: &str, body: &str) -> Option<(u16, String)> {
    let mut response = ureq::post(&format!("{base}/v1/batch"))
        .header("Authorization", "Bearer trellis_dev_key")
        .header("Content-Type", "application/json")
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .send(body.as_bytes())
        .ok()?;
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Some((response.status().as_u16(), text))
}

/// Sends batches until a request fails (ingest is gone); the event ids of the batches answered
/// 200 with every event accepted, and of every batch sent.
fn client(base: &str, client: usize) -> (Vec<String>, Vec<String>) {
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    for b in 0.. {
        let ids: Vec<String> = (0..BATCH).map(|i| event_id(client, b, i)).collect();
        sent.extend(ids.iter().cloned());
        let Some((status, text)) = post_batch(base, &batch(client, b)) else {
            break;
        };
        if status != 200 {
            break;
        }
        let outcome: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(outcome["accepted"], BATCH, "{text}");
        acked.extend(ids);
    }
    (acked, sent)
}

/// Every event id on `topic`, with how often it is there, read until nothing new comes for 5 s.
async fn stored(topic: &str, group: &str) -> BTreeMap<String, usize> {
    let bus = trellis_bus::kafka::KafkaBus::new(&trellis_bus::config::KafkaConfig {
        brokers: brokers(),
        ..Default::default()
    })
    .unwrap();
    let mut consumer = bus.consumer(group, &[topic]).await.unwrap();
    let mut ids = BTreeMap::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(5) {
        let records = consumer
            .poll(5_000, Duration::from_millis(500))
            .await
            .unwrap();
        if !records.is_empty() {
            quiet_since = Instant::now();
        }
        for r in records {
            let event = avro::decode(&r.payload).unwrap();
            *ids.entry(event.common().event_id.clone()).or_insert(0) += 1;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sigkilled_mid_request_keeps_every_acknowledged_event_exactly_once() {
    for seed in [3u64, 17, 41] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let prefix = format!("faults-{}-{port}-{seed}.", std::process::id());
        let config = dir.path().join("trellis.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\
                 [bus]\nkind = \"kafka\"\nbrokers = {brokers:?}\n\
                 [topics]\npartitions = 2\nprefix = {prefix:?}\n\
                 [ingest]\nlisten = \"127.0.0.1:{port}\"\n",
                data = dir.path().display().to_string(),
                brokers = brokers(),
            ),
        )
        .unwrap();
        let mut ingest = Trellis::spawn(&config, "ingest");
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(&format!("{base}/readyz")).call().is_err() {
            assert!(Instant::now() < deadline, "ingest never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let results = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (base, results) = (base.clone(), results.clone());
                std::thread::spawn(move || {
                    let outcome = client(&base, c);
                    results.lock().unwrap().push(outcome);
                })
            })
            .collect();
        // A different point mid-stream for each seed.
        fastrand::seed(seed);
        std::thread::sleep(Duration::from_millis(800 + fastrand::u64(0..1_500)));
        ingest.kill();
        for c in clients {
            c.join().unwrap();
        }
        let (mut acked, mut sent) = (BTreeSet::new(), BTreeSet::new());
        for (a, s) in results.lock().unwrap().drain(..) {
            acked.extend(a);
            sent.extend(s);
        }
        assert!(
            acked.len() >= 10 * BATCH,
            "seed {seed}: only {} events acknowledged before the kill",
            acked.len()
        );
        let names = topics::Names::new(&prefix);
        let stored = stored(&names.raw, &format!("{prefix}check")).await;
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "seed {seed}: {} acknowledged events lost, for example {:?}",
            missing.len(),
            missing.first()
        );
        let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "seed {seed}: stored twice: {twice:?}");
        let unsent: Vec<_> = stored.keys().filter(|id| !sent.contains(*id)).collect();
        assert!(unsent.is_empty(), "seed {seed}: never sent: {unsent:?}");
        println!(
            "seed {seed}: {} events acknowledged, {} stored ({} of them in requests cut off by \
             the kill), {} sent",
            acked.len(),
            stored.len(),
            stored.len() - acked.len(),
            sent.len()
        );
    }
}

/// A tansu broker of the test's own, on its own port and SQLite file, so that it can be killed
/// and restarted without touching the broker the rest of the suite shares.
struct Broker {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl Broker {
    fn start(dir: &std::path::Path) -> Self {
        let mut broker = Broker {
            dir: dir.to_path_buf(),
            port: free_port(),
            child: None,
        };
        broker.restart();
        broker
    }

    /// Starts tansu on the broker's port and storage (`scripts/test.sh` put it on the PATH).
    fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new("tansu")
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db", "--silent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu, which scripts/test.sh installs, runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `batches` batches, each again until it is answered 200 with every event accepted, as
/// an SDK retries; the ids sent.
fn client_retrying(base: &str, client: usize, batches: usize) -> Vec<String> {
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    for b in 0..batches {
        let body = batch(client, b);
        loop {
            if let Some((status, text)) = post_batch(base, &body) {
                if status == 200 {
                    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(
                        answer["accepted"], BATCH,
                        "client {client} batch {b}: {text}"
                    );
                    break;
                }
                assert_eq!(status, 503, "client {client} batch {b}: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "client {client}: batch {b} never accepted"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        acked.extend((0..BATCH).map(|i| event_id(client, b, i)));
        std::thread::sleep(Duration::from_millis(40));
    }
    acked
}

/// The broker SIGKILLed and restarted on its storage mid-stream. tansu 0.6.0 loses track of an
/// idempotent producer across a restart: its SQLite engine panics checking the producer's next
/// batch and refuses every produce after that, so the producers here are not idempotent
/// (`bus.extra`). Their retries may then write a record twice to `events.raw`; the process
/// stage's dedupe collapses it, which is what this test asserts through `trellis query`.
#[test]
fn the_broker_sigkilled_and_restarted_on_its_storage_mid_stream_loses_and_doubles_nothing() {
    const BATCHES: usize = 50;
    let seed = support::fault_seed();
    fastrand::seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("trellis.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [bus]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:{broker}\"\n\
             session_timeout = \"{session}s\"\n\
             [bus.extra]\n\"enable.idempotence\" = \"false\"\n\
             [topics]\npartitions = 2\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\n\
             [processors]\ncheckpoint_interval = \"300ms\"\nidle_timeout = \"1s\"\n\
             [sinks.parquet]\nmax_age = \"1s\"\n",
            data = dir.path().join("data").display().to_string(),
            broker = broker.port,
            session = support::SESSION_TIMEOUT.as_secs(),
        ),
    )
    .unwrap();
    let _trellis = Trellis::spawn(&config, "run");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(Instant::now() < deadline, "trellis run never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let base = base.clone();
            std::thread::spawn(move || client_retrying(&base, c, BATCHES))
        })
        .collect();
    // Down for a few seconds at a point of the stream the seed chooses.
    std::thread::sleep(Duration::from_millis(1_000 + fastrand::u64(0..2_000)));
    broker.kill();
    let down = Duration::from_millis(2_000 + fastrand::u64(0..3_000));
    std::thread::sleep(down);
    broker.restart();
    let acked: BTreeSet<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let expected = CLIENTS * BATCHES * BATCH;
    assert_eq!(acked.len(), expected);

    // What an analyst reads: every acknowledged event once, in Parquet through `trellis query`.
    let number = |sql: &str| -> usize {
        query_csv(&config, sql)
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while number("SELECT count(DISTINCT common.event_id) FROM events") < expected {
        assert!(
            Instant::now() < deadline,
            "Parquet holds {} of {expected} events",
            number("SELECT count(DISTINCT common.event_id) FROM events")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(number("SELECT count(*) FROM events"), expected);
    let stored = number("SELECT count(*) FROM stored_events");
    assert!(stored >= expected, "{stored} rows stored");
    println!(
        "broker down {down:?}: {expected} events acknowledged, {stored} rows stored, {expected} \
         counted"
    );
}
