//! Deciding alerts: every rule's view of every subject's detections, as versioned [`Alert`]
//! records.
//!
//! The decider is pure: it holds, per rule and subject (a release or an issue), which matching
//! detections are live (`open` or `confirmed`), and turns each detection record into the alert
//! versions it implies. Time is event time (the detection's `window_end_ms`), so a replay of
//! `detections` decides the same versions with the same ids, and the outbox (`alerts`) collapses
//! them; nothing here knows the wall clock or the network.
//!
//! An alert fires when the first matching detection of its subject opens with at least the
//! rule's severity, re-notifies when a later detection raises the severity, and resolves when every matching detection of the subject is resolved or
//! retracted. An episode that starts within the rule's cooldown of the subject's last
//! notification is kept on record but notifies nobody (nor does its resolution). A halt rule asks for `rollout.halt` once per release, ever: a release that is
//! halted, resolves and regresses again notifies with `alert.firing` the second time.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use trellis_schemas::records::{Alert, Detection};
use xxhash_rust::xxh3::xxh3_128;

use crate::config::{Action, AlertConfig, Rule, Severity};

/// The `event` of a version that notifies nobody.
pub const NO_EVENT: &str = "none";

/// An alert's state between detections.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tracked {
    /// Episodes so far: the alert id of the current one includes it.
    episode: u32,
    /// Whether the current episode is firing.
    firing: bool,
    /// The live matching detections of the subject.
    live: BTreeSet<String>,
    /// The highest severity notified in this episode.
    notified: Option<Severity>,
    /// Event time of the last notification, across episodes (the cooldown's start).
    last_notified_ms: Option<i64>,
    /// Whether a halt was asked for this subject (ever).
    halted: bool,
    /// Whether the current episode's firing went out (if not, neither does its resolution).
    #[serde(default)]
    announced: bool,
    /// Event time of the last change, for forgetting the longest-resolved first.
    changed_ms: i64,
    /// The newest version.
    last: Alert,
}

/// The state of one partition's decider, as checkpointed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeciderState {
    alerts: BTreeMap<String, Tracked>,
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Detections read.
    pub detections: u64,
    /// Alert versions decided.
    pub decided: u64,
    /// Versions that notify.
    pub notifications: u64,
    /// Notifications held back by a rule's cooldown.
    pub cooled_down: u64,
    /// Alerts forgotten to stay within `max_alerts`.
    pub forgotten: u64,
}

/// The alert decisions of the projects one partition of `detections` holds.
pub struct Decider {
    config: AlertConfig,
    state: DeciderState,
    /// Counters since the last drain.
    pub counters: Counters,
}

/// How bad a detection is: `critical` when the candidate is at least twice its baseline (or the
/// baseline is zero and the candidate is not).
pub fn severity(d: &Detection) -> Severity {
    let doubled = if d.baseline_value > 0.0 {
        d.candidate_value >= 2.0 * d.baseline_value
    } else {
        d.candidate_value > 0.0
    };
    if doubled {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

/// What a detection is about, as (stable key, label for people): its release for release and
/// performance regressions, its issue for issue kinds.
pub fn subject(d: &Detection) -> (String, String) {
    if let Some(issue) = d.issue_id.as_deref().filter(|i| !i.is_empty()) {
        return (format!("issue\u{0}{issue}"), format!("issue {issue}"));
    }
    let r = &d.release;
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    let key = [
        "release".to_string(),
        r.platform.clone(),
        r.app_version.clone(),
        o(&r.build),
        o(&r.runtime_version),
        o(&r.update_id),
        o(&r.channel),
        o(&r.environment),
    ]
    .join("\u{0}");
    (key, trellis_processors::detect::release::describe(r))
}

fn hex128(parts: &[&str]) -> String {
    format!("{:032x}", xxh3_128(parts.join("\u{0}").as_bytes()))
}

/// The id of `rule`'s alert on `subject` in `project`, episode `episode` (from 1).
pub fn alert_id(rule: &str, project: &str, subject_key: &str, episode: u32) -> String {
    hex128(&[rule, project, subject_key, &episode.to_string()])
}

impl Decider {
    /// An empty decider.
    pub fn new(config: AlertConfig) -> Self {
        Decider::restore(config, DeciderState::default())
    }

    /// A decider from checkpointed state.
    pub fn restore(config: AlertConfig, state: DeciderState) -> Self {
        Decider {
            config,
            state,
            counters: Counters::default(),
        }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> &DeciderState {
        &self.state
    }

    /// Takes one version of a detection; pushes the alert versions it decides to `out`.
    pub fn observe(&mut self, d: &Detection, out: &mut Vec<Alert>) {
        self.counters.detections += 1;
        let live = matches!(d.status.as_str(), "open" | "confirmed");
        let severity = severity(d);
        let (subject_key, label) = subject(d);
        let now = d.window_end_ms;
        for rule in &self.config.rules {
            if !rule.covers(&d.project, &d.kind, &d.metric) {
                continue;
            }
            let key = [rule.name.as_str(), &d.project, &subject_key].join("\u{0}");
            let destinations = self.config.destinations_of(rule);
            let tracked = self.state.alerts.get_mut(&key);
            let decided = match (tracked, live) {
                (None, false) => None,
                (None, true) if severity < rule.min_severity => None,
                (None, true) => {
                    let mut t = Tracked {
                        episode: 0,
                        firing: false,
                        live: BTreeSet::new(),
                        notified: None,
                        last_notified_ms: None,
                        halted: false,
                        announced: false,
                        changed_ms: now,
                        last: Alert::default(),
                    };
                    let alert = fire(
                        rule,
                        &mut t,
                        d,
                        &subject_key,
                        &label,
                        severity,
                        destinations,
                    );
                    self.state.alerts.insert(key.clone(), t);
                    Some(alert)
                }
                (Some(t), true) if !t.firing => (severity >= rule.min_severity)
                    .then(|| fire(rule, t, d, &subject_key, &label, severity, destinations)),
                (Some(t), true) => {
                    let new = t.live.insert(d.detection_id.clone());
                    let higher = t.notified.is_none_or(|n| severity > n);
                    if severity >= rule.min_severity && higher {
                        Some(escalate(rule, t, d, severity, destinations))
                    } else if new {
                        Some(update(t, d, NO_EVENT))
                    } else {
                        None
                    }
                }
                (Some(t), false) => {
                    if t.firing && t.live.remove(&d.detection_id) && t.live.is_empty() {
                        t.firing = false;
                        Some(update(t, d, "alert.resolved"))
                    } else {
                        None
                    }
                }
            };
            if let Some(mut alert) = decided {
                if let Some(t) = self.state.alerts.get_mut(&key) {
                    t.changed_ms = now;
                    // A new episode's firing waits out the cooldown, unless it asks for a halt;
                    // an escalation does not wait (it happens once per episode); a resolution
                    // goes out when the episode's firing did.
                    let cooling = alert.event == "alert.firing"
                        && alert.version == 1
                        && t.last_notified_ms.is_some_and(|last| {
                            now < last.saturating_add(rule.cooldown.as_millis() as i64)
                        });
                    if cooling {
                        alert.event = NO_EVENT.into();
                        self.counters.cooled_down += 1;
                    } else if alert.event == "alert.resolved" && !t.announced {
                        alert.event = NO_EVENT.into();
                    } else if alert.event != NO_EVENT {
                        t.last_notified_ms = Some(now);
                        t.announced = true;
                    }
                    alert.delivery_id = format!("{}.{}", alert.alert_id, alert.version);
                    t.last = alert.clone();
                }
                if alert.event != NO_EVENT {
                    self.counters.notifications += 1;
                }
                self.counters.decided += 1;
                out.push(alert);
            }
        }
        self.forget();
    }

    /// Forgets the longest-resolved alerts beyond `max_alerts` (firing ones are kept).
    fn forget(&mut self) {
        let excess = self
            .state
            .alerts
            .len()
            .saturating_sub(self.config.max_alerts);
        if excess == 0 {
            return;
        }
        let mut resolved: Vec<(i64, String)> = self
            .state
            .alerts
            .iter()
            .filter(|(_, t)| !t.firing)
            .map(|(k, t)| (t.changed_ms, k.clone()))
            .collect();
        resolved.sort();
        for (_, key) in resolved.into_iter().take(excess) {
            self.state.alerts.remove(&key);
            self.counters.forgotten += 1;
        }
    }
}

/// Starts a new episode of `t`.
fn fire(
    rule: &Rule,
    t: &mut Tracked,
    d: &Detection,
    subject_key: &str,
    label: &str,
    severity: Severity,
    destinations: Vec<String>,
) -> Alert {
    t.episode += 1;
    t.firing = true;
    t.announced = false;
    t.live = BTreeSet::from([d.detection_id.clone()]);
    t.notified = Some(severity);
    let halt = rule.action == Action::Halt && d.issue_id.is_none() && !t.halted;
    t.halted |= halt;
    let alert_id = alert_id(&rule.name, &d.project, subject_key, t.episode);
    let alert = Alert {
        alert_id,
        project: d.project.clone(),
        rule: rule.name.clone(),
        action: rule.action.name().into(),
        kind: d.kind.clone(),
        subject: label.to_string(),
        release: d.release.clone(),
        issue_id: d.issue_id.clone(),
        destinations,
        fired_ms: d.window_end_ms,
        version: 0,
        ..Alert::default()
    };
    t.last = alert;
    let mut alert = update(t, d, if halt { "rollout.halt" } else { "alert.firing" });
    alert.severity = severity.name().into();
    alert
}

/// A higher severity in a firing episode.
fn escalate(
    _rule: &Rule,
    t: &mut Tracked,
    d: &Detection,
    severity: Severity,
    destinations: Vec<String>,
) -> Alert {
    t.notified = Some(severity);
    let mut alert = update(t, d, "alert.firing");
    alert.severity = severity.name().into();
    alert.destinations = destinations;
    alert
}

/// The next version of `t`'s alert, with `d`'s evidence.
fn update(t: &Tracked, d: &Detection, event: &str) -> Alert {
    let last = &t.last;
    Alert {
        state: if t.firing { "firing" } else { "resolved" }.into(),
        event: event.into(),
        detection_id: d.detection_id.clone(),
        metric: d.metric.clone(),
        screen: d.screen.clone(),
        baseline: d.baseline.clone(),
        baseline_value: d.baseline_value,
        baseline_count: d.baseline_count,
        candidate_value: d.candidate_value,
        candidate_count: d.candidate_count,
        statistic: d.statistic,
        threshold: d.threshold,
        window_end_ms: d.window_end_ms,
        summary: d.summary.clone(),
        severity: last.severity.clone(),
        version: last.version + 1,
        delivery_id: String::new(),
        ..last.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trellis_schemas::Release;

    use super::*;
    use crate::config::Destination;

    const MIN: i64 = 60_000;

    fn config(rules: Vec<Rule>) -> AlertConfig {
        let mut config = AlertConfig {
            rules,
            ..AlertConfig::default()
        };
        config.destinations.insert(
            "rollback".into(),
            Destination::Webhook {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "0123456789abcdef".into(),
                quiet_hours: None,
            },
        );
        config.validate().unwrap();
        config
    }

    fn halt_rule() -> Rule {
        Rule {
            name: "guard".into(),
            action: Action::Halt,
            min_severity: Severity::Critical,
            ..Rule::default()
        }
    }

    fn release(update: &str) -> Release {
        Release {
            platform: "ios".into(),
            app_version: "2.14.0".into(),
            build: Some("1402".into()),
            runtime_version: Some("2.14".into()),
            update_id: Some(update.into()),
            channel: Some("production".into()),
            environment: None,
        }
    }

    /// A release regression on `metric`, `ratio` times its baseline, at `minute`.
    fn detection(id: &str, metric: &str, status: &str, ratio: f64, minute: i64) -> Detection {
        Detection {
            detection_id: id.into(),
            project: "shop".into(),
            kind: "release_regression".into(),
            release: release("u-7"),
            metric: metric.into(),
            baseline: "fleet".into(),
            baseline_value: 0.01,
            baseline_count: 10_000,
            candidate_value: 0.01 * ratio,
            candidate_count: 800,
            statistic: 8.0,
            threshold: 5.3,
            window_end_ms: minute * MIN,
            opened_ms: minute * MIN,
            status: status.into(),
            summary: format!("{metric} {ratio}x"),
            version: 1,
            ..Detection::default()
        }
    }

    fn run(decider: &mut Decider, input: &[Detection]) -> Vec<Alert> {
        let mut out = Vec::new();
        for d in input {
            decider.observe(d, &mut out);
        }
        out
    }

    fn events(alerts: &[Alert]) -> Vec<(&str, &str, i64)> {
        alerts
            .iter()
            .map(|a| (a.rule.as_str(), a.event.as_str(), a.version))
            .collect()
    }

    #[test]
    fn a_regression_fires_once_and_resolves_once() {
        let mut decider = Decider::new(config(vec![Rule::default()]));
        let out = run(
            &mut decider,
            &[
                detection("d1", "crash_rate", "open", 1.5, 10),
                detection("d1", "crash_rate", "confirmed", 1.6, 40),
                detection("d1", "crash_rate", "resolved", 1.6, 2000),
            ],
        );
        assert_eq!(
            events(&out),
            [
                ("regressions", "alert.firing", 1),
                ("regressions", "alert.resolved", 2)
            ]
        );
        assert_eq!(out[0].alert_id, out[1].alert_id);
        assert_eq!(out[0].delivery_id, format!("{}.1", out[0].alert_id));
        assert_eq!(out[0].severity, "warning");
        assert_eq!(out[0].destinations, ["rollback"]);
        assert_eq!(out[0].state, "firing");
        assert_eq!(out[1].state, "resolved");
        assert_eq!(out[0].subject, "ios 2.14.0 (1402) update u-7 on production");
    }

    #[test]
    fn a_halt_rule_halts_a_bad_release_once_ever() {
        let mut decider = Decider::new(config(vec![Rule::default(), halt_rule()]));
        let out = run(
            &mut decider,
            &[
                // A warning does not reach the guard's severity.
                detection("d1", "abnormal_rate", "open", 1.4, 10),
                detection("d2", "crash_rate", "open", 2.5, 12),
                detection("d3", "crashed_user_rate", "open", 2.2, 13),
                detection("d1", "abnormal_rate", "retracted", 1.1, 40),
                detection("d2", "crash_rate", "resolved", 2.5, 3000),
                detection("d3", "crashed_user_rate", "resolved", 2.2, 3000),
                // The same release regresses again much later.
                detection("d4", "crash_rate", "open", 3.0, 9000),
            ],
        );
        let halts: Vec<_> = out.iter().filter(|a| a.event == "rollout.halt").collect();
        assert_eq!(halts.len(), 1, "{:?}", events(&out));
        assert_eq!(halts[0].detection_id, "d2");
        assert_eq!(halts[0].release, release("u-7"));
        assert_eq!(
            events(&out),
            [
                ("regressions", "alert.firing", 1),
                ("regressions", "alert.firing", 2),
                ("guard", "rollout.halt", 1),
                ("regressions", "none", 3),
                ("guard", "none", 2),
                ("regressions", "alert.resolved", 4),
                ("guard", "alert.resolved", 3),
                ("regressions", "alert.firing", 1),
                ("guard", "alert.firing", 1),
            ]
        );
        // The second episode is a new alert.
        assert_ne!(out[7].alert_id, out[0].alert_id);
    }

    #[test]
    fn a_halt_is_never_asked_for_an_issue() {
        let mut decider = Decider::new(config(vec![Rule {
            kinds: vec!["issue_spike".into()],
            ..halt_rule()
        }]));
        let mut spike = detection("s1", "events", "open", 10.0, 10);
        spike.kind = "issue_spike".into();
        spike.issue_id = Some("i-1".into());
        let out = run(&mut decider, &[spike]);
        assert_eq!(events(&out), [("guard", "alert.firing", 1)]);
        assert_eq!(out[0].subject, "issue i-1");
    }

    #[test]
    fn the_cooldown_holds_back_a_quick_refire_and_its_resolution() {
        let rule = Rule {
            cooldown: Duration::from_secs(3600),
            ..Rule::default()
        };
        let mut decider = Decider::new(config(vec![rule]));
        let out = run(
            &mut decider,
            &[
                detection("d1", "crash_rate", "open", 1.5, 0),
                detection("d1", "crash_rate", "retracted", 1.1, 30),
                detection("d2", "crash_rate", "open", 1.5, 40),
                detection("d2", "crash_rate", "retracted", 1.1, 50),
                detection("d3", "crash_rate", "open", 1.5, 200),
            ],
        );
        assert_eq!(
            events(&out),
            [
                ("regressions", "alert.firing", 1),
                ("regressions", "alert.resolved", 2),
                ("regressions", "none", 1),
                ("regressions", "none", 2),
                ("regressions", "alert.firing", 1),
            ]
        );
    }

    #[test]
    fn rules_take_only_their_projects_kinds_metrics_and_severities() {
        let rule = Rule {
            projects: vec!["other".into()],
            ..Rule::default()
        };
        let mut decider = Decider::new(config(vec![rule]));
        assert!(
            run(
                &mut decider,
                &[detection("d1", "crash_rate", "open", 3.0, 0)]
            )
            .is_empty()
        );
        let rule = Rule {
            metrics: vec!["errored_rate".into()],
            ..Rule::default()
        };
        let mut decider = Decider::new(config(vec![rule]));
        assert!(
            run(
                &mut decider,
                &[detection("d1", "crash_rate", "open", 3.0, 0)]
            )
            .is_empty()
        );
        let mut perf = detection("p1", "screen_load_p75", "open", 3.0, 0);
        perf.kind = "perf_regression".into();
        let mut decider = Decider::new(config(vec![Rule::default()]));
        assert!(run(&mut decider, &[perf]).is_empty(), "not a default kind");
        let mut decider = Decider::new(config(vec![halt_rule()]));
        assert!(
            run(
                &mut decider,
                &[detection("d1", "crash_rate", "open", 1.9, 0)]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_restored_decider_decides_what_the_original_would() {
        let input = [
            detection("d1", "crash_rate", "open", 1.5, 10),
            detection("d2", "crashed_user_rate", "open", 2.5, 12),
            detection("d1", "crash_rate", "resolved", 1.6, 2000),
            detection("d2", "crashed_user_rate", "resolved", 2.5, 2000),
        ];
        let cfg = config(vec![Rule::default(), halt_rule()]);
        let whole = run(&mut Decider::new(cfg.clone()), &input);
        let mut first = Decider::new(cfg.clone());
        let mut split = run(&mut first, &input[..2]);
        let bytes = postcard::to_stdvec(first.state()).unwrap();
        let mut second = Decider::restore(cfg, postcard::from_bytes(&bytes).unwrap());
        split.extend(run(&mut second, &input[2..]));
        assert_eq!(whole, split);
    }

    #[test]
    fn resolved_alerts_are_forgotten_past_the_cap_and_firing_ones_kept() {
        let mut cfg = config(vec![Rule::default()]);
        cfg.max_alerts = 2;
        let mut decider = Decider::new(cfg);
        let mut input = Vec::new();
        for (i, update) in ["a", "b", "c"].iter().enumerate() {
            let mut d = detection(&format!("d{i}"), "crash_rate", "open", 1.5, i as i64);
            d.release = release(update);
            input.push(d.clone());
            if i < 2 {
                d.status = "resolved".into();
                d.window_end_ms += 100 * MIN;
                input.push(d);
            }
        }
        run(&mut decider, &input);
        assert_eq!(decider.counters.forgotten, 1);
        assert_eq!(decider.state().alerts.len(), 2);
        assert!(decider.state().alerts.values().any(|t| t.firing));
    }
}
