//! Error spikes: an issue whose event rate jumps far above its own recent rate.
//!
//! Run by the `issues` stage, which owns all of a project's issues and sees every error once
//! (replays of the `process` stage are skipped there). Each issue keeps its events per 5-minute
//! bucket of event time. As errors arrive, the bucket they fall in is compared with the issue's
//! mean over the `spike_baseline` before it (6 hours): a spike needs at least `spike_min_events`
//! events in the bucket, at least `spike_factor` times the mean, and a Poisson upper tail
//! `P(X ≥ x; mean)` below `alpha` (so a rare issue's handful of events is not a spike). The
//! bucket is judged while it fills, so a spike is known minutes into it, not when it ends.
//!
//! A spike opens (`open`) when its bucket crosses, is `confirmed` when that bucket ends, and is
//! `resolved` after `spike_quiet_buckets` complete buckets back under the threshold. An issue
//! needs `spike_baseline / 2` of history before its rate can spike: a new issue's first burst is
//! a new issue, reported by the issue itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis_schemas::records::Detection;

use super::DetectConfig;
use super::finding::Status;
use super::release::{clamp_ms, hex128};

/// The `kind` of the detections this module emits.
pub const KIND: &str = "issue_spike";

/// The bucket rates are counted in.
pub const BUCKET_MS: i64 = 5 * 60_000;

/// The metric name in records.
pub const METRIC: &str = "events_per_5m";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spike {
    episode: u32,
    status: Status,
    version: i64,
    /// The bucket that opened it.
    bucket: i64,
    opened_ms: i64,
    /// Complete buckets under the threshold since it was confirmed.
    quiet: u32,
    candidate: i64,
    mean: f64,
    baseline_events: i64,
    statistic: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IssueRate {
    project: String,
    first_ms: i64,
    /// Events by 5-minute bucket start.
    buckets: BTreeMap<i64, i64>,
    episodes: u32,
    current: Option<Spike>,
}

/// What a checkpoint holds (inside the issues stage's state).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpikeState {
    /// By project and issue id.
    issues: BTreeMap<String, IssueRate>,
    /// The newest bucket per project.
    clocks: BTreeMap<String, i64>,
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpikeCounters {
    /// Issues forgotten to stay within `spike_max_issues`.
    pub evicted: u64,
    /// Detection records emitted.
    pub emitted: u64,
}

/// The spike detector of the projects one partition of `errors.grouped` holds. Its state is a
/// [`SpikeState`] kept (and checkpointed) by the issues stage beside its issues.
pub struct SpikeDetector {
    config: DetectConfig,
    /// Counters since the last drain.
    pub counters: SpikeCounters,
}

/// `ln P(X ≥ x)` for `X ~ Poisson(mean)`: the sum of the upper tail's terms, from `x` on.
pub fn poisson_log_upper_tail(x: i64, mean: f64) -> f64 {
    if x <= 0 {
        return 0.0;
    }
    let mean = mean.max(1e-9);
    // ln pmf(x) = −mean + x ln mean − ln x!
    let mut log_term = -mean + x as f64 * mean.ln() - (1..=x).map(|i| (i as f64).ln()).sum::<f64>();
    let (mut log_sum, mut k) = (log_term, x);
    loop {
        k += 1;
        log_term += mean.ln() - (k as f64).ln();
        // ln(e^a + e^b), with a ≥ b once the terms fall.
        let (hi, lo) = if log_sum >= log_term {
            (log_sum, log_term)
        } else {
            (log_term, log_sum)
        };
        log_sum = hi + (lo - hi).exp().ln_1p();
        if log_term < log_sum - 40.0 || k > x + 100_000 {
            return log_sum.min(0.0);
        }
    }
}

fn bucket_of(ms: i64) -> i64 {
    ms.div_euclid(BUCKET_MS) * BUCKET_MS
}

/// The id of an issue's `episode`th spike (from 1).
pub fn detection_id(project: &str, issue_id: &str, episode: u32) -> String {
    hex128(&[KIND, project, issue_id, &episode.to_string()])
}

impl SpikeDetector {
    /// A detector with `config`.
    pub fn new(config: DetectConfig) -> Self {
        SpikeDetector {
            config,
            counters: SpikeCounters::default(),
        }
    }

    /// Counts one error of `issue_id` at `event_ms` into `state` and returns the detections it
    /// caused.
    pub fn observe(
        &mut self,
        state: &mut SpikeState,
        project: &str,
        issue_id: &str,
        event_ms: i64,
        out: &mut Vec<Detection>,
    ) {
        let before = out.len();
        let event_ms = clamp_ms(event_ms);
        let bucket = bucket_of(event_ms);
        let baseline_ms = self.config.spike_baseline.as_millis() as i64;
        let clock = state.clocks.get(project).copied();
        if clock.is_some_and(|c| bucket < c - baseline_ms) {
            // Too old to matter to any rate still judged.
            return;
        }
        if let Some(c) = clock.filter(|c| bucket > *c) {
            self.close_buckets(state, project, c, bucket, out);
        }
        if clock.is_none_or(|c| bucket > c) {
            state.clocks.insert(project.to_string(), bucket);
        }
        let key = format!("{project}\u{0}{issue_id}");
        let issue = state.issues.entry(key).or_insert_with(|| IssueRate {
            project: project.to_string(),
            first_ms: event_ms,
            ..IssueRate::default()
        });
        issue.first_ms = issue.first_ms.min(event_ms);
        *issue.buckets.entry(bucket).or_default() += 1;
        let spike = issue
            .current
            .is_none()
            .then(|| judge(&self.config, issue, bucket))
            .flatten();
        if let Some(spike) = spike {
            issue.episodes += 1;
            let spike = Spike {
                episode: issue.episodes,
                status: Status::Open,
                version: 1,
                bucket,
                opened_ms: event_ms,
                quiet: 0,
                ..spike
            };
            out.push(record(project, issue_id, &spike, &self.config));
            issue.current = Some(spike);
        }
        self.evict(state, project);
        self.counters.emitted += (out.len() - before) as u64;
    }

    /// The project's clock moved from bucket `from` to `to`: the buckets in between are complete.
    fn close_buckets(
        &mut self,
        state: &mut SpikeState,
        project: &str,
        from: i64,
        to: i64,
        out: &mut Vec<Detection>,
    ) {
        let baseline_ms = self.config.spike_baseline.as_millis() as i64;
        let prefix = format!("{project}\u{0}");
        let mut forget = Vec::new();
        for (key, issue) in state.issues.range_mut(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            let issue_id = &key[prefix.len()..];
            // Only an issue with a spike has anything to do per bucket, and it is done within a
            // few buckets of a gap (quiet buckets resolve it), so a jump of the clock is cheap.
            let mut closed = from;
            while closed < to && issue.current.is_some() {
                let count = issue.buckets.get(&closed).copied().unwrap_or(0);
                let (needed, _) =
                    threshold(&self.config, issue_baseline(issue, closed, baseline_ms));
                if let Some(spike) = issue.current.as_mut() {
                    match spike.status {
                        Status::Open if closed >= spike.bucket => {
                            spike.status = Status::Confirmed;
                            spike.version += 1;
                            spike.candidate = spike.candidate.max(count);
                            out.push(record(project, issue_id, spike, &self.config));
                        }
                        Status::Confirmed => {
                            if (count as f64) < needed {
                                spike.quiet += 1;
                            } else {
                                spike.quiet = 0;
                            }
                            if spike.quiet >= self.config.spike_quiet_buckets {
                                spike.status = Status::Resolved;
                                spike.version += 1;
                                out.push(record(project, issue_id, spike, &self.config));
                            }
                        }
                        _ => {}
                    }
                    if spike.status == Status::Resolved {
                        issue.current = None;
                    }
                }
                closed += BUCKET_MS;
            }
            // Buckets older than the baseline span are no longer needed.
            while let Some(entry) = issue.buckets.first_entry() {
                if *entry.key() >= to - baseline_ms {
                    break;
                }
                entry.remove();
            }
            if issue.buckets.is_empty() && issue.current.is_none() {
                forget.push(key.clone());
            }
        }
        for key in forget {
            state.issues.remove(&key);
        }
    }

    /// Keeps a project within `spike_max_issues`, forgetting the quietest issues.
    fn evict(&mut self, state: &mut SpikeState, project: &str) {
        let prefix = format!("{project}\u{0}");
        let count = state
            .issues
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count();
        if count <= self.config.spike_max_issues {
            return;
        }
        let quietest = state
            .issues
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, i)| i.current.is_none())
            .min_by_key(|(_, i)| i.buckets.last_key_value().map(|(b, _)| *b))
            .map(|(k, _)| k.clone());
        if let Some(key) = quietest {
            state.issues.remove(&key);
            self.counters.evicted += 1;
        }
    }
}

/// The issue's mean events per bucket over the baseline span before `bucket`, and the events in
/// it; `None` while the issue has less than half a span of history.
fn issue_baseline(issue: &IssueRate, bucket: i64, baseline_ms: i64) -> Option<(f64, i64)> {
    if issue.first_ms > bucket - baseline_ms / 2 {
        return None;
    }
    let from = bucket - baseline_ms;
    let events: i64 = issue.buckets.range(from..bucket).map(|(_, n)| n).sum();
    let buckets = (bucket - from.max(bucket_of(issue.first_ms))) / BUCKET_MS;
    Some((events as f64 / buckets.max(1) as f64, events))
}

/// The events a bucket needs to be a spike, given the baseline (infinite without one).
fn threshold(config: &DetectConfig, baseline: Option<(f64, i64)>) -> (f64, f64) {
    match baseline {
        Some((mean, _)) => (
            (config.spike_min_events as f64).max(config.spike_factor * mean),
            mean,
        ),
        None => (f64::INFINITY, 0.0),
    }
}

/// Whether `bucket` of `issue` is a spike now; the evidence if so.
fn judge(config: &DetectConfig, issue: &IssueRate, bucket: i64) -> Option<Spike> {
    let baseline_ms = config.spike_baseline.as_millis() as i64;
    let baseline = issue_baseline(issue, bucket, baseline_ms)?;
    let (needed, mean) = threshold(config, Some(baseline));
    let count = issue.buckets.get(&bucket).copied().unwrap_or(0);
    if (count as f64) < needed {
        return None;
    }
    // A floor under the mean: an issue quiet through its whole baseline is not certain to stay
    // at zero.
    let statistic = -poisson_log_upper_tail(count, mean.max(config.spike_min_mean));
    (statistic >= super::stats::threshold(config.alpha)).then_some(Spike {
        episode: 0,
        status: Status::Open,
        version: 1,
        bucket,
        opened_ms: 0,
        quiet: 0,
        candidate: count,
        mean,
        baseline_events: baseline.1,
        statistic,
    })
}

fn record(project: &str, issue_id: &str, spike: &Spike, config: &DetectConfig) -> Detection {
    let against = format!(
        "{} events in 5 minutes against {:.1} per 5 minutes over the {} minutes before",
        spike.candidate,
        spike.mean,
        config.spike_baseline.as_secs() / 60
    );
    let summary = match spike.status {
        Status::Resolved => format!("Issue {issue_id} is back to its usual rate; resolved."),
        status => format!(
            "Issue {issue_id} is spiking ({}): {against}; ln 1/p {:.1} ≥ {:.1}.",
            status.name(),
            spike.statistic,
            super::stats::threshold(config.alpha)
        ),
    };
    Detection {
        detection_id: detection_id(project, issue_id, spike.episode),
        project: project.to_string(),
        kind: KIND.to_string(),
        issue_id: Some(issue_id.to_string()),
        metric: METRIC.to_string(),
        baseline: "issue".to_string(),
        baseline_value: spike.mean,
        baseline_count: spike.baseline_events,
        candidate_value: spike.candidate as f64,
        candidate_count: spike.candidate,
        statistic: spike.statistic,
        threshold: super::stats::threshold(config.alpha),
        window_start_ms: spike.bucket,
        window_end_ms: spike.bucket + BUCKET_MS,
        opened_ms: spike.opened_ms,
        status: spike.status.name().to_string(),
        summary,
        version: spike.version,
        ..Detection::default()
    }
}
