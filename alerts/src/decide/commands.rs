//! Admin commands to the decider: rollouts registered and changed, halted, resumed or ignored
//! by hand, alerts acknowledged and silenced. Each is applied in order with the findings of its
//! project and written to the audit trail.

use std::collections::BTreeSet;

use trellis_schemas::Release;
use trellis_schemas::records::{Alert, AuditEntry, GuardCommand};

use super::{Decider, NO_EVENT, Rollout, RolloutState, hex128, rollout_key};
use crate::config::Action;

impl Decider {
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
