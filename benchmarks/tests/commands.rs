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
