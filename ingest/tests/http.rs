//! Ingest's HTTP behaviour, asserted on what reaches the bus: partial acceptance, auth, limits,
//! compression, rate limits, consent, scrubbing, clock drift and back-pressure.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, config};
use serde_json::{Value, json};
use trellis_ingest::config::{IpPolicy, RateLimitConfig};
use trellis_schemas::Event;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn analytics(n: u32) -> Value {
    json!({
        "kind": "analytics", "event_id": uuid(n), "timestamp": "2026-11-25T12:00:00Z",
        "device_id": "device-1", "release": {"platform": "ios", "app_version": "2.14.0", "update_id": "u-1", "channel": "production"},
        "name": "plant_watered", "properties": {"plant_id": n}
    })
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn send(h: &Harness, key: &str, body: Value) -> common::Response {
    let auth = bearer(key);
    h.post(
        "/v1/batch",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().into_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_native_batch_is_accepted_event_by_event() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let bad_id = json!({"kind": "analytics", "event_id": "not-a-uuid", "timestamp": 1, "release": {"platform": "ios", "app_version": "1"}, "name": "x"});
    let unknown_field = json!({"kind": "analytics", "event_id": uuid(9), "timestamp": 1, "release": {"platform": "ios", "app_version": "1"}, "name": "x", "colour": "red"});
    let error = json!({
        "kind": "error", "event_id": uuid(2), "timestamp": 1795660800000i64, "release": {"platform": "android", "app_version": "2.14.0"},
        "level": "fatal", "handled": false,
        "exceptions": [{"type": "TypeError", "value": "x is undefined", "frames": [{"function": "f", "lineno": 3, "in_app": true}]}]
    });
    let r = send(&h, &key, json!({"sent_at": "2026-11-25T12:00:01Z", "events": [analytics(1), bad_id, error, unknown_field]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcome = r.json();
    assert_eq!(outcome["accepted"], 2);
    let rejected = outcome["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a UUID"),
        "{}",
        rejected[0]
    );
    assert_eq!(rejected[1]["index"], 3);
    assert!(
        rejected[1]["reason"].as_str().unwrap().contains("colour"),
        "{}",
        rejected[1]
    );

    let events = h.events(&project, 2, Duration::from_secs(10)).await;
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e.common().event_id.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, [uuid(1), uuid(2)]);
    let Event::Error(e) = events
        .iter()
        .find(|e| matches!(e, Event::Error(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert!(!e.handled);
    assert_eq!(e.exceptions[0].frames[0].lineno, Some(3));
    let Event::Analytics(a) = events
        .iter()
        .find(|e| matches!(e, Event::Analytics(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(a.common.release.update_id.as_deref(), Some("u-1"));
    assert_eq!(a.common.project, project);
    assert!(a.common.received_at_ms > 0);

    let letters = h.dead_letters(&project, 2, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.stage == "ingest"));
    assert!(letters.iter().any(|l| l.reason.contains("not a UUID")
        && String::from_utf8_lossy(&l.payload).contains("not-a-uuid")));
}

#[tokio::test]
async fn the_openapi_example_is_accepted_as_documented() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let doc = h.get("/openapi.json").await.json();
    let example =
        doc["paths"]["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]["example"]
            .clone();
    let n = example["events"].as_array().unwrap().len();
    let r = send(&h, &key, example).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"accepted": n, "rejected": []}));
    assert_eq!(
        h.events(&project, n, Duration::from_secs(10)).await.len(),
        n
    );
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    let (mut config, project, key) = config();
    config.projects.push(trellis_ingest::config::ProjectConfig {
        name: "other".into(),
        keys: vec!["other_key_123".into()],
        ..Default::default()
    });
    let h = Harness::embedded(config).await;
    let body = json!({"events": [analytics(1)]});
    let r = h
        .post("/v1/batch", &[], body.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("no project key")
    );
    let r = send(&h, "wrong_key_123", body.clone()).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("unknown project key")
    );
    // A key writes only to its own project.
    let auth = "Sentry sentry_key=other_key_123, sentry_version=7";
    let envelope = format!(
        "{{}}\n{{\"type\":\"event\"}}\n{{\"message\":\"hi\",\"event_id\":\"{}\"}}\n",
        uuid(5).replace('-', "")
    );
    let r = h
        .post(
            &format!("/api/{project}/envelope/"),
            &[("X-Sentry-Auth", auth)],
            envelope.clone().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = h
        .post(
            &format!("/api/{project}/envelope/?sentry_key={key}"),
            &[],
            envelope.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"id": uuid(5).replace('-', "")}));
    let events = h.events(&project, 1, Duration::from_secs(10)).await;
    assert_eq!(
        events.len(),
        1,
        "only the authorized request reached the bus"
    );
    let r = h
        .post(
            "/batch/",
            &[],
            json!({"api_key": "nope_nope_nope", "batch": [{"event": "x", "distinct_id": "d"}]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 401);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn limits_answer_413_with_the_reason() {
    let (mut config, project, key) = config();
    config.limits.max_wire_bytes = 64 * 1024;
    config.limits.max_decompressed_bytes = 256 * 1024;
    config.limits.max_event_bytes = 8 * 1024;
    config.limits.max_events_per_request = 50;
    let h = Harness::embedded(config).await;
    let auth = bearer(&key);

    // Over the wire limit.
    let r = h
        .post(
            "/v1/batch",
            &[("Authorization", &auth)],
            vec![b' '; 100 * 1024],
        )
        .await;
    assert_eq!(r.status, 413);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("65536"),
        "{}",
        r.body
    );

    // A decompression bomb: 3 KB on the wire, 10 MB inflated.
    let mut bomb = b"{\"events\": [".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 10 * 1024 * 1024));
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 64 * 1024);
    let r = h
        .post(
            "/v1/batch",
            &[("Authorization", &auth), ("Content-Encoding", "gzip")],
            bomb,
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("decompressed"),
        "{}",
        r.body
    );

    // One event over the per-event limit is refused; the others go on.
    let mut big = analytics(2);
    big["properties"]["blob"] = json!("x".repeat(10 * 1024));
    let r = send(&h, &key, json!({"events": [analytics(1), big]})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["accepted"], 1);
    assert!(
        r.json()["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("8192-byte limit")
    );

    // Too many events in one request.
    let many: Vec<Value> = (0..51).map(|i| analytics(100 + i)).collect();
    let r = send(&h, &key, json!({"events": many})).await;
    assert_eq!(r.status, 413);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("the limit is 50"),
        "{}",
        r.body
    );

    // The same limit holds for a PostHog batch, before anything in it is converted.
    let batch: Vec<Value> = (0..51)
        .map(|i| json!({"event": "tapped", "distinct_id": format!("d{i}")}))
        .collect();
    let r = h
        .post(
            "/batch/",
            &[],
            json!({"api_key": key, "batch": batch})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("50"),
        "{}",
        r.body
    );

    // An attachment over its limit refuses the envelope.
    let mut config2 = common::config();
    config2.0.limits.max_attachment_bytes = 10;
    let h2 = Harness::embedded(config2.0).await;
    let env = "{}\n{\"type\":\"attachment\",\"length\":20,\"filename\":\"log.txt\"}\n01234567890123456789\n";
    let r = h2
        .post(
            &format!("/api/{}/envelope/?sentry_key={}", config2.1, config2.2),
            &[],
            env.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(r.status, 413);
    assert!(r.json()["reason"].as_str().unwrap().contains("log.txt"));

    assert_eq!(
        h.events(&project, 1, Duration::from_secs(5)).await.len(),
        1,
        "only the one valid event was stored"
    );
}

#[tokio::test]
async fn every_content_encoding_is_accepted() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let auth = bearer(&key);
    let body = |n| json!({"events": [analytics(n)]}).to_string().into_bytes();
    let deflate = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body(2)).unwrap();
        e.finish().unwrap()
    };
    let brotli = {
        let mut out = Vec::new();
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(&body(3)).unwrap();
        drop(w);
        out
    };
    let zstd = zstd::encode_all(&body(4)[..], 3).unwrap();
    for (encoding, payload) in [
        ("gzip", gzip(&body(1))),
        ("deflate", deflate),
        ("br", brotli),
        ("zstd", zstd),
    ] {
        let r = h
            .post(
                "/v1/batch",
                &[("Authorization", &auth), ("Content-Encoding", encoding)],
                payload,
            )
            .await;
        assert_eq!(r.status, 200, "{encoding}: {}", r.body);
        assert_eq!(r.json()["accepted"], 1, "{encoding}");
    }
    let r = h
        .post(
            "/v1/batch",
            &[("Authorization", &auth), ("Content-Encoding", "lzma")],
            body(5),
        )
        .await;
    assert_eq!(r.status, 415);
    let r = h
        .post(
            "/v1/batch",
            &[("Authorization", &auth), ("Content-Encoding", "gzip")],
            b"not gzip at all".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        h.events(&project, 4, Duration::from_secs(10)).await.len(),
        4
    );
}

#[tokio::test]
async fn rate_limits_answer_429_and_store_nothing_of_the_request() {
    let (mut config, project, key) = config();
    config.rate_limit = RateLimitConfig {
        per_key_per_second: 1,
        per_key_burst: 10,
        global_per_second: 0,
        global_burst: 0,
    };
    config.limits.max_events_per_request = 10;
    config.retry_after = Duration::from_secs(7);
    let h = Harness::embedded(config).await;
    let r = send(
        &h,
        &key,
        json!({"events": (0..8).map(analytics).collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        &h,
        &key,
        json!({"events": (8..16).map(analytics).collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("7"));
    // Sentry SDKs also get X-Sentry-Rate-Limits.
    let env = "{}\n{\"type\":\"event\"}\n{\"message\":\"a\"}\n{\"type\":\"event\"}\n{\"message\":\"b\"}\n{\"type\":\"event\"}\n{\"message\":\"c\"}\n";
    let r = h
        .post(
            &format!("/api/{project}/envelope/?sentry_key={key}"),
            &[],
            env.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-sentry-rate-limits"), Some("7::organization"));
    assert_eq!(h.events(&project, 8, Duration::from_secs(5)).await.len(), 8);
    let metrics = h.get("/metrics").await.body;
    assert!(metrics.contains(&format!("trellis_ingest_events_dropped_total{{project=\"{project}\",reason=\"rate_limited\"}} 11")), "{metrics}");
}

#[tokio::test]
async fn events_without_consent_are_dropped_and_counted() {
    let (mut config, project, key) = config();
    config.projects[0].require_consent = true;
    let h = Harness::embedded(config).await;
    let mut yes = analytics(1);
    yes["consent"] = json!(true);
    let mut no = analytics(2);
    no["consent"] = json!(false);
    let r = send(&h, &key, json!({"events": [yes, no, analytics(3)]})).await;
    assert_eq!(
        r.json(),
        json!({"accepted": 1, "rejected": [{"index": 1, "reason": "no_consent"}, {"index": 2, "reason": "no_consent"}]})
    );
    let events = h.events(&project, 1, Duration::from_secs(5)).await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.common().event_id.clone())
            .collect::<Vec<_>>(),
        [uuid(1)]
    );
    assert!(
        h.dead_letters(&project, 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "refused consent is not kept anywhere"
    );
    let metrics = h.get("/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "trellis_ingest_events_dropped_total{{project=\"{project}\",reason=\"no_consent\"}} 2"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn pii_is_scrubbed_and_client_ips_follow_the_project_policy() {
    let (mut config, project, key) = config();
    config.projects[0].client_ip = IpPolicy::Truncate;
    let h = Harness::embedded(config).await;
    let mut a = analytics(1);
    a["properties"] = json!({"note": "mail jane@example.com", "$ip": "203.0.113.77", "card": "4111 1111 1111 1111"});
    let error = json!({
        "kind": "error", "event_id": uuid(2), "timestamp": 1, "release": {"platform": "ios", "app_version": "1"},
        "message": "payment failed for jane@example.com from 192.0.2.14",
        "user_id": "Jane@Example.com",
        "exceptions": [{"type": "Error", "value": "GET https://api.example.com/pay?card=4111&t=x failed",
            "frames": [{"abs_path": "/Users/jane/src/app/pay.ts", "lineno": 3}]}],
        "breadcrumbs": [{"timestamp": 1, "message": "called +1 415-555-2671"}],
        "contexts": {"user": {"ip_address": "198.51.100.23", "email": "jane@example.com"}}
    });
    send(&h, &key, json!({"events": [a, error]})).await;
    let events = h.events(&project, 2, Duration::from_secs(10)).await;
    for e in &events {
        match e {
            Event::Analytics(a) => {
                let p: Value = serde_json::from_str(&a.properties).unwrap();
                assert_eq!(
                    p,
                    json!({"note": "mail [email]", "$ip": "203.0.113.0", "card": "[card]"})
                );
            }
            Event::Error(e) => {
                assert_eq!(
                    e.message.as_deref(),
                    Some("payment failed for [email] from [ip]")
                );
                let user = e.common.user_id.as_deref().unwrap();
                assert!(user.starts_with("sha256:") && user.len() == 39, "{user}");
                let x = &e.exceptions[0];
                assert_eq!(
                    x.value.as_deref(),
                    Some("GET https://api.example.com/pay?[filtered] failed")
                );
                assert_eq!(
                    x.frames[0].abs_path.as_deref(),
                    Some("/Users/[user]/src/app/pay.ts")
                );
                assert_eq!(e.breadcrumbs[0].message.as_deref(), Some("called [phone]"));
                let c: Value = serde_json::from_str(&e.contexts).unwrap();
                assert_eq!(
                    c,
                    json!({"user": {"ip_address": "198.51.100.0", "email": "[email]"}})
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn device_clock_drift_is_corrected_from_sent_at() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let now = trellis_ingest::time::now_ms();
    // The device's clock is two hours behind: it says it sent the batch two hours ago.
    let mut a = analytics(1);
    a["timestamp"] = json!(now - 2 * 3_600_000 - 5_000);
    let r = send(
        &h,
        &key,
        json!({"sent_at": now - 2 * 3_600_000, "events": [a]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let events = h.events(&project, 1, Duration::from_secs(5)).await;
    let c = events[0].common();
    let corrected_age = c.received_at_ms - c.timestamp_ms;
    assert!(
        (4_000..=6_000).contains(&corrected_age),
        "the event happened 5 s before sending, got {corrected_age} ms"
    );
}

#[tokio::test]
async fn a_bus_that_cannot_store_gets_503_with_retry_after() {
    let (mut config, project, key) = config();
    config.publish_timeout = Duration::from_secs(2);
    config.retry_after = Duration::from_secs(3);
    // A broker address where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kafka = trellis_bus::config::KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        ack_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let bus: Arc<dyn trellis_bus::Bus> =
        Arc::new(trellis_bus::kafka::KafkaBus::new(&kafka).unwrap());
    let h = Harness::serve(config, bus, None).await;
    let r = send(&h, &key, json!({"events": [analytics(1), analytics(2)]})).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(h.get("/readyz").await.status, 503);
    let metrics = h.get("/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "trellis_ingest_events_dropped_total{{project=\"{project}\",reason=\"unavailable\"}} 2"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_event_the_broker_refuses_is_dead_lettered_and_the_rest_of_the_batch_stored() {
    // Under ingest's 1 MiB event limit, over the 1,000,000 bytes a Kafka message may have: a
    // broker whose limit is below what ingest was told.
    let (mut config, project, key) = config();
    config.limits.max_encoded_event_bytes = 2 << 20;
    let h = Harness::kafka(config).await;
    let mut huge = analytics(2);
    huge["properties"] = json!({"blob": "x".repeat(1_020_000)});
    assert!(huge.to_string().len() < 1024 * 1024);
    let r = send(
        &h,
        &key,
        json!({"events": [analytics(1), huge, analytics(3)]}),
    )
    .await;

    assert_eq!(
        r.status, 200,
        "a refusal for good is not a reason to retry: {}",
        r.body
    );
    let outcome = r.json();
    assert_eq!(outcome["accepted"], 2, "{outcome}");
    let rejected = outcome["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{outcome}");
    assert_eq!(rejected[0]["index"], 1);
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(reason.contains("too large"), "{reason}");

    let mut ids: Vec<String> = h
        .events(&project, 2, Duration::from_secs(10))
        .await
        .iter()
        .map(|e| e.common().event_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, [uuid(1), uuid(3)]);
    let letters = h.dead_letters(&project, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, reason);
    let payload = String::from_utf8_lossy(&letters[0].payload);
    assert!(
        payload.contains(&uuid(2)) && payload.len() <= 4096,
        "{payload:.200}"
    );
    let metrics = h.get("/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "trellis_ingest_events_dropped_total{{project=\"{project}\",reason=\"refused_by_bus\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn events_older_than_the_horizon_are_refused_dead_lettered_and_counted() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let mut old = analytics(2);
    old["timestamp"] = json!("2020-01-01T00:00:00Z");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut fresh = analytics(1);
    fresh["timestamp"] = json!(now_ms);
    let r = send(&h, &key, json!({"events": [fresh, old]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcome = r.json();
    assert_eq!(outcome["accepted"], 1, "{outcome}");
    assert_eq!(outcome["rejected"][0]["index"], 1, "{outcome}");
    let reason = outcome["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("more than 365 days before"), "{reason}");
    let events = h.events(&project, 1, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].common().event_id, uuid(1));
    let letters = h.dead_letters(&project, 1, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, reason);
    let metrics = h.get("/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "trellis_ingest_events_dropped_total{{project=\"{project}\",reason=\"too_old\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_event_without_room_for_the_processors_ids_is_refused_at_ingest() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let mut big = analytics(2);
    big["properties"] = json!({"blob": "x".repeat(997_000)});
    let r = send(&h, &key, json!({"events": [analytics(1), big]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcome = r.json();
    assert_eq!(outcome["accepted"], 1, "{outcome}");
    assert_eq!(outcome["rejected"][0]["index"], 1, "{outcome}");
    let reason = outcome["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("over the 995904-byte limit"), "{reason}");
    assert_eq!(h.events(&project, 1, Duration::from_secs(5)).await.len(), 1);
    let letters = h.dead_letters(&project, 1, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload.len(), 4096);
}

#[tokio::test]
async fn an_oversized_error_is_stored_cut_to_the_field_caps_and_the_cuts_counted() {
    use trellis_ingest::trim::{MAX_BREADCRUMBS, MAX_FRAMES, MAX_SHORT_CHARS, MAX_TAGS};
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let frames: Vec<Value> = (0..5_000)
        .map(|i| json!({"function": format!("f{i}"), "filename": "app.js", "lineno": i}))
        .collect();
    let breadcrumbs: Vec<Value> = (0..300)
        .map(|i| json!({"timestamp": i, "message": format!("b{i}")}))
        .collect();
    let tags: serde_json::Map<String, Value> = (0..400)
        .map(|i| {
            (
                format!("t{i:03}"),
                json!("v".repeat(if i == 0 { 100_000 } else { 1 })),
            )
        })
        .collect();
    let error = json!({
        "kind": "error", "event_id": uuid(1), "timestamp": "2026-11-25T12:00:00Z",
        "device_id": "device-1", "release": {"platform": "ios", "app_version": "2.14.0"},
        "exceptions": [{"type": "RangeError", "value": "Maximum call stack size exceeded", "frames": frames}],
        "breadcrumbs": breadcrumbs, "tags": tags
    });
    let r = send(&h, &key, json!({"events": [error]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accepted"], 1, "{}", r.body);
    let events = h.events(&project, 1, Duration::from_secs(10)).await;
    let Event::Error(e) = &events[0] else {
        panic!("unexpected {:?}", events[0])
    };
    let stack = &e.exceptions[0].frames;
    assert_eq!(stack.len(), MAX_FRAMES);
    assert_eq!(stack[0].function.as_deref(), Some("f0"));
    assert_eq!(stack[MAX_FRAMES - 1].function.as_deref(), Some("f4999"));
    assert_eq!(e.breadcrumbs.len(), MAX_BREADCRUMBS);
    assert_eq!(e.breadcrumbs[0].message.as_deref(), Some("b200"));
    assert_eq!(e.tags.len(), MAX_TAGS);
    let long = e.tags.iter().find(|t| t.key == "t000").unwrap();
    assert_eq!(long.value.chars().count(), MAX_SHORT_CHARS);
    let metrics = h.get("/metrics").await.body;
    for (field, n) in [
        ("frames", 4_750),
        ("breadcrumbs", 200),
        ("tags", 200),
        ("strings", 1),
    ] {
        let line = format!(
            "trellis_ingest_fields_trimmed_total{{project=\"{project}\",field=\"{field}\"}} {n}\n"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn metrics_count_what_was_accepted_by_kind() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    send(&h, &key, json!({"events": [analytics(1), analytics(2)]})).await;
    let metrics = h.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(&format!(
            "trellis_ingest_events_accepted_total{{project=\"{project}\",kind=\"analytics\"}} 2"
        )),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("trellis_ingest_requests_total{endpoint=\"native\",status=\"200\"} 1")
    );
}

#[tokio::test]
async fn small_bodies_cannot_expand_into_many_events() {
    let (mut config, project, key) = config();
    config.limits.max_events_per_request = 100;
    let h = Harness::embedded(config).await;
    let auth = bearer(&key);
    // 2 MB of `0,` compresses to a few KB; it must be refused while reading, not after building.
    let zeros = |prefix: &str| {
        let mut body = prefix.as_bytes().to_vec();
        body.extend(std::iter::repeat_n(b"0,".as_slice(), 1_000_000).flatten());
        body.extend_from_slice(b"0]}");
        gzip(&body)
    };
    let r = h
        .post(
            "/v1/batch",
            &[("Authorization", &auth), ("Content-Encoding", "gzip")],
            zeros("{\"events\": ["),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("too many events"),
        "{}",
        r.body
    );
    let posthog = zeros(&format!("{{\"api_key\": \"{key}\", \"batch\": ["));
    let r = h
        .post("/batch/", &[("Content-Encoding", "gzip")], posthog)
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    let envelope = format!("{{}}\n{}", "{\"type\":\"x\"}\n{}\n".repeat(200));
    let r = h
        .post(
            &format!("/api/{project}/envelope/?sentry_key={key}"),
            &[],
            envelope.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        h.events(&project, 0, Duration::from_millis(300))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_posthog_key_writes_only_its_own_events() {
    let (mut config, project, key) = config();
    config.projects.push(trellis_ingest::config::ProjectConfig {
        name: "other".into(),
        keys: vec!["other_key_456".into()],
        ..Default::default()
    });
    let h = Harness::embedded(config).await;
    let body = json!([
        {"event": "a", "distinct_id": "u", "properties": {"token": key}},
        {"event": "b", "distinct_id": "u", "properties": {"token": "other_key_456"}},
        {"event": "c", "distinct_id": "u", "api_key": "unknown_key_789"},
    ]);
    let r = h.post("/e/", &[], body.to_string().into_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let events = h.events(&project, 1, Duration::from_secs(5)).await;
    assert_eq!(
        events.len(),
        1,
        "only the event with the request's key is stored"
    );
    let letters = h.dead_letters(&project, 2, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 2);
    assert!(
        letters
            .iter()
            .all(|l| l.reason.contains("another project key") && l.payload.is_empty())
    );
}

#[tokio::test]
async fn dead_letters_are_scrubbed_and_bounded() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let bad = json!({"kind": "analytics", "event_id": "nope", "timestamp": 1, "release": {"platform": "ios", "app_version": "1"},
        "name": "x", "properties": {"email": "jane@example.com", "$ip": "203.0.113.5", "blob": "é".repeat(3000)}});
    send(&h, &key, json!({"events": [bad]})).await;
    let letters = h.dead_letters(&project, 1, Duration::from_secs(5)).await;
    let payload =
        String::from_utf8(letters[0].payload.clone()).expect("cut on a character boundary");
    assert!(payload.len() <= 4096);
    assert!(
        !payload.contains("jane@example.com") && !payload.contains("203.0.113.5"),
        "{payload}"
    );
}

#[test]
fn a_rate_limit_burst_below_the_request_cap_is_refused_at_start_up() {
    let (mut config, _, _) = config();
    config.rate_limit.per_key_burst = 50;
    config.limits.max_events_per_request = 100;
    let err = config.validate().unwrap_err();
    assert!(
        err.contains("per_key_burst") && err.contains("max_events_per_request"),
        "{err}"
    );
}
