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
use trellis_schemas::records::{Alert, AuditEntry, Detection, GuardCommand};
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

    /// Applies an admin's command: pushes the alert versions it decides (a manual halt or
    /// resume, an acknowledged alert) to `out` and its audit entry to `audit`; refuses what does
    /// not apply (an unknown rollout or alert, halting a halted rollout) with the reason.
    pub fn command(
        &mut self,
        c: &GuardCommand,
        out: &mut Vec<Alert>,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<(), String> {
        let result = match c.action.as_str() {
            "register" | "update" | "halt" | "resume" | "ignore" => self.on_rollout(c, out),
            "ack" | "silence" => self.on_alert(c, out),
            other => Err(format!("no guard action {other:?}")),
        };
        match result {
            Ok((subject, evidence)) => {
                self.counters.commands += 1;
                let action = match c.action.as_str() {
                    "ack" | "silence" => format!("alert.{}", c.action),
                    other => format!("rollout.{other}"),
                };
                audit.push(AuditEntry {
                    audit_id: c.command_id.clone(),
                    project: c.project.clone(),
                    at_ms: c.at_ms,
                    actor: c.actor.clone(),
                    action,
                    subject,
                    reason: c.reason.clone(),
                    evidence: evidence.to_string(),
                });
                self.forget();
                Ok(())
            }
            Err(reason) => {
                self.counters.commands_refused += 1;
                Err(reason)
            }
        }
    }

    /// A rollout command: what it was about (the update id) and the evidence for its audit entry.
    fn on_rollout(
        &mut self,
        c: &GuardCommand,
        out: &mut Vec<Alert>,
    ) -> Result<(String, serde_json::Value), String> {
        let update = c
            .update_id
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or("a rollout command needs update_id")?;
        let key = rollout_key(&c.project, update);
        let destinations = self.halt_destinations(&c.project);
        let known = self.state.rollouts.get_mut(&key);
        let rollout = match (c.action.as_str(), known) {
            ("register", Some(r)) => r,
            ("register" | "halt" | "ignore", None) => {
                let mut release = c.release.clone().unwrap_or_default();
                release.update_id = Some(update.to_string());
                self.state.rollouts.entry(key).or_insert(Rollout {
                    release,
                    percentage: None,
                    state: RolloutState::Active,
                    registered: false,
                    changes: 0,
                    halt_sent: false,
                    evidence: None,
                    changed_ms: c.at_ms,
                })
            }
            (_, Some(r)) => r,
            (_, None) => {
                return Err(format!(
                    "no rollout of update {update:?} in {:?}",
                    c.project
                ));
            }
        };
        let before = rollout.state;
        let previous = rollout.percentage;
        rollout.changed_ms = c.at_ms;
        match c.action.as_str() {
            "register" | "update" => {
                if let Some(given) = c.release.as_ref().filter(|_| c.action == "register") {
                    merge_release(&mut rollout.release, given);
                }
                rollout.registered |= c.action == "register";
                rollout.percentage = c.percentage.or(rollout.percentage);
            }
            "halt" if before == RolloutState::Halted => {
                return Err(format!("update {update:?} is halted already"));
            }
            "resume" if before == RolloutState::Active && !rollout.halt_sent => {
                return Err(format!("update {update:?} is not halted or ignored"));
            }
            "halt" | "resume" => {
                if let Some(given) = &c.release {
                    merge_release(&mut rollout.release, given);
                }
                rollout.state = if c.action == "halt" {
                    RolloutState::Halted
                } else {
                    RolloutState::Active
                };
                // A resumed update may be halted by the guard again, by its next episode of
                // regression. The rollout service hears of a resume only if its last word was a
                // halt (an update ignored after a halt is still halted there).
                rollout.changes += 1;
                if c.action == "halt" || rollout.halt_sent {
                    out.push(manual_alert(c, rollout, update, destinations));
                }
                rollout.halt_sent = c.action == "halt";
            }
            _ => rollout.state = RolloutState::Ignored,
        }
        let evidence = serde_json::json!({
            "state": rollout.state.name(),
            "previous_state": before.name(),
            "percentage": rollout.percentage,
            "previous_percentage": previous,
            "release": serde_json::to_value(&rollout.release).unwrap_or_default(),
            "detection_id": rollout.evidence.as_ref().map(|a| a.detection_id.clone()),
        });
        if c.action == "resume" {
            let release = rollout.release.clone();
            for t in self.state.alerts.values_mut() {
                if t.last.project == c.project && t.last.release.update_id == release.update_id {
                    t.halted = false;
                }
            }
        }
        Ok((update.to_string(), evidence))
    }

    /// An alert command: the alert id and the evidence for its audit entry.
    fn on_alert(
        &mut self,
        c: &GuardCommand,
        out: &mut Vec<Alert>,
    ) -> Result<(String, serde_json::Value), String> {
        let id = c
            .alert_id
            .as_deref()
            .ok_or("an alert command needs alert_id")?;
        let Some((key, t)) = self
            .state
            .alerts
            .iter_mut()
            .find(|(_, t)| t.last.alert_id == id && t.last.project == c.project)
        else {
            return Err(format!("no alert {id:?} in {:?}", c.project));
        };
        let marks = self.state.marks.entry(key.clone()).or_default();
        if c.action == "silence" {
            let until = c
                .until_ms
                .filter(|u| *u > c.at_ms)
                .ok_or("silence needs until_ms after the command's time")?;
            marks.silenced_until_ms = Some(until);
            return Ok((
                id.to_string(),
                serde_json::json!({"until_ms": until, "state": t.last.state}),
            ));
        }
        if !t.firing {
            return Err(format!("alert {id:?} is not firing"));
        }
        if marks.acked_episode == Some(t.episode) {
            return Err(format!("alert {id:?} is acknowledged already"));
        }
        marks.acked_episode = Some(t.episode);
        let alert = Alert {
            state: "acknowledged".into(),
            event: NO_EVENT.into(),
            version: t.last.version + 1,
            delivery_id: format!("{}.{}", t.last.alert_id, t.last.version + 1),
            ..t.last.clone()
        };
        t.last = alert.clone();
        self.counters.decided += 1;
        out.push(alert);
        Ok((id.to_string(), serde_json::json!({"state": "acknowledged"})))
    }

    /// Where manual halts and resumes of `project`'s rollouts go: the destinations of the halt
    /// rules that cover it, else every destination.
    fn halt_destinations(&self, project: &str) -> Vec<String> {
        let mut names = BTreeSet::new();
        for rule in &self.config.rules {
            let covers = rule.projects.is_empty() || rule.projects.iter().any(|p| p == project);
            if rule.action == Action::Halt && covers {
                names.extend(self.config.destinations_of(rule));
            }
        }
        if names.is_empty() {
            names.extend(self.config.destinations.keys().cloned());
        }
        names.into_iter().collect()
    }

    /// Where `project`'s rollout of `update` stands, if the guard knows it.
    pub fn rollout(&self, project: &str, update: &str) -> Option<RolloutState> {
        self.state
            .rollouts
            .get(&rollout_key(project, update))
            .map(|r| r.state)
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

/// Fills what `known` lacks from what a caller said.
fn merge_release(known: &mut Release, given: &Release) {
    let fill = |k: &mut Option<String>, g: &Option<String>| {
        if g.as_deref().is_some_and(|v| !v.is_empty()) {
            k.clone_from(g);
        }
    };
    if !given.platform.is_empty() {
        known.platform.clone_from(&given.platform);
    }
    if !given.app_version.is_empty() {
        known.app_version.clone_from(&given.app_version);
    }
    fill(&mut known.build, &given.build);
    fill(&mut known.runtime_version, &given.runtime_version);
    fill(&mut known.channel, &given.channel);
    fill(&mut known.environment, &given.environment);
}

/// The single-version alert of a manual halt or resume: the update's newest guard evidence,
/// if the guard had any, under an id of its own.
fn manual_alert(c: &GuardCommand, r: &Rollout, update: &str, destinations: Vec<String>) -> Alert {
    let evidence = r.evidence.clone().unwrap_or_default();
    let halt = c.action == "halt";
    // The command's id: unique, and the same when the command is replayed.
    let alert_id = hex128(&["rollout", &c.project, update, &c.command_id]);
    let said = if c.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", c.reason)
    };
    Alert {
        delivery_id: format!("{alert_id}.1"),
        alert_id,
        project: c.project.clone(),
        rule: "manual".into(),
        action: if halt { "halt" } else { "resume" }.into(),
        kind: if evidence.kind.is_empty() {
            "rollout".into()
        } else {
            evidence.kind.clone()
        },
        subject: trellis_processors::detect::release::describe(&r.release),
        release: r.release.clone(),
        issue_id: None,
        state: if halt { "halted" } else { "resumed" }.into(),
        event: if halt {
            "rollout.halt"
        } else {
            "rollout.resume"
        }
        .into(),
        window_end_ms: if evidence.window_end_ms > 0 {
            evidence.window_end_ms
        } else {
            c.at_ms
        },
        fired_ms: c.at_ms,
        destinations,
        summary: format!(
            "{} by {}{said}",
            if halt { "Halted" } else { "Resumed" },
            c.actor
        ),
        version: 1,
        ..evidence
    }
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

    fn command(action: &str, at_minute: i64) -> GuardCommand {
        GuardCommand {
            command_id: format!("c-{action}-{at_minute}"),
            project: "shop".into(),
            action: action.into(),
            update_id: Some("u-7".into()),
            actor: "ana".into(),
            reason: "looked at it".into(),
            at_ms: at_minute * MIN,
            ..GuardCommand::default()
        }
    }

    fn apply(decider: &mut Decider, c: &GuardCommand) -> (Vec<Alert>, Vec<AuditEntry>) {
        let (mut out, mut audit) = (Vec::new(), Vec::new());
        decider.command(c, &mut out, &mut audit).unwrap();
        (out, audit)
    }

    #[test]
    fn an_ignored_update_is_never_halted_but_still_notifies() {
        let mut decider = Decider::new(config(vec![Rule::default(), halt_rule()]));
        let register = GuardCommand {
            release: Some(Release {
                channel: Some("production".into()),
                runtime_version: Some("2.14".into()),
                ..Release::default()
            }),
            percentage: Some(5.0),
            ..command("register", 1)
        };
        let (out, audit) = apply(&mut decider, &register);
        assert!(out.is_empty());
        assert_eq!(audit[0].action, "rollout.register");
        assert_eq!(audit[0].audit_id, "c-register-1");
        let (_, audit) = apply(&mut decider, &command("ignore", 2));
        assert_eq!(
            (audit[0].action.as_str(), audit[0].actor.as_str()),
            ("rollout.ignore", "ana")
        );
        assert!(
            audit[0].evidence.contains(r#""percentage":5.0"#),
            "{}",
            audit[0].evidence
        );
        let out = run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 3.0, 10)],
        );
        assert_eq!(
            events(&out),
            [
                ("regressions", "alert.firing", 1),
                ("guard", "alert.firing", 1)
            ]
        );
        assert_eq!(decider.rollout("shop", "u-7"), Some(RolloutState::Ignored));
    }

    #[test]
    fn a_manual_halt_stops_the_guard_and_a_resume_lets_the_next_episode_halt() {
        let mut decider = Decider::new(config(vec![halt_rule()]));
        // Unknown to the guard until now: a halt by hand still goes out.
        let (out, audit) = apply(&mut decider, &command("halt", 1));
        assert_eq!(events(&out), [("manual", "rollout.halt", 1)]);
        assert_eq!(out[0].destinations, ["rollback"]);
        assert_eq!(out[0].summary, "Halted by ana: looked at it");
        assert_eq!(out[0].release.update_id.as_deref(), Some("u-7"));
        assert_eq!(audit[0].action, "rollout.halt");
        // Halting it twice is refused, and the guard does not halt it either.
        let (mut o, mut a) = (Vec::new(), Vec::new());
        let refused = decider.command(&command("halt", 2), &mut o, &mut a);
        assert_eq!(refused, Err(r#"update "u-7" is halted already"#.into()));
        assert!(o.is_empty() && a.is_empty());
        let out = run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 3.0, 10)],
        );
        assert_eq!(events(&out), [("guard", "alert.firing", 1)]);
        // Resumed: the resume goes out with the guard's evidence, and the episode in progress
        // does not halt again; the next one does.
        let (resumed, _) = apply(&mut decider, &command("resume", 20));
        assert_eq!(events(&resumed), [("manual", "rollout.resume", 1)]);
        assert_eq!(resumed[0].detection_id, "d1");
        assert_ne!(resumed[0].alert_id, out[0].alert_id);
        let out = run(
            &mut decider,
            &[
                detection("d2", "crashed_user_rate", "open", 3.0, 30),
                detection("d1", "crash_rate", "resolved", 3.0, 2000),
                detection("d2", "crashed_user_rate", "resolved", 3.0, 2000),
                detection("d3", "crash_rate", "open", 3.0, 3000),
            ],
        );
        assert_eq!(
            events(&out),
            [
                ("guard", "none", 2),
                ("guard", "alert.resolved", 3),
                ("guard", "rollout.halt", 1)
            ]
        );
        assert_eq!(decider.rollout("shop", "u-7"), Some(RolloutState::Halted));
    }

    #[test]
    fn an_update_of_an_unknown_rollout_is_refused() {
        let mut decider = Decider::new(config(vec![halt_rule()]));
        let (mut o, mut a) = (Vec::new(), Vec::new());
        let c = GuardCommand {
            percentage: Some(50.0),
            ..command("update", 1)
        };
        assert!(decider.command(&c, &mut o, &mut a).is_err());
        assert!(
            decider
                .command(&command("resume", 1), &mut o, &mut a)
                .is_err()
        );
        assert_eq!(decider.counters.commands_refused, 2);
        assert!(o.is_empty() && a.is_empty());
    }

    #[test]
    fn an_acknowledged_alert_escalates_quietly_and_resolves_aloud() {
        let mut decider = Decider::new(config(vec![Rule::default()]));
        let fired = run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 1.5, 10)],
        );
        let ack = GuardCommand {
            update_id: None,
            alert_id: Some(fired[0].alert_id.clone()),
            ..command("ack", 11)
        };
        let (acked, audit) = apply(&mut decider, &ack);
        assert_eq!(
            (
                acked[0].state.as_str(),
                acked[0].event.as_str(),
                acked[0].version
            ),
            ("acknowledged", "none", 2)
        );
        assert_eq!(
            (audit[0].action.as_str(), audit[0].subject.as_str()),
            ("alert.ack", fired[0].alert_id.as_str())
        );
        let (mut o, mut a) = (Vec::new(), Vec::new());
        assert!(
            decider.command(&ack, &mut o, &mut a).is_err(),
            "acknowledged twice"
        );
        let out = run(
            &mut decider,
            &[
                detection("d2", "crashed_user_rate", "open", 3.0, 12),
                detection("d1", "crash_rate", "resolved", 1.5, 2000),
                detection("d2", "crashed_user_rate", "resolved", 3.0, 2000),
            ],
        );
        assert_eq!(
            out.iter()
                .map(|a| (a.state.as_str(), a.event.as_str()))
                .collect::<Vec<_>>(),
            [("acknowledged", "none"), ("resolved", "alert.resolved")]
        );
        assert_eq!(decider.counters.silenced, 1);
    }

    #[test]
    fn a_silenced_alert_notifies_nothing_until_the_silence_ends_but_a_halt() {
        let mut decider = Decider::new(config(vec![halt_rule()]));
        let fired = run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 3.0, 10)],
        );
        assert_eq!(events(&fired), [("guard", "rollout.halt", 1)]);
        let silence = GuardCommand {
            update_id: None,
            alert_id: Some(fired[0].alert_id.clone()),
            until_ms: Some(500 * MIN),
            ..command("silence", 11)
        };
        let (out, audit) = apply(&mut decider, &silence);
        assert!(out.is_empty());
        assert!(
            audit[0].evidence.contains("\"until_ms\":30000000"),
            "{}",
            audit[0].evidence
        );
        apply(&mut decider, &command("resume", 12));
        let out = run(
            &mut decider,
            &[
                detection("d1", "crash_rate", "resolved", 3.0, 100),
                // Within the silence: a new episode's halt still goes out ...
                detection("d2", "crash_rate", "open", 3.0, 300),
                detection("d2", "crash_rate", "resolved", 3.0, 400),
            ],
        );
        assert_eq!(
            events(&out),
            [
                ("guard", "none", 2),
                ("guard", "rollout.halt", 1),
                ("guard", "none", 2)
            ]
        );
        // ... and after it, the resolution of a third is told again.
        apply(&mut decider, &command("resume", 450));
        let out = run(
            &mut decider,
            &[
                detection("d3", "crash_rate", "open", 1.5, 600),
                detection("d3", "crash_rate", "resolved", 1.5, 700),
            ],
        );
        assert!(out.is_empty(), "a warning is below the guard's severity");
        let out = run(
            &mut decider,
            &[
                detection("d4", "crash_rate", "open", 3.0, 800),
                detection("d4", "crash_rate", "resolved", 3.0, 900),
            ],
        );
        assert_eq!(
            events(&out),
            [("guard", "rollout.halt", 1), ("guard", "alert.resolved", 2)]
        );
    }

    #[test]
    fn a_checkpoint_from_before_rollouts_restores_with_the_halts_it_knew() {
        #[derive(Serialize)]
        struct Legacy<'a> {
            alerts: &'a BTreeMap<String, Tracked>,
        }
        let cfg = config(vec![halt_rule()]);
        let mut decider = Decider::new(cfg.clone());
        let out = run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 3.0, 10)],
        );
        assert_eq!(events(&out), [("guard", "rollout.halt", 1)]);
        let legacy = postcard::to_stdvec(&Legacy {
            alerts: &decider.state().alerts,
        })
        .unwrap();
        let mut restored = Decider::restore(cfg, DeciderState::from_bytes(&legacy).unwrap());
        assert_eq!(restored.state().alerts.len(), 1);
        assert_eq!(restored.rollout("shop", "u-7"), Some(RolloutState::Halted));
        // ... so it can be resumed, and the rollout service hears of it.
        let (resumed, _) = apply(&mut restored, &command("resume", 20));
        assert_eq!(events(&resumed), [("manual", "rollout.resume", 1)]);
        let now = DeciderState::from_bytes(&decider.state().to_bytes().unwrap()).unwrap();
        assert_eq!(now.rollouts.len(), 1);
        assert!(DeciderState::from_bytes(b"\xff\xff").is_err());
        // Bytes past an older layout are a damaged checkpoint, not an older one.
        let mut damaged = legacy.clone();
        damaged.push(7);
        assert!(DeciderState::from_bytes(&damaged).is_err());
    }

    #[test]
    fn a_halted_update_ignored_then_resumed_is_resumed_at_the_rollout_service() {
        let mut decider = Decider::new(config(vec![halt_rule()]));
        let out = run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 3.0, 10)],
        );
        assert_eq!(events(&out), [("guard", "rollout.halt", 1)]);
        let (out, _) = apply(&mut decider, &command("ignore", 11));
        assert!(out.is_empty());
        let (out, audit) = apply(&mut decider, &command("resume", 12));
        assert_eq!(events(&out), [("manual", "rollout.resume", 1)]);
        assert!(audit[0].evidence.contains(r#""previous_state":"ignored""#));
        // Ignored from the start, it was never halted there: a resume sends nothing.
        let mut decider = Decider::new(config(vec![halt_rule()]));
        apply(&mut decider, &command("ignore", 1));
        let (out, _) = apply(&mut decider, &command("resume", 2));
        assert!(out.is_empty());
    }

    #[test]
    fn two_manual_halts_of_one_update_are_two_alerts() {
        let mut decider = Decider::new(config(vec![halt_rule()]));
        let (first, _) = apply(&mut decider, &command("halt", 1));
        apply(&mut decider, &command("resume", 2));
        // Even once the rollout was forgotten, a later halt is a new alert.
        decider.state.rollouts.clear();
        let (second, _) = apply(&mut decider, &command("halt", 3));
        assert_ne!(first[0].alert_id, second[0].alert_id);
        assert_ne!(first[0].delivery_id, second[0].delivery_id);
    }
}
