//! What ingest does to every event before the bus: server time, clock-drift correction, client
//! IP policy and PII scrubbing.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;
use trellis_schemas::Event;

use crate::config::{IpPolicy, UserIds};

/// Sets `received_at`, and shifts event times by the device's clock error when it exceeds
/// `threshold_ms`: if the device said it sent the batch at `sent_at` and the server received it
/// at `received_at`, every time the device reported is off by their difference.
pub fn correct_clock(
    event: &mut Event,
    sent_at_ms: Option<i64>,
    received_at_ms: i64,
    threshold_ms: i64,
) {
    // A device clock off by more than this is not drift but a wrong `sent_at` (0, year 9999):
    // such a value corrects nothing.
    const IMPLAUSIBLE_DRIFT_MS: i64 = 30 * 24 * 3_600_000;
    let drift = sent_at_ms
        .map(|s| received_at_ms.saturating_sub(s))
        .filter(|d| d.abs() > threshold_ms && d.abs() <= IMPLAUSIBLE_DRIFT_MS)
        .unwrap_or(0);
    let common = event.common_mut();
    common.received_at_ms = received_at_ms;
    common.sent_at_ms = sent_at_ms;
    // An event without a time happened when it arrived.
    if common.timestamp_ms <= 0 {
        common.timestamp_ms = received_at_ms;
    }
    if drift == 0 {
        clamp_future(common, received_at_ms);
        return;
    }
    common.timestamp_ms = common.timestamp_ms.saturating_add(drift);
    match event {
        Event::Error(e) => e
            .breadcrumbs
            .iter_mut()
            .for_each(|b| b.timestamp_ms = b.timestamp_ms.saturating_add(drift)),
        Event::Transaction(t) => {
            let us = drift.saturating_mul(1000);
            t.start_us = t.start_us.saturating_add(us);
            t.end_us = t.end_us.saturating_add(us);
            for s in &mut t.spans {
                s.start_us = s.start_us.saturating_add(us);
                s.end_us = s.end_us.saturating_add(us);
            }
        }
        Event::Session(s) => s.started_ms = s.started_ms.saturating_add(drift),
        _ => {}
    }
    clamp_future(event.common_mut(), received_at_ms);
}

/// Events cannot happen after they arrive (a minute of grace for clocks).
fn clamp_future(common: &mut trellis_schemas::Common, received_at_ms: i64) {
    if common.timestamp_ms > received_at_ms.saturating_add(60_000) {
        common.timestamp_ms = received_at_ms;
    }
}

/// Applies the IP policy to one address; `None` drops it.
pub fn apply_ip_policy(ip: &str, policy: IpPolicy) -> Option<String> {
    match policy {
        IpPolicy::Drop => None,
        IpPolicy::Keep => Some(ip.to_string()),
        IpPolicy::Truncate => match ip.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Some(format!("{}.{}.{}.0", o[0], o[1], o[2]))
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Some(format!("{:x}:{:x}:{:x}::", s[0], s[1], s[2]))
            }
        },
    }
}

/// Keys under which payloads carry client IP addresses.
const IP_KEYS: [&str; 3] = ["$ip", "ip_address", "client_ip"];

/// Applies the IP policy to every IP-carrying key in a JSON value, at any depth.
pub fn scrub_ips(value: &mut Value, policy: IpPolicy) {
    match value {
        Value::Object(map) => {
            for key in IP_KEYS {
                if let Some(Value::String(ip)) = map.get(key) {
                    match apply_ip_policy(ip, policy) {
                        Some(kept) => {
                            map.insert(key.to_string(), Value::String(kept));
                        }
                        None => {
                            map.remove(key);
                        }
                    }
                }
            }
            map.values_mut().for_each(|v| scrub_ips(v, policy));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_ips(v, policy)),
        _ => {}
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b").expect("valid regex")
});
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:\d[ -]?){12,18}\d\b").expect("valid regex"));
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b").expect("valid regex")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[ -]?)?\(?\d{3}\)?[ -]\d{3}[ -]\d{4}\b").expect("valid regex")
});

/// An IPv4 address standing alone in text (not part of a longer dotted number).
static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^\d.])((?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})($|[^\d.])")
        .expect("valid regex")
});
/// The query string of a URL: tokens, emails and ids travel there.
static QUERY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#]*)\?[^\s#]+").expect("valid regex")
});
/// The user's name in a home-directory path.
static HOME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(/Users/|/home/|[A-Z]:[\\/](?:Users|Documents and Settings)[\\/])([^/\\]+)")
        .expect("valid regex")
});

fn luhn(digits: &str) -> bool {
    let digits: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Masks emails, card numbers (Luhn-valid), IBANs, phone numbers, IPv4 addresses and URL query
/// strings in free text. Each pattern runs only on text that has the characters it needs (an
/// `@`, a digit, a `.` and a digit, `://` and `?`), and text nothing matched is not copied.
pub fn scrub_text(text: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    fn apply<'a, R: regex::Replacer>(text: Cow<'a, str>, re: &Regex, with: R) -> Cow<'a, str> {
        match re.replace_all(&text, with) {
            Cow::Borrowed(_) => text,
            Cow::Owned(replaced) => Cow::Owned(replaced),
        }
    }
    let bytes = text.as_bytes();
    let digit = bytes.iter().any(u8::is_ascii_digit);
    let at = bytes.contains(&b'@');
    let url = bytes.contains(&b'?') && text.contains("://");
    if !(digit || at || url) {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    if url {
        out = apply(out, &QUERY, "$1?[filtered]");
    }
    if at {
        out = apply(out, &EMAIL, "[email]");
    }
    if digit {
        if bytes.contains(&b'.') {
            out = apply(out, &IPV4, "${1}[ip]$3");
        }
        out = apply(out, &CARD, |c: &regex::Captures| {
            if luhn(&c[0]) {
                "[card]".to_string()
            } else {
                c[0].to_string()
            }
        });
        out = apply(out, &IBAN, "[iban]");
        out = apply(out, &PHONE, "[phone]");
    }
    out
}

/// Masks PII in every string of a JSON value.
pub fn scrub_json(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = scrub_text(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_json),
        // A client IP key follows the project's IP policy ([`scrub_ips`]), not the text rules.
        Value::Object(map) => map
            .iter_mut()
            .filter(|(k, _)| !IP_KEYS.contains(&k.as_str()))
            .for_each(|(_, v)| scrub_json(v)),
        _ => {}
    }
}

fn scrub_opt(text: &mut Option<String>) {
    if let Some(t) = text {
        scrub_string(t);
    }
}

fn scrub_string(text: &mut String) {
    if let std::borrow::Cow::Owned(clean) = scrub_text(text) {
        *text = clean;
    }
}

/// Whether a JSON text can hold anything to scrub: an IP key the policy changes, an `@`, or
/// enough digits for a card, IBAN or phone number. Most analytics properties hold none, and are
/// then left as they are without being parsed.
fn may_need_scrubbing(text: &str, pii: bool, ip: IpPolicy) -> bool {
    // `ip` covers `$ip`, `ip_address` and `client_ip`; a `\u` escape may spell anything.
    if text.contains("\\u") || (ip != IpPolicy::Keep && text.contains("ip")) {
        return true;
    }
    pii && (text.contains('@') || text.bytes().filter(u8::is_ascii_digit).count() >= 9)
}

/// Masks PII and applies the IP policy to a JSON-text field (or plain text).
pub fn scrub_json_text(text: &mut String, pii: bool, ip: IpPolicy) {
    if !may_need_scrubbing(text, pii, ip) {
        return;
    }
    if let Ok(mut value) = serde_json::from_str::<Value>(text) {
        scrub_ips(&mut value, ip);
        if pii {
            scrub_json(&mut value);
        }
        *text = value.to_string();
    } else if pii {
        scrub_string(text);
    }
}

/// Replaces the user's name in a home-directory path (`/Users/jane/...` → `/Users/[user]/...`).
fn scrub_path(path: &mut Option<String>) {
    if let Some(p) = path
        && let std::borrow::Cow::Owned(clean) = HOME.replace_all(p, "${1}[user]")
    {
        *p = clean;
    }
}

/// A user or device id that is an email (or, under [`UserIds::Hash`], any user id) replaced by
/// a pseudonym: `sha256:` and 32 hex digits of the project and the lowercased value. The same
/// person keeps the same pseudonym, so users and sessions still count right.
pub fn pseudonymize_ids(common: &mut trellis_schemas::Common, policy: UserIds) {
    if policy == UserIds::Keep {
        return;
    }
    let project = common.project.clone();
    let pseudonym = |value: &str| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{project}:{}", value.to_lowercase()));
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    let is_email = |v: &str| EMAIL.is_match(v);
    if let Some(user) = common.user_id.as_mut()
        && (policy == UserIds::Hash || is_email(user))
        && !user.starts_with("sha256:")
    {
        *user = pseudonym(user);
    }
    if let Some(device) = common.device_id.as_mut()
        && is_email(device)
    {
        *device = pseudonym(device);
    }
}

/// Scrubs the free-text parts of an event: messages, exception values, breadcrumbs, properties,
/// tags, contexts, transaction and span names, and home-directory user names in frame paths.
pub fn scrub_event(event: &mut Event, pii: bool, ip: IpPolicy) {
    match event {
        Event::Analytics(a) => scrub_json_text(&mut a.properties, pii, ip),
        Event::Error(e) => {
            scrub_json_text(&mut e.contexts, pii, ip);
            for b in &mut e.breadcrumbs {
                scrub_json_text(&mut b.data, pii, ip);
            }
            if pii {
                scrub_opt(&mut e.message);
                for x in &mut e.exceptions {
                    scrub_opt(&mut x.value);
                    for f in &mut x.frames {
                        scrub_path(&mut f.abs_path);
                        scrub_path(&mut f.filename);
                    }
                }
                for b in &mut e.breadcrumbs {
                    scrub_opt(&mut b.message);
                }
                for t in &mut e.tags {
                    scrub_string(&mut t.value);
                }
            }
        }
        Event::Performance(p) if pii => p
            .attributes
            .iter_mut()
            .for_each(|t| scrub_string(&mut t.value)),
        Event::Transaction(t) if pii => {
            scrub_string(&mut t.name);
            t.tags.iter_mut().for_each(|t| scrub_string(&mut t.value));
            t.spans
                .iter_mut()
                .for_each(|s| scrub_opt(&mut s.description));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_pii_in_text() {
        assert_eq!(
            scrub_text("mail jane.doe@example.com now"),
            "mail [email] now"
        );
        assert_eq!(
            scrub_text("card 4111 1111 1111 1111 declined"),
            "card [card] declined"
        );
        assert_eq!(
            scrub_text("order 1234567890123 shipped"),
            "order 1234567890123 shipped",
            "not Luhn-valid"
        );
        assert_eq!(
            scrub_text("iban DE89 3704 0044 0532 0130 00"),
            "iban [iban]"
        );
        assert_eq!(scrub_text("call +1 415-555-2671"), "call [phone]");
        assert_eq!(
            scrub_text("plant 42 watered at 10:30"),
            "plant 42 watered at 10:30"
        );
    }

    #[test]
    fn masks_ips_query_strings_and_home_directories() {
        assert_eq!(
            scrub_text("connect to 203.0.113.9 failed"),
            "connect to [ip] failed"
        );
        assert_eq!(
            scrub_text("build 1.2.3.4.5 and 2.14.0 are versions"),
            "build 1.2.3.4.5 and 2.14.0 are versions",
            "dotted numbers longer or shorter than an address stay"
        );
        assert_eq!(
            scrub_text("GET https://api.example.com/v1/plants?token=abc&user=7 took 80 ms"),
            "GET https://api.example.com/v1/plants?[filtered] took 80 ms"
        );
        let mut path = Some("/Users/jane/dev/app/index.js".to_string());
        scrub_path(&mut path);
        assert_eq!(path.as_deref(), Some("/Users/[user]/dev/app/index.js"));
        let mut path = Some(r"C:\Users\jane\app\main.js".to_string());
        scrub_path(&mut path);
        assert_eq!(path.as_deref(), Some(r"C:\Users\[user]\app\main.js"));
        let mut path = Some("app:///index.android.bundle".to_string());
        scrub_path(&mut path);
        assert_eq!(path.as_deref(), Some("app:///index.android.bundle"));
    }

    #[test]
    fn email_ids_become_stable_pseudonyms() {
        let mut common = trellis_schemas::Common {
            project: "plants".into(),
            user_id: Some("Jane.Doe@example.com".into()),
            device_id: Some("jane.doe@example.com".into()),
            ..Default::default()
        };
        pseudonymize_ids(&mut common, UserIds::HashEmails);
        let user = common.user_id.clone().unwrap();
        assert!(user.starts_with("sha256:") && user.len() == 39, "{user}");
        assert_eq!(
            common.device_id.as_ref(),
            Some(&user),
            "case does not matter"
        );
        let mut plain = trellis_schemas::Common {
            project: "plants".into(),
            user_id: Some("u-42".into()),
            ..Default::default()
        };
        pseudonymize_ids(&mut plain, UserIds::HashEmails);
        assert_eq!(plain.user_id.as_deref(), Some("u-42"));
        pseudonymize_ids(&mut plain, UserIds::Hash);
        let hashed = plain.user_id.clone().unwrap();
        assert!(hashed.starts_with("sha256:"));
        pseudonymize_ids(&mut plain, UserIds::Hash);
        assert_eq!(plain.user_id.unwrap(), hashed, "hashed once");
        let mut kept = trellis_schemas::Common {
            user_id: Some("jane@example.com".into()),
            ..Default::default()
        };
        pseudonymize_ids(&mut kept, UserIds::Keep);
        assert_eq!(kept.user_id.as_deref(), Some("jane@example.com"));
    }

    #[test]
    fn json_text_without_pii_is_left_untouched() {
        let mut text = r#"{ "plant_id": "p-42",  "position": 3 }"#.to_string();
        scrub_json_text(&mut text, true, IpPolicy::Drop);
        assert_eq!(
            text, r#"{ "plant_id": "p-42",  "position": 3 }"#,
            "not even re-serialized"
        );
        let mut text = r#"{"$ip": "203.0.113.9", "n": 1}"#.to_string();
        scrub_json_text(&mut text, true, IpPolicy::Drop);
        assert_eq!(text, r#"{"n":1}"#);
        let mut text = r#"{"user": {"ip_address": "10.1.2.3"}}"#.to_string();
        scrub_json_text(&mut text, true, IpPolicy::Drop);
        assert_eq!(text, r#"{"user":{}}"#);
        let mut text = r#"{"$\u0069p": "10.1.2.3"}"#.to_string();
        scrub_json_text(&mut text, true, IpPolicy::Drop);
        assert_eq!(text, "{}");
        let mut text = r#"{"phone": "+1 415-555-2671"}"#.to_string();
        scrub_json_text(&mut text, true, IpPolicy::Keep);
        assert_eq!(text, r#"{"phone":"[phone]"}"#);
    }

    #[test]
    fn applies_the_ip_policy_at_any_depth() {
        let mut v =
            json!({"$ip": "203.0.113.77", "user": {"ip_address": "2001:db8:85a3::8a2e:370:7334"}});
        scrub_ips(&mut v, IpPolicy::Truncate);
        assert_eq!(
            v,
            json!({"$ip": "203.0.113.0", "user": {"ip_address": "2001:db8:85a3::"}})
        );
        scrub_ips(&mut v, IpPolicy::Drop);
        assert_eq!(v, json!({"user": {}}));
    }

    #[test]
    fn corrects_clock_drift_beyond_the_threshold() {
        let mut e = trellis_schemas::sample::event("p", 1, 0);
        let t = e.common().timestamp_ms;
        correct_clock(&mut e, Some(t + 1_000), t + 3_600_000, 60_000);
        assert_eq!(e.common().timestamp_ms, t + 3_600_000 - 1_000);
        let mut e = trellis_schemas::sample::event("p", 1, 0);
        correct_clock(&mut e, Some(t + 1_000), t + 2_000, 60_000);
        assert_eq!(e.common().timestamp_ms, t, "small drift is left alone");
        assert_eq!(e.common().received_at_ms, t + 2_000);
        let mut e = trellis_schemas::sample::event("p", 1, 0);
        correct_clock(&mut e, Some(0), t + 2_000, 60_000);
        assert_eq!(
            e.common().timestamp_ms,
            t,
            "sent_at 0 is not a clock: no correction"
        );
        let mut e = trellis_schemas::sample::event("p", 1, 0);
        correct_clock(&mut e, None, t - 3_600_000, 60_000);
        assert_eq!(
            e.common().timestamp_ms,
            t - 3_600_000,
            "a future event is clamped to its arrival"
        );
    }
}
