//! The native batch API: `POST /v1/batch` with `{sent_at, events: [...]}` (see `openapi.json`).
//!
//! Each event is an object with a `kind`, the common fields (`event_id`, `timestamp`, `release`,
//! ...) and its kind's fields. Events are parsed one by one: a bad event is refused with its index
//! and reason, and the others go on.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;
use trellis_schemas::model::*;

use crate::accept::{IngestError, Item};
use crate::time::native_ms;

/// Parses a native batch into its `sent_at` and items. More than `max_events` events is refused
/// while reading, before any event is built.
pub fn parse(
    body: &[u8],
    max_event_bytes: usize,
    max_events: usize,
) -> Result<(Option<i64>, Vec<Item>), IngestError> {
    use serde::de::{DeserializeSeed, MapAccess, Visitor};

    struct BatchVisitor(usize);
    impl<'de> Visitor<'de> for BatchVisitor {
        type Value = (Option<Value>, Vec<&'de RawValue>);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a batch {sent_at, events: [...]}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut sent_at, mut events) = (None, None);
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match key.as_ref() {
                    "sent_at" => sent_at = Some(map.next_value()?),
                    "events" => {
                        events = Some(map.next_value_seed(crate::capped::Capped::new(self.0))?)
                    }
                    other => {
                        return Err(serde::de::Error::unknown_field(
                            other,
                            &["sent_at", "events"],
                        ));
                    }
                }
            }
            Ok((
                sent_at,
                events.ok_or_else(|| serde::de::Error::missing_field("events"))?,
            ))
        }
    }
    struct Seed(usize);
    impl<'de> DeserializeSeed<'de> for Seed {
        type Value = (Option<Value>, Vec<&'de RawValue>);
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(BatchVisitor(self.0))
        }
    }

    let (sent_at, events) =
        crate::capped::read(body, Seed(max_events), "a batch {sent_at, events: [...]}")?;
    let sent_at = match &sent_at {
        None | Some(Value::Null) => None,
        Some(v) => Some(native_ms(v).ok_or_else(|| {
            IngestError::BadRequest("sent_at is neither RFC 3339 text nor integer ms".into())
        })?),
    };
    let items = events
        .iter()
        .map(|raw| parse_event(raw.get(), max_event_bytes))
        .collect();
    Ok((sent_at, items))
}

fn invalid(raw: &str, reason: impl Into<String>) -> Item {
    Item::Invalid {
        reason: reason.into(),
        raw: raw.as_bytes().to_vec(),
        too_large: false,
    }
}

fn parse_event(raw: &str, max_event_bytes: usize) -> Item {
    if raw.len() > max_event_bytes {
        return Item::too_large(raw.as_bytes(), "event", max_event_bytes);
    }
    match build(raw) {
        Ok((event, consent)) => Item::Event {
            event: Box::new(event),
            consent,
        },
        Err(reason) => invalid(raw, reason),
    }
}

/// One event on the wire: every field any kind may carry. Deserialized in one pass, without an
/// intermediate JSON tree; free-form objects (properties, contexts, breadcrumb data) stay raw
/// JSON text. Fields of another kind are refused by [`Wire::check_fields`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    event_id: String,
    #[serde(deserialize_with = "time")]
    timestamp: Option<i64>,
    device_id: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    release: NativeRelease,
    #[serde(default)]
    device: NativeDevice,
    sdk: Option<NativeSdk>,
    consent: Option<bool>,
    // analytics (and transaction: name)
    name: Option<String>,
    screen: Option<String>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    // error
    level: Option<Level>,
    handled: Option<bool>,
    message: Option<String>,
    exceptions: Option<Vec<NativeException>>,
    #[serde(borrow)]
    breadcrumbs: Option<Vec<NativeBreadcrumb<'a>>>,
    tags: Option<BTreeMap<String, Value>>,
    fingerprint: Option<Vec<String>>,
    transaction: Option<String>,
    #[serde(borrow)]
    contexts: Option<&'a RawValue>,
    // performance
    metric: Option<String>,
    value: Option<f64>,
    unit: Option<String>,
    attributes: Option<BTreeMap<String, Value>>,
    // transaction
    op: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "time")]
    start_timestamp: Option<i64>,
    #[serde(default, deserialize_with = "time")]
    end_timestamp: Option<i64>,
    spans: Option<Vec<NativeSpan>>,
    measurements: Option<BTreeMap<String, NativeMeasurement>>,
    // session
    init: Option<bool>,
    errors: Option<i64>,
    #[serde(default, deserialize_with = "time")]
    started: Option<i64>,
    duration_ms: Option<i64>,
    seq: Option<i64>,
    // notification
    stage: Option<NotificationStage>,
    notification_id: Option<String>,
    campaign: Option<String>,
    deep_link: Option<String>,
    provider: Option<String>,
    error_code: Option<String>,
}

/// Times as RFC 3339 text or integer ms; anything else is an error naming the expectation.
fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("RFC 3339 text or integer ms")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("time out of range"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            crate::time::rfc3339_ms(v)
                .map(Some)
                .ok_or_else(|| E::custom(format!("{v:?} is not RFC 3339 text")))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeRelease {
    platform: String,
    app_version: String,
    build: Option<String>,
    runtime_version: Option<String>,
    update_id: Option<String>,
    channel: Option<String>,
    environment: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NativeDevice {
    model: Option<String>,
    os_name: Option<String>,
    os_version: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeSdk {
    name: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeException {
    #[serde(rename = "type")]
    exception_type: String,
    value: Option<String>,
    module: Option<String>,
    mechanism: Option<String>,
    #[serde(default)]
    frames: Vec<Frame>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeBreadcrumb<'a> {
    #[serde(deserialize_with = "time")]
    timestamp: Option<i64>,
    #[serde(rename = "type")]
    breadcrumb_type: Option<String>,
    category: Option<String>,
    message: Option<String>,
    level: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeSpan {
    span_id: String,
    parent_span_id: Option<String>,
    op: String,
    description: Option<String>,
    status: Option<String>,
    #[serde(deserialize_with = "time")]
    start_timestamp: Option<i64>,
    #[serde(deserialize_with = "time")]
    end_timestamp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeMeasurement {
    value: f64,
    unit: Option<String>,
}

/// The kind-specific fields each kind may carry.
fn allowed(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "analytics" => &["name", "screen", "properties"],
        "error" => &[
            "level",
            "handled",
            "message",
            "exceptions",
            "breadcrumbs",
            "tags",
            "fingerprint",
            "transaction",
            "contexts",
        ],
        "performance" => &["metric", "value", "unit", "screen", "attributes"],
        "transaction" => &[
            "name",
            "op",
            "trace_id",
            "span_id",
            "status",
            "start_timestamp",
            "end_timestamp",
            "spans",
            "measurements",
            "tags",
        ],
        "session" => &["init", "status", "errors", "started", "duration_ms", "seq"],
        "notification" => &[
            "stage",
            "notification_id",
            "campaign",
            "deep_link",
            "provider",
            "error_code",
        ],
        _ => return None,
    })
}

impl Wire<'_> {
    /// The kind-specific fields this event carries.
    fn present(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! check {
            ($($field:ident),*) => { $( if self.$field.is_some() { out.push(stringify!($field)); } )* };
        }
        check!(
            name,
            screen,
            properties,
            level,
            handled,
            message,
            exceptions,
            breadcrumbs,
            tags,
            fingerprint,
            transaction,
            contexts,
            metric,
            value,
            unit,
            attributes,
            op,
            trace_id,
            span_id,
            status,
            start_timestamp,
            end_timestamp,
            spans,
            measurements,
            init,
            errors,
            started,
            duration_ms,
            seq,
            stage,
            notification_id,
            campaign,
            deep_link,
            provider,
            error_code
        );
        out
    }

    fn check_fields(&self) -> Result<(), String> {
        let allowed = allowed(&self.kind).ok_or_else(|| format!("unknown kind {:?}", self.kind))?;
        match self.present().into_iter().find(|f| !allowed.contains(f)) {
            Some(field) => Err(format!("{field} is not a field of {} events", self.kind)),
            None => Ok(()),
        }
    }
}

fn required<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("{kind} events need {field}"))
}

/// Raw JSON text of an object, or `{}`.
fn object_text(raw: Option<&RawValue>, field: &str) -> Result<String, String> {
    match raw {
        None => Ok("{}".into()),
        Some(r) if r.get().trim_start().starts_with('{') => Ok(r.get().to_string()),
        Some(_) => Err(format!("{field} is not an object")),
    }
}

fn tags(map: Option<BTreeMap<String, Value>>) -> Vec<Tag> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(key, v)| Tag {
            key,
            value: v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string()),
        })
        .collect()
}

fn build(raw: &str) -> Result<(Event, Option<bool>), String> {
    let w: Wire = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    w.check_fields()?;
    if uuid::Uuid::parse_str(&w.event_id).is_err() {
        return Err(format!("event_id {:?} is not a UUID", w.event_id));
    }
    let kind_name = w.kind.clone();
    let kind = kind_name.as_ref();
    let common = Common {
        event_id: w.event_id,
        project: String::new(),
        timestamp_ms: required(w.timestamp, "timestamp", kind)?,
        sent_at_ms: None,
        received_at_ms: 0,
        device_id: w.device_id,
        user_id: w.user_id,
        session_id: w.session_id,
        release: Release {
            platform: w.release.platform,
            app_version: w.release.app_version,
            build: w.release.build,
            runtime_version: w.release.runtime_version,
            update_id: w.release.update_id,
            channel: w.release.channel,
            environment: w.release.environment,
        },
        device: Device {
            model: w.device.model,
            os_name: w.device.os_name,
            os_version: w.device.os_version,
            locale: w.device.locale,
            timezone: w.device.timezone,
        },
        sdk: w
            .sdk
            .map(|s| Sdk {
                name: s.name,
                version: s.version,
            })
            .unwrap_or_else(|| Sdk {
                name: "trellis.native".into(),
                version: "1".into(),
            }),
    };
    let event = match kind {
        "analytics" => Event::Analytics(AnalyticsEvent {
            common,
            name: required(w.name, "name", kind)?,
            screen: w.screen,
            properties: object_text(w.properties, "properties")?,
        }),
        "error" => {
            let exceptions = w.exceptions.unwrap_or_default();
            if exceptions.is_empty() && w.message.is_none() {
                return Err("an error event needs exceptions or a message".into());
            }
            let mut breadcrumbs = Vec::new();
            for b in w.breadcrumbs.unwrap_or_default() {
                breadcrumbs.push(Breadcrumb {
                    timestamp_ms: required(b.timestamp, "breadcrumb timestamp", kind)?,
                    breadcrumb_type: b.breadcrumb_type,
                    category: b.category,
                    message: b.message,
                    level: b.level,
                    data: object_text(b.data, "breadcrumb data")?,
                });
            }
            Event::Error(ErrorEvent {
                common,
                level: w.level.unwrap_or_default(),
                handled: w.handled.unwrap_or(true),
                message: w.message,
                exceptions: exceptions
                    .into_iter()
                    .map(|x| Exception {
                        exception_type: x.exception_type,
                        value: x.value,
                        module: x.module,
                        mechanism: x.mechanism,
                        frames: x.frames,
                    })
                    .collect(),
                breadcrumbs,
                tags: tags(w.tags),
                fingerprint: w.fingerprint.unwrap_or_default(),
                transaction: w.transaction,
                contexts: object_text(w.contexts, "contexts")?,
                issue_id: None,
            })
        }
        "performance" => Event::Performance(PerformanceSample {
            common,
            metric: required(w.metric, "metric", kind)?,
            value: required(w.value, "value", kind)?,
            unit: required(w.unit, "unit", kind)?,
            screen: w.screen,
            attributes: tags(w.attributes),
        }),
        "transaction" => {
            let us = |ms: Option<i64>, field: &str| {
                required(ms, field, kind).map(|ms| ms.saturating_mul(1000))
            };
            let mut spans = Vec::new();
            for s in w.spans.unwrap_or_default() {
                spans.push(Span {
                    span_id: s.span_id,
                    parent_span_id: s.parent_span_id,
                    op: s.op,
                    description: s.description,
                    status: s.status,
                    start_us: us(s.start_timestamp, "span start_timestamp")?,
                    end_us: us(s.end_timestamp, "span end_timestamp")?,
                });
            }
            Event::Transaction(Transaction {
                common,
                name: required(w.name, "name", kind)?,
                op: w.op,
                trace_id: required(w.trace_id, "trace_id", kind)?,
                span_id: required(w.span_id, "span_id", kind)?,
                status: w.status,
                start_us: us(w.start_timestamp, "start_timestamp")?,
                end_us: us(w.end_timestamp, "end_timestamp")?,
                spans,
                measurements: w
                    .measurements
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, m)| Measurement {
                        name,
                        value: m.value,
                        unit: m.unit,
                    })
                    .collect(),
                tags: tags(w.tags),
            })
        }
        "session" => {
            if common.session_id.is_none() {
                return Err("a session event needs session_id".into());
            }
            let status = match required(w.status, "status", kind)?.as_str() {
                "ok" => SessionStatus::Ok,
                "exited" => SessionStatus::Exited,
                "crashed" => SessionStatus::Crashed,
                "abnormal" => SessionStatus::Abnormal,
                "errored" => SessionStatus::Errored,
                other => {
                    return Err(format!(
                        "session status {other:?} is not ok, exited, crashed, abnormal or errored"
                    ));
                }
            };
            Event::Session(SessionUpdate {
                common,
                init: w.init.unwrap_or(false),
                status,
                errors: w.errors.unwrap_or(0),
                started_ms: required(w.started, "started", kind)?,
                duration_ms: w.duration_ms,
                seq: w.seq.unwrap_or(0),
            })
        }
        "notification" => Event::Notification(Notification {
            common,
            stage: required(w.stage, "stage", kind)?,
            notification_id: required(w.notification_id, "notification_id", kind)?,
            campaign: w.campaign,
            deep_link: w.deep_link,
            provider: w.provider,
            error_code: w.error_code,
        }),
        other => return Err(format!("unknown kind {other:?}")),
    };
    Ok((event, w.consent))
}
