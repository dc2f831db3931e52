//! The native batch API: `POST /v1/batch` with `{sent_at, events: [...]}` (see `openapi.json`).
//!
//! Each event is an object with a `kind`, the common fields (`event_id`, `timestamp`, `release`,
//! ...) and its kind's fields. Events are parsed one by one: a bad event is refused with its index
//! and reason, and the others go on.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use trellis_schemas::model::*;

use crate::accept::{IngestError, Item};
use crate::time::native_ms;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(default)]
    sent_at: Option<Value>,
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Parses a native batch into its `sent_at` and items.
pub fn parse(body: &[u8], max_event_bytes: usize) -> Result<(Option<i64>, Vec<Item>), IngestError> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| {
        IngestError::BadRequest(format!(
            "body is not a batch {{sent_at, events: [...]}}: {e}"
        ))
    })?;
    let sent_at = match &batch.sent_at {
        None | Some(Value::Null) => None,
        Some(v) => Some(native_ms(v).ok_or_else(|| {
            IngestError::BadRequest("sent_at is neither RFC 3339 text nor integer ms".into())
        })?),
    };
    let items = batch
        .events
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
        return Item::Invalid {
            reason: format!(
                "event of {} bytes is over the {max_event_bytes}-byte limit",
                raw.len()
            ),
            raw: raw.as_bytes()[..raw.len().min(4096)].to_vec(),
            too_large: true,
        };
    }
    match build(raw) {
        Ok((event, consent)) => Item::Event {
            event: Box::new(event),
            consent,
        },
        Err(reason) => invalid(raw, reason),
    }
}

/// The fields every native event carries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeCommon {
    event_id: String,
    timestamp: Value,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    release: NativeRelease,
    #[serde(default)]
    device: NativeDevice,
    #[serde(default)]
    sdk: Option<NativeSdk>,
    #[serde(default)]
    consent: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeRelease {
    platform: String,
    app_version: String,
    #[serde(default)]
    build: Option<String>,
    #[serde(default)]
    runtime_version: Option<String>,
    #[serde(default)]
    update_id: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NativeDevice {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    os_name: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeSdk {
    name: String,
    version: String,
}

const COMMON_KEYS: [&str; 9] = [
    "event_id",
    "timestamp",
    "device_id",
    "user_id",
    "session_id",
    "release",
    "device",
    "sdk",
    "consent",
];

fn field<T: DeserializeOwned>(map: Map<String, Value>, what: &str) -> Result<T, String> {
    serde_json::from_value(Value::Object(map)).map_err(|e| format!("{what}: {e}"))
}

fn time(value: &Value, what: &str) -> Result<i64, String> {
    native_ms(value).ok_or_else(|| format!("{what} is neither RFC 3339 text nor integer ms"))
}

fn json_text(value: Option<Map<String, Value>>) -> String {
    Value::Object(value.unwrap_or_default()).to_string()
}

fn tags(map: Option<Map<String, Value>>) -> Vec<Tag> {
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
    let mut map: Map<String, Value> =
        serde_json::from_str(raw).map_err(|e| format!("not a JSON object: {e}"))?;
    let kind = match map.remove("kind") {
        Some(Value::String(k)) => k,
        Some(_) => return Err("kind is not a string".into()),
        None => return Err("kind is missing".into()),
    };
    let mut common_map = Map::new();
    for key in COMMON_KEYS {
        if let Some(v) = map.remove(key) {
            common_map.insert(key.to_string(), v);
        }
    }
    let c: NativeCommon = field(common_map, "common fields")?;
    if uuid::Uuid::parse_str(&c.event_id).is_err() {
        return Err(format!("event_id {:?} is not a UUID", c.event_id));
    }
    let sdk = c
        .sdk
        .map(|s| Sdk {
            name: s.name,
            version: s.version,
        })
        .unwrap_or_else(|| Sdk {
            name: "trellis.native".into(),
            version: "1".into(),
        });
    let common = Common {
        event_id: c.event_id,
        project: String::new(),
        timestamp_ms: time(&c.timestamp, "timestamp")?,
        sent_at_ms: None,
        received_at_ms: 0,
        device_id: c.device_id,
        user_id: c.user_id,
        session_id: c.session_id,
        release: Release {
            platform: c.release.platform,
            app_version: c.release.app_version,
            build: c.release.build,
            runtime_version: c.release.runtime_version,
            update_id: c.release.update_id,
            channel: c.release.channel,
            environment: c.release.environment,
        },
        device: Device {
            model: c.device.model,
            os_name: c.device.os_name,
            os_version: c.device.os_version,
            locale: c.device.locale,
            timezone: c.device.timezone,
        },
        sdk,
    };
    let event = match kind.as_str() {
        "analytics" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                name: String,
                #[serde(default)]
                screen: Option<String>,
                #[serde(default)]
                properties: Option<Map<String, Value>>,
            }
            let f: F = field(map, "analytics")?;
            Event::Analytics(AnalyticsEvent {
                common,
                name: f.name,
                screen: f.screen,
                properties: json_text(f.properties),
            })
        }
        "error" => error(common, map)?,
        "performance" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                metric: String,
                value: f64,
                unit: String,
                #[serde(default)]
                screen: Option<String>,
                #[serde(default)]
                attributes: Option<Map<String, Value>>,
            }
            let f: F = field(map, "performance")?;
            Event::Performance(PerformanceSample {
                common,
                metric: f.metric,
                value: f.value,
                unit: f.unit,
                screen: f.screen,
                attributes: tags(f.attributes),
            })
        }
        "transaction" => transaction(common, map)?,
        "session" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                #[serde(default)]
                init: bool,
                status: SessionStatus,
                #[serde(default)]
                errors: i64,
                started: Value,
                #[serde(default)]
                duration_ms: Option<i64>,
                #[serde(default)]
                seq: i64,
            }
            if common.session_id.is_none() {
                return Err("a session event needs session_id".into());
            }
            let f: F = field(map, "session")?;
            Event::Session(SessionUpdate {
                common,
                init: f.init,
                status: f.status,
                errors: f.errors,
                started_ms: time(&f.started, "started")?,
                duration_ms: f.duration_ms,
                seq: f.seq,
            })
        }
        "notification" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                stage: NotificationStage,
                notification_id: String,
                #[serde(default)]
                campaign: Option<String>,
                #[serde(default)]
                deep_link: Option<String>,
                #[serde(default)]
                provider: Option<String>,
                #[serde(default)]
                error_code: Option<String>,
            }
            let f: F = field(map, "notification")?;
            Event::Notification(Notification {
                common,
                stage: f.stage,
                notification_id: f.notification_id,
                campaign: f.campaign,
                deep_link: f.deep_link,
                provider: f.provider,
                error_code: f.error_code,
            })
        }
        other => return Err(format!("unknown kind {other:?}")),
    };
    Ok((event, c.consent))
}

fn error(common: Common, map: Map<String, Value>) -> Result<Event, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NativeException {
        #[serde(rename = "type")]
        exception_type: String,
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        module: Option<String>,
        #[serde(default)]
        mechanism: Option<String>,
        #[serde(default)]
        frames: Vec<Frame>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NativeBreadcrumb {
        timestamp: Value,
        #[serde(default, rename = "type")]
        breadcrumb_type: Option<String>,
        #[serde(default)]
        category: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        level: Option<String>,
        #[serde(default)]
        data: Option<Map<String, Value>>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct F {
        #[serde(default)]
        level: Level,
        #[serde(default = "yes")]
        handled: bool,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        exceptions: Vec<NativeException>,
        #[serde(default)]
        breadcrumbs: Vec<NativeBreadcrumb>,
        #[serde(default)]
        tags: Option<Map<String, Value>>,
        #[serde(default)]
        fingerprint: Vec<String>,
        #[serde(default)]
        transaction: Option<String>,
        #[serde(default)]
        contexts: Option<Map<String, Value>>,
    }
    fn yes() -> bool {
        true
    }
    let f: F = field(map, "error")?;
    if f.exceptions.is_empty() && f.message.is_none() {
        return Err("an error event needs exceptions or a message".into());
    }
    let mut breadcrumbs = Vec::with_capacity(f.breadcrumbs.len());
    for b in f.breadcrumbs {
        breadcrumbs.push(Breadcrumb {
            timestamp_ms: time(&b.timestamp, "breadcrumb timestamp")?,
            breadcrumb_type: b.breadcrumb_type,
            category: b.category,
            message: b.message,
            level: b.level,
            data: json_text(b.data),
        });
    }
    Ok(Event::Error(ErrorEvent {
        common,
        level: f.level,
        handled: f.handled,
        message: f.message,
        exceptions: f
            .exceptions
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
        tags: tags(f.tags),
        fingerprint: f.fingerprint,
        transaction: f.transaction,
        contexts: json_text(f.contexts),
    }))
}

fn transaction(common: Common, map: Map<String, Value>) -> Result<Event, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NativeSpan {
        span_id: String,
        #[serde(default)]
        parent_span_id: Option<String>,
        op: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        status: Option<String>,
        start_timestamp: Value,
        end_timestamp: Value,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NativeMeasurement {
        value: f64,
        #[serde(default)]
        unit: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct F {
        name: String,
        #[serde(default)]
        op: Option<String>,
        trace_id: String,
        span_id: String,
        #[serde(default)]
        status: Option<String>,
        start_timestamp: Value,
        end_timestamp: Value,
        #[serde(default)]
        spans: Vec<NativeSpan>,
        #[serde(default)]
        measurements: std::collections::BTreeMap<String, NativeMeasurement>,
        #[serde(default)]
        tags: Option<Map<String, Value>>,
    }
    let us = |v: &Value, what: &str| time(v, what).map(|ms| ms.saturating_mul(1000));
    let f: F = field(map, "transaction")?;
    let mut spans = Vec::with_capacity(f.spans.len());
    for s in f.spans {
        spans.push(Span {
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            op: s.op,
            description: s.description,
            status: s.status,
            start_us: us(&s.start_timestamp, "span start_timestamp")?,
            end_us: us(&s.end_timestamp, "span end_timestamp")?,
        });
    }
    Ok(Event::Transaction(Transaction {
        common,
        name: f.name,
        op: f.op,
        trace_id: f.trace_id,
        span_id: f.span_id,
        status: f.status,
        start_us: us(&f.start_timestamp, "start_timestamp")?,
        end_us: us(&f.end_timestamp, "end_timestamp")?,
        spans,
        measurements: f
            .measurements
            .into_iter()
            .map(|(name, m)| Measurement {
                name,
                value: m.value,
                unit: m.unit,
            })
            .collect(),
        tags: tags(f.tags),
    }))
}
