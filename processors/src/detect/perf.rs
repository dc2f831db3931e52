//! Performance regressions: a release or OTA update whose p75 (by default) of a performance
//! metric (app start, screen load per screen, request duration) is slower than its baseline's.
//!
//! Input is the health partials on `aggregates`: each carries, per metric, device class and
//! screen, a DDSketch of the samples of one release in one minute. The detector merges them per
//! release, metric and screen into 10-minute buckets, and judges each release against the same
//! baseline as crash rates ([`super::release`]): the older releases of its cohort over the same
//! buckets, or the previous release once it has the whole fleet.
//!
//! **The test.** With `q` the percentile judged and `b` the baseline's value of it, a baseline
//! sample exceeds `b` with probability `1 − q`. A candidate no slower than its baseline exceeds
//! it as often; a slower one more often. The share of candidate samples above `b` (read off the
//! candidate's sketch) against `1 − q` of the baseline's samples is a difference of two
//! proportions, judged by the same always-valid mSPRT as crash rates ([`super::stats`]), so
//! sample counts on both sides enter the decision and looking after every window costs no
//! false positives. A finding also needs `perf_min_samples` candidate samples and the percentile
//! at least `perf_min_relative_effect` slower.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use trellis_schemas::Release;
use trellis_schemas::records::{Detection, HealthPartial};
use xxhash_rust::xxh3::xxh3_128;

use super::DetectConfig;
use super::finding::{Evidence, Finding, Status, Trial, step};
use super::release::{MINUTE_MS, clamp_ms, cohort_key, describe, hex128, minute_of, release_key};
use super::stats::{self, Proportion};

/// The `kind` of the detections this module emits.
pub const KIND: &str = "perf_regression";

/// The span partial sketches are merged into.
const BUCKET_MS: i64 = 10 * MINUTE_MS;

/// A metric and a screen (empty for metrics without one).
type SeriesKey = (String, String);

#[derive(Clone, Serialize, Deserialize)]
struct PerfRelease {
    release: Release,
    first_seen_ms: i64,
    last_seen_ms: i64,
    /// Per metric and screen, the merged sketches by 10-minute bucket of window start.
    series: BTreeMap<SeriesKey, BTreeMap<i64, DDSketch>>,
    /// Series with samples since the last judgement.
    dirty: BTreeSet<SeriesKey>,
    trials: BTreeMap<SeriesKey, Trial>,
}

impl PerfRelease {
    fn merged(&self, key: &SeriesKey, from_ms: i64, to_ms: i64) -> Option<DDSketch> {
        let mut out: Option<DDSketch> = None;
        for sketch in self.series.get(key)?.range(from_ms..to_ms).map(|(_, s)| s) {
            match out.as_mut() {
                None => out = Some(sketch.clone()),
                Some(total) => {
                    // Sketches of one configuration always merge.
                    let _ = total.merge(sketch);
                }
            }
        }
        out
    }
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct PerfCohort {
    project: String,
    releases: BTreeMap<String, PerfRelease>,
    /// The newest minute a window ended in.
    clock_ms: Option<i64>,
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct PerfCounters {
    /// Partials counted.
    pub partials: u64,
    /// Partials seen again (a replay of the `process` stage), not counted twice.
    pub replayed: u64,
    /// Sketches that did not parse, left out.
    pub invalid_sketch: u64,
    /// Partials older than the kept history.
    pub too_old: u64,
    /// Detection records emitted.
    pub emitted: u64,
}

/// The performance-regression detector of the projects one input partition holds.
pub struct PerfDetector {
    config: DetectConfig,
    cohorts: BTreeMap<String, PerfCohort>,
    /// Partial ids counted, with the window they are for, to forget them with the history.
    seen: HashMap<u128, i64>,
    /// Counters since the last drain.
    pub counters: PerfCounters,
}

/// What a checkpoint holds.
#[derive(Serialize, Deserialize)]
pub struct PerfState {
    cohorts: Vec<(String, PerfCohort)>,
    seen: Vec<(u128, i64)>,
}

impl PerfDetector {
    /// An empty detector.
    pub fn new(config: DetectConfig) -> Self {
        PerfDetector {
            config,
            cohorts: BTreeMap::new(),
            seen: HashMap::new(),
            counters: PerfCounters::default(),
        }
    }

    /// A detector from a checkpointed state.
    pub fn restore(config: DetectConfig, state: PerfState) -> Self {
        PerfDetector {
            cohorts: state.cohorts.into_iter().collect(),
            seen: state.seen.into_iter().collect(),
            ..PerfDetector::new(config)
        }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> PerfState {
        PerfState {
            cohorts: self
                .cohorts
                .iter()
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect(),
            seen: self.seen.iter().map(|(k, w)| (*k, *w)).collect(),
        }
    }

    /// Counts a health partial's sketches and returns the detections it caused, in order.
    pub fn observe(&mut self, partial: &HealthPartial, out: &mut Vec<Detection>) {
        let before = out.len();
        let id = xxh3_128(partial.partial_id.as_bytes());
        if self.seen.contains_key(&id) {
            self.counters.replayed += 1;
            return;
        }
        let history_ms = self.config.history.as_millis() as i64;
        let cohort = self
            .cohorts
            .entry(cohort_key(&partial.project, &partial.release))
            .or_insert_with(|| PerfCohort {
                project: partial.project.clone(),
                ..PerfCohort::default()
            });
        let window_start = clamp_ms(partial.window_start_ms);
        let window_end = window_start + clamp_ms(partial.window_ms).clamp(0, 24 * 3_600_000);
        let minute = minute_of(window_end);
        if cohort
            .clock_ms
            .is_some_and(|clock| minute < clock - history_ms)
        {
            self.counters.too_old += 1;
            return;
        }
        let mut moved = false;
        match cohort.clock_ms {
            Some(clock) if minute > clock => {
                judge(&self.config, cohort, clock + MINUTE_MS, out);
                cohort.clock_ms = Some(minute);
                forget_old(&self.config, cohort, minute);
                moved = true;
            }
            None => cohort.clock_ms = Some(minute),
            Some(_) => {}
        }
        self.seen.insert(id, window_start);
        self.counters.partials += 1;
        if partial.perf.is_empty() {
            if moved {
                self.forget_seen();
            }
            self.counters.emitted += (out.len() - before) as u64;
            return;
        }
        let state = cohort
            .releases
            .entry(release_key(&partial.release))
            .or_insert_with(|| PerfRelease {
                release: partial.release.clone(),
                first_seen_ms: window_start,
                last_seen_ms: window_end,
                series: BTreeMap::new(),
                dirty: BTreeSet::new(),
                trials: BTreeMap::new(),
            });
        state.first_seen_ms = state.first_seen_ms.min(window_start);
        state.last_seen_ms = state.last_seen_ms.max(window_end);
        let bucket = window_start.div_euclid(BUCKET_MS) * BUCKET_MS;
        for perf in &partial.perf {
            let Ok(sketch) = serde_json::from_str::<DDSketch>(&perf.sketch) else {
                self.counters.invalid_sketch += 1;
                continue;
            };
            let key = (perf.metric.clone(), perf.screen.clone());
            let slot = state
                .series
                .entry(key.clone())
                .or_default()
                .entry(bucket)
                .or_insert_with(|| DDSketch::new(SketchConfig::defaults()));
            if slot.merge(&sketch).is_err() {
                self.counters.invalid_sketch += 1;
                continue;
            }
            state.dirty.insert(key);
        }
        if moved {
            self.forget_seen();
        }
        self.counters.emitted += (out.len() - before) as u64;
    }

    /// Forgets partial ids behind the slowest cohort's clock less the history, so a cohort that
    /// lags another keeps its replay protection.
    fn forget_seen(&mut self) {
        let history_ms = self.config.history.as_millis() as i64;
        if let Some(slowest) = self.cohorts.values().filter_map(|c| c.clock_ms).min() {
            self.seen.retain(|_, w| *w >= slowest - history_ms);
        }
    }
}

/// Drops buckets older than the history, and releases with nothing left and nothing open.
fn forget_old(config: &DetectConfig, cohort: &mut PerfCohort, now_ms: i64) {
    let oldest = now_ms - config.history.as_millis() as i64;
    cohort.releases.retain(|_, state| {
        for buckets in state.series.values_mut() {
            while let Some(entry) = buckets.first_entry() {
                if *entry.key() + BUCKET_MS >= oldest {
                    break;
                }
                entry.remove();
            }
        }
        state.series.retain(|_, b| !b.is_empty());
        !state.series.is_empty() || state.trials.values().any(|t| t.current.is_some())
    });
    while cohort.releases.len() > config.max_releases {
        let Some(quietest) = cohort
            .releases
            .iter()
            .filter(|(_, s)| s.trials.values().all(|t| t.current.is_none()))
            .min_by_key(|(_, s)| s.last_seen_ms)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        cohort.releases.remove(&quietest);
    }
}

/// The share of `sketch`'s samples at or below `value`, by bisection over its quantiles.
fn share_at_or_below(sketch: &DDSketch, value: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    for _ in 0..30 {
        let mid = (lo + hi) / 2.0;
        match sketch.quantile(mid) {
            Ok(Some(v)) if v <= value => lo = mid,
            _ => hi = mid,
        }
    }
    lo
}

/// The baseline of the release `key` on one series: the older releases of the cohort since its
/// first bucket, or the previous release when those have too few samples.
fn baseline(
    config: &DetectConfig,
    cohort: &PerfCohort,
    key: &str,
    series: &SeriesKey,
) -> Option<(DDSketch, String)> {
    let candidate = cohort.releases.get(key)?;
    let from = candidate.first_seen_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
    let floor = (config.perf_min_samples * 5) as usize;
    let older = || {
        cohort.releases.iter().filter(move |(other_key, other)| {
            other_key.as_str() != key && other.first_seen_ms < candidate.first_seen_ms
        })
    };
    let mut rest: Option<DDSketch> = None;
    for (_, other) in older() {
        if let Some(s) = other.merged(series, from, i64::MAX) {
            match rest.as_mut() {
                None => rest = Some(s),
                Some(total) => {
                    let _ = total.merge(&s);
                }
            }
        }
    }
    if let Some(rest) = rest.filter(|s| s.count() >= floor) {
        return Some((rest, "fleet".to_string()));
    }
    let span = config.previous_release_span.as_millis() as i64;
    let (sketch, previous) = older()
        .filter_map(|(_, other)| other.merged(series, from - span, from).map(|s| (s, other)))
        .max_by_key(|(s, _)| s.count())?;
    (sketch.count() >= floor).then(|| (sketch, format!("previous {}", describe(&previous.release))))
}

/// Judges every release of `cohort` with new samples or an open finding, on the evidence up to
/// `window_end_ms`.
fn judge(
    config: &DetectConfig,
    cohort: &mut PerfCohort,
    window_end_ms: i64,
    out: &mut Vec<Detection>,
) {
    let threshold = stats::threshold(config.alpha);
    let q = config.perf_quantile;
    let keys: Vec<String> = cohort.releases.keys().cloned().collect();
    for key in keys {
        let Some(state) = cohort.releases.get(&key) else {
            continue;
        };
        let mut series: BTreeSet<SeriesKey> = state.dirty.clone();
        series.extend(
            state
                .trials
                .iter()
                .filter(|(_, t)| t.current.is_some())
                .map(|(k, _)| k.clone()),
        );
        if series.is_empty() {
            continue;
        }
        let mut judged = Vec::new();
        for s in &series {
            let evidence = match (
                state.merged(s, i64::MIN, i64::MAX),
                baseline(config, cohort, &key, s),
            ) {
                (Some(candidate), Some((base, label))) => {
                    let (Ok(Some(c_q)), Ok(Some(b_q))) = (candidate.quantile(q), base.quantile(q))
                    else {
                        judged.push((s.clone(), None));
                        continue;
                    };
                    let n_c = candidate.count() as i64;
                    let n_b = base.count() as i64;
                    let above = 1.0 - share_at_or_below(&candidate, b_q);
                    let c = Proportion {
                        events: (above * n_c as f64).round() as i64,
                        trials: n_c,
                    };
                    let b = Proportion {
                        events: ((1.0 - q) * n_b as f64).round() as i64,
                        trials: n_b,
                    };
                    let statistic = stats::log_mixture_ratio(c, b, config.perf_prior_effect);
                    let bad = n_c >= config.perf_min_samples
                        && c_q >= b_q * (1.0 + config.perf_min_relative_effect)
                        && statistic >= threshold;
                    Some(Evidence {
                        candidate_value: c_q,
                        candidate_count: n_c,
                        baseline_value: b_q,
                        baseline_count: n_b,
                        baseline_label: label,
                        statistic,
                        threshold,
                        window_end_ms,
                        bad,
                    })
                }
                _ => None,
            };
            judged.push((s.clone(), evidence));
        }
        let project = cohort.project.clone();
        let Some(state) = cohort.releases.get_mut(&key) else {
            continue;
        };
        state.dirty.clear();
        for (s, evidence) in judged {
            let trial = state.trials.entry(s.clone()).or_default();
            if let Some(next) = step(config, trial, evidence, state.last_seen_ms, window_end_ms) {
                out.push(record(
                    &project,
                    &state.release,
                    &s,
                    q,
                    state.first_seen_ms,
                    &next,
                ));
            }
        }
    }
}

/// The metric name in records: `screen_load_p75`.
fn metric_name(metric: &str, q: f64) -> String {
    format!("{metric}_p{}", (q * 100.0).round() as u32)
}

/// The id of a release's `episode`th finding (from 1) on a metric and screen.
pub fn detection_id(
    project: &str,
    release: &Release,
    metric: &str,
    screen: &str,
    q: f64,
    episode: u32,
) -> String {
    hex128(&[
        KIND,
        &cohort_key(project, release),
        &release_key(release),
        &metric_name(metric, q),
        screen,
        &episode.to_string(),
    ])
}

fn record(
    project: &str,
    release: &Release,
    (metric, screen): &SeriesKey,
    q: f64,
    first_seen_ms: i64,
    finding: &Finding,
) -> Detection {
    let e = &finding.evidence;
    let name = metric_name(metric, q);
    let on = if screen.is_empty() {
        String::new()
    } else {
        format!(" on {screen}")
    };
    let what = format!("{name}{on} of {}", describe(release));
    let against = format!(
        "{:.0} over {} samples against {:.0} over {} samples ({})",
        e.candidate_value, e.candidate_count, e.baseline_value, e.baseline_count, e.baseline_label
    );
    let summary = match finding.status {
        Status::Open | Status::Confirmed => format!(
            "{what} is slower than its baseline ({}): {against}, {:.2}x; ln Λ {:.1} ≥ {:.1}.",
            finding.status.name(),
            if e.baseline_value > 0.0 {
                e.candidate_value / e.baseline_value
            } else {
                0.0
            },
            e.statistic,
            e.threshold
        ),
        Status::Retracted => {
            format!("{what} no longer stands out once its windows are complete: {against}.")
        }
        Status::Resolved => format!("{what}: the release has had no samples since; resolved."),
    };
    finding.record(Detection {
        detection_id: detection_id(project, release, metric, screen, q, finding.episode),
        project: project.to_string(),
        kind: KIND.to_string(),
        release: release.clone(),
        screen: (!screen.is_empty()).then(|| screen.clone()),
        metric: name,
        window_start_ms: first_seen_ms,
        summary,
        ..Detection::default()
    })
}
