//! The lifecycle every detector's findings share: `open` on provisional evidence, `confirmed` or
//! `retracted` once the windows behind it are complete, `resolved` when the subject goes quiet.

use serde::{Deserialize, Serialize};
use trellis_schemas::records::Detection;

use super::DetectConfig;

/// Where a finding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Provisional evidence crossed the threshold.
    Open,
    /// The evidence still held once the windows behind it were complete.
    Confirmed,
    /// It did not.
    Retracted,
    /// The subject went quiet after a confirmed finding.
    Resolved,
}

impl Status {
    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Confirmed => "confirmed",
            Status::Retracted => "retracted",
            Status::Resolved => "resolved",
        }
    }
}

/// The evidence of one judgement: the candidate and its baseline, and what the test said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The candidate's value of the metric.
    pub candidate_value: f64,
    /// The candidate's sample count.
    pub candidate_count: i64,
    /// The baseline's value.
    pub baseline_value: f64,
    /// The baseline's sample count.
    pub baseline_count: i64,
    /// What the baseline is (`fleet`, `previous <release>`).
    pub baseline_label: String,
    /// The test statistic.
    pub statistic: f64,
    /// Its threshold.
    pub threshold: f64,
    /// Event time the evidence ends at.
    pub window_end_ms: i64,
    /// Whether the evidence makes a finding: significant, large enough, with enough exposure.
    pub bad: bool,
}

/// A finding that is open or confirmed (or was just closed, when emitted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// Which of the subject's findings on this metric it is (1, 2, ...).
    pub episode: u32,
    /// Its status.
    pub status: Status,
    /// Status changes so far, from 1.
    pub version: i64,
    /// Event time it opened at.
    pub opened_ms: i64,
    /// The newest evidence.
    pub evidence: Evidence,
}

impl Finding {
    /// The finding's record: `subject` names what was judged (id, project, kind, release or
    /// issue, metric, summary, where the evidence starts); the evidence, status and version are
    /// the finding's.
    pub fn record(&self, subject: Detection) -> Detection {
        let e = &self.evidence;
        Detection {
            baseline: e.baseline_label.clone(),
            baseline_value: e.baseline_value,
            baseline_count: e.baseline_count,
            candidate_value: e.candidate_value,
            candidate_count: e.candidate_count,
            statistic: e.statistic,
            threshold: e.threshold,
            window_end_ms: e.window_end_ms,
            opened_ms: self.opened_ms,
            status: self.status.name().to_string(),
            version: self.version,
            ..subject
        }
    }
}

/// One subject's findings on one metric.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trial {
    /// Findings opened so far.
    pub episodes: u32,
    /// The finding open or confirmed now.
    pub current: Option<Finding>,
}

/// Moves one subject's finding on one metric through its lifecycle, given the newest evidence
/// (none when there is no baseline) and when the subject was last seen; returns the finding
/// when its status changed (to be emitted).
pub fn step(
    config: &DetectConfig,
    trial: &mut Trial,
    evidence: Option<Evidence>,
    last_seen_ms: i64,
    now_ms: i64,
) -> Option<Finding> {
    let confirm_ms = config.confirm_after.as_millis() as i64;
    let resolve_ms = config.resolve_after.as_millis() as i64;
    match trial.current.as_mut() {
        None => {
            let evidence = evidence.filter(|e| e.bad)?;
            trial.episodes += 1;
            let finding = Finding {
                episode: trial.episodes,
                status: Status::Open,
                version: 1,
                opened_ms: evidence.window_end_ms,
                evidence,
            };
            trial.current = Some(finding.clone());
            Some(finding)
        }
        Some(finding) if finding.status == Status::Open => {
            if let Some(e) = evidence {
                if now_ms < finding.opened_ms + confirm_ms {
                    finding.evidence = e;
                    return None;
                }
                finding.status = if e.bad {
                    Status::Confirmed
                } else {
                    Status::Retracted
                };
                finding.evidence = e;
            } else if now_ms < finding.opened_ms + confirm_ms {
                return None;
            } else {
                finding.status = Status::Retracted;
            }
            finding.version += 1;
            let done = finding.clone();
            if done.status == Status::Retracted {
                trial.current = None;
            }
            Some(done)
        }
        Some(finding) => {
            if let Some(e) = evidence {
                finding.evidence = e;
            }
            if last_seen_ms + resolve_ms > now_ms {
                return None;
            }
            finding.status = Status::Resolved;
            finding.version += 1;
            let done = finding.clone();
            trial.current = None;
            Some(done)
        }
    }
}
