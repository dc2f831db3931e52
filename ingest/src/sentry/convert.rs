//! Sentry payloads (events, transactions, sessions) into trellis events.
//!
//! Release identity comes from Sentry's fields: `release` (`package@version+build`), `dist`
//! (build), `environment`, `contexts.app` (`app_version`, `app_build`), and the OTA update from
//! `contexts.expo_updates` (`update_id`, `channel`, `runtime_version`, as `@sentry/react-native`
//! reports them) or from the `expo-update-id`, `expo-channel` and `expo-runtime-version` tags the
//! Expo guide sets.

use serde_json::Value;
use trellis_schemas::model::*;

use crate::time::{sentry_ms, sentry_us};

fn s(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn path<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

/// Sentry's `values` wrapper: either `{"values": [...]}` or a bare list.
fn values(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(a)) => a,
        Some(Value::Object(o)) => o
            .get("values")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
        _ => &[],
    }
}

/// Tags as an object or a list of pairs.
fn tag_list(v: Option<&Value>) -> Vec<Tag> {
    match v {
        Some(Value::Object(o)) => o
            .iter()
            .filter_map(|(k, v)| {
                Some(Tag {
                    key: k.clone(),
                    value: s(Some(v))?,
                })
            })
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|pair| {
                let pair = pair.as_array()?;
                Some(Tag {
                    key: s(pair.first())?,
                    value: s(pair.get(1))?,
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn tag<'a>(tags: &'a [Tag], names: &[&str]) -> Option<&'a str> {
    tags.iter()
        .find(|t| names.contains(&t.key.as_str()))
        .map(|t| t.value.as_str())
}

/// Splits `package@version+build` into version and build.
pub fn split_release(release: &str) -> (String, Option<String>) {
    let version = release.rsplit_once('@').map(|(_, v)| v).unwrap_or(release);
    match version.split_once('+') {
        Some((v, b)) => (v.to_string(), Some(b.to_string())),
        None => (version.to_string(), None),
    }
}

/// The common fields of a Sentry event.
pub fn common(event: &Value, tags: &[Tag], event_id: String) -> Common {
    let contexts = event.get("contexts").cloned().unwrap_or(Value::Null);
    let release_text = s(event.get("release")).unwrap_or_default();
    let (mut app_version, mut build) = split_release(&release_text);
    if let Some(v) = s(path(&contexts, &["app", "app_version"])) {
        app_version = v;
    }
    build = s(event.get("dist"))
        .or(s(path(&contexts, &["app", "app_build"])))
        .or(build);
    let os_text = s(path(&contexts, &["device", "os"]));
    let (os_name, os_version) = match (
        s(path(&contexts, &["os", "name"])),
        s(path(&contexts, &["os", "version"])),
    ) {
        (Some(n), v) => (Some(n), v),
        (None, _) => match os_text.as_deref().and_then(|t| t.split_once(' ')) {
            Some((n, v)) => (Some(n.to_string()), Some(v.to_string())),
            None => (os_text.clone(), None),
        },
    };
    let platform = match os_name.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("ios" | "ipados" | "iphone os") => "ios".to_string(),
        Some("android") => "android".to_string(),
        _ => s(event.get("platform")).unwrap_or_else(|| "unknown".into()),
    };
    let expo = |key: &str, tag_names: &[&str]| {
        s(path(&contexts, &["expo_updates", key]))
            .or_else(|| tag(tags, tag_names).map(str::to_string))
    };
    let user_id = s(path(event, &["user", "id"]));
    Common {
        event_id,
        project: String::new(),
        timestamp_ms: event.get("timestamp").and_then(sentry_ms).unwrap_or(0),
        sent_at_ms: None,
        received_at_ms: 0,
        device_id: s(path(&contexts, &["device", "id"])).or_else(|| user_id.clone()),
        user_id,
        session_id: None,
        release: Release {
            platform,
            app_version,
            build,
            runtime_version: expo(
                "runtime_version",
                &["expo-runtime-version", "expo.runtime_version"],
            ),
            update_id: expo("update_id", &["expo-update-id", "expo.update_id"]),
            channel: expo("channel", &["expo-channel", "expo.channel"]),
            environment: s(event.get("environment")),
        },
        device: Device {
            model: s(path(&contexts, &["device", "model"])),
            os_name,
            os_version,
            locale: s(path(&contexts, &["culture", "locale"])),
            timezone: s(path(&contexts, &["culture", "timezone"])),
        },
        sdk: Sdk {
            name: s(path(event, &["sdk", "name"])).unwrap_or_else(|| "sentry.unknown".into()),
            version: s(path(event, &["sdk", "version"])).unwrap_or_default(),
        },
    }
}

/// Stack frames in Sentry's shape (`stacktrace.frames`), which PostHog's `$exception_list` uses too.
pub fn frames(stacktrace: Option<&Value>) -> Vec<Frame> {
    let Some(frames) = stacktrace
        .and_then(|st| st.get("frames"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    frames
        .iter()
        .map(|f| Frame {
            function: s(f.get("function")),
            module: s(f.get("module")),
            filename: s(f.get("filename")),
            abs_path: s(f.get("abs_path")),
            lineno: f.get("lineno").and_then(Value::as_i64),
            colno: f.get("colno").and_then(Value::as_i64),
            in_app: f.get("in_app").and_then(Value::as_bool).unwrap_or(false),
        })
        .collect()
}

fn message(event: &Value) -> Option<String> {
    match event.get("message") {
        Some(Value::String(m)) => Some(m.clone()),
        Some(Value::Object(o)) => s(o.get("formatted")).or(s(o.get("message"))),
        _ => {
            s(path(event, &["logentry", "formatted"])).or(s(path(event, &["logentry", "message"])))
        }
    }
}

/// A Sentry error or message event. `None` when it has no exception and no message.
pub fn error(event: &Value, event_id: String) -> Result<ErrorEvent, String> {
    if !event.is_object() {
        return Err("event is not a JSON object".into());
    }
    let tags = tag_list(event.get("tags"));
    let common = common(event, &tags, event_id);
    // Sentry lists the chain innermost last; trellis keeps the outermost (thrown last) first.
    let mut exceptions: Vec<Exception> = values(event.get("exception"))
        .iter()
        .map(|x| Exception {
            exception_type: s(x.get("type")).unwrap_or_else(|| "Error".into()),
            value: s(x.get("value")),
            module: s(x.get("module")),
            mechanism: s(path(x, &["mechanism", "type"])),
            frames: frames(x.get("stacktrace")),
        })
        .collect();
    exceptions.reverse();
    let unhandled = values(event.get("exception"))
        .iter()
        .any(|x| path(x, &["mechanism", "handled"]).and_then(Value::as_bool) == Some(false));
    let message = message(event);
    if exceptions.is_empty() && message.is_none() {
        return Err("event has neither an exception nor a message".into());
    }
    let level = match s(event.get("level")).as_deref() {
        Some("debug") => Level::Debug,
        Some("info" | "log") => Level::Info,
        Some("warning") => Level::Warning,
        Some("fatal") => Level::Fatal,
        _ => Level::Error,
    };
    let breadcrumbs = values(event.get("breadcrumbs"))
        .iter()
        .map(|b| Breadcrumb {
            timestamp_ms: b
                .get("timestamp")
                .and_then(sentry_ms)
                .unwrap_or(common.timestamp_ms),
            breadcrumb_type: s(b.get("type")),
            category: s(b.get("category")),
            message: s(b.get("message")),
            level: s(b.get("level")),
            data: b
                .get("data")
                .filter(|d| d.is_object())
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".into()),
        })
        .collect();
    let mut contexts = event
        .get("contexts")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(user) = event.get("user").filter(|u| u.is_object()) {
        contexts.insert("user".into(), user.clone());
    }
    let fingerprint = event
        .get("fingerprint")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(|x| s(Some(x))).collect())
        .unwrap_or_default();
    Ok(ErrorEvent {
        common,
        level,
        handled: !unhandled && level != Level::Fatal,
        message,
        exceptions,
        breadcrumbs,
        tags,
        fingerprint,
        transaction: s(event.get("transaction")),
        contexts: Value::Object(contexts).to_string(),
        issue_id: None,
    })
}

/// A Sentry transaction.
pub fn transaction(event: &Value, event_id: String) -> Result<Transaction, String> {
    let tags = tag_list(event.get("tags"));
    let common = common(event, &tags, event_id);
    let trace = path(event, &["contexts", "trace"]).ok_or("transaction has no contexts.trace")?;
    let start_us = event
        .get("start_timestamp")
        .and_then(sentry_us)
        .ok_or("transaction has no start_timestamp")?;
    let end_us = event
        .get("timestamp")
        .and_then(sentry_us)
        .ok_or("transaction has no timestamp")?;
    let spans = event
        .get("spans")
        .and_then(Value::as_array)
        .map(|spans| {
            spans
                .iter()
                .map(|sp| Span {
                    span_id: s(sp.get("span_id")).unwrap_or_default(),
                    parent_span_id: s(sp.get("parent_span_id")),
                    op: s(sp.get("op")).unwrap_or_default(),
                    description: s(sp.get("description")),
                    status: s(sp.get("status")),
                    start_us: sp
                        .get("start_timestamp")
                        .and_then(sentry_us)
                        .unwrap_or(start_us),
                    end_us: sp.get("timestamp").and_then(sentry_us).unwrap_or(end_us),
                })
                .collect()
        })
        .unwrap_or_default();
    let measurements = event
        .get("measurements")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(name, v)| {
                    Some(Measurement {
                        name: name.clone(),
                        value: v.get("value")?.as_f64()?,
                        unit: s(v.get("unit")),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Transaction {
        common,
        name: s(event.get("transaction")).unwrap_or_else(|| "<unlabeled transaction>".into()),
        op: s(trace.get("op")),
        trace_id: s(trace.get("trace_id")).ok_or("contexts.trace has no trace_id")?,
        span_id: s(trace.get("span_id")).ok_or("contexts.trace has no span_id")?,
        status: s(trace.get("status")),
        start_us,
        end_us,
        spans,
        measurements,
        tags,
    })
}

fn session_status(text: Option<&str>) -> Result<SessionStatus, String> {
    Ok(match text.unwrap_or("ok") {
        "ok" => SessionStatus::Ok,
        "exited" => SessionStatus::Exited,
        "crashed" => SessionStatus::Crashed,
        "abnormal" => SessionStatus::Abnormal,
        "errored" => SessionStatus::Errored,
        other => return Err(format!("unknown session status {other:?}")),
    })
}

/// Longest `attrs.release` of a session item, as Sentry's own limit on release names.
pub const MAX_RELEASE_CHARS: usize = 200;

/// Longest `attrs.environment` of a session item, as Sentry's own limit.
pub const MAX_ENVIRONMENT_CHARS: usize = 64;

/// Longest `did` (the user or device) of a session item.
pub const MAX_DID_CHARS: usize = 256;

/// The `did` of a session item or aggregate, refused past [`MAX_DID_CHARS`].
fn did_of(v: Option<&Value>) -> Result<Option<String>, String> {
    let did = s(v);
    if did
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DID_CHARS)
    {
        return Err(format!("did is longer than {MAX_DID_CHARS} characters"));
    }
    Ok(did)
}

/// The release attributes of a `session` or `sessions` item, read in place (a `sessions` item
/// expands to many events: nothing of `attrs` but these two bounded strings reaches them).
fn session_common(
    attrs: Option<&Value>,
    sdk: &Sdk,
    event_id: String,
    timestamp_ms: i64,
) -> Result<Common, String> {
    let release = s(attrs.and_then(|a| a.get("release"))).unwrap_or_default();
    if release.chars().count() > MAX_RELEASE_CHARS {
        return Err(format!(
            "attrs.release is longer than {MAX_RELEASE_CHARS} characters"
        ));
    }
    let environment = s(attrs.and_then(|a| a.get("environment")));
    if environment
        .as_ref()
        .is_some_and(|e| e.chars().count() > MAX_ENVIRONMENT_CHARS)
    {
        return Err(format!(
            "attrs.environment is longer than {MAX_ENVIRONMENT_CHARS} characters"
        ));
    }
    let (app_version, build) = split_release(&release);
    Ok(Common {
        event_id,
        timestamp_ms,
        release: Release {
            platform: "unknown".into(),
            app_version,
            build,
            environment,
            ..Release::default()
        },
        sdk: sdk.clone(),
        ..Common::default()
    })
}

/// A Sentry `session` item.
pub fn session(item: &Value, sdk: &Sdk) -> Result<SessionUpdate, String> {
    let sid = s(item.get("sid")).ok_or("session has no sid")?;
    let started_ms = item
        .get("started")
        .and_then(sentry_ms)
        .ok_or("session has no started")?;
    let timestamp_ms = item
        .get("timestamp")
        .and_then(sentry_ms)
        .unwrap_or(started_ms);
    let seq = item
        .get("seq")
        .and_then(Value::as_i64)
        .unwrap_or(timestamp_ms);
    let status = session_status(item.get("status").and_then(Value::as_str))?;
    // The update's identity is the session and its sequence: a resent update is the same event.
    let event_id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("session:{sid}:{seq}:{status:?}").as_bytes(),
    )
    .to_string();
    let mut common = session_common(item.get("attrs"), sdk, event_id, timestamp_ms)?;
    let did = did_of(item.get("did"))?;
    common.device_id = did.clone();
    common.user_id = did;
    common.session_id = Some(sid);
    Ok(SessionUpdate {
        common,
        init: item.get("init").and_then(Value::as_bool).unwrap_or(false),
        status,
        errors: item.get("errors").and_then(Value::as_i64).unwrap_or(0),
        started_ms,
        duration_ms: item
            .get("duration")
            .and_then(Value::as_f64)
            .map(|d| (d * 1000.0).round() as i64),
        seq,
    })
}

/// The counts of a `sessions` aggregate and the status each stands for.
const AGGREGATE_COUNTS: [(&str, SessionStatus); 4] = [
    ("exited", SessionStatus::Exited),
    ("errored", SessionStatus::Errored),
    ("abnormal", SessionStatus::Abnormal),
    ("crashed", SessionStatus::Crashed),
];

fn aggregate_count(agg: &Value, field: &str) -> u64 {
    agg.get(field)
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(100_000)
}

/// How many session updates [`sessions`] makes of a `sessions` item, without making them: a few
/// bytes of counts expand to many events, so callers check this against their limit first.
pub fn sessions_count(item: &Value) -> u64 {
    let aggregates = item.get("aggregates").and_then(Value::as_array);
    aggregates
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .flat_map(|agg| {
            AGGREGATE_COUNTS
                .iter()
                .map(|(f, _)| aggregate_count(agg, f))
        })
        .fold(0u64, u64::saturating_add)
}

/// A Sentry `sessions` item (request-mode aggregates): one closed session update per counted
/// session, with ids derived from the bucket so a resent item yields the same events.
pub fn sessions(item: &Value, sdk: &Sdk, envelope_key: &str) -> Result<Vec<SessionUpdate>, String> {
    let aggregates = item
        .get("aggregates")
        .and_then(Value::as_array)
        .ok_or("sessions item has no aggregates")?;
    // The release attributes once, not per expanded session.
    let base = session_common(item.get("attrs"), sdk, String::new(), 0)?;
    let mut out = Vec::new();
    for (bucket, agg) in aggregates.iter().enumerate() {
        let started_ms = agg
            .get("started")
            .and_then(sentry_ms)
            .ok_or("aggregate has no started")?;
        let did = did_of(agg.get("did"))?;
        for (field, status) in AGGREGATE_COUNTS {
            let count = aggregate_count(agg, field);
            for i in 0..count {
                let key = format!("sessions:{envelope_key}:{bucket}:{field}:{i}");
                let sid =
                    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()).to_string();
                let mut common = base.clone();
                common.event_id.clone_from(&sid);
                common.timestamp_ms = started_ms;
                common.device_id = did.clone();
                common.user_id = did.clone();
                common.session_id = Some(sid);
                out.push(SessionUpdate {
                    common,
                    init: true,
                    status,
                    errors: (status != SessionStatus::Exited) as i64,
                    started_ms,
                    duration_ms: None,
                    seq: 0,
                });
            }
        }
    }
    Ok(out)
}

/// A client report: (reason, category, quantity) of what the SDK dropped.
pub fn client_report(item: &Value) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for key in [
        "discarded_events",
        "rate_limited_events",
        "filtered_events",
        "filtered_sampling_events",
    ] {
        for d in item
            .get(key)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            out.push((
                s(d.get("reason")).unwrap_or_else(|| key.trim_end_matches("_events").into()),
                s(d.get("category")).unwrap_or_else(|| "unknown".into()),
                d.get("quantity").and_then(Value::as_u64).unwrap_or(1),
            ));
        }
    }
    out
}

/// Whether the event states consent: a `consent` tag or `contexts.consent.granted`.
pub fn consent(event: &Value) -> Option<bool> {
    let tags = tag_list(event.get("tags"));
    if let Some(t) = tag(&tags, &["consent"]) {
        return Some(matches!(t, "true" | "1" | "granted" | "yes"));
    }
    path(event, &["contexts", "consent", "granted"]).and_then(Value::as_bool)
}

/// The SDK of an envelope item or event (`sdk.name`, `sdk.version`).
pub fn sdk(event: &Value) -> Sdk {
    Sdk {
        name: s(path(event, &["sdk", "name"])).unwrap_or_else(|| "sentry.unknown".into()),
        version: s(path(event, &["sdk", "version"])).unwrap_or_default(),
    }
}

/// Sentry's event ids are 32 hex digits; trellis stores them as hyphenated UUIDs.
pub fn event_id(text: Option<&str>, fallback: &[u8]) -> String {
    text.and_then(|t| uuid::Uuid::parse_str(t).ok())
        .unwrap_or_else(|| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, fallback))
        .hyphenated()
        .to_string()
}
