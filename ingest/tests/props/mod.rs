//! What every parser result must satisfy, and generators of parser inputs, for `parsers_prop.rs`.

#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use trellis_ingest::accept::{IngestError, Item};
use trellis_ingest::config::LimitsConfig;
use trellis_ingest::metrics::IngestMetrics;
use trellis_ingest::sentry::envelope;
use trellis_ingest::{native, posthog, sentry};

// ---------------------------------------------------------------------------------------------
// The properties every parser result must have.

/// A refused request answers a 4xx with a non-empty reason.
pub fn check_err(what: &str, e: &IngestError) {
    assert!(
        e.status().is_client_error(),
        "{what}: {e:?} answers {}, not a 4xx",
        e.status()
    );
    assert!(
        !e.to_string().trim().is_empty(),
        "{what}: {e:?} has an empty reason"
    );
}

/// Every refused event says why.
pub fn check_items(what: &str, items: &[Item]) {
    for (i, item) in items.iter().enumerate() {
        if let Item::Invalid { reason, .. } = item {
            assert!(
                !reason.trim().is_empty(),
                "{what}: item {i} is invalid without a reason"
            );
        }
    }
}

pub fn limits(max_event_bytes: usize) -> LimitsConfig {
    LimitsConfig {
        max_event_bytes,
        ..LimitsConfig::default()
    }
}

/// Runs every Sentry entry point on a body and checks the properties; the envelope's items when
/// it parses.
pub fn sentry_all(body: &[u8], max_event_bytes: usize) -> Option<Vec<Item>> {
    let limits = limits(max_event_bytes);
    let framing = envelope::parse(body, 10_000);
    if let Err(e) = &framing {
        assert!(!e.to_string().is_empty(), "envelope error without text");
    }
    let parsed = match sentry::parse_envelope(body, &limits, &IngestMetrics::default(), "p") {
        Ok(p) => {
            check_items("envelope", &p.items);
            Some(p.items)
        }
        Err(e) => {
            check_err("envelope", &e);
            None
        }
    };
    // Framing errors are the only way parse_envelope refuses an envelope other than for size.
    if framing.is_err() {
        assert!(
            parsed.is_none(),
            "parse_envelope took a body the framing refused"
        );
    }
    match sentry::parse_store(body, &limits, &IngestMetrics::default()) {
        Ok(p) => check_items("store", &p.items),
        Err(e) => check_err("store", &e),
    }
    parsed
}

pub fn native_all(body: &[u8], max_event_bytes: usize) -> Option<Vec<Item>> {
    match native::parse(body, max_event_bytes, 10_000) {
        Ok((_, items)) => {
            check_items("native", &items);
            Some(items)
        }
        Err(e) => {
            check_err("native", &e);
            None
        }
    }
}

pub fn posthog_all(body: &[u8], max_event_bytes: usize) -> Option<Vec<Item>> {
    match posthog::parse(body, 10_000, max_event_bytes) {
        Ok(p) => {
            check_items("posthog", &p.items);
            Some(p.items)
        }
        Err(e) => {
            check_err("posthog", &e);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.

/// An event size limit: usually the default, sometimes small enough to refuse events for size.
pub fn max_event_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => Just(LimitsConfig::default().max_event_bytes),
        1 => 0usize..256,
    ]
}

pub const KEYS: &[&str] = &[
    // native
    "kind",
    "event_id",
    "timestamp",
    "device_id",
    "user_id",
    "session_id",
    "release",
    "device",
    "sdk",
    "consent",
    "platform",
    "app_version",
    "build",
    "name",
    "version",
    "screen",
    "properties",
    "level",
    "handled",
    "message",
    "exceptions",
    "breadcrumbs",
    "tags",
    "fingerprint",
    "type",
    "value",
    "frames",
    "metric",
    "unit",
    "status",
    "started",
    "duration_ms",
    "seq",
    "init",
    "errors",
    "trace_id",
    "span_id",
    "start_timestamp",
    "end_timestamp",
    "spans",
    "op",
    "measurements",
    "stage",
    "notification_id",
    "data",
    // posthog
    "event",
    "distinct_id",
    "uuid",
    "api_key",
    "token",
    "batch",
    "sent_at",
    "$set",
    "$set_once",
    "$os",
    "$lib",
    "$consent",
    "$exception_list",
    "$exception_message",
    "$exception_level",
    "$exception_fingerprint",
    "$screen_name",
    "mechanism",
    "stacktrace",
    "$app_version",
    // sentry
    "exception",
    "values",
    "logentry",
    "formatted",
    "contexts",
    "trace",
    "sid",
    "did",
    "attrs",
    "aggregates",
    "exited",
    "errored",
    "crashed",
    "abnormal",
    "discarded_events",
    "quantity",
    "reason",
    "category",
    "user",
    "id",
    "dist",
    "environment",
    "os",
    "app",
    "app_build",
    "expo_updates",
    "duration",
    "length",
    "filename",
];

pub const STRINGS: &[&str] = &[
    "",
    "analytics",
    "error",
    "performance",
    "transaction",
    "session",
    "sessions",
    "notification",
    "event",
    "client_report",
    "attachment",
    "$exception",
    "$screen",
    "$identify",
    "ok",
    "exited",
    "crashed",
    "abnormal",
    "errored",
    "sent",
    "fatal",
    "warning",
    "ios",
    "android",
    "iOS 17.2",
    "myapp@1.2.3+45",
    "@",
    "+",
    "9ec79c33ec9942ab8353589fcb2e04dc",
    "00000000-0000-4000-8000-000000000001",
    "2026-11-25T16:26:16.103279Z",
    "2026-11-25T16:27:49.934524+00:00",
    "9999-12-31T23:59:59.999999999-23:59",
    "0000-01-01T00:00:00+23:59",
    "1795623976.1088352",
];

pub fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(STRINGS).prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

pub fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

pub fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0i64..5).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => prop_oneof![
            Just(1795623976.1088352f64), Just(-0.0), Just(1e300), Just(-1e300), Just(f64::MAX),
            Just(f64::MIN_POSITIVE), Just(9.3e18), any::<f64>(),
        ]
        .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
    ]
}

/// Any JSON value, biased towards the keys and texts the parsers look for.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An edit to a valid event: remove a key, set a key to a value, or set a key of a nested
/// object.
#[derive(Debug, Clone)]
pub enum Edit {
    Remove(String),
    Set(String, Value),
    SetNested(usize, String, Value),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        json_key().prop_map(Edit::Remove),
        (json_key(), json_value()).prop_map(|(k, v)| Edit::Set(k, v)),
        (any::<usize>(), json_key(), json_value()).prop_map(|(i, k, v)| Edit::SetNested(i, k, v)),
    ]
}

pub fn apply(mut event: Value, edits: &[Edit]) -> Value {
    for edit in edits {
        let Some(obj) = event.as_object_mut() else {
            break;
        };
        match edit {
            Edit::Remove(k) => {
                obj.remove(k);
            }
            Edit::Set(k, v) => {
                obj.insert(k.clone(), v.clone());
            }
            Edit::SetNested(i, k, v) => {
                let nested: Vec<&mut Map<String, Value>> =
                    obj.values_mut().filter_map(Value::as_object_mut).collect();
                if !nested.is_empty() {
                    let n = nested.len();
                    nested
                        .into_iter()
                        .nth(i % n)
                        .unwrap()
                        .insert(k.clone(), v.clone());
                }
            }
        }
    }
    event
}

/// A valid event of the given template, edited 0-4 times.
pub fn edited(templates: Vec<Value>) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(templates),
        prop::collection::vec(edit(), 0..4),
    )
        .prop_map(|(t, edits)| apply(t, &edits))
}

pub fn native_templates() -> Vec<Value> {
    let id = "00000000-0000-4000-8000-000000000001";
    let release = json!({"platform": "ios", "app_version": "2.14.0", "build": "45"});
    let ts = "2026-11-25T12:00:00Z";
    vec![
        json!({"kind": "analytics", "event_id": id, "timestamp": ts, "release": release,
               "name": "plant_watered", "properties": {"plant_id": 1}, "device": {"model": "x"}}),
        json!({"kind": "error", "event_id": id, "timestamp": 1795660800000i64, "release": release,
               "level": "fatal", "handled": false, "breadcrumbs": [{"timestamp": ts, "message": "m"}],
               "exceptions": [{"type": "TypeError", "value": "v", "frames": [{"function": "f", "lineno": 3, "in_app": true}]}]}),
        json!({"kind": "performance", "event_id": id, "timestamp": ts, "release": release,
               "metric": "app_start", "value": 1.5, "unit": "ms", "attributes": {"cold": true}}),
        json!({"kind": "transaction", "event_id": id, "timestamp": ts, "release": release,
               "name": "checkout", "trace_id": "t", "span_id": "s", "start_timestamp": 1,
               "end_timestamp": ts, "spans": [{"span_id": "a", "op": "db", "start_timestamp": 1, "end_timestamp": 2}],
               "measurements": {"fp": {"value": 1.0, "unit": "ms"}}}),
        json!({"kind": "session", "event_id": id, "timestamp": ts, "release": release,
               "session_id": "s1", "status": "exited", "started": ts, "duration_ms": 10}),
        json!({"kind": "notification", "event_id": id, "timestamp": ts, "release": release,
               "stage": "opened", "notification_id": "n1", "campaign": "c"}),
    ]
}

pub fn posthog_templates() -> Vec<Value> {
    vec![
        json!({"event": "plant_watered", "distinct_id": "u1", "uuid": "00000000-0000-4000-8000-000000000001",
               "timestamp": "2026-11-25T12:00:00Z", "properties": {"$os": "iOS", "$app_version": "2.1", "$lib": "posthog-python"}}),
        json!({"event": "$exception", "distinct_id": "u1", "properties": {"$exception_list": [
            {"type": "ValueError", "value": "v", "mechanism": {"handled": false, "type": "generic"},
             "stacktrace": {"frames": [{"function": "f", "lineno": 1, "in_app": true}]}}],
            "$exception_level": "fatal", "$exception_fingerprint": ["a", 1]}}),
        json!({"event": "$identify", "distinct_id": "u1", "$set": {"email": "a@b.c"}, "properties": {"token": "k"}}),
        json!({"event": "$screen", "properties": {"$screen_name": "Home", "$consent": false}}),
    ]
}

pub fn sentry_payload_templates() -> Vec<Value> {
    vec![
        json!({"event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "timestamp": 1795623976.1,
               "release": "myapp@1.2.3+45", "exception": {"values": [{"type": "ZeroDivisionError", "value": "x",
               "mechanism": {"handled": false}, "stacktrace": {"frames": [{"function": "f"}]}}]},
               "breadcrumbs": {"values": [{"timestamp": "2026-11-25T16:26:16Z", "message": "b"}]},
               "contexts": {"os": {"name": "iOS"}, "device": {"os": "Android 14"}}, "tags": [["consent", "yes"]],
               "sdk": {"name": "sentry.python", "version": "2"}}),
        json!({"type": "transaction", "transaction": "/checkout", "start_timestamp": 1795623976.0,
               "timestamp": "2026-11-25T16:26:16Z", "contexts": {"trace": {"trace_id": "t", "span_id": "s"}},
               "spans": [{"span_id": "a", "start_timestamp": 1.0}], "measurements": {"fp": {"value": 2.0}}}),
        json!({"sid": "s1", "started": "2026-11-25T16:26:16Z", "status": "exited", "seq": 3,
               "duration": 1.5, "attrs": {"release": "a@1.0", "environment": "prod"}}),
        json!({"aggregates": [{"started": "2026-11-25T16:26:00Z", "exited": 2, "errored": 1}],
               "attrs": {"release": "a@1.0"}}),
        json!({"discarded_events": [{"reason": "ratelimit_backoff", "category": "error", "quantity": 1}]}),
    ]
}

/// An item as a Sentry SDK frames it.
#[derive(Debug, Clone)]
pub struct EnvItem {
    pub item_type: String,
    pub filename: Option<String>,
    /// Whether the header states `length`.
    pub framed: bool,
    pub payload: Vec<u8>,
    /// `\r\n` instead of `\n` after the header.
    pub crlf: bool,
    /// Blank lines after the item.
    pub blank_lines: usize,
}

pub fn item_type() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&[
            "event", "transaction", "session", "sessions", "client_report", "attachment", "log",
            "profile",
        ][..])
        .prop_map(str::to_string),
        1 => "\\PC{0,10}",
    ]
}

pub fn env_item() -> impl Strategy<Value = EnvItem> {
    let framed_payload = prop::collection::vec(
        prop_oneof![3 => any::<u8>(), 1 => Just(b'\n'), 1 => Just(b'\r')],
        0..64,
    );
    // Without `length` the payload ends at the first newline, and a `\r` before it is the line
    // ending's.
    let line_payload =
        prop::collection::vec(any::<u8>().prop_filter("newline", |&b| b != b'\n'), 0..64).prop_map(
            |mut p| {
                while p.last() == Some(&b'\r') {
                    p.pop();
                }
                p
            },
        );
    let payload = prop_oneof![
        (Just(true), framed_payload),
        (Just(false), line_payload),
        (
            any::<bool>(),
            json_value().prop_map(|v| v.to_string().into_bytes())
        ),
    ];
    (
        item_type(),
        prop::option::of("[a-z.]{1,8}"),
        payload,
        any::<bool>(),
        prop_oneof![4 => Just(0usize), 1 => 1usize..3],
    )
        .prop_map(
            |(item_type, filename, (framed, payload), crlf, blank_lines)| EnvItem {
                item_type,
                filename,
                framed,
                payload,
                crlf,
                blank_lines,
            },
        )
}

pub fn envelope_header() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(
            json!({"event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "sent_at": "2026-11-25T16:26:37.078671Z"})
        ),
        Just(json!({"dsn": "http://k@h/1", "sent_at": 1795623976.5})),
    ]
}

pub fn serialize(header: &Value, items: &[EnvItem], trailing_newline: bool) -> Vec<u8> {
    let mut body = header.to_string().into_bytes();
    for item in items {
        body.push(b'\n');
        let mut h = Map::new();
        h.insert("type".into(), item.item_type.clone().into());
        if item.framed {
            h.insert("length".into(), item.payload.len().into());
        }
        if let Some(f) = &item.filename {
            h.insert("filename".into(), f.clone().into());
        }
        body.extend_from_slice(Value::Object(h).to_string().as_bytes());
        body.extend_from_slice(if item.crlf { b"\r\n" } else { b"\n" });
        body.extend_from_slice(&item.payload);
        body.extend(std::iter::repeat_n(b'\n', item.blank_lines));
    }
    if trailing_newline {
        body.push(b'\n');
    }
    body
}

pub fn sentry_fixtures() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk-captures");
    let mut out = Vec::new();
    for sdk in std::fs::read_dir(dir).unwrap() {
        let sdk = sdk.unwrap().path();
        if !sdk
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("sentry")
        {
            continue;
        }
        for f in std::fs::read_dir(&sdk).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "body") {
                out.push(std::fs::read(f).unwrap());
            }
        }
    }
    assert!(!out.is_empty(), "no Sentry captures under {dir}");
    out
}

/// Random lines: valid headers, JSON values and bytes, so that arbitrary input reaches past the
/// first header.
pub fn envelope_lines() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"{}".to_vec()),
        Just(br#"{"type":"event"}"#.to_vec()),
        Just(br#"{"type":"sessions"}"#.to_vec()),
        Just(br#"{"type":"attachment","length":3}"#.to_vec()),
        (0usize..40).prop_map(|n| format!(r#"{{"type":"event","length":{n}}}"#).into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    const ENDS: &[&[u8]] = &[b"\n", b"\r\n", b""];
    prop::collection::vec((line, prop::sample::select(ENDS)), 0..8).prop_map(|lines| {
        lines
            .into_iter()
            .flat_map(|(l, end)| l.into_iter().chain(end.iter().copied()))
            .collect()
    })
}
