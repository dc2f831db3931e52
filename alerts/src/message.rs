//! What each destination receives for an alert version: the signed webhook's JSON body and its
//! signature, and the Slack Block Kit message.

use std::time::{Duration, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use trellis_schemas::records::Alert;

/// The header carrying the signature: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Trellis-Signature";
/// The header carrying the signing time, in seconds since the epoch.
pub const TIMESTAMP_HEADER: &str = "X-Trellis-Timestamp";
/// The header repeating the body's `id`, the idempotency key.
pub const DELIVERY_HEADER: &str = "X-Trellis-Delivery";

fn rfc3339(ms: i64) -> String {
    let time = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_millis(time).to_string()
}

/// The signed webhook's body for `alert`, decided (written to the outbox) at `detected_at_ms` on
/// the wall clock. The same version always gives the same body.
pub fn webhook_body(alert: &Alert, detected_at_ms: i64) -> Value {
    let r = &alert.release;
    json!({
        "type": alert.event,
        "id": alert.delivery_id,
        "alert_id": alert.alert_id,
        "project": alert.project,
        "rule": alert.rule,
        "kind": alert.kind,
        "severity": alert.severity,
        "state": alert.state,
        "release": serde_json::to_value(r).unwrap_or_default(),
        "issue_id": alert.issue_id,
        "screen": alert.screen,
        "metric": alert.metric,
        "baseline": {
            "label": alert.baseline,
            "value": alert.baseline_value,
            "count": alert.baseline_count,
        },
        "candidate": {
            "value": alert.candidate_value,
            "count": alert.candidate_count,
        },
        "statistic": alert.statistic,
        "threshold": alert.threshold,
        "window_end": rfc3339(alert.window_end_ms),
        "detected_at": rfc3339(detected_at_ms),
        "detection_id": alert.detection_id,
        "summary": alert.summary,
    })
}

/// `sha256=<hex>` of HMAC-SHA256 over `"<timestamp>.<body>"` with `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

/// The candidate and baseline of an alert, for people: rates as percentages of sessions, other
/// metrics as they are.
fn evidence(alert: &Alert) -> (String, String) {
    if alert.candidate_count == 0 && alert.baseline_count == 0 {
        // A rollout halted or resumed by hand before any finding on it.
        return ("no finding".into(), "no finding".into());
    }
    let rate = alert.metric.ends_with("_rate");
    let value = |v: f64| if rate { percent(v) } else { format!("{v:.1}") };
    let unit = if rate {
        if alert.metric == "crashed_user_rate" || alert.metric == "affected_user_rate" {
            "users"
        } else {
            "sessions"
        }
    } else if alert.issue_id.is_some() {
        "events"
    } else {
        "samples"
    };
    (
        format!(
            "{} of {} {unit}",
            value(alert.candidate_value),
            alert.candidate_count
        ),
        format!(
            "{} of {} {unit} ({})",
            value(alert.baseline_value),
            alert.baseline_count,
            alert.baseline
        ),
    )
}

/// The headline of an alert version.
fn headline(alert: &Alert) -> String {
    let what = alert.kind.replace('_', " ");
    let metric = alert.metric.replace('_', " ");
    match alert.event.as_str() {
        "rollout.halt" if metric.is_empty() => {
            format!(":octagonal_sign: Rollout halted: {}", alert.subject)
        }
        "rollout.halt" => format!(
            ":octagonal_sign: Rollout halted: {} ({metric})",
            alert.subject
        ),
        "rollout.resume" => format!(":arrow_forward: Rollout resumed: {}", alert.subject),
        "alert.resolved" => format!(":white_check_mark: Resolved: {what} in {}", alert.subject),
        _ => format!(
            ":rotating_light: {}: {what} in {} ({metric})",
            if alert.severity == "critical" {
                "Critical"
            } else {
                "Warning"
            },
            alert.subject
        ),
    }
}

/// An alert version's headline without Slack's emoji, for push notifications and digests.
pub fn title(alert: &Alert) -> String {
    let text = headline(alert);
    // `:emoji: Rest` becomes `Rest`.
    text.strip_prefix(':')
        .and_then(|t| t.split_once(": "))
        .map_or(text.clone(), |(_, rest)| rest.to_string())
}

/// The Slack message of the notifications held during quiet hours.
pub fn slack_digest(alerts: &[Alert]) -> Value {
    let headline = format!(":bell: {} alerts during quiet hours", alerts.len());
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&headline, 150)}}),
    ];
    for alert in alerts.iter().take(20) {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&format!("*{}*\n{}", title(alert), alert.summary), 3000)},
        }));
    }
    if alerts.len() > 20 {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("and {} more", alerts.len() - 20)}],
        }));
    }
    json!({"text": headline, "blocks": blocks})
}

/// The signed webhook's body for the notifications held during quiet hours: `type`
/// `alert.digest`, the digest's `id`, and each held version's body.
pub fn webhook_digest(id: &str, alerts: &[Alert]) -> Value {
    json!({
        "type": "alert.digest",
        "id": id,
        "alerts": alerts.iter().map(|a| webhook_body(a, a.window_end_ms)).collect::<Vec<_>>(),
    })
}

/// The `trellis query` that shows an alert's history.
pub fn query_command(alert: &Alert) -> String {
    format!(
        "trellis query \"SELECT version, state, event, metric, candidate_value, baseline_value \
         FROM alerts WHERE alert_id = '{}' ORDER BY version\"",
        alert.alert_id
    )
}

/// The Slack incoming-webhook message for `alert`: Block Kit with a plain-text fallback. A
/// follow-up (`resolved`, `halted`) is a new message in the same channel naming the same alert.
pub fn slack_message(alert: &Alert, link_base: &str) -> Value {
    let headline = headline(alert);
    let (candidate, baseline) = evidence(alert);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&headline, 150)}}),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&alert.summary, 3000)},
            "fields": [
                {"type": "mrkdwn", "text": format!("*Candidate:*\n{candidate}")},
                {"type": "mrkdwn", "text": format!("*Baseline:*\n{baseline}")},
                {"type": "mrkdwn", "text": format!("*Release:*\n{}", release_line(alert))},
                {"type": "mrkdwn", "text": format!("*Project:*\n{}", alert.project)},
            ],
        }),
        json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!(
                "rule `{}` | {} | statistic {:.2} over threshold {:.2} | alert `{}` v{}",
                alert.rule, alert.state, alert.statistic, alert.threshold, alert.alert_id,
                alert.version
            )}],
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&format!("```{}```", query_command(alert)), 3000)},
        }),
    ];
    if !link_base.is_empty() {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open alert"},
                "url": format!("{}/alerts/{}", link_base.trim_end_matches('/'), alert.alert_id),
                "style": if alert.event == "alert.resolved" { "primary" } else { "danger" },
            }],
        }));
    }
    json!({
        "text": truncate(&format!("{headline}: {}", alert.summary), 3000),
        "blocks": blocks,
    })
}

fn release_line(alert: &Alert) -> String {
    let r = &alert.release;
    let mut parts = vec![format!("{} {}", r.platform, r.app_version)];
    for (label, value) in [
        ("build", &r.build),
        ("runtime", &r.runtime_version),
        ("update", &r.update_id),
        ("channel", &r.channel),
        ("env", &r.environment),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{label} {v}"));
        }
    }
    if let Some(issue) = &alert.issue_id {
        parts.push(format!("issue {issue}"));
    }
    parts.join(", ")
}

/// At most `max` characters (Slack refuses longer block texts).
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            alert_id: "a1".into(),
            delivery_id: "a1.1".into(),
            project: "shop".into(),
            rule: "halt-bad-updates".into(),
            event: "rollout.halt".into(),
            kind: "release_regression".into(),
            subject: "ios 2.14.0 (1402) update u-7 on production".into(),
            metric: "crash_rate".into(),
            severity: "critical".into(),
            state: "firing".into(),
            baseline: "fleet".into(),
            baseline_value: 0.01,
            baseline_count: 12_000,
            candidate_value: 0.021,
            candidate_count: 900,
            window_end_ms: 1_764_914_400_000,
            summary: "Crash rate 2.10% vs 1.00%".into(),
            version: 1,
            ..Alert::default()
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 ("what do ya want for nothing?" with key "Jefe"), split where
        // the signature joins the timestamp and the body.
        assert_eq!(
            signature("Jefe", 0, b"what do ya want for nothing?")
                .strip_prefix("sha256=")
                .map(str::len),
            Some(64)
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(signature("k", 1, b"x"), signature("k", 2, b"x"));
        assert_ne!(signature("k", 1, b"x"), signature("j", 1, b"x"));
    }

    #[test]
    fn the_webhook_body_carries_the_release_and_the_evidence() {
        let body = webhook_body(&alert(), 1_764_914_403_120);
        assert_eq!(body["type"], "rollout.halt");
        assert_eq!(body["id"], "a1.1");
        assert_eq!(body["baseline"]["count"], 12_000);
        assert_eq!(body["candidate"]["value"], 0.021);
        assert_eq!(body["window_end"], "2025-12-05T06:00:00.000Z");
        assert_eq!(body["detected_at"], "2025-12-05T06:00:03.120Z");
        assert_eq!(body["release"]["update_id"], Value::Null);
    }

    #[test]
    fn the_slack_message_has_the_shape_slack_takes() {
        let message = slack_message(&alert(), "https://trellis.example.com/");
        assert!(message["text"].as_str().unwrap().contains("Rollout halted"));
        let blocks = message["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(
            blocks[1]["fields"][0]["text"],
            "*Candidate:*\n2.10% of 900 sessions"
        );
        assert_eq!(
            blocks[1]["fields"][1]["text"],
            "*Baseline:*\n1.00% of 12000 sessions (fleet)"
        );
        assert_eq!(
            title(&alert()),
            "Rollout halted: ios 2.14.0 (1402) update u-7 on production (crash rate)"
        );
        let button = &blocks.last().unwrap()["elements"][0];
        assert_eq!(button["url"], "https://trellis.example.com/alerts/a1");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn overrides_read_as_what_they_are() {
        // A halt by hand before any finding, and a resume; a velocity alert counts users.
        let manual = Alert {
            event: "rollout.halt".into(),
            metric: String::new(),
            candidate_count: 0,
            baseline_count: 0,
            ..alert()
        };
        assert_eq!(
            title(&manual),
            "Rollout halted: ios 2.14.0 (1402) update u-7 on production"
        );
        let text = slack_message(&manual, "");
        assert_eq!(
            text["blocks"][1]["fields"][0]["text"],
            "*Candidate:*\nno finding"
        );
        let resumed = Alert {
            event: "rollout.resume".into(),
            ..alert()
        };
        assert_eq!(
            title(&resumed),
            "Rollout resumed: ios 2.14.0 (1402) update u-7 on production"
        );
        let velocity = Alert {
            event: "alert.firing".into(),
            metric: "affected_user_rate".into(),
            issue_id: Some("i-1".into()),
            ..alert()
        };
        let text = slack_message(&velocity, "");
        assert_eq!(
            text["blocks"][1]["fields"][0]["text"],
            "*Candidate:*\n2.10% of 900 users"
        );
    }
}
