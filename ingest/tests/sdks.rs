//! The real SDKs against ingest on the real broker: `sentry-sdk` and `posthog` from PyPI,
//! `@sentry/node` and `posthog-node` from npm, installed by `scripts/test.sh` (their locations are
//! in `TEST_TRELLIS_PYTHON` and `TEST_TRELLIS_NODE_MODULES`). Each script sends a known set of
//! events; the test asserts exactly those reached the bus, and nothing else.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Harness, config};
use trellis_schemas::{Event, Level, SessionStatus};

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
        .display()
        .to_string()
}

fn run(mut command: Command) {
    let out = command.output().expect("the SDK runner could not start");
    assert!(
        out.status.success(),
        "SDK script failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python() -> Command {
    Command::new(
        std::env::var("TEST_TRELLIS_PYTHON")
            .expect("TEST_TRELLIS_PYTHON is not set: run the suite with scripts/test.sh"),
    )
}

fn node() -> Command {
    let modules = std::env::var("TEST_TRELLIS_NODE_MODULES")
        .expect("TEST_TRELLIS_NODE_MODULES is not set: run the suite with scripts/test.sh");
    let mut c = Command::new("node");
    c.env("NODE_PATH", modules);
    c
}

fn names(events: &[Event]) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Analytics(a) => format!("analytics:{}", a.name),
            Event::Error(e) => format!(
                "error:{}",
                e.exceptions
                    .first()
                    .map(|x| x.exception_type.clone())
                    .or(e.message.clone())
                    .unwrap_or_default()
            ),
            Event::Transaction(t) => format!("transaction:{}:{}", t.name, t.spans.len()),
            Event::Session(s) => format!("session:{:?}:{}", s.status, s.errors),
            // Durations vary; measurements are what the SDK was given.
            Event::Performance(p) => {
                let value = if p.metric.ends_with("_request") || p.metric.ends_with("_query") {
                    String::new()
                } else {
                    format!("{}:", p.value)
                };
                let attributes: Vec<String> = p
                    .attributes
                    .iter()
                    .map(|t| format!("{}={}", t.key, t.value))
                    .collect();
                let attributes = attributes.join(",");
                // The test server's port differs from run to run.
                let attributes = without_port(&attributes);
                let screen = p.screen.as_deref().unwrap_or("-");
                format!("performance:{}:{value}{screen}:{attributes}", p.metric)
            }
            other => format!("{:?}", other.kind()),
        })
        .collect();
    out.sort();
    out
}

/// `[ip]:PORT` as `[ip]:{port}` (ingest scrubs the IP address out of URLs; the port stays).
fn without_port(text: &str) -> String {
    match text.split_once("[ip]:") {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{before}[ip]:{{port}}{rest}")
        }
        None => text.to_string(),
    }
}

#[tokio::test]
async fn sentry_python_sdk() {
    let (config, project, key) = config();
    let id = config.projects[0].sentry_id.unwrap();
    let h = Harness::kafka(config).await;
    let dsn = format!("http://{key}@{}/{id}", h.url.trim_start_matches("http://"));
    let mut c = python();
    c.arg(script("sentry_python.py")).arg(&dsn);
    tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    let events = h.events(&project, 10, Duration::from_secs(20)).await;
    assert_eq!(
        names(&events),
        [
            "error:KeyError",
            "error:Watering reminder could not be scheduled",
            "error:ZeroDivisionError",
            "performance:app_start_cold:812:-:transaction_op=ui.load",
            "performance:db_query:PlantDetail:operation=SELECT,op=db.query,transaction_op=ui.load",
            "performance:http_request:PlantDetail:method=GET,url=/plants/{id},transaction_op=ui.load",
            "performance:http_request:PlantDetail:method=GET,url=http://[ip]:{port}/plants/{id}/photos,status_code=200,transaction_op=ui.load",
            "performance:time_to_initial_display:245.5:PlantDetail:transaction_op=ui.load",
            "session:Exited:2",
            "transaction:PlantDetail:3",
        ]
    );
    for e in &events {
        let r = &e.common().release;
        assert_eq!(
            (
                r.app_version.as_str(),
                r.build.as_deref(),
                r.environment.as_deref()
            ),
            ("2.14.0", Some("1402"), Some("production"))
        );
        if let Event::Error(err) = e {
            assert_eq!(
                r.update_id.as_deref(),
                Some("7d3e9a10-0000-4000-8000-000000000001")
            );
            assert_eq!(r.channel.as_deref(), Some("production"));
            assert_eq!(r.platform, "ios");
            assert_eq!(e.common().user_id.as_deref(), Some("user-7"));
            if err.message.is_some() {
                assert_eq!(err.level, Level::Warning);
            } else {
                assert!(
                    err.exceptions[0].frames.iter().any(|f| f.in_app),
                    "in-app frames are kept"
                );
            }
        }
        if let Event::Session(s) = e {
            assert_eq!(s.status, SessionStatus::Exited);
            assert!(e.common().session_id.is_some());
        }
    }
}

#[tokio::test]
async fn posthog_python_sdk() {
    let (config, project, key) = config();
    let h = Harness::kafka(config).await;
    let mut c = python();
    c.arg(script("posthog_python.py")).arg(&h.url).arg(&key);
    tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    let events = h.events(&project, 5, Duration::from_secs(20)).await;
    assert_eq!(
        names(&events),
        [
            "analytics:$screen",
            "analytics:$set",
            "analytics:plant_watered",
            "analytics:post_liked",
            "error:ValueError"
        ]
    );
    for e in &events {
        assert_eq!(e.common().user_id.as_deref(), Some("user-9"));
        match e {
            Event::Analytics(a) if a.name == "$screen" => {
                assert_eq!(a.screen.as_deref(), Some("Community"))
            }
            Event::Analytics(a) if a.name == "$set" => assert!(
                a.properties.contains("\"plan\":\"pro\""),
                "{}",
                a.properties
            ),
            Event::Analytics(a) => {
                assert_eq!(a.common.release.update_id.as_deref(), Some("u-42"));
                assert_eq!(a.common.release.channel.as_deref(), Some("staging"));
                assert_eq!(a.common.release.app_version, "2.14.0");
                // posthog-python reports the host's own OS ($os), whatever the caller passed.
                assert_eq!(a.common.release.platform, std::env::consts::OS);
            }
            Event::Error(err) => {
                assert_eq!(err.exceptions[0].value.as_deref(), Some("strain not found"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// posthog-python in its v1 capture mode, with each compression it offers: the events reach the
/// bus, and the one trellis refuses is the only one the SDK is told to drop.
#[tokio::test]
async fn posthog_python_sdk_v1_capture() {
    for compression in ["zstd", "gzip", "none"] {
        let (config, project, key) = config();
        let h = Harness::kafka(config).await;
        let mut c = python();
        c.arg(script("posthog_python_v1.py"))
            .arg(&h.url)
            .arg(&key)
            .arg(compression);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let told: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(told["errors"], serde_json::json!([]), "{compression}");
        let drops = told["drops"].as_array().unwrap();
        assert_eq!(drops.len(), 1, "{compression}: {told}");
        assert_eq!(drops[0]["uuid"], told["refused"]);
        assert!(
            drops[0]["details"]
                .as_str()
                .unwrap()
                .contains("$exception has no $exception_list"),
            "{told}"
        );
        let events = h.events(&project, 4, Duration::from_secs(20)).await;
        assert_eq!(
            names(&events),
            [
                "analytics:$screen",
                "analytics:$set",
                "analytics:plant_watered",
                "error:ValueError"
            ],
            "{compression}"
        );
        for e in &events {
            assert_eq!(e.common().user_id.as_deref(), Some("user-9"));
            // v1 events carry no $lib: the SDK is named by the PostHog-Sdk-Info header.
            assert_eq!(e.common().sdk.name, "posthog-python");
            assert_eq!(e.common().sdk.version, "7.91.1");
            if let Event::Analytics(a) = e
                && a.name == "plant_watered"
            {
                assert_eq!(a.common.session_id.as_deref(), Some("s-7"));
                assert_eq!(a.common.release.update_id.as_deref(), Some("u-42"));
            }
        }
        assert_eq!(
            h.dead_letters(&project, 1, Duration::from_secs(10))
                .await
                .len(),
            1
        );
    }
}

#[tokio::test]
async fn sentry_node_sdk() {
    sentry_node(None).await
}

/// Span streaming: the same screen load arrives as `span` items (the v2 container) and is stored
/// as the same transaction and sample.
#[tokio::test]
async fn sentry_node_sdk_streaming_spans() {
    sentry_node(Some("stream")).await
}

async fn sentry_node(mode: Option<&str>) {
    let (config, project, key) = config();
    let id = config.projects[0].sentry_id.unwrap();
    let h = Harness::kafka(config).await;
    let dsn = format!("http://{key}@{}/{id}", h.url.trim_start_matches("http://"));
    let mut c = node();
    c.arg(script("sentry_node.js")).arg(&dsn).args(mode);
    tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    let events = h.events(&project, 4, Duration::from_secs(20)).await;
    assert_eq!(
        names(&events),
        [
            "error:Reminder sync slow",
            "error:TypeError",
            "performance:http_request:CalendarScreen:method=GET,url=/reminders,transaction_op=ui.load",
            "transaction:CalendarScreen:1"
        ],
        "{mode:?}"
    );
    for e in &events {
        assert_eq!(e.common().release.app_version, "2.14.0");
        assert_eq!(e.common().release.build.as_deref(), Some("1402"));
        assert_eq!(
            e.common().release.environment.as_deref(),
            Some("production")
        );
        assert_eq!(e.common().user_id.as_deref(), Some("user-11"));
        assert!(
            e.common().sdk.name.contains("node"),
            "{}",
            e.common().sdk.name
        );
    }
}

#[tokio::test]
async fn posthog_node_sdk() {
    let (config, project, key) = config();
    let h = Harness::kafka(config).await;
    let mut c = node();
    c.arg(script("posthog_node.js")).arg(&h.url).arg(&key);
    tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    let events = h.events(&project, 3, Duration::from_secs(20)).await;
    assert_eq!(
        names(&events),
        [
            "analytics:diagnosis_finished",
            "analytics:diagnosis_started",
            "analytics:reminder_set"
        ]
    );
    for e in &events {
        assert_eq!(e.common().user_id.as_deref(), Some("user-12"));
        assert_eq!(e.common().release.platform, "ios");
        assert_eq!(e.common().sdk.name, "posthog-node");
    }
}
