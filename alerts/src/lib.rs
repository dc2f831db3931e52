//! trellis alerting: the `alert` stage turns `detections` into alerts people see and into
//! rollout halts a deployment system acts on.
//!
//! It is two loops with the outbox between them:
//! - the **decider** ([`decide`]) is a processor on the shared runtime: it reads `detections`
//!   (keyed by project), applies the rules of `[alerts]`, and writes every decision as a
//!   versioned [`Alert`] on `alerts`, checkpointed like every other stage, so a replay decides
//!   the same versions with the same ids;
//! - the **deliverer** ([`deliver`]) reads `alerts` in its own consumer group and sends each
//!   version that notifies to its destinations (Slack, signed webhooks), with retries, backoff
//!   and jitter, committing only once every destination answered.
//!
//! The sinks store `alerts` like any other record: table `alerts` in Parquet and ClickHouse.
#![warn(missing_docs)]

pub mod config;
pub mod decide;
pub mod deliver;
pub mod message;

use std::sync::Arc;

use trellis_bus::{Message, Record, dead_letter};
use trellis_processors::runtime::{Factory, Output, Processor, StateError};
use trellis_schemas::records::{self, Alert, AuditEntry, Detection, GuardCommand};
use trellis_schemas::topics;

pub use config::AlertConfig;
pub use decide::{Decider, DeciderState};

/// The decider's stage name: its checkpoint directory and metrics label.
pub const STAGE: &str = "alert";

/// One partition of `detections`, as the runtime drives it.
pub struct AlertProcessor {
    decider: Decider,
    topics: Arc<topics::Names>,
    decided: Vec<Alert>,
    invalid: u64,
}

impl Processor for AlertProcessor {
    fn process(&mut self, record: &Record, out: &mut Output) {
        if records::is::<GuardCommand>(&record.payload) {
            self.command(record, out);
            return;
        }
        let detection = match records::decode::<Detection>(&record.payload) {
            Ok(d) => d,
            Err(e) => {
                self.invalid += 1;
                let mut letter = dead_letter(record, STAGE, &e.to_string());
                letter.topic.clone_from(&self.topics.dlq);
                out.emit(letter);
                return;
            }
        };
        self.decider.observe(&detection, &mut self.decided);
        for alert in self.decided.drain(..) {
            if alert.event == "rollout.halt" {
                emit_audit(&self.topics, &guard_entry(&alert), out);
            }
            emit_alert(&self.topics, &alert, out);
        }
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let c = std::mem::take(&mut self.decider.counters);
        for (name, n) in [
            ("detections", c.detections),
            ("decided", c.decided),
            ("notifications", c.notifications),
            ("cooled_down", c.cooled_down),
            ("silenced", c.silenced),
            ("forgotten", c.forgotten),
            ("commands", c.commands),
            ("commands_refused", c.commands_refused),
            ("invalid", std::mem::take(&mut self.invalid)),
        ] {
            if n > 0 {
                into(name, n);
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.decider.state().to_bytes()?)
    }
}

impl AlertProcessor {
    /// Applies an admin's command; a refused one goes to the dead-letter topic with the reason.
    fn command(&mut self, record: &Record, out: &mut Output) {
        let mut audit = Vec::new();
        let applied = records::decode::<GuardCommand>(&record.payload)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                self.decider
                    .command(&c, &mut self.decided, &mut audit)
                    .inspect(|()| {
                        tracing::info!(project = %c.project, action = %c.action,
                            actor = %c.actor, "Guard command applied.");
                    })
                    .inspect_err(|reason| {
                        tracing::warn!(project = %c.project, action = %c.action, %reason,
                            "Guard command refused.");
                    })
            });
        if let Err(reason) = applied {
            let mut letter = dead_letter(record, STAGE, &reason);
            letter.topic.clone_from(&self.topics.dlq);
            out.emit(letter);
        }
        for entry in &audit {
            emit_audit(&self.topics, entry, out);
        }
        for alert in self.decided.drain(..) {
            emit_alert(&self.topics, &alert, out);
        }
    }
}

fn emit_audit(topics: &topics::Names, entry: &AuditEntry, out: &mut Output) {
    match records::encode(entry) {
        Ok(payload) => out.emit(Message::new(
            topics.audit.as_str(),
            entry.project.as_bytes().to_vec(),
            payload,
        )),
        Err(e) => tracing::error!(error = %e, "An audit entry does not encode."),
    }
}

fn emit_alert(topics: &topics::Names, alert: &Alert, out: &mut Output) {
    match records::encode(alert) {
        Ok(payload) => out.emit(Message::new(
            topics.alerts.as_str(),
            alert.project.as_bytes().to_vec(),
            payload,
        )),
        Err(e) => tracing::error!(error = %e, "An alert does not encode."),
    }
}

/// The audit entry of the guard's decision to halt a release: its evidence is the webhook body
/// without the wall-clock time.
pub fn guard_entry(alert: &Alert) -> AuditEntry {
    let mut evidence = message::webhook_body(alert, alert.window_end_ms);
    if let Some(body) = evidence.as_object_mut() {
        body.remove("detected_at");
    }
    AuditEntry {
        audit_id: alert.delivery_id.clone(),
        project: alert.project.clone(),
        at_ms: alert.window_end_ms,
        actor: "trellis guard".into(),
        action: alert.event.clone(),
        subject: alert
            .release
            .update_id
            .clone()
            .unwrap_or_else(|| alert.subject.clone()),
        reason: format!("rule {}: {}", alert.rule, alert.summary),
        evidence: evidence.to_string(),
    }
}

/// Makes the decider's processors.
pub struct AlertFactory {
    config: AlertConfig,
    topics: Arc<topics::Names>,
}

impl AlertFactory {
    /// The stage with `config`, writing to `topics`.
    pub fn new(config: AlertConfig, topics: topics::Names) -> Self {
        AlertFactory {
            config,
            topics: Arc::new(topics),
        }
    }
}

impl Factory for AlertFactory {
    type Processor = AlertProcessor;

    fn stage(&self) -> &'static str {
        STAGE
    }

    fn create(&self, _partition: u32, state: Option<&[u8]>) -> Result<AlertProcessor, StateError> {
        let decider = match state {
            Some(bytes) => Decider::restore(self.config.clone(), DeciderState::from_bytes(bytes)?),
            None => Decider::new(self.config.clone()),
        };
        Ok(AlertProcessor {
            decider,
            topics: self.topics.clone(),
            decided: Vec::new(),
            invalid: 0,
        })
    }
}

/// The alerts and audit entries a small staged rollout with a bad update decides, for tests of
/// what stores them: the default rule and a halt rule over the detections of
/// [`trellis_processors::detect::sim::sample_detections`].
pub fn sample_alerts() -> (Vec<Alert>, Vec<AuditEntry>) {
    let mut config = AlertConfig::default();
    config.destinations.insert(
        "rollback".into(),
        config::Destination::Webhook {
            url: "http://127.0.0.1:9/rollback".into(),
            secret: "sample-secret-0123456789".into(),
            quiet_hours: None,
        },
    );
    config.rules.push(config::Rule {
        name: "guard".into(),
        action: config::Action::Halt,
        min_severity: config::Severity::Critical,
        ..config::Rule::default()
    });
    let mut decider = Decider::new(config);
    let mut alerts = Vec::new();
    for d in trellis_processors::detect::sim::sample_detections() {
        decider.observe(&d, &mut alerts);
    }
    let audit = alerts
        .iter()
        .filter(|a| a.event == "rollout.halt")
        .map(guard_entry)
        .collect();
    (alerts, audit)
}
