//! The Sentry endpoints: `POST /api/{project}/envelope/` and the legacy `/api/{project}/store/`.
//!
//! Items become trellis events: `event` → error, `transaction` → transaction and the performance
//! samples its measurements and spans carry ([`perf`]), `span` (span streaming) → a transaction
//! per segment, read the same way ([`spans`]), `session` → session update, `sessions`
//! (aggregates) → one session update per counted session.
//! `client_report` items are counted as client-side drops; `attachment` items are checked
//! against the attachment size limit and counted, not stored; other item types (`log`,
//! `trace_metric`, `profile`, ...) are skipped and counted.

pub mod convert;
pub mod envelope;
pub mod perf;
pub mod spans;

use serde_json::Value;
use trellis_schemas::Event;

use crate::accept::{IngestError, Item};
use crate::metrics::IngestMetrics;
use crate::time::sentry_ms;

/// What a Sentry request yields.
pub struct Parsed {
    /// When the SDK sent it.
    pub sent_at_ms: Option<i64>,
    /// The events.
    pub items: Vec<Item>,
    /// The id to answer with (`{"id": ...}`).
    pub id: Option<String>,
}

fn invalid(raw: &[u8], reason: String) -> Item {
    Item::Invalid {
        reason,
        raw: raw.to_vec(),
        too_large: false,
    }
}

/// Converts one event or transaction item and pushes it onto `items`, with the performance
/// samples a transaction carries while the request has room for them (`max_events`); samples
/// without room are counted as skipped (`performance_sample`). Answers the event's id.
fn event_items(
    payload: &[u8],
    header_id: Option<&str>,
    transaction: bool,
    limits: &crate::config::LimitsConfig,
    metrics: &IngestMetrics,
    items: &mut Vec<Item>,
) -> Option<String> {
    if payload.len() > limits.max_event_bytes {
        items.push(Item::too_large(payload, "event", limits.max_event_bytes));
        return None;
    }
    match serde_json::from_slice(payload) {
        Ok(value) => value_items(
            value,
            payload,
            header_id,
            transaction,
            limits,
            metrics,
            items,
        ),
        Err(e) => {
            items.push(invalid(payload, format!("event is not JSON: {e}")));
            None
        }
    }
}

/// [`event_items`] for an event already read: `payload` is what it was read from (for its
/// derived id and the dead letter).
fn value_items(
    value: Value,
    payload: &[u8],
    header_id: Option<&str>,
    transaction: bool,
    limits: &crate::config::LimitsConfig,
    metrics: &IngestMetrics,
    items: &mut Vec<Item>,
) -> Option<String> {
    let id = convert::event_id(
        value.get("event_id").and_then(Value::as_str).or(header_id),
        payload,
    );
    let consent = convert::consent(&value);
    let mut samples = Vec::new();
    let result = if transaction || value.get("type").and_then(Value::as_str) == Some("transaction")
    {
        convert::transaction(&value, id.clone()).map(|t| {
            samples = perf::samples(&value, &t);
            Event::Transaction(t)
        })
    } else {
        convert::error(&value, id.clone()).map(Event::Error)
    };
    let event = match result {
        Ok(event) => event,
        Err(reason) => {
            items.push(invalid(payload, reason));
            return None;
        }
    };
    items.push(Item::Event {
        event: Box::new(event),
        consent,
    });
    let room = limits.max_events_per_request.saturating_sub(items.len());
    if samples.len() > room {
        metrics.skipped_n("performance_sample", (samples.len() - room) as u64);
        samples.truncate(room);
    }
    items.extend(samples.into_iter().map(|sample| Item::Event {
        event: Box::new(Event::Performance(sample)),
        consent,
    }));
    Some(id.replace('-', ""))
}

/// Parses an envelope body.
pub fn parse_envelope(
    body: &[u8],
    limits: &crate::config::LimitsConfig,
    metrics: &IngestMetrics,
    project: &str,
) -> Result<Parsed, IngestError> {
    let env = envelope::parse(body, limits.max_events_per_request).map_err(|e| match e {
        envelope::EnvelopeError::TooManyItems(_) => IngestError::TooLarge(format!("envelope: {e}")),
        e => IngestError::BadRequest(format!("envelope: {e}")),
    })?;
    let sent_at_ms = env.header.sent_at.as_ref().and_then(sentry_ms);
    let header_id = env.header.event_id.clone();
    let mut items = Vec::new();
    let mut id = header_id.clone();
    // Sessions carry no SDK block; the envelope's events usually do. Looked up only when the
    // envelope has sessions, since it costs parsing an event a second time.
    let mut sdk = trellis_schemas::Sdk {
        name: "sentry.unknown".into(),
        version: String::new(),
    };
    let has_sessions = env
        .items
        .iter()
        .any(|i| matches!(i.header.item_type.as_str(), "session" | "sessions"));
    for item in env.items.iter().filter(|_| has_sessions) {
        if matches!(item.header.item_type.as_str(), "event" | "transaction")
            && let Ok(v) = serde_json::from_slice::<Value>(item.payload)
        {
            sdk = convert::sdk(&v);
            break;
        }
    }
    // Session ids of a `sessions` item derive from the envelope: its event id, or its content,
    // so a resent envelope yields the same sessions and two different ones never collide.
    let envelope_key = header_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body).to_string());
    for item in env.items {
        let payload = item.payload;
        match item.header.item_type.as_str() {
            t @ ("event" | "transaction") => {
                let event_id = event_items(
                    payload,
                    header_id.as_deref(),
                    t == "transaction",
                    limits,
                    metrics,
                    &mut items,
                );
                id = id.or(event_id);
            }
            "span" => {
                if payload.len() > limits.max_event_bytes {
                    items.push(Item::too_large(
                        payload,
                        "span item",
                        limits.max_event_bytes,
                    ));
                    continue;
                }
                match spans::transactions(payload) {
                    Ok(transactions) => {
                        for t in transactions {
                            let raw = t.to_string();
                            value_items(t, raw.as_bytes(), None, true, limits, metrics, &mut items);
                        }
                    }
                    Err(reason) => items.push(invalid(payload, reason)),
                }
            }
            "session" => {
                if payload.len() > limits.max_event_bytes {
                    items.push(Item::too_large(payload, "session", limits.max_event_bytes));
                    continue;
                }
                let parsed = serde_json::from_slice::<Value>(payload)
                    .map_err(|e| format!("session is not JSON: {e}"))
                    .and_then(|v| convert::session(&v, &sdk));
                items.push(match parsed {
                    Ok(s) => Item::Event {
                        event: Box::new(Event::Session(s)),
                        consent: None,
                    },
                    Err(reason) => invalid(payload, reason),
                });
            }
            "sessions" => {
                let value = serde_json::from_slice::<Value>(payload);
                // Refuse before expanding: a few bytes of counts would be millions of events.
                if let Ok(v) = &value {
                    let n = convert::sessions_count(v);
                    if n.saturating_add(items.len() as u64) > limits.max_events_per_request as u64 {
                        return Err(IngestError::TooLarge(format!(
                            "sessions item counts {n} sessions; a request may carry at most {} events",
                            limits.max_events_per_request
                        )));
                    }
                }
                let parsed = value
                    .map_err(|e| format!("sessions is not JSON: {e}"))
                    .and_then(|v| convert::sessions(&v, &sdk, &envelope_key));
                match parsed {
                    Ok(list) => items.extend(list.into_iter().map(|s| Item::Event {
                        event: Box::new(Event::Session(s)),
                        consent: None,
                    })),
                    Err(reason) => items.push(invalid(payload, reason)),
                }
            }
            "client_report" => match serde_json::from_slice::<Value>(payload) {
                Ok(v) => {
                    for (reason, category, n) in convert::client_report(&v) {
                        metrics.client_discarded(project, &reason, &category, n);
                    }
                }
                Err(e) => items.push(invalid(payload, format!("client_report is not JSON: {e}"))),
            },
            "attachment" => {
                if payload.len() > limits.max_attachment_bytes {
                    return Err(IngestError::TooLarge(format!(
                        "attachment {:?} of {} bytes is over the {}-byte limit",
                        item.header.filename.as_deref().unwrap_or(""),
                        payload.len(),
                        limits.max_attachment_bytes
                    )));
                }
                metrics.skipped("attachment");
            }
            other => metrics.skipped(other),
        }
    }
    Ok(Parsed {
        sent_at_ms,
        items,
        id,
    })
}

/// Parses a legacy `store` body: one event as JSON.
pub fn parse_store(
    body: &[u8],
    limits: &crate::config::LimitsConfig,
    metrics: &IngestMetrics,
) -> Result<Parsed, IngestError> {
    if body.len() > limits.max_event_bytes {
        return Err(IngestError::TooLarge(format!(
            "event of {} bytes is over the {}-byte limit",
            body.len(),
            limits.max_event_bytes
        )));
    }
    let mut items = Vec::new();
    let id = event_items(body, None, false, limits, metrics, &mut items);
    if let Some(Item::Invalid { reason, .. }) = items.first() {
        return Err(IngestError::BadRequest(reason.clone()));
    }
    Ok(Parsed {
        sent_at_ms: None,
        items,
        id,
    })
}

/// The `sentry_key` from `X-Sentry-Auth: Sentry sentry_key=..., ...` (or `Authorization`).
pub fn auth_key(header: &str) -> Option<&str> {
    let rest = header
        .trim()
        .strip_prefix("Sentry")
        .unwrap_or(header)
        .trim();
    rest.split(',')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(k, _)| k.trim() == "sentry_key")
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_key_from_the_auth_header() {
        assert_eq!(
            auth_key(
                "Sentry sentry_key=publickey, sentry_version=7, sentry_client=sentry.python/2.75.0"
            ),
            Some("publickey")
        );
        assert_eq!(auth_key("Sentry sentry_version=7"), None);
    }

    #[test]
    fn sessions_of_different_envelopes_never_share_ids() {
        let metrics = IngestMetrics::default();
        let limits = crate::config::LimitsConfig::default();
        let body = |n: u8| {
            format!(
                "{{}}\n{{\"type\":\"sessions\"}}\n{{\"aggregates\":[{{\"started\":\"2026-11-25T16:00:0{n}Z\",\"exited\":2}}]}}\n"
            )
        };
        let (a, b) = (body(1), body(2));
        assert_eq!(a.len(), b.len());
        let ids = |body: &str| -> Vec<String> {
            parse_envelope(body.as_bytes(), &limits, &metrics, "p")
                .unwrap()
                .items
                .into_iter()
                .map(|i| match i {
                    Item::Event { event, .. } => event.common().event_id.clone(),
                    Item::Invalid { reason, .. } => panic!("{reason}"),
                })
                .collect()
        };
        let (ia, ib) = (ids(&a), ids(&b));
        assert_eq!(ia.len(), 2);
        assert!(ia.iter().all(|id| !ib.contains(id)), "{ia:?} {ib:?}");
        assert_eq!(ia, ids(&a), "a resent envelope yields the same ids");
    }

    /// A `sessions` item expands to one event per counted session: nothing large in it may be
    /// copied into each of them.
    #[test]
    fn a_sessions_item_cannot_multiply_large_attributes() {
        let metrics = IngestMetrics::default();
        let limits = crate::config::LimitsConfig::default();
        let envelope = |attrs: serde_json::Value, did: &str| {
            let item = serde_json::json!({
                "attrs": attrs,
                "aggregates": [{"started": "2026-11-25T16:00:00Z", "did": did, "exited": 500}],
            });
            format!("{{}}\n{{\"type\":\"sessions\"}}\n{item}\n")
        };
        let items = |body: String| {
            parse_envelope(body.as_bytes(), &limits, &metrics, "p")
                .unwrap()
                .items
        };
        // Half a megabyte of attributes nobody reads: 500 small events all the same.
        let junk = "x".repeat(512 * 1024);
        let got = items(envelope(
            serde_json::json!({"release": "shop@2.1.0+7", "environment": "production", "junk": junk}),
            "u-1",
        ));
        assert_eq!(got.len(), 500);
        for item in &got {
            let Item::Event { event, .. } = item else {
                panic!("refused: {item:?}");
            };
            let encoded = trellis_schemas::avro::encode(event).unwrap();
            assert!(encoded.len() < 512, "{} bytes", encoded.len());
            assert_eq!(event.common().release.app_version, "2.1.0");
        }
        // A release, environment or did too long to be one is refused, with the reason, once.
        for (attrs, did, reason) in [
            (
                serde_json::json!({"release": "r".repeat(201)}),
                "u-1",
                "attrs.release is longer than 200 characters",
            ),
            (
                serde_json::json!({"environment": "e".repeat(65)}),
                "u-1",
                "attrs.environment is longer than 64 characters",
            ),
            (
                serde_json::json!({}),
                &*"d".repeat(257),
                "did is longer than 256 characters",
            ),
        ] {
            let got = items(envelope(attrs, did));
            assert_eq!(got.len(), 1);
            match &got[0] {
                Item::Invalid { reason: r, .. } => assert_eq!(r, reason),
                other => panic!("accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn splits_release_names() {
        assert_eq!(
            convert::split_release("myapp@1.2.3+45"),
            ("1.2.3".into(), Some("45".into()))
        );
        assert_eq!(convert::split_release("1.2.3"), ("1.2.3".into(), None));
        assert_eq!(
            convert::split_release("com.plants@2.0.0"),
            ("2.0.0".into(), None)
        );
    }
}
