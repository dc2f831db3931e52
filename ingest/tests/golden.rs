//! Replays requests captured from real SDKs (`tests/fixtures/sdk-captures`, with the wire
//! compression they travelled with) against ingest on the real broker, and compares what reached
//! the bus, capture by capture, with `tests/fixtures/golden.json`.
//! `UPDATE_GOLDEN=1` rewrites the golden file (review the diff before committing it).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{Harness, config};
use serde_json::{Value, json};
use trellis_schemas::Event;

fn summary(event: &Event) -> Value {
    let c = event.common();
    let release = json!({
        "platform": c.release.platform, "app_version": c.release.app_version, "build": c.release.build,
        "environment": c.release.environment, "update_id": c.release.update_id,
    });
    let detail = match event {
        Event::Analytics(a) => {
            json!({"name": a.name, "screen": a.screen, "user_id": c.user_id, "session_id": c.session_id})
        }
        Event::Error(e) => json!({
            "level": e.level, "handled": e.handled, "message": e.message,
            "exceptions": e.exceptions.iter().map(|x| json!({"type": x.exception_type, "value": x.value, "frames": x.frames.len(), "in_app": x.frames.iter().filter(|f| f.in_app).count()})).collect::<Vec<_>>(),
            "breadcrumbs": e.breadcrumbs.len(), "tags": e.tags.len(), "user_id": c.user_id, "device_model": c.device.model, "os": [c.device.os_name, c.device.os_version],
        }),
        Event::Transaction(t) => json!({
            "name": t.name, "op": t.op, "spans": t.spans.len(), "measurements": t.measurements.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
            "duration_us": t.end_us - t.start_us,
        }),
        Event::Session(s) => {
            json!({"status": s.status, "init": s.init, "errors": s.errors, "user_id": c.user_id})
        }
        Event::Performance(p) => json!({
            "metric": p.metric, "value": p.value, "unit": p.unit, "screen": p.screen,
            "attributes": p.attributes.iter().map(|t| format!("{}={}", t.key, t.value)).collect::<Vec<_>>(),
        }),
        Event::Notification(n) => json!({"stage": n.stage}),
    };
    // Times are left out: replaying a capture later looks like device clock drift (its sent_at is
    // old), and the correction moves them; `http.rs` tests the correction itself.
    json!({"kind": event.kind(), "event_id": c.event_id, "release": release, "sdk": c.sdk.name, "detail": detail})
}

fn compress(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    match encoding {
        Some("gzip") => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        Some("br") => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(body).unwrap();
            drop(w);
            out
        }
        None => body.to_vec(),
        Some(other) => panic!("no encoder for {other}"),
    }
}

#[tokio::test]
async fn captured_sdk_requests_produce_exactly_the_golden_events() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdk-captures");
    let mut captures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    captures.sort();
    assert_eq!(captures.len(), 20);

    let mut actual = BTreeMap::new();
    for capture in &captures {
        let name = capture
            .strip_prefix(&dir)
            .unwrap()
            .with_extension("")
            .display()
            .to_string();
        // Each capture gets a project and key of its own, so its events are told apart on the
        // shared broker and a rerun never sees an earlier run's.
        let (mut config, project, key) = config();
        // The golden file records what each SDK request becomes. A broker slowed down by the rest
        // of the suite must not turn one into a 503: that answer is tested on its own (http.rs).
        config.publish_timeout = Duration::from_secs(30);
        let h = Harness::kafka(config).await;
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(capture).unwrap()).unwrap();
        let body = std::fs::read(capture.with_extension("body")).unwrap();
        let body = String::from_utf8(body)
            .unwrap()
            .replace("phc_testProjectKey123", &key);
        let mut headers = Vec::new();
        let mut encoding = None;
        for pair in meta["headers"].as_array().unwrap() {
            let (k, v) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
            match k.to_ascii_lowercase().as_str() {
                "x-sentry-auth" => headers.push((
                    k.to_string(),
                    v.replace("sentry_key=publickey", &format!("sentry_key={key}")),
                )),
                "content-type" | "user-agent" => headers.push((k.to_string(), v.to_string())),
                "content-encoding" => {
                    encoding = Some(v.to_string());
                    headers.push((k.to_string(), v.to_string()));
                }
                _ => {}
            }
        }
        let path = meta["path"]
            .as_str()
            .unwrap()
            .replace("/api/1/", &format!("/api/{project}/"));
        let wire = compress(encoding.as_deref(), body.as_bytes());
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = h.post(&path, &header_refs, wire).await;
        let mut events: Vec<Value> = h
            .events(&project, 1, Duration::from_secs(3))
            .await
            .iter()
            .map(summary)
            .collect();
        events.sort_by_key(|e| e.to_string());
        let metrics = h.get("/metrics").await.body;
        let mut counted: Vec<String> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("trellis_ingest_client_discarded_total")
                    || l.starts_with("trellis_ingest_items_skipped_total")
            })
            .map(|l| l.replace(&project, "PROJECT"))
            .collect();
        counted.sort();
        actual.insert(
            name,
            json!({"status": r.status, "response": r.json(), "events": events, "counted": counted}),
        );
    }
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden.json");
    let actual = serde_json::to_string_pretty(&actual).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &actual).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&golden_path)
        .expect("tests/fixtures/golden.json is missing: run with UPDATE_GOLDEN=1 and review it");
    if golden != actual {
        let out = std::env::temp_dir().join("trellis-golden-actual.json");
        std::fs::write(&out, &actual).unwrap();
        panic!(
            "events differ from tests/fixtures/golden.json; actual written to {}",
            out.display()
        );
    }
}
