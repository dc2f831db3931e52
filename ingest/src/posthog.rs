//! The PostHog endpoints: `POST /batch/`, `/e/`, `/capture/` and `/i/v0/e/`, and the v1 capture
//! API `POST /i/v1/analytics/events`.
//!
//! Bodies are `{api_key, batch: [...]}`, a single event `{api_key, event, properties, ...}`, or a
//! list of events; the key may also be `token` or `properties.token` (posthog-js). Events map by
//! name: `$exception` becomes an error (from `$exception_list`), `$screen` an analytics event with
//! its screen, `$identify` and `$set` analytics events whose properties keep `$set`/`$set_once`;
//! everything else an analytics event.
//!
//! Release identity comes from the properties `$app_version`, `$app_build`, `$os`, and for OTA
//! updates `$expo_update_id` / `$update_id`, `$expo_channel` / `$update_channel`,
//! `$expo_runtime_version` / `$runtime_version`; `$environment` names the environment.
//! `$consent: false` refuses consent.
//!
//! The v1 capture API (posthog-python's `capture_mode="v1"`) sends the key as a bearer token, the
//! SDK's name and version in the `PostHog-Sdk-Info` header instead of `$lib`, the session id as
//! a top-level `session_id`, and `{created_at, batch}` bodies; it is answered event by event, by
//! uuid (see [`V1Results`]), so the SDK resends only what may succeed later.

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use trellis_schemas::model::*;

use crate::accept::{IngestError, Item};
use crate::time::{native_ms, now_ms};

/// What a PostHog request yields.
pub struct Parsed {
    /// The project key found in the body.
    pub api_key: Option<String>,
    /// When the SDK sent it.
    pub sent_at_ms: Option<i64>,
    /// The events.
    pub items: Vec<Item>,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A PostHog body as read: its key, `sent_at`, and the events still as raw JSON.
pub struct Body<'a> {
    /// The project key: `api_key` or `token` at the top, or the first event's.
    pub api_key: Option<String>,
    sent_at_ms: Option<i64>,
    events: Vec<std::borrow::Cow<'a, RawValue>>,
    /// The SDK the request names outside its events (v1), for events without `$lib`.
    sdk: Option<Sdk>,
}

/// Reads a PostHog body's shape: a batch, a list or one event. More than `max_events` events is
/// refused while reading; events stay raw until [`Body::items`], so nothing is converted before
/// the key is checked.
pub fn read(body: &[u8], max_events: usize) -> Result<Body<'_>, IngestError> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    enum Shape<'a> {
        Batch {
            key: Option<String>,
            sent_at: Option<Value>,
            events: Vec<&'a RawValue>,
        },
        Single(Map<String, Value>),
        List(Vec<&'a RawValue>),
    }
    struct V(usize);
    impl<'de> Visitor<'de> for V {
        type Value = Shape<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an event, a list of events or a batch")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Shape<'de>, A::Error> {
            crate::capped::Capped::new(self.0)
                .visit_seq(seq)
                .map(Shape::List)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape<'de>, A::Error> {
            let mut rest = Map::new();
            let mut events = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == "batch" {
                    events = Some(map.next_value_seed(crate::capped::Capped::new(self.0))?);
                } else {
                    rest.insert(key, map.next_value()?);
                }
            }
            Ok(match events {
                Some(events) => Shape::Batch {
                    key: text(rest.get("api_key")).or(text(rest.get("token"))),
                    sent_at: rest.remove("sent_at"),
                    events,
                },
                None => Shape::Single(rest),
            })
        }
    }
    struct Seed(usize);
    impl<'de> DeserializeSeed<'de> for Seed {
        type Value = Shape<'de>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape<'de>, D::Error> {
            d.deserialize_any(V(self.0))
        }
    }

    let shape = crate::capped::read(
        body,
        Seed(max_events),
        "an event, a list of events or a batch",
    )?;
    let raw = |v: &Value| -> std::borrow::Cow<'static, RawValue> {
        std::borrow::Cow::Owned(
            RawValue::from_string(v.to_string()).expect("a Value serializes to JSON"),
        )
    };
    let (mut api_key, sent_at, events) = match shape {
        Shape::Batch {
            key,
            sent_at,
            events,
        } => (
            key,
            sent_at.as_ref().and_then(native_ms),
            events.into_iter().map(std::borrow::Cow::Borrowed).collect(),
        ),
        Shape::List(events) => (
            None,
            None,
            events
                .into_iter()
                .map(std::borrow::Cow::Borrowed)
                .collect::<Vec<_>>(),
        ),
        Shape::Single(map) => {
            let key = text(map.get("api_key")).or(text(map.get("token")));
            let sent_at = map.get("sent_at").and_then(native_ms);
            (key, sent_at, vec![raw(&Value::Object(map))])
        }
    };
    if api_key.is_none() {
        // posthog-js puts the key in each event: the first event's names the request's project.
        api_key = events.first().and_then(|e| {
            serde_json::from_str::<Value>(e.get())
                .ok()
                .as_ref()
                .and_then(event_key)
        });
    }
    Ok(Body {
        api_key,
        sent_at_ms: sent_at,
        events,
        sdk: None,
    })
}

/// Reads a v1 capture request (`POST /i/v1/analytics/events`): the body as [`read`] does, with
/// what v1 says in headers instead: the bearer `key`, the `PostHog-Sdk-Info` (`name/version`) and
/// the time the request was sent (`PostHog-Request-Timestamp`, RFC 3339).
pub fn read_v1<'a>(
    body: &'a [u8],
    max_events: usize,
    key: Option<&str>,
    sdk_info: Option<&str>,
    sent_at: Option<&str>,
) -> Result<Body<'a>, IngestError> {
    let mut read = read(body, max_events)?;
    read.api_key = key.map(str::to_string);
    if let Some(at) = sent_at {
        read.sent_at_ms = native_ms(&Value::String(at.to_string()));
    }
    read.sdk = sdk_info.map(|info| {
        let (name, version) = info.split_once('/').unwrap_or((info, ""));
        Sdk {
            name: name.to_string(),
            version: version.to_string(),
        }
    });
    Ok(read)
}

/// What a v1 request's events became, keyed by the uuid each was sent with: `ok`, or `drop` with
/// the reason. PostHog's SDKs resend the events answered `retry`; trellis never answers it per
/// event, because a request the bus cannot take now is refused whole (503 with `Retry-After`).
#[derive(Debug, Default, serde::Serialize)]
pub struct V1Results {
    /// Event uuid → its result.
    pub results: std::collections::BTreeMap<String, V1Result>,
}

/// One event's result in a v1 answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct V1Result {
    /// `ok` or `drop`.
    pub result: &'static str,
    /// Why it was dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl V1Results {
    /// The results of a request whose events had these `uuids` (in request order; `None` for an
    /// event sent without one, which cannot be named in the answer) and were refused as
    /// `rejected` says.
    pub fn new(uuids: Vec<Option<String>>, rejected: &[crate::accept::Rejection]) -> Self {
        let mut results = std::collections::BTreeMap::new();
        let mut refusals = rejected.iter().peekable();
        for (index, uuid) in uuids.into_iter().enumerate() {
            let mut result = V1Result {
                result: "ok",
                details: None,
            };
            while let Some(r) = refusals.next_if(|r| r.index <= index) {
                if r.index == index {
                    result = V1Result {
                        result: "drop",
                        details: Some(r.reason.clone()),
                    };
                }
            }
            if let Some(uuid) = uuid {
                results.insert(uuid, result);
            }
        }
        V1Results { results }
    }
}

/// The key an event carries itself (`api_key`, `token` or `properties.token`), if any.
fn event_key(event: &Value) -> Option<String> {
    text(event.get("api_key"))
        .or(text(event.get("token")))
        .or(text(event.pointer("/properties/token")))
}

impl Body<'_> {
    /// When the SDK sent the request.
    pub fn sent_at_ms(&self) -> Option<i64> {
        self.sent_at_ms
    }

    /// Each event's `uuid` as sent, in request order (`None` where it has none).
    pub fn uuids(&self) -> Vec<Option<String>> {
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            uuid: Option<std::borrow::Cow<'a, str>>,
        }
        self.events
            .iter()
            .map(|raw| {
                serde_json::from_str::<Id>(raw.get())
                    .ok()
                    .and_then(|id| id.uuid)
                    .map(|u| u.into_owned())
            })
            .collect()
    }

    /// Converts the events. One that carries a key other than the request's is refused: a key
    /// writes only to its own project.
    pub fn items(&self, max_event_bytes: usize) -> Vec<Item> {
        let received = now_ms();
        let default_time = self.sent_at_ms.unwrap_or(received);
        self.events
            .iter()
            .map(|raw| {
                let raw = raw.get();
                if raw.len() > max_event_bytes {
                    return Item::too_large(raw.as_bytes(), "event", max_event_bytes);
                }
                let event = match serde_json::from_str::<Value>(raw) {
                    Ok(v) => v,
                    Err(e) => {
                        return Item::Invalid {
                            reason: format!("event is not JSON: {e}"),
                            raw: raw.as_bytes().to_vec(),
                            too_large: false,
                        };
                    }
                };
                if let Some(key) = event_key(&event)
                    && Some(&key) != self.api_key.as_ref()
                {
                    return Item::Invalid {
                        reason: "event carries another project key than the request".into(),
                        raw: Vec::new(),
                        too_large: false,
                    };
                }
                item(event, max_event_bytes, default_time, self.sdk.as_ref())
            })
            .collect()
    }
}

/// Parses a PostHog body (already decompressed) in one go: [`read`] then [`Body::items`], for
/// callers that check no key (fuzzing, benchmarks); the server checks the key in between.
pub fn parse(
    body: &[u8],
    max_events: usize,
    max_event_bytes: usize,
) -> Result<Parsed, IngestError> {
    let body = read(body, max_events)?;
    Ok(Parsed {
        items: body.items(max_event_bytes),
        api_key: body.api_key.clone(),
        sent_at_ms: body.sent_at_ms,
    })
}

fn item(event: Value, max_event_bytes: usize, default_time: i64, sdk: Option<&Sdk>) -> Item {
    let raw = event.to_string();
    if raw.len() > max_event_bytes {
        return Item::too_large(raw.as_bytes(), "event", max_event_bytes);
    }
    match convert(&event, &raw, default_time, sdk) {
        Ok((e, consent)) => Item::Event {
            event: Box::new(e),
            consent,
        },
        Err(reason) => Item::Invalid {
            reason,
            raw: raw.into_bytes(),
            too_large: false,
        },
    }
}

fn convert(
    event: &Value,
    raw: &str,
    default_time: i64,
    sdk: Option<&Sdk>,
) -> Result<(Event, Option<bool>), String> {
    let obj = event.as_object().ok_or("event is not an object")?;
    let name = text(obj.get("event")).ok_or("event has no name")?;
    let mut props: Map<String, Value> = match obj.get("properties") {
        Some(Value::Object(p)) => p.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("properties is not an object".into()),
    };
    // posthog-python puts `$set` beside the properties on `$set` events.
    for key in ["$set", "$set_once"] {
        if let Some(v) = obj.get(key) {
            props.insert(key.into(), v.clone());
        }
    }
    props.remove("token");
    let p = |k: &str| text(props.get(k));
    let pick = |keys: &[&str]| keys.iter().find_map(|k| text(props.get(*k)));
    let event_id = match text(obj.get("uuid")) {
        Some(u) => uuid::Uuid::parse_str(&u)
            .map_err(|_| format!("uuid {u:?} is not a UUID"))?
            .hyphenated()
            .to_string(),
        // No id from the SDK: derive one from the content, so a retried request is the same event.
        None => uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, raw.as_bytes()).to_string(),
    };
    let timestamp_ms = match obj.get("timestamp") {
        Some(t) => native_ms(t).ok_or("timestamp is not RFC 3339 text")?,
        None => default_time,
    };
    let os = p("$os");
    let platform = match os.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("ios" | "ipados") => "ios".to_string(),
        Some("android") => "android".to_string(),
        Some(other) => other.to_string(),
        None => p("$lib")
            .or(sdk.map(|s| s.name.clone()))
            .unwrap_or_else(|| "unknown".into()),
    };
    let distinct_id = text(obj.get("distinct_id")).or(p("distinct_id"));
    let consent = props.get("$consent").and_then(Value::as_bool);
    let common = Common {
        event_id,
        project: String::new(),
        timestamp_ms,
        sent_at_ms: None,
        received_at_ms: 0,
        device_id: p("$device_id").or(distinct_id.clone()),
        user_id: distinct_id,
        // v1 moves the session id out of the properties.
        session_id: p("$session_id").or(text(obj.get("session_id"))),
        release: Release {
            platform,
            app_version: p("$app_version").unwrap_or_default(),
            build: p("$app_build"),
            runtime_version: pick(&["$expo_runtime_version", "$runtime_version"]),
            update_id: pick(&["$expo_update_id", "$update_id"]),
            channel: pick(&["$expo_channel", "$update_channel"]),
            environment: p("$environment"),
        },
        device: Device {
            model: p("$device_model"),
            os_name: os,
            os_version: p("$os_version"),
            locale: p("$locale"),
            timezone: p("$timezone"),
        },
        sdk: match (p("$lib"), sdk) {
            (None, Some(sdk)) => sdk.clone(),
            (lib, _) => Sdk {
                name: lib.unwrap_or_else(|| "posthog".into()),
                version: p("$lib_version").unwrap_or_default(),
            },
        },
    };
    let event = match name.as_str() {
        "$exception" => Event::Error(exception(common, &props)?),
        _ => Event::Analytics(AnalyticsEvent {
            common,
            screen: pick(&["$screen_name", "$screen"]),
            name,
            properties: Value::Object(props).to_string(),
        }),
    };
    Ok((event, consent))
}

fn exception(common: Common, props: &Map<String, Value>) -> Result<ErrorEvent, String> {
    let list = props
        .get("$exception_list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut exceptions: Vec<Exception> = list
        .iter()
        .map(|x| Exception {
            exception_type: text(x.get("type")).unwrap_or_else(|| "Error".into()),
            value: text(x.get("value")),
            module: text(x.get("module")),
            mechanism: text(x.pointer("/mechanism/type")),
            frames: crate::sentry::convert::frames(x.get("stacktrace")),
        })
        .collect();
    // PostHog, like Sentry, lists the chain innermost last.
    exceptions.reverse();
    let message = text(props.get("$exception_message"));
    if exceptions.is_empty() && message.is_none() {
        return Err("$exception has no $exception_list and no $exception_message".into());
    }
    let handled = list
        .iter()
        .all(|x| x.pointer("/mechanism/handled").and_then(Value::as_bool) != Some(false));
    let level = match text(props.get("$exception_level")).as_deref() {
        Some("fatal") => Level::Fatal,
        Some("warning") => Level::Warning,
        Some("info") => Level::Info,
        Some("debug") => Level::Debug,
        _ => Level::Error,
    };
    let fingerprint = match props.get("$exception_fingerprint") {
        Some(Value::String(f)) => vec![f.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|v| text(Some(v))).collect(),
        _ => Vec::new(),
    };
    let mut contexts = props.clone();
    contexts.remove("$exception_list");
    Ok(ErrorEvent {
        common,
        level,
        handled: handled && level != Level::Fatal,
        message,
        exceptions,
        breadcrumbs: Vec::new(),
        tags: Vec::new(),
        fingerprint,
        transaction: text(props.get("$screen_name")),
        contexts: Value::Object(contexts).to_string(),
        issue_id: None,
    })
}
