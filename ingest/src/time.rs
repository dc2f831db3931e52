//! Timestamps as the SDKs send them.

use serde_json::Value;

/// RFC 3339 text (`2026-11-25T16:26:16.103279Z`, `...+00:00`) as ms since the epoch.
pub fn rfc3339_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Sentry's timestamps: RFC 3339 text or float seconds since the epoch.
pub fn sentry_ms(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => rfc3339_ms(s),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| (f * 1000.0).round() as i64),
        _ => None,
    }
}

/// Sentry's span timestamps in µs.
pub fn sentry_us(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_micros()),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| (f * 1_000_000.0).round() as i64),
        _ => None,
    }
}

/// The native API's and PostHog's timestamps: RFC 3339 text or integer ms since the epoch.
pub fn native_ms(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => rfc3339_ms(s),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_the_sdks_send() {
        assert_eq!(
            sentry_ms(&json!("2026-11-25T16:26:16.103279Z")),
            Some(1_795_623_976_103)
        );
        assert_eq!(
            sentry_ms(&json!(1795623997.0790708)),
            Some(1_795_623_997_079)
        );
        assert_eq!(
            native_ms(&json!("2026-11-25T16:27:49.934524+00:00")),
            Some(1_795_624_069_934)
        );
        assert_eq!(
            native_ms(&json!(1_795_624_069_934i64)),
            Some(1_795_624_069_934)
        );
        assert_eq!(native_ms(&json!("yesterday")), None);
        assert_eq!(sentry_ms(&json!(f64::MAX)), Some(i64::MAX));
    }
}
