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
//! notification is kept on record but notifies nobody (nor does its resolution). A halt rule
//! asks for `rollout.halt` only while the release's rollout is active: a release that is halted,
//! resolves and regresses again notifies with `alert.firing` the second time, unless someone
//! resumed it in between; an update the guard was told to ignore is never halted.
//!
//! Admin commands ([`Decider::command`]) register rollouts and change their percentage, halt,
//! resume or ignore them, and acknowledge or silence alerts; each is applied in order with the
//! findings and written to the audit trail.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use trellis_schemas::Release;
use trellis_schemas::records::{Alert, Detection};
use xxhash_rust::xxh3::xxh3_128;

use crate::config::{Action, AlertConfig, Rule, Severity};

mod commands;

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

/// What people said about an alert (by its rule and subject), kept beside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Marks {
    /// The episode someone acknowledged: its escalations notify nobody.
    acked_episode: Option<u32>,
    /// Until when (event time, ms) nothing of it notifies but a halt.
    silenced_until_ms: Option<i64>,
}

/// Where a rollout stands with the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutState {
    /// The guard may halt it.
    Active,
    /// Halted, by the guard or by hand: nothing halts it again until it is resumed.
    Halted,
    /// The guard was told to leave it alone: its alerts notify, it is never halted.
    Ignored,
}

impl RolloutState {
    /// The name in audit entries and listings.
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Halted => "halted",
            RolloutState::Ignored => "ignored",
        }
    }
}

/// An OTA update's rollout, as the guard knows it: learned from a finding on the update, or
/// registered by a deployment pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rollout {
    /// The update, as far as it is known.
    release: Release,
    /// The share of the fleet offered the update, if a pipeline said.
    percentage: Option<f64>,
    state: RolloutState,
    /// Whether a pipeline registered it.
    registered: bool,
    /// Manual halts and resumes so far.
    changes: u32,
    /// Whether the last word the rollout service had of the update was a halt (the guard's or
    /// someone's): a resume must then tell it, whatever happened in between.
    halt_sent: bool,
    /// The newest guard alert on the update: the evidence a manual halt carries.
    evidence: Option<Alert>,
    /// When it last changed (event time or the command's time), for forgetting.
    changed_ms: i64,
}

/// The state of one partition's decider, as checkpointed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeciderState {
    alerts: BTreeMap<String, Tracked>,
    marks: BTreeMap<String, Marks>,
    /// By project and update id.
    rollouts: BTreeMap<String, Rollout>,
}

/// The state as checkpointed before acknowledgements and rollouts existed.
#[derive(Deserialize)]
struct LegacyState {
    alerts: BTreeMap<String, Tracked>,
}

impl DeciderState {
    /// The checkpoint's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// The state from a checkpoint, also one written before acknowledgements and rollouts
    /// existed (postcard has no optional fields: the older layout is tried second).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes).or_else(|e| {
            // The older layout must account for every byte: a damaged new checkpoint is not one.
            match postcard::take_from_bytes::<LegacyState>(bytes) {
                Ok((legacy, [])) => Ok(DeciderState::from_legacy(legacy)),
                _ => Err(e),
            }
        })
    }

    /// The state of an older checkpoint: its alerts, and a halted rollout for every update the
    /// guard had halted (that checkpoint kept halts on the alerts only).
    fn from_legacy(legacy: LegacyState) -> Self {
        let mut rollouts = BTreeMap::new();
        for t in legacy
            .alerts
            .values()
            .filter(|t| t.halted && t.last.issue_id.is_none())
        {
            let Some(update) = t.last.release.update_id.as_deref() else {
                continue;
            };
            rollouts
                .entry(rollout_key(&t.last.project, update))
                .or_insert_with(|| Rollout {
                    release: t.last.release.clone(),
                    percentage: None,
                    state: RolloutState::Halted,
                    registered: false,
                    changes: 0,
                    halt_sent: true,
                    evidence: Some(t.last.clone()),
                    changed_ms: t.changed_ms,
                });
        }
        DeciderState {
            alerts: legacy.alerts,
            rollouts,
            ..DeciderState::default()
        }
    }
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
    /// Notifications held back by a silence or an acknowledgement.
    pub silenced: u64,
    /// Guard commands applied.
    pub commands: u64,
    /// Guard commands refused (dead-lettered with the reason).
    pub commands_refused: u64,
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
        let rollout_at = d
            .issue_id
            .is_none()
            .then_some(d.release.update_id.as_deref())
            .flatten()
            .map(|u| rollout_key(&d.project, u));
        if let (Some(key), true) = (&rollout_at, live) {
            self.state
                .rollouts
                .entry(key.clone())
                .or_insert_with(|| Rollout {
                    release: d.release.clone(),
                    percentage: None,
                    state: RolloutState::Active,
                    registered: false,
                    changes: 0,
                    halt_sent: false,
                    evidence: None,
                    changed_ms: now,
                });
        }
        // A release without an update id has no rollout to consult: its alerts halt once each.
        let mut may_halt = rollout_at
            .as_ref()
            .and_then(|k| self.state.rollouts.get(k))
            .is_none_or(|r| r.state == RolloutState::Active);
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
                        (&subject_key, &label),
                        severity,
                        destinations,
                        may_halt,
                    );
                    self.state.alerts.insert(key.clone(), t);
                    Some(alert)
                }
                (Some(t), true) if !t.firing => (severity >= rule.min_severity).then(|| {
                    fire(
                        rule,
                        t,
                        d,
                        (&subject_key, &label),
                        severity,
                        destinations,
                        may_halt,
                    )
                }),
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
                let marks = self.state.marks.get(&key);
                if let Some(t) = self.state.alerts.get_mut(&key) {
                    let acked = t.firing && marks.and_then(|m| m.acked_episode) == Some(t.episode);
                    let silenced = marks
                        .and_then(|m| m.silenced_until_ms)
                        .is_some_and(|until| now < until);
                    if acked {
                        alert.state = "acknowledged".into();
                    }
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
                    } else if alert.event != NO_EVENT
                        && alert.event != "rollout.halt"
                        && (silenced || (acked && alert.event == "alert.firing"))
                    {
                        // People said they know: a silence holds everything but a halt, an
                        // acknowledgement holds the episode's escalations.
                        alert.event = NO_EVENT.into();
                        self.counters.silenced += 1;
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
                if let Some(r) = rollout_at
                    .as_ref()
                    .and_then(|k| self.state.rollouts.get_mut(k))
                {
                    if alert.event == "rollout.halt" {
                        r.state = RolloutState::Halted;
                        r.halt_sent = true;
                        may_halt = false;
                    }
                    if alert.state != "resolved" {
                        r.evidence = Some(alert.clone());
                    }
                    r.changed_ms = now;
                }
                self.counters.decided += 1;
                out.push(alert);
            }
        }
        self.forget();
    }

    /// Forgets the longest-resolved alerts beyond `max_alerts` (firing ones are kept), and as
    /// many learned rollouts.
    fn forget(&mut self) {
        self.forget_rollouts();
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
            self.state.marks.remove(&key);
            self.counters.forgotten += 1;
        }
    }

    /// Forgets the longest-unchanged active rollouts nobody registered beyond `max_alerts`
    /// (halted, ignored and registered ones are what people decided: they are kept).
    fn forget_rollouts(&mut self) {
        let excess = self
            .state
            .rollouts
            .len()
            .saturating_sub(self.config.max_alerts);
        if excess == 0 {
            return;
        }
        let mut learned: Vec<(i64, String)> = self
            .state
            .rollouts
            .iter()
            .filter(|(_, r)| r.state == RolloutState::Active && !r.registered)
            .map(|(k, r)| (r.changed_ms, k.clone()))
            .collect();
        learned.sort();
        for (_, key) in learned.into_iter().take(excess) {
            self.state.rollouts.remove(&key);
        }
    }
}

/// The key of `project`'s rollout of `update`.
fn rollout_key(project: &str, update: &str) -> String {
    [project, update].join("\u{0}")
}

/// Starts a new episode of `t`.
fn fire(
    rule: &Rule,
    t: &mut Tracked,
    d: &Detection,
    (subject_key, label): (&str, &str),
    severity: Severity,
    destinations: Vec<String>,
    may_halt: bool,
) -> Alert {
    t.episode += 1;
    t.firing = true;
    t.announced = false;
    t.live = BTreeSet::from([d.detection_id.clone()]);
    t.notified = Some(severity);
    let halt = rule.action == Action::Halt && d.issue_id.is_none() && !t.halted && may_halt;
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
mod tests;
