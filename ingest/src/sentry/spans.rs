//! Sentry `span` items: span streaming (`traceLifecycle: "stream"` in the JavaScript SDKs), which
//! sends spans as they end instead of one transaction per segment.
//!
//! Two shapes arrive: the v2 container (`content_type:
//! application/vnd.sentry.items.span.v2+json`, `{version: 2, items: [span, ...]}`, each span with
//! `name`, `end_timestamp`, `is_segment` and typed `attributes`), and a single span in the v1
//! shape (`op`, `description`, `timestamp`, `data`, `segment_id`). Both are read into the
//! transaction shape the rest of the Sentry path already converts: the spans of one item are
//! grouped by segment (`sentry.segment.id`, `segment_id`, or the span itself when it is a
//! segment), and each group becomes one transaction named after its segment, with the segment's
//! release, environment, user and SDK, its other spans as children, and its HTTP and db spans
//! as performance samples ([`super::perf`]). A group whose segment span comes in another item
//! is still stored, as a transaction of the spans it has (start and end theirs, name from
//! `sentry.segment.name`). Its id derives from the trace, the segment and its span ids, so a
//! resent item yields the same transaction.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Mobile vitals a segment span may carry as numeric attributes, with the unit each is in when the
/// attribute names none. They become the transaction's measurements.
const MEASUREMENTS: &[(&str, &str)] = &[
    ("app_start_cold", "millisecond"),
    ("app_start_warm", "millisecond"),
    ("time_to_initial_display", "millisecond"),
    ("time_to_full_display", "millisecond"),
    ("frames_total", "none"),
    ("frames_slow", "none"),
    ("frames_frozen", "none"),
    ("stall_count", "none"),
    ("stall_total_time", "millisecond"),
    ("stall_longest_time", "millisecond"),
];

/// One span read into the v1 shape, with what grouping needs.
struct Span {
    segment_id: Option<String>,
    is_segment: bool,
    /// The v1-shaped span: `span_id`, `parent_span_id`, `op`, `description`, `status`,
    /// `start_timestamp`, `timestamp`, `data`.
    v1: Map<String, Value>,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A v2 span's attributes as plain values: `{key: {value, type}}` → `{key: value}`.
fn attributes(span: &Value) -> Map<String, Value> {
    span.get("attributes")
        .and_then(Value::as_object)
        .map(|attrs| {
            attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.get("value").cloned().unwrap_or(v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn v2_span(span: &Value) -> Result<Span, String> {
    let data = attributes(span);
    let span_id = text(span.get("span_id")).ok_or("a span has no span_id")?;
    let mut v1 = Map::new();
    v1.insert("span_id".into(), span_id.into());
    for (to, from) in [
        ("parent_span_id", "parent_span_id"),
        ("trace_id", "trace_id"),
        ("description", "name"),
        ("status", "status"),
        ("start_timestamp", "start_timestamp"),
        ("timestamp", "end_timestamp"),
    ] {
        if let Some(v) = span.get(from).filter(|v| !v.is_null()) {
            v1.insert(to.into(), v.clone());
        }
    }
    if let Some(op) = data.get("sentry.op") {
        v1.insert("op".into(), op.clone());
    }
    let segment_id = text(data.get("sentry.segment.id"));
    v1.insert("data".into(), Value::Object(data));
    Ok(Span {
        segment_id,
        is_segment: span.get("is_segment").and_then(Value::as_bool) == Some(true),
        v1,
    })
}

fn v1_span(span: &Value) -> Result<Span, String> {
    let v1 = span.as_object().ok_or("a span is not an object")?.clone();
    if text(v1.get("span_id")).is_none() {
        return Err("a span has no span_id".into());
    }
    Ok(Span {
        segment_id: text(v1.get("segment_id")),
        is_segment: v1.get("is_segment").and_then(Value::as_bool) == Some(true),
        v1,
    })
}

/// Reads a `span` item's payload into transaction events (one per segment), in the shape
/// [`super::convert::transaction`] takes.
pub fn transactions(payload: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("span item is not JSON: {e}"))?;
    let spans = match value.get("items") {
        Some(Value::Array(items)) => items.iter().map(v2_span).collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("span item's items is not a list".into()),
        None => vec![v1_span(&value)?],
    };
    let mut groups: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for span in spans {
        let own = text(span.v1.get("span_id")).unwrap_or_default();
        let key = match (&span.segment_id, span.is_segment) {
            (_, true) => own,
            (Some(segment), false) => segment.clone(),
            (None, false) => text(span.v1.get("trace_id")).unwrap_or(own),
        };
        groups.entry(key).or_default().push(span);
    }
    Ok(groups
        .into_iter()
        .map(|(segment_id, spans)| transaction(segment_id, spans))
        .collect())
}

fn transaction(segment_id: String, spans: Vec<Span>) -> Value {
    let (segment, children): (Vec<Span>, Vec<Span>) = spans
        .into_iter()
        .partition(|s| s.is_segment && text(s.v1.get("span_id")).as_ref() == Some(&segment_id));
    let segment = segment.into_iter().next().map(|s| s.v1);
    let children: Vec<Map<String, Value>> = children.into_iter().map(|s| s.v1).collect();
    let all = || segment.iter().chain(children.iter());
    let data = |key: &str| all().find_map(|s| s.get("data").and_then(|d| d.get(key)).cloned());
    let times = |key: &str| {
        all()
            .filter_map(|s| s.get(key).and_then(Value::as_f64))
            .collect::<Vec<_>>()
    };
    let start = match segment.as_ref().and_then(|s| s.get("start_timestamp")) {
        Some(v) => v.clone(),
        None => json!(
            times("start_timestamp")
                .into_iter()
                .fold(f64::INFINITY, f64::min)
        ),
    };
    let end = match segment.as_ref().and_then(|s| s.get("timestamp")) {
        Some(v) => v.clone(),
        None => json!(
            times("timestamp")
                .into_iter()
                .fold(f64::NEG_INFINITY, f64::max)
        ),
    };
    let trace_id = all().find_map(|s| text(s.get("trace_id")));
    let segment_data = segment
        .as_ref()
        .and_then(|s| s.get("data"))
        .and_then(Value::as_object);
    let name = segment
        .as_ref()
        .and_then(|s| text(s.get("description")))
        .or_else(|| text(data("sentry.segment.name").as_ref()));
    let mut measurements = Map::new();
    let mut tags = Map::new();
    for (key, value) in segment_data.into_iter().flatten() {
        if let Some((_, unit)) = MEASUREMENTS.iter().find(|(m, _)| m == key)
            && let Some(v) = value.as_f64()
        {
            measurements.insert(key.clone(), json!({"value": v, "unit": unit}));
        } else if let Value::String(s) = value
            && !key.starts_with("sentry.")
            && !key.starts_with("user.")
        {
            tags.insert(key.clone(), Value::String(s.clone()));
        }
    }
    let mut ids: Vec<String> = all().filter_map(|s| text(s.get("span_id"))).collect();
    ids.sort();
    let identity = format!(
        "{}/{segment_id}/{}",
        trace_id.as_deref().unwrap_or_default(),
        ids.join(",")
    );
    let event_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, identity.as_bytes());
    let mut trace = json!({"span_id": segment_id});
    if let Some(t) = &trace_id {
        trace["trace_id"] = json!(t);
    }
    for (to, from) in [("op", "op"), ("status", "status")] {
        if let Some(v) = segment.as_ref().and_then(|s| s.get(from)) {
            trace[to] = v.clone();
        }
    }
    let mut event = json!({
        "type": "transaction",
        "event_id": event_id.simple().to_string(),
        "start_timestamp": start,
        "timestamp": end,
        "contexts": {"trace": trace},
        "spans": children,
        "measurements": measurements,
        "tags": tags,
    });
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            event[key] = v;
        }
    };
    set("transaction", name.map(Value::String));
    set("release", data("sentry.release"));
    set("environment", data("sentry.environment"));
    set("dist", data("sentry.dist"));
    set("user", data("user.id").map(|id| json!({"id": id})));
    set(
        "sdk",
        data("sentry.sdk.name").map(|name| {
            json!({"name": name, "version": data("sentry.sdk.version").unwrap_or(json!(""))})
        }),
    );
    let os = json!({"name": data("os.name"), "version": data("os.version")});
    let device = json!({"model": data("device.model")});
    event["contexts"]["os"] = os;
    event["contexts"]["device"] = device;
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_container_becomes_one_transaction_per_segment() {
        let payload = json!({"version": 2, "items": [
            {"name": "GET /reminders", "span_id": "c1", "trace_id": "t1", "parent_span_id": "s1",
             "start_timestamp": 10.0, "end_timestamp": 10.5, "is_segment": false, "status": "ok",
             "attributes": {"sentry.op": {"value": "http.client", "type": "string"},
                            "sentry.segment.id": {"value": "s1", "type": "string"}}},
            {"name": "CalendarScreen", "span_id": "s1", "trace_id": "t1", "start_timestamp": 9.0,
             "end_timestamp": 11.0, "is_segment": true, "status": "ok",
             "attributes": {"sentry.op": {"value": "ui.load", "type": "string"},
                            "sentry.release": {"value": "plants@2.14.0+1402", "type": "string"},
                            "app_start_cold": {"value": 812, "type": "integer"},
                            "expo-update-id": {"value": "u-42", "type": "string"}}},
            {"name": "orphan", "span_id": "c9", "trace_id": "t2", "start_timestamp": 20.0,
             "end_timestamp": 21.0, "is_segment": false,
             "attributes": {"sentry.segment.id": {"value": "s9", "type": "string"},
                            "sentry.segment.name": {"value": "Settings", "type": "string"}}}
        ]});
        let out = transactions(payload.to_string().as_bytes()).unwrap();
        assert_eq!(out.len(), 2);
        let screen = &out[0];
        assert_eq!(screen["transaction"], "CalendarScreen");
        assert_eq!(screen["contexts"]["trace"]["op"], "ui.load");
        assert_eq!(screen["release"], "plants@2.14.0+1402");
        assert_eq!(screen["spans"].as_array().unwrap().len(), 1);
        assert_eq!(screen["spans"][0]["op"], "http.client");
        assert_eq!(screen["measurements"]["app_start_cold"]["value"], 812.0);
        assert_eq!(screen["tags"]["expo-update-id"], "u-42");
        // The segment of the orphan came in another item: its spans are kept, named after it.
        let orphan = &out[1];
        assert_eq!(orphan["transaction"], "Settings");
        assert_eq!(orphan["contexts"]["trace"]["span_id"], "s9");
        assert_eq!(
            (
                orphan["start_timestamp"].as_f64(),
                orphan["timestamp"].as_f64()
            ),
            (Some(20.0), Some(21.0))
        );
        // The same item read again is the same transactions.
        assert_eq!(transactions(payload.to_string().as_bytes()).unwrap(), out);
    }

    #[test]
    fn what_is_not_a_span_is_refused_with_the_reason() {
        for (payload, reason) in [
            (&b"{"[..], "not JSON"),
            (br#"{"items": 3}"#, "not a list"),
            (br#"{"items": [{"name": "x"}]}"#, "no span_id"),
            (br#"[1]"#, "not an object"),
        ] {
            let e = transactions(payload).unwrap_err();
            assert!(e.contains(reason), "{e}");
        }
    }
}
