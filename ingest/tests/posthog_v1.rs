//! PostHog's v1 capture API over HTTP: the answer per event, the documented example, and what
//! a request without the bearer key or with a malformed body gets (the real SDK is in `sdks.rs`).

mod common;

use std::time::Duration;

use common::{Harness, config};
use trellis_schemas::Event;

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test]
async fn posthog_v1_capture_answers_each_event_by_uuid() {
    let (config, project, key) = config();
    let h = Harness::embedded(config).await;
    let doc = h.get("/openapi.json").await.json();
    let post = &doc["paths"]["/i/v1/analytics/events"]["post"];
    let example = post["requestBody"]["content"]["application/json"]["example"].clone();
    let answer = post["responses"]["200"]["content"]["application/json"]["example"].clone();
    let auth = bearer(&key);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("PostHog-Sdk-Info", "posthog-python/7.91.1"),
        ("PostHog-Request-Timestamp", "2026-11-25T12:00:01Z"),
    ];
    let r = h
        .post(
            "/i/v1/analytics/events",
            &headers,
            example.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The documented answer is the real one: the plant event stored, the empty $exception
    // dropped with its reason.
    assert_eq!(r.json(), answer);
    let events = h.events(&project, 1, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 1);
    let Event::Analytics(a) = &events[0] else {
        panic!("{:?}", events[0])
    };
    assert_eq!(a.common.event_id, "3f0c2a1e-5b7d-4e9f-8a6c-1d2e3f4a5b6c");
    assert_eq!(a.common.session_id.as_deref(), Some("s-1"));
    assert_eq!(a.common.sdk.name, "posthog-python");
    assert_eq!(a.common.sdk.version, "7.91.1");
    assert_eq!(
        a.common.release.update_id.as_deref(),
        Some("7d3e9a10-0000-4000-8000-000000000001")
    );
    let letters = h.dead_letters(&project, 1, Duration::from_secs(10)).await;
    assert!(
        letters[0]
            .reason
            .contains("$exception has no $exception_list")
    );

    // The key is the bearer token; nothing else authenticates a v1 request.
    let body = example.to_string().into_bytes();
    for auth in [None, Some("Bearer wrong_key_123")] {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend(auth.map(|a| ("Authorization", a)));
        let r = h
            .post("/i/v1/analytics/events", &headers, body.clone())
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = h
        .post(
            "/i/v1/analytics/events",
            &headers,
            b"{\"batch\": 3}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("batch"),
        "{}",
        r.body
    );
}
