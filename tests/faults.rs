//! Faults from outside, on the real broker: `trellis ingest` SIGKILLed while clients are sending,
//! at a different point in each of several seeds. Every event of a request answered 200 must be
//! on `events.raw`, exactly once; nothing unsent may be there.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Trellis, brokers, free_port};
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

/// Sends batches until a request fails (ingest is gone); the event ids of the batches answered
/// 200 with every event accepted, and of every batch sent.
fn client(base: &str, client: usize) -> (Vec<String>, Vec<String>) {
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    for b in 0.. {
        let ids: Vec<String> = (0..BATCH).map(|i| event_id(client, b, i)).collect();
        sent.extend(ids.iter().cloned());
        let answer = ureq::post(&format!("{base}/v1/batch"))
            .header("Authorization", "Bearer trellis_dev_key")
            .header("Content-Type", "application/json")
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .send(batch(client, b).as_bytes());
        let Ok(mut response) = answer else {
            break;
        };
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if response.status() != 200 {
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
