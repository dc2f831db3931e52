//! Property tests for the request parsers, which read untrusted bodies: none may panic; a body
//! refused as a whole is a 4xx with a reason; every refused event has a reason; the Sentry
//! envelope framing round-trips; a batch yields exactly one item per event it carries.
//!
//! Run with `cargo test -p trellis-ingest --test parsers_prop`. `PROPTEST_CASES` raises the case
//! count (256 by default here).

mod props;

use props::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use trellis_ingest::accept::Item;
use trellis_ingest::config::LimitsConfig;
use trellis_ingest::metrics::IngestMetrics;
use trellis_ingest::sentry::envelope;
use trellis_ingest::{native, posthog, sentry};
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
    /// one item each, besides the performance samples of transactions; `sessions` and
    /// `client_report` items with edited payloads never panic.
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
            let samples = parsed.iter().filter(|i| matches!(i, Item::Event { event, .. }
                if matches!(**event, trellis_schemas::Event::Performance(_)))).count();
            prop_assert_eq!(parsed.len() - samples, items.len());
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
        let items = posthog::parse(body.as_bytes(), 10_000, 1 << 20)
            .unwrap()
            .items;
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
    let parsed = sentry::parse_envelope(
        &body,
        &LimitsConfig::default(),
        &IngestMetrics::default(),
        "p",
    )
    .unwrap();
    // event, transaction and its measurement's sample, session, and the aggregate's 3 sessions.
    assert_eq!(parsed.items.len(), 7);
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
        &IngestMetrics::default(),
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
        match sentry::parse_envelope(&body, &limits, &IngestMetrics::default(), "p") {
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
