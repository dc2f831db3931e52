//! Settings of the `alert` stage: `[alerts]`, its rules and its destinations.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The detection kinds a rule can name.
pub const KINDS: [&str; 4] = [
    "release_regression",
    "perf_regression",
    "issue_spike",
    "issue_velocity",
];

/// The `[alerts]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Whether the `alert` stage runs under `trellis run` (`trellis alert` runs it alone).
    pub enabled: bool,
    /// The consumer group that decides alerts from `detections`.
    pub group: String,
    /// The consumer group that delivers decisions from `alerts`.
    pub deliver_group: String,
    /// The rules, in order; every rule that matches a detection decides on its own alert.
    pub rules: Vec<Rule>,
    /// Where alerts go, by name.
    pub destinations: BTreeMap<String, Destination>,
    /// How deliveries are attempted.
    pub delivery: DeliveryConfig,
    /// Most alerts remembered per partition; past it the longest-resolved are forgotten.
    pub max_alerts: usize,
    /// Where people open trellis's query results, used for links in messages (for example
    /// `https://trellis.example.com`); no links when empty.
    pub link_base: String,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            enabled: true,
            group: "trellis-alert".into(),
            deliver_group: "trellis-alert-deliver".into(),
            rules: vec![Rule::default()],
            destinations: BTreeMap::new(),
            delivery: DeliveryConfig::default(),
            max_alerts: 10_000,
            link_base: String::new(),
        }
    }
}

/// One rule: which detections it takes, and what it does with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    /// Its name, unique among the rules; part of each alert's identity.
    pub name: String,
    /// The projects it covers; every project when empty.
    pub projects: Vec<String>,
    /// The detection kinds it takes (see [`KINDS`]); every kind when empty.
    pub kinds: Vec<String>,
    /// The metrics it takes (`crash_rate`, `screen_load_p75`, ...); every metric when empty.
    pub metrics: Vec<String>,
    /// The least severity that fires.
    pub min_severity: Severity,
    /// The destinations it notifies (names from `[alerts.destinations]`); every destination
    /// when empty.
    pub destinations: Vec<String>,
    /// Least event time between a notification and the same rule's subject firing again (a
    /// release that flaps between regressed and resolved notifies once per cooldown). A halt
    /// and an escalation never wait.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// `notify`, or `halt`: ask the rollout service to stop the release's rollout.
    pub action: Action,
}

impl Default for Rule {
    /// Notify every destination of every release regression and new-issue velocity finding.
    fn default() -> Self {
        Rule {
            name: "regressions".into(),
            projects: Vec::new(),
            kinds: vec!["release_regression".into(), "issue_velocity".into()],
            metrics: Vec::new(),
            min_severity: Severity::Warning,
            destinations: Vec::new(),
            cooldown: Duration::from_secs(3600),
            action: Action::Notify,
        }
    }
}

impl Rule {
    /// Whether the rule takes a detection of `kind` and `metric` in `project`.
    pub fn covers(&self, project: &str, kind: &str, metric: &str) -> bool {
        let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        any(&self.projects, project) && any(&self.kinds, kind) && any(&self.metrics, metric)
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worse than the baseline by at least the detector's effect threshold.
    #[default]
    Warning,
    /// At least twice the baseline.
    Critical,
}

impl Severity {
    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Tell people.
    #[default]
    Notify,
    /// Ask the rollout service to stop the release's rollout (`rollout.halt`), once per
    /// release; a rule on issues notifies instead.
    Halt,
}

impl Action {
    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            Action::Notify => "notify",
            Action::Halt => "halt",
        }
    }
}

/// A place alerts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    /// A Slack incoming webhook: a Block Kit message per notification.
    Slack {
        /// The webhook URL (`https://hooks.slack.com/services/...`).
        url: String,
        /// When notifications wait (a halt never does).
        #[serde(default)]
        quiet_hours: Option<QuietHours>,
    },
    /// A JSON webhook signed with HMAC-SHA256 (the rollback service is one).
    Webhook {
        /// Where to POST.
        url: String,
        /// The shared secret the signature is made with.
        secret: String,
        /// When notifications wait (a halt never does).
        #[serde(default)]
        quiet_hours: Option<QuietHours>,
    },
    /// Expo push notifications to on-call devices.
    Expo {
        /// Expo's push API (`/send` and `/getReceipts` are under it).
        #[serde(default = "expo_url")]
        url: String,
        /// An Expo access token, when push security is on for the project.
        #[serde(default)]
        access_token: Option<String>,
        /// The on-call devices' Expo push tokens. A token Expo answers `DeviceNotRegistered`
        /// for is removed (kept removed across restarts) with an entry on `audit`.
        tokens: Vec<String>,
        /// How long after sending the receipts are fetched (Expo has them within minutes and
        /// keeps them a day).
        #[serde(default = "receipt_delay", with = "humantime_serde")]
        receipt_delay: Duration,
        /// When notifications wait (a halt never does).
        #[serde(default)]
        quiet_hours: Option<QuietHours>,
    },
}

fn expo_url() -> String {
    "https://exp.host/--/api/v2/push".into()
}

fn receipt_delay() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Destination {
    /// The URL it posts to.
    pub fn url(&self) -> &str {
        match self {
            Destination::Slack { url, .. }
            | Destination::Webhook { url, .. }
            | Destination::Expo { url, .. } => url,
        }
    }

    /// Its quiet hours, if any.
    pub fn quiet_hours(&self) -> Option<&QuietHours> {
        match self {
            Destination::Slack { quiet_hours, .. }
            | Destination::Webhook { quiet_hours, .. }
            | Destination::Expo { quiet_hours, .. } => quiet_hours.as_ref(),
        }
    }
}

/// A daily window in which a destination's notifications wait, to go out as one digest when
/// it ends. Halts never wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start, `HH:MM` local time.
    pub from: String,
    /// End, `HH:MM` local time (before `from`: the window spans midnight).
    pub to: String,
    /// The local time's offset from UTC, `+HH:MM` or `-HH:MM`.
    #[serde(default = "utc")]
    pub utc_offset: String,
}

fn utc() -> String {
    "+00:00".into()
}

fn minutes(hhmm: &str) -> Option<i64> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

impl QuietHours {
    fn parts(&self) -> Option<(i64, i64, i64)> {
        let (sign, offset) = match self.utc_offset.split_at_checked(1)? {
            ("+", rest) => (1, rest),
            ("-", rest) => (-1, rest),
            _ => return None,
        };
        Some((
            minutes(&self.from)?,
            minutes(&self.to)?,
            sign * minutes(offset)?,
        ))
    }

    /// Whether `now_ms` (wall clock) is inside the window.
    pub fn contains(&self, now_ms: i64) -> bool {
        let Some((from, to, offset)) = self.parts() else {
            return false;
        };
        let minute = (now_ms.div_euclid(60_000) + offset).rem_euclid(24 * 60);
        if from <= to {
            (from..to).contains(&minute)
        } else {
            minute >= from || minute < to
        }
    }
}

/// How deliveries are attempted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Longest wait for one attempt, connecting included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts before a delivery is given up (dead-lettered with the reason).
    pub attempts: usize,
    /// The first retry's delay; each next one doubles, with jitter, up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    /// The longest delay between attempts (a receiver's `Retry-After` may ask for longer).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(10),
            attempts: 8,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl AlertConfig {
    /// Checks what serde cannot: names, references, URLs and ranges. The message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("alerts.rules[{i}].{k}");
            if rule.name.trim().is_empty() {
                return Err(format!("{}: must not be empty", key("name")));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(format!("{}: {:?} is used twice", key("name"), rule.name));
            }
            if let Some(kind) = rule.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
                return Err(format!(
                    "{}: unknown kind {kind:?} (one of {})",
                    key("kinds"),
                    KINDS.join(", ")
                ));
            }
            if let Some(name) = rule
                .destinations
                .iter()
                .find(|d| !self.destinations.contains_key(*d))
            {
                return Err(format!(
                    "{}: no destination {name:?} in alerts.destinations",
                    key("destinations")
                ));
            }
        }
        for (name, destination) in &self.destinations {
            let key = format!("alerts.destinations.{name}");
            let url = destination.url();
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => return Err(format!("{key}.url: {url:?} is not an http(s) URL")),
            }
            if let Destination::Webhook { secret, .. } = destination
                && secret.len() < 16
            {
                return Err(format!("{key}.secret: must be at least 16 characters"));
            }
            if let Destination::Expo { tokens, .. } = destination
                && let Some(token) = tokens.iter().find(|t| {
                    !(t.starts_with("ExponentPushToken[") || t.starts_with("ExpoPushToken["))
                        || !t.ends_with(']')
                })
            {
                return Err(format!("{key}.tokens: {token:?} is not an Expo push token"));
            }
            if let Some(q) = destination.quiet_hours()
                && q.parts().is_none()
            {
                return Err(format!(
                    "{key}.quiet_hours: from and to are HH:MM, utc_offset is +HH:MM or -HH:MM"
                ));
            }
        }
        let d = &self.delivery;
        if d.attempts == 0 {
            return Err("alerts.delivery.attempts: must be at least 1".into());
        }
        if d.timeout.is_zero() {
            return Err("alerts.delivery.timeout: must be more than 0".into());
        }
        if d.backoff_min.is_zero() || d.backoff_max < d.backoff_min {
            return Err(
                "alerts.delivery.backoff_min: must be more than 0 and at most backoff_max".into(),
            );
        }
        if self.max_alerts == 0 {
            return Err("alerts.max_alerts: must be at least 1".into());
        }
        if !self.link_base.is_empty() && reqwest::Url::parse(&self.link_base).is_err() {
            return Err(format!(
                "alerts.link_base: {:?} is not a URL",
                self.link_base
            ));
        }
        Ok(())
    }

    /// Whether any destination has quiet hours.
    pub fn has_quiet_hours(&self) -> bool {
        self.destinations
            .values()
            .any(|d| d.quiet_hours().is_some())
    }

    /// The destinations of `rule`, by name.
    pub fn destinations_of(&self, rule: &Rule) -> Vec<String> {
        if rule.destinations.is_empty() {
            self.destinations.keys().cloned().collect()
        } else {
            rule.destinations.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_span_midnight_in_local_time() {
        let q = QuietHours {
            from: "22:00".into(),
            to: "07:00".into(),
            utc_offset: "+01:00".into(),
        };
        let at = |h: i64, m: i64| (h * 60 + m) * 60_000;
        assert!(q.contains(at(21, 0)), "22:00 local");
        assert!(q.contains(at(5, 59)), "06:59 local");
        assert!(!q.contains(at(6, 0)), "07:00 local");
        assert!(!q.contains(at(20, 59)), "21:59 local");
        let day = QuietHours {
            from: "12:00".into(),
            to: "13:00".into(),
            utc_offset: "-02:30".into(),
        };
        assert!(day.contains(at(14, 30)) && !day.contains(at(15, 30)));
        let bad = QuietHours {
            from: "25:00".into(),
            ..day
        };
        assert!(bad.parts().is_none() && !bad.contains(0));
    }
}
