//! Performance samples from a Sentry transaction: what `@sentry/react-native` and the other SDKs
//! measure arrives as transaction measurements and spans, and release health and the
//! performance detector read performance samples.
//!
//! - Every measurement becomes a sample of the same name, value and unit (`app_start_cold`,
//!   `app_start_warm`, `time_to_initial_display`, `time_to_full_display`, `frames_slow`,
//!   `frames_frozen`, `frames_total`, `stall_*`, or any other). App starts have no screen; the
//!   others are measured on the transaction's screen.
//! - Every `http.client` span becomes an `http_request` sample (its duration in milliseconds)
//!   with its method, URL template (query, fragment and id-like path segments removed) and status
//!   code; every `db*` span a `db_query` sample with its system and operation.
//!
//! The transaction itself is stored as sent; a sample's id derives from the transaction's and
//! what it measures, so a resent transaction yields the same samples, deduplicated downstream.

use serde_json::Value;
use trellis_schemas::model::*;

use crate::trim::{MAX_MEASUREMENTS, MAX_SPANS};

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn attribute(key: &str, value: Option<String>) -> Option<Tag> {
    Some(Tag {
        key: key.into(),
        value: value?,
    })
}

/// The performance samples `transaction` (converted from `event`) carries, at most the
/// measurements and spans trimming keeps of it.
pub fn samples(event: &Value, transaction: &Transaction) -> Vec<PerformanceSample> {
    let id = |what: &str| {
        let name = format!("{}/{what}", transaction.common.event_id);
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
    };
    let tag = |names: &[&str]| {
        names.iter().find_map(|n| {
            transaction
                .tags
                .iter()
                .find(|t| t.key == *n)
                .map(|t| t.value.clone())
        })
    };
    let screen = tag(&["screen", "app.screen"]).unwrap_or_else(|| transaction.name.clone());
    let transaction_op = attribute("transaction_op", transaction.op.clone());
    let mut out = Vec::new();
    for m in transaction.measurements.iter().take(MAX_MEASUREMENTS) {
        let mut common = transaction.common.clone();
        common.event_id = id(&format!("measurement/{}", m.name));
        out.push(PerformanceSample {
            common,
            metric: m.name.clone(),
            value: m.value,
            unit: m.unit.clone().unwrap_or_else(|| "none".into()),
            screen: (!m.name.starts_with("app_start")).then(|| screen.clone()),
            attributes: transaction_op.iter().cloned().collect(),
        });
    }
    let spans = event.get("spans").and_then(Value::as_array);
    for span in spans.into_iter().flatten().take(MAX_SPANS) {
        let Some(sample) = span_sample(span) else {
            continue;
        };
        let mut common = transaction.common.clone();
        common.event_id = id(&format!("span/{}", sample.span_id));
        common.timestamp_ms = sample.end_us.div_euclid(1000);
        let mut attributes = sample.attributes;
        attributes.extend(transaction_op.iter().cloned());
        out.push(PerformanceSample {
            common,
            metric: sample.metric.into(),
            value: (sample.end_us - sample.start_us) as f64 / 1000.0,
            unit: "millisecond".into(),
            screen: Some(screen.clone()),
            attributes,
        });
    }
    out
}

struct SpanSample {
    metric: &'static str,
    span_id: String,
    start_us: i64,
    end_us: i64,
    attributes: Vec<Tag>,
}

fn span_sample(span: &Value) -> Option<SpanSample> {
    let op = span.get("op").and_then(Value::as_str)?;
    let data = span.get("data");
    let datum = |keys: &[&str]| keys.iter().find_map(|k| text(data.and_then(|d| d.get(*k))));
    let description = span.get("description").and_then(Value::as_str);
    let (metric, attributes) = if op == "http.client" {
        // The description is `METHOD URL`; the data names them where the SDK records them.
        let (described_method, described_url) = match description.map(|d| d.split_once(' ')) {
            Some(Some((m, u))) if m.bytes().all(|b| b.is_ascii_uppercase()) => (Some(m), Some(u)),
            _ => (None, description),
        };
        let method =
            datum(&["http.request.method", "http.method"]).or(described_method.map(str::to_string));
        let url = datum(&["url", "http.url"]).or(described_url.map(str::to_string));
        let status = datum(&["http.response.status_code", "http.status_code"]);
        (
            "http_request",
            [
                attribute("method", method),
                attribute("url", url.as_deref().map(url_template)),
                attribute("status_code", status),
            ],
        )
    } else if op == "db" || op.starts_with("db.") {
        let operation = datum(&["db.operation", "db.operation.name"]).or_else(|| {
            let word = description?.split_whitespace().next()?;
            Some(word.to_ascii_uppercase())
        });
        (
            "db_query",
            [
                attribute("system", datum(&["db.system", "db.system.name"])),
                attribute("operation", operation),
                attribute("op", Some(op.into())),
            ],
        )
    } else {
        return None;
    };
    let start_us = span
        .get("start_timestamp")
        .and_then(crate::time::sentry_us)?;
    let end_us = span.get("timestamp").and_then(crate::time::sentry_us)?;
    Some(SpanSample {
        metric,
        span_id: text(span.get("span_id")).unwrap_or_else(|| format!("{start_us}-{end_us}")),
        start_us,
        end_us: end_us.max(start_us),
        attributes: attributes.into_iter().flatten().collect(),
    })
}

/// A URL as a template: no query or fragment, and each path segment that names one thing (a
/// number, a UUID, a long hex or mixed token) replaced by `{id}`, so the requests of one endpoint
/// share a template: `https://api.example.com/plants/42?x=1` → `https://api.example.com/plants/{id}`.
pub fn url_template(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (origin, path) = match url.find("://") {
        Some(at) => {
            let rest = &url[at + 3..];
            let end = rest.find('/').map_or(url.len(), |p| at + 3 + p);
            url.split_at(end)
        }
        None => ("", url),
    };
    let path: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if names_one_thing(segment) {
                "{id}"
            } else {
                segment
            }
        })
        .collect();
    format!("{origin}{}", path.join("/"))
}

fn names_one_thing(segment: &str) -> bool {
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    if segment.is_empty() || digits == 0 {
        return false;
    }
    let hex_or_dash = segment.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    digits == segment.len()
        || uuid::Uuid::parse_str(segment).is_ok()
        || (hex_or_dash && segment.len() >= 8)
        || (segment.len() >= 16
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_templates_keep_the_endpoint_and_drop_what_names_one_thing() {
        for (url, template) in [
            (
                "https://api.example.com/plants/42?x=1#top",
                "https://api.example.com/plants/{id}",
            ),
            (
                "/users/7d3e9a10-0000-4000-8000-000000000001/posts",
                "/users/{id}/posts",
            ),
            ("/blobs/9f86d081884c7d65", "/blobs/{id}"),
            ("/s/Ab3dEf9hIj2kLm4nOp", "/s/{id}"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("/v2/plants/search", "/v2/plants/search"),
            ("/api/cafe", "/api/cafe"),
        ] {
            assert_eq!(url_template(url), template, "{url}");
        }
    }
}
