//! Property tests for the request parsers, which read untrusted bodies: none may panic; a body
//! refused as a whole is a 4xx with a reason; every refused event has a reason; the Sentry
//! envelope framing round-trips; a batch yields exactly one item per event it carries.
//!
//! Run with `cargo test -p trellis-ingest --test parsers_prop`. `PROPTEST_CASES` raises the case
//! count (256 by default here).

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use trellis_ingest::accept::{IngestError, Item};
use trellis_ingest::config::LimitsConfig;
use trellis_ingest::metrics::Metrics;
use trellis_ingest::sentry::envelope;
use trellis_ingest::{native, posthog, sentry};

// ---------------------------------------------------------------------------------------------
// The properties every parser result must have.

/// A refused request answers a 4xx with a non-empty reason.
fn check_err(what: &str, e: &IngestError) {
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
fn check_items(what: &str, items: &[Item]) {
    for (i, item) in items.iter().enumerate() {
        if let Item::Invalid { reason, .. } = item {
            assert!(
                !reason.trim().is_empty(),
                "{what}: item {i} is invalid without a reason"
            );
        }
    }
}

fn limits(max_event_bytes: usize) -> LimitsConfig {
    LimitsConfig {
        max_event_bytes,
        ..LimitsConfig::default()
    }
}

/// Runs every Sentry entry point on a body and checks the properties; the envelope's items when
/// it parses.
fn sentry_all(body: &[u8], max_event_bytes: usize) -> Option<Vec<Item>> {
    let limits = limits(max_event_bytes);
    let framing = envelope::parse(body, 10_000);
    if let Err(e) = &framing {
        assert!(!e.to_string().is_empty(), "envelope error without text");
    }
    let parsed = match sentry::parse_envelope(body, &limits, &Metrics::default(), "p") {
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
    match sentry::parse_store(body, &limits) {
        Ok(p) => check_items("store", &p.items),
        Err(e) => check_err("store", &e),
    }
    parsed
}

fn native_all(body: &[u8], max_event_bytes: usize) -> Option<Vec<Item>> {
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

fn posthog_all(body: &[u8], max_event_bytes: usize) -> Option<Vec<Item>> {
    match posthog::parse(body, max_event_bytes) {
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
fn max_event_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => Just(LimitsConfig::default().max_event_bytes),
        1 => 0usize..256,
    ]
}

const KEYS: &[&str] = &[
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

const STRINGS: &[&str] = &[
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

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(STRINGS).prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
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
fn json_value() -> impl Strategy<Value = Value> {
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
enum Edit {
    Remove(String),
    Set(String, Value),
    SetNested(usize, String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        json_key().prop_map(Edit::Remove),
        (json_key(), json_value()).prop_map(|(k, v)| Edit::Set(k, v)),
        (any::<usize>(), json_key(), json_value()).prop_map(|(i, k, v)| Edit::SetNested(i, k, v)),
    ]
}

fn apply(mut event: Value, edits: &[Edit]) -> Value {
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
fn edited(templates: Vec<Value>) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(templates),
        prop::collection::vec(edit(), 0..4),
    )
        .prop_map(|(t, edits)| apply(t, &edits))
}

fn native_templates() -> Vec<Value> {
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

fn posthog_templates() -> Vec<Value> {
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

fn sentry_payload_templates() -> Vec<Value> {
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
struct EnvItem {
    item_type: String,
    filename: Option<String>,
    /// Whether the header states `length`.
    framed: bool,
    payload: Vec<u8>,
    /// `\r\n` instead of `\n` after the header.
    crlf: bool,
    /// Blank lines after the item.
    blank_lines: usize,
}

fn item_type() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&[
            "event", "transaction", "session", "sessions", "client_report", "attachment", "log",
            "profile",
        ][..])
        .prop_map(str::to_string),
        1 => "\\PC{0,10}",
    ]
}

fn env_item() -> impl Strategy<Value = EnvItem> {
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

fn envelope_header() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(
            json!({"event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "sent_at": "2026-11-25T16:26:37.078671Z"})
        ),
        Just(json!({"dsn": "http://k@h/1", "sent_at": 1795623976.5})),
    ]
}

fn serialize(header: &Value, items: &[EnvItem], trailing_newline: bool) -> Vec<u8> {
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

fn sentry_fixtures() -> Vec<Vec<u8>> {
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
fn envelope_lines() -> impl Strategy<Value = Vec<u8>> {
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

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sentry_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512), max in max_event_bytes()) {
        sentry_all(&body, max);
    }

    #[test]
    fn sentry_survives_arbitrary_lines(body in envelope_lines(), max in max_event_bytes()) {
        sentry_all(&body, max);
    }

    #[test]
    fn native_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512), max in max_event_bytes()) {
        native_all(&body, max);
    }

    #[test]
    fn posthog_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512), max in max_event_bytes()) {
        posthog_all(&body, max);
    }

    #[test]
    fn parsers_survive_arbitrary_json(v in json_value(), max in max_event_bytes()) {
        let body = v.to_string().into_bytes();
        sentry_all(&body, max);
        native_all(&body, max);
        posthog_all(&body, max);
    }

    /// (a) The framing round-trips: what an SDK frames, with or without `length`, comes back
    /// item for item with the same header and payload bytes.
    #[test]
    fn envelope_framing_round_trips(
        header in envelope_header(),
        items in prop::collection::vec(env_item(), 0..6),
        trailing_newline in any::<bool>(),
    ) {
        let body = serialize(&header, &items, trailing_newline);
        let env = envelope::parse(&body, 10_000)
            .unwrap_or_else(|e| panic!("{e} in {:?}", String::from_utf8_lossy(&body)));
        prop_assert_eq!(env.header.event_id.as_deref(), header.get("event_id").and_then(Value::as_str));
        prop_assert_eq!(env.header.dsn.as_deref(), header.get("dsn").and_then(Value::as_str));
        prop_assert_eq!(env.header.sent_at.as_ref(), header.get("sent_at"));
        prop_assert_eq!(env.items.len(), items.len());
        for (got, want) in env.items.iter().zip(&items) {
            prop_assert_eq!(&got.header.item_type, &want.item_type);
            prop_assert_eq!(got.header.length, want.framed.then_some(want.payload.len()));
            prop_assert_eq!(&got.header.filename, &want.filename);
            prop_assert_eq!(got.payload, &want.payload[..]);
        }
        sentry_all(&body, LimitsConfig::default().max_event_bytes);
    }

    /// (b) A valid envelope cut anywhere (a dropped connection) never panics.
    #[test]
    fn truncated_envelopes_never_panic(
        header in envelope_header(),
        items in prop::collection::vec(env_item(), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let body = serialize(&header, &items, true);
        let cut = cut.index(body.len() + 1);
        sentry_all(&body[..cut], LimitsConfig::default().max_event_bytes);
    }

    #[test]
    fn truncated_captures_never_panic(which in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let fixtures = sentry_fixtures();
        let body = which.get(&fixtures);
        sentry_all(&body[..cut.index(body.len() + 1)], LimitsConfig::default().max_event_bytes);
    }

    /// Envelopes of `event`, `transaction` and `session` items with edited payloads yield exactly
    /// one item each; `sessions` and `client_report` items with edited payloads never panic.
    #[test]
    fn envelope_items_yield_one_item_each(
        items in prop::collection::vec(
            (prop::sample::select(&["event", "transaction", "session", "sessions", "client_report"][..]),
             edited(sentry_payload_templates()), any::<bool>()),
            0..6),
        max in max_event_bytes(),
    ) {
        let env_items: Vec<EnvItem> = items
            .iter()
            .map(|(t, v, framed)| EnvItem {
                item_type: t.to_string(),
                filename: None,
                framed: *framed,
                payload: v.to_string().into_bytes(),
                crlf: false,
                blank_lines: 0,
            })
            .collect();
        let body = serialize(&json!({}), &env_items, false);
        let parsed = sentry_all(&body, max);
        if items.iter().all(|(t, _, _)| matches!(*t, "event" | "transaction" | "session")) {
            let parsed = parsed.expect("an envelope of well-framed items is read");
            prop_assert_eq!(parsed.len(), items.len());
        }
    }

    /// (c) A native batch of arbitrary events yields exactly one item per event.
    #[test]
    fn native_batch_yields_one_item_per_event(
        events in prop::collection::vec(prop_oneof![json_value(), edited(native_templates())], 0..8),
        sent_at in prop::option::of(prop_oneof![
            Just(Value::Null), Just(json!("2026-11-25T12:00:01Z")), Just(json!(1795660800000i64))
        ]),
        max in max_event_bytes(),
    ) {
        let mut batch = Map::new();
        batch.insert("events".into(), Value::Array(events.clone()));
        if let Some(s) = sent_at {
            batch.insert("sent_at".into(), s);
        }
        let body = Value::Object(batch).to_string().into_bytes();
        let items = native_all(&body, max).expect("a well-formed batch is read");
        prop_assert_eq!(items.len(), events.len());
    }

    /// (d) A PostHog batch, list or single event yields exactly one item per event.
    #[test]
    fn posthog_batch_yields_one_item_per_event(
        events in prop::collection::vec(prop_oneof![json_value(), edited(posthog_templates())], 0..8),
        shape in 0u8..3,
        api_key in prop::option::of(json_value()),
        sent_at in prop::option::of(json_value()),
        max in max_event_bytes(),
    ) {
        let (body, n) = match shape {
            0 => {
                let mut o = Map::new();
                o.insert("batch".into(), Value::Array(events.clone()));
                if let Some(k) = api_key {
                    o.insert("api_key".into(), k);
                }
                if let Some(s) = sent_at {
                    o.insert("sent_at".into(), s);
                }
                (Value::Object(o), events.len())
            }
            1 => (Value::Array(events.clone()), events.len()),
            _ => {
                // A single event: any object without `batch`.
                let mut e = events.first().and_then(Value::as_object).cloned().unwrap_or_default();
                e.remove("batch");
                (Value::Object(e), 1)
            }
        };
        let items = posthog_all(body.to_string().as_bytes(), max).expect("a well-formed body is read");
        prop_assert_eq!(items.len(), n);
    }
}

/// The generators' templates are valid events, so edits start from events the parsers accept.
#[test]
fn templates_are_accepted() {
    for t in native_templates() {
        let body = json!({"events": [t]}).to_string();
        let (_, items) = native::parse(body.as_bytes(), 1 << 20, 10_000).unwrap();
        assert!(
            matches!(items[0], Item::Event { .. }),
            "{t}: {:?}",
            items[0]
        );
    }
    for t in posthog_templates() {
        let body = json!({"batch": [t]}).to_string();
        let items = posthog::parse(body.as_bytes(), 1 << 20).unwrap().items;
        assert!(
            matches!(items[0], Item::Event { .. }),
            "{t}: {:?}",
            items[0]
        );
    }
    let types = [
        "event",
        "transaction",
        "session",
        "sessions",
        "client_report",
    ];
    let items: Vec<EnvItem> = types
        .iter()
        .zip(sentry_payload_templates())
        .map(|(t, v)| EnvItem {
            item_type: t.to_string(),
            filename: None,
            framed: true,
            payload: v.to_string().into_bytes(),
            crlf: false,
            blank_lines: 0,
        })
        .collect();
    let body = serialize(&json!({}), &items, true);
    let parsed =
        sentry::parse_envelope(&body, &LimitsConfig::default(), &Metrics::default(), "p").unwrap();
    // event, transaction, session, and the aggregate's 3 sessions.
    assert_eq!(parsed.items.len(), 6);
    assert!(
        parsed.items.iter().all(|i| matches!(i, Item::Event { .. })),
        "{:?}",
        parsed.items
    );
}

/// Every cut of every captured Sentry envelope.
#[test]
fn every_cut_of_the_captures() {
    for body in sentry_fixtures() {
        for cut in 0..=body.len() {
            sentry_all(&body[..cut], LimitsConfig::default().max_event_bytes);
        }
    }
}

/// Regression: a 286-byte envelope whose `sessions` aggregates count 100,000 sessions per status
/// used to expand to 1.2 million events (1.7 GB) before any limit applied; it is now refused
/// with 413 up front, as `accept` would refuse that many events anyway.
#[test]
fn sessions_counts_do_not_amplify() {
    let agg =
        r#"{"started":0,"exited":100000,"errored":100000,"abnormal":100000,"crashed":100000}"#;
    let aggs = [agg; 3].join(",");
    let body = format!("{{}}\n{{\"type\":\"sessions\"}}\n{{\"aggregates\":[{aggs}]}}\n");
    let started = std::time::Instant::now();
    let e = sentry::parse_envelope(
        body.as_bytes(),
        &LimitsConfig::default(),
        &Metrics::default(),
        "p",
    )
    .err()
    .expect("refused");
    assert_eq!(e.status().as_u16(), 413, "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// However the `sessions` items count, an envelope never yields more events than a request
    /// may carry: it is read within the limit or refused with 413.
    #[test]
    fn sessions_expansion_is_bounded(
        buckets in prop::collection::vec(
            prop::collection::vec(prop_oneof![0u64..4, any::<u64>()], 4), 0..4),
        n_items in 1usize..4,
        max_events in 0usize..40,
    ) {
        let aggregates: Vec<Value> = buckets
            .iter()
            .map(|c| json!({"started": 1795623976, "exited": c[0], "errored": c[1], "abnormal": c[2], "crashed": c[3]}))
            .collect();
        let payload = json!({"aggregates": aggregates}).to_string().into_bytes();
        let items: Vec<EnvItem> = (0..n_items)
            .map(|_| EnvItem {
                item_type: "sessions".into(),
                filename: None,
                framed: false,
                payload: payload.clone(),
                crlf: false,
                blank_lines: 0,
            })
            .collect();
        let body = serialize(&json!({}), &items, true);
        let limits = LimitsConfig { max_events_per_request: max_events, ..LimitsConfig::default() };
        let per_item: u64 = buckets.iter().flatten().map(|&c| c.min(100_000)).sum();
        match sentry::parse_envelope(&body, &limits, &Metrics::default(), "p") {
            Ok(p) => {
                prop_assert!(p.items.len() <= max_events);
                prop_assert_eq!(p.items.len() as u64, per_item * n_items as u64);
            }
            Err(e) => {
                prop_assert_eq!(e.status().as_u16(), 413);
                prop_assert!(per_item * n_items as u64 > max_events as u64 || n_items > max_events);
            }
        }
    }
}
