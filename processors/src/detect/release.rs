//! Release and OTA-update health regressions: is a release's crash, abnormal-exit or errored
//! session rate worse than its baseline?
//!
//! Releases are compared within a *cohort*: one project, platform, runtime version, channel and
//! environment, the population an OTA update is rolled out to. Each release keeps per-minute
//! counts of its sessions by the minute they *started* in (`BTreeMap` from minute to counts), so
//! any span of event time can be summed, in whatever order sessions arrive, and a candidate and
//! its baseline are compared over sessions that started in the same minutes.
//!
//! The **baseline** of a release is the rest of its cohort over the same minutes (from the
//! release's first session on; releases first seen before it, never newer ones): for a staged
//! rollout, its control group. When the rest of the
//! cohort has fewer than `min_baseline_sessions` sessions in that span (the release has the
//! whole fleet), the baseline is the previous release: the one with the most sessions in the
//! `previous_release_span` before the candidate's first session, over that span.
//!
//! Each time the cohort's event time enters a new minute, every release with new sessions (or
//! an open finding) is judged on each metric by the rate-ratio mixture SPRT in [`super::stats`], on the
//! evidence so far: sessions are counted when they *end*, as soon as the `process` stage closes
//! them, not when a health window closes. A finding opens when the test crosses its threshold
//! with enough exposure and a large enough relative effect; `confirm_after` later it is
//! confirmed if the evidence still holds, or retracted; a confirmed finding is resolved once its
//! release has been quiet for `resolve_after`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use trellis_schemas::records::{Detection, SessionRecord};
use trellis_schemas::{Release, SessionStatus};
use xxhash_rust::xxh3::xxh3_128;

use super::DetectConfig;
use super::finding::{Evidence, Finding, Status, Trial, step};
use super::stats::{self, Proportion};

/// One minute, the resolution of counts and evaluations.
pub const MINUTE_MS: i64 = 60_000;

/// The `kind` of the detections this module emits.
pub const KIND: &str = "release_regression";

/// Sessions by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Sessions.
    pub sessions: i64,
    /// Crashed sessions.
    pub crashed: i64,
    /// Sessions that ended abnormally (killed, watchdog, ANR).
    pub abnormal: i64,
    /// Sessions with errors that did not crash or end abnormally.
    pub errored: i64,
    /// Distinct users (filled when summing a span, not per minute).
    pub users: i64,
    /// Distinct users with a crashed session among them.
    pub crashed_users: i64,
}

impl Counts {
    /// One session with `status`.
    pub fn of(status: SessionStatus) -> Self {
        Counts {
            sessions: 1,
            crashed: i64::from(status == SessionStatus::Crashed),
            abnormal: i64::from(status == SessionStatus::Abnormal),
            errored: i64::from(status == SessionStatus::Errored),
            ..Counts::default()
        }
    }

    fn add(&mut self, other: &Counts) {
        self.sessions += other.sessions;
        self.crashed += other.crashed;
        self.abnormal += other.abnormal;
        self.errored += other.errored;
        self.users += other.users;
        self.crashed_users += other.crashed_users;
    }

    fn sub(&mut self, other: &Counts) {
        self.sessions -= other.sessions;
        self.crashed -= other.crashed;
        self.abnormal -= other.abnormal;
        self.errored -= other.errored;
    }
}

/// A rate a release is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Metric {
    /// Crashed sessions over sessions.
    CrashRate,
    /// Abnormally ended sessions (ANRs, watchdog kills) over sessions.
    AbnormalRate,
    /// Sessions with errors (not crashed or abnormal) over sessions.
    ErroredRate,
    /// Users with a crashed session over users: one minus the crash-free users.
    CrashedUserRate,
}

impl Metric {
    /// Every metric, in the order they are judged.
    pub const ALL: [Metric; 4] = [
        Metric::CrashRate,
        Metric::AbnormalRate,
        Metric::ErroredRate,
        Metric::CrashedUserRate,
    ];

    /// The name in records and config.
    pub fn name(self) -> &'static str {
        match self {
            Metric::CrashRate => "crash_rate",
            Metric::AbnormalRate => "abnormal_rate",
            Metric::ErroredRate => "errored_rate",
            Metric::CrashedUserRate => "crashed_user_rate",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::CrashRate => "Crash rate",
            Metric::AbnormalRate => "Abnormal-exit rate",
            Metric::ErroredRate => "Errored-session rate",
            Metric::CrashedUserRate => "Crashed-user rate (1 − crash-free users)",
        }
    }

    fn of(self, counts: &Counts) -> Proportion {
        let (events, trials) = match self {
            Metric::CrashRate => (counts.crashed, counts.sessions),
            Metric::AbnormalRate => (counts.abnormal, counts.sessions),
            Metric::ErroredRate => (counts.errored, counts.sessions),
            Metric::CrashedUserRate => (counts.crashed_users, counts.users),
        };
        Proportion { events, trials }
    }

    /// What the metric counts, for summaries.
    fn unit(self) -> &'static str {
        match self {
            Metric::CrashedUserRate => "users",
            _ => "sessions",
        }
    }
}

/// When a user last started a session of a release, and last started one that crashed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct UserSeen {
    last_start_ms: i64,
    last_crash_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReleaseState {
    release: Release,
    first_seen_ms: i64,
    last_seen_ms: i64,
    /// Sessions by the minute they started in.
    minutes: BTreeMap<i64, Counts>,
    /// Users by their hash (the user id, else the device id), at most `max_users` per release.
    users: HashMap<u64, UserSeen>,
    /// New sessions since the last judgement.
    dirty: bool,
    trials: BTreeMap<Metric, Trial>,
}

impl ReleaseState {
    fn sum_since(&self, from_ms: i64) -> Counts {
        self.sum_between(from_ms, i64::MAX)
    }

    /// Sessions that started in `[from_ms, to_ms)`, and the users whose latest session did.
    fn sum_between(&self, from_ms: i64, to_ms: i64) -> Counts {
        let mut total = Counts::default();
        for counts in self.minutes.range(from_ms..to_ms).map(|(_, c)| c) {
            total.add(counts);
        }
        let within = |t: i64| (from_ms..to_ms).contains(&t);
        for user in self.users.values().filter(|u| within(u.last_start_ms)) {
            total.users += 1;
            total.crashed_users += i64::from(user.last_crash_ms.is_some_and(|t| t >= from_ms));
        }
        total
    }

    fn has_current(&self) -> bool {
        self.trials.values().any(|t| t.current.is_some())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cohort {
    project: String,
    /// Releases by their key within the cohort.
    releases: BTreeMap<String, ReleaseState>,
    /// The cohort's event time: the newest minute a session ended in.
    clock_ms: Option<i64>,
    /// Sessions counted in the last `confirm_after` plus an hour of the cohort's event time, by
    /// session-id hash: a replay is skipped, a newer version replaces the older one's counts.
    counted: HashMap<u64, Counted>,
}

/// A session as counted, so a later version of it replaces its contribution.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Counted {
    version: i64,
    /// The minute it started in: where its counts are.
    minute: i64,
    /// The minute it ended in: when it is forgotten.
    ended: i64,
    status: SessionStatus,
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Sessions counted.
    pub sessions: u64,
    /// Session records seen again (a replay of the `process` stage) and not counted twice.
    pub replayed: u64,
    /// Sessions that ended before the kept history.
    pub too_old: u64,
    /// Releases forgotten to stay within `max_releases`.
    pub release_evicted: u64,
    /// New users of a release past `max_users`, left out of its user counts.
    pub users_capped: u64,
    /// Detection records emitted.
    pub emitted: u64,
}

/// The release-regression detector of the projects one input partition holds.
pub struct ReleaseDetector {
    config: DetectConfig,
    cohorts: BTreeMap<String, Cohort>,
    /// Counters since the last drain.
    pub counters: Counters,
}

/// What a checkpoint holds.
#[derive(Serialize, Deserialize)]
pub struct DetectorState {
    cohorts: Vec<(String, Cohort)>,
}

fn opt(o: &Option<String>) -> &str {
    o.as_deref().unwrap_or("")
}

/// The cohort a release belongs to: project, platform, runtime version, channel, environment.
pub(super) fn cohort_key(project: &str, r: &Release) -> String {
    [
        project,
        &r.platform,
        opt(&r.runtime_version),
        opt(&r.channel),
        opt(&r.environment),
    ]
    .join("\u{0}")
}

/// A release within its cohort: app version, build, OTA update.
pub(super) fn release_key(r: &Release) -> String {
    [r.app_version.as_str(), opt(&r.build), opt(&r.update_id)].join("\u{0}")
}

/// A release for people: `ios 2.14.0 (1402) update 8d1c… on production` (the issues' release
/// printing, and the channel).
pub fn describe(r: &Release) -> String {
    let key = crate::grouping::ReleaseKey::of(r);
    match &r.channel {
        Some(channel) => format!("{key} on {channel}"),
        None => key.to_string(),
    }
}

/// Event times as the detectors compute with them: within ±2^53 ms (±285,000 years), so that
/// adding or subtracting a span of days to a time from the network cannot overflow.
pub(super) fn clamp_ms(ms: i64) -> i64 {
    ms.clamp(-(1 << 53), 1 << 53)
}

pub(super) fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

pub(super) fn hex128(parts: &[&str]) -> String {
    format!("{:032x}", xxh3_128(parts.join("\u{0}").as_bytes()))
}

impl ReleaseDetector {
    /// An empty detector.
    pub fn new(config: DetectConfig) -> Self {
        ReleaseDetector {
            config,
            cohorts: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    /// A detector from a checkpointed state.
    pub fn restore(config: DetectConfig, state: DetectorState) -> Self {
        let mut detector = ReleaseDetector::new(config);
        detector.cohorts = state.cohorts.into_iter().collect();
        detector
    }

    /// The state to checkpoint.
    pub fn state(&self) -> DetectorState {
        DetectorState {
            cohorts: self
                .cohorts
                .iter()
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect(),
        }
    }

    /// Releases tracked, over every cohort.
    pub fn releases(&self) -> usize {
        self.cohorts.values().map(|c| c.releases.len()).sum()
    }

    /// Counts a closed session and returns the detections it caused, in order.
    ///
    /// A session record seen again with the same version (a replay) is not counted twice; a
    /// newer version of a counted session replaces the older one's contribution.
    pub fn observe(&mut self, session: &SessionRecord, out: &mut Vec<Detection>) {
        let before = out.len();
        let (started_ms, ended_ms) = (clamp_ms(session.started_ms), clamp_ms(session.ended_ms));
        let started_ms = started_ms.min(ended_ms);
        let minute = minute_of(ended_ms);
        let started = minute_of(started_ms);
        let id = xxhash_rust::xxh3::xxh3_64(
            format!("{}\u{0}{}", session.project, session.session_id).as_bytes(),
        );
        let ckey = cohort_key(&session.project, &session.release);
        let rkey = release_key(&session.release);
        let cohort = self.cohorts.entry(ckey.clone()).or_insert_with(|| Cohort {
            project: session.project.clone(),
            ..Cohort::default()
        });
        let history_ms = self.config.history.as_millis() as i64;
        let keep_ms = self.config.confirm_after.as_millis() as i64 + 3_600_000;
        // A session that ended further behind the cohort's clock than the replay memory reaches
        // is not counted: counting it could not be protected against a replay counting it again.
        if cohort
            .clock_ms
            .is_some_and(|clock| started < clock - history_ms || minute < clock - keep_ms)
        {
            self.counters.too_old += 1;
            return;
        }
        let previous = match cohort.counted.get(&id) {
            Some(c) if c.version >= session.version => {
                self.counters.replayed += 1;
                return;
            }
            Some(c) => Some(*c),
            None => None,
        };
        // The cohort's event time moved into a new minute: judge what the minutes before hold.
        if cohort.clock_ms.is_some_and(|clock| minute > clock) {
            let clock = cohort.clock_ms.unwrap_or(minute);
            judge(&self.config, cohort, clock + MINUTE_MS, out);
            cohort.clock_ms = Some(minute);
            forget_old(&self.config, cohort, minute);
            cohort.counted.retain(|_, c| c.ended >= minute - keep_ms);
        } else if cohort.clock_ms.is_none() {
            cohort.clock_ms = Some(minute);
        }
        let state = cohort.releases.entry(rkey).or_insert_with(|| ReleaseState {
            release: session.release.clone(),
            first_seen_ms: started_ms,
            last_seen_ms: ended_ms,
            minutes: BTreeMap::new(),
            users: HashMap::new(),
            dirty: false,
            trials: BTreeMap::new(),
        });
        state.first_seen_ms = state.first_seen_ms.min(started_ms);
        state.last_seen_ms = state.last_seen_ms.max(ended_ms);
        state.dirty = true;
        if let Some(before) = previous {
            // The counts of the older version leave wherever they went in this release.
            if let Some(c) = state.minutes.get_mut(&before.minute) {
                c.sub(&Counts::of(before.status));
            }
        }
        state
            .minutes
            .entry(started)
            .or_default()
            .add(&Counts::of(session.status));
        let user =
            crate::pipeline::health::user_hash(session.user_id.as_deref(), &session.device_id);
        let crashed = session.status == SessionStatus::Crashed;
        let room = state.users.len() < self.config.max_users;
        match state.users.get_mut(&user) {
            Some(seen) => {
                seen.last_start_ms = seen.last_start_ms.max(started_ms);
                if crashed {
                    seen.last_crash_ms =
                        Some(seen.last_crash_ms.map_or(started_ms, |t| t.max(started_ms)));
                }
            }
            None if room => {
                state.users.insert(
                    user,
                    UserSeen {
                        last_start_ms: started_ms,
                        last_crash_ms: crashed.then_some(started_ms),
                    },
                );
            }
            None => self.counters.users_capped += 1,
        }
        self.counters.sessions += 1;
        evict_releases(&self.config, cohort, &mut self.counters);
        cohort.counted.insert(
            id,
            Counted {
                version: session.version,
                minute: started,
                ended: minute,
                status: session.status,
            },
        );
        self.counters.emitted += (out.len() - before) as u64;
    }
}

/// Drops minutes older than the history, and releases with nothing left and nothing open.
fn forget_old(config: &DetectConfig, cohort: &mut Cohort, now_ms: i64) {
    let oldest = now_ms - config.history.as_millis() as i64;
    cohort.releases.retain(|_, state| {
        while let Some(entry) = state.minutes.first_entry() {
            if *entry.key() >= oldest {
                break;
            }
            entry.remove();
        }
        state.users.retain(|_, u| u.last_start_ms >= oldest);
        !state.minutes.is_empty() || state.has_current()
    });
}

/// Keeps a cohort within `max_releases`, forgetting the releases quiet the longest.
fn evict_releases(config: &DetectConfig, cohort: &mut Cohort, counters: &mut Counters) {
    while cohort.releases.len() > config.max_releases {
        // A release with an open or confirmed finding stays until the finding closes.
        let Some(quietest) = cohort
            .releases
            .iter()
            .filter(|(_, s)| !s.has_current())
            .min_by_key(|(_, s)| s.last_seen_ms)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        cohort.releases.remove(&quietest);
        counters.release_evicted += 1;
    }
}

/// The baseline of the release `key`: the rest of the cohort since its first session, or the
/// previous release when the rest is too small.
fn baseline(config: &DetectConfig, cohort: &Cohort, key: &str, now_ms: i64) -> Option<Baseline> {
    let candidate = cohort.releases.get(key)?;
    let from = minute_of(candidate.first_seen_ms);
    // Releases older than the candidate: a new release is not judged against a newer one.
    let older = || {
        cohort.releases.iter().filter(move |(other_key, other)| {
            other_key.as_str() != key && other.first_seen_ms < candidate.first_seen_ms
        })
    };
    let mut rest = Counts::default();
    for (_, other) in older() {
        rest.add(&other.sum_since(from));
    }
    if rest.sessions >= config.min_baseline_sessions {
        return Some(Baseline {
            counts: rest,
            label: "fleet".to_string(),
            candidate: candidate.sum_since(from),
        });
    }
    // The candidate's first `span` against the previous release's last `span` before it: equal
    // spans, since a user's chance of a crash grows with the time they are watched.
    let (counts, span, previous) = older()
        .map(|(_, other)| {
            let span = (config.previous_release_span.as_millis() as i64)
                .min(now_ms - from)
                .min(from - minute_of(other.first_seen_ms))
                .max(MINUTE_MS);
            (other.sum_between(from - span, from), span, other)
        })
        .max_by_key(|(counts, _, _)| counts.sessions)?;
    (counts.sessions >= config.min_baseline_sessions).then(|| Baseline {
        counts,
        label: format!("previous {}", describe(&previous.release)),
        candidate: candidate.sum_between(from, from + span),
    })
}

/// A candidate's evidence and its baseline's, over matching spans.
struct Baseline {
    counts: Counts,
    label: String,
    candidate: Counts,
}

/// Judges every release of `cohort` that has new sessions or an open finding, on the evidence
/// up to `window_end_ms`.
fn judge(config: &DetectConfig, cohort: &mut Cohort, window_end_ms: i64, out: &mut Vec<Detection>) {
    let keys: Vec<String> = cohort
        .releases
        .iter()
        .filter(|(_, s)| s.dirty || s.has_current())
        .map(|(k, _)| k.clone())
        .collect();
    let threshold = stats::threshold(config.alpha);
    let ratios = stats::ratio_grid(config.min_relative_effect);
    for key in keys {
        let base = baseline(config, cohort, &key, window_end_ms);
        let project = cohort.project.clone();
        let Some(state) = cohort.releases.get_mut(&key) else {
            continue;
        };
        state.dirty = false;
        for metric in Metric::ALL {
            let evidence = base.as_ref().map(|base| {
                let (c, b) = (metric.of(&base.candidate), metric.of(&base.counts));
                let statistic = stats::log_rate_ratio_mixture(c, b, &ratios);
                let bad = c.trials >= config.min_sessions
                    && c.events >= config.min_events
                    && c.rate() >= b.rate() * (1.0 + config.min_relative_effect)
                    && statistic >= threshold;
                Evidence {
                    candidate_value: c.rate(),
                    candidate_count: c.trials,
                    baseline_value: b.rate(),
                    baseline_count: b.trials,
                    baseline_label: base.label.clone(),
                    statistic,
                    threshold,
                    window_end_ms,
                    bad,
                }
            });
            let trial = state.trials.entry(metric).or_default();
            let Some(next) = step(config, trial, evidence, state.last_seen_ms, window_end_ms)
            else {
                continue;
            };
            out.push(record(
                &project,
                &state.release,
                metric,
                state.first_seen_ms,
                &next,
            ));
        }
    }
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

fn record(
    project: &str,
    release: &Release,
    metric: Metric,
    first_seen_ms: i64,
    finding: &Finding,
) -> Detection {
    let e = &finding.evidence;
    let what = format!("{} of {}", metric.label(), describe(release));
    let unit = metric.unit();
    let against = format!(
        "{} of {} {unit} against {} of {} {unit} ({})",
        percent(e.candidate_value),
        e.candidate_count,
        percent(e.baseline_value),
        e.baseline_count,
        e.baseline_label,
    );
    let summary = match finding.status {
        Status::Open | Status::Confirmed => {
            let ratio = if e.baseline_value > 0.0 {
                format!("{:.2}x", e.candidate_value / e.baseline_value)
            } else {
                "from zero".to_string()
            };
            format!(
                "{what} is worse than its baseline ({}): {against}, {ratio}; ln Λ {:.1} ≥ {:.1}.",
                finding.status.name(),
                e.statistic,
                e.threshold
            )
        }
        Status::Retracted => {
            format!("{what} no longer stands out once its sessions are complete: {against}.")
        }
        Status::Resolved => format!("{what}: the release has had no sessions since; resolved."),
    };
    finding.record(Detection {
        detection_id: detection_id(project, release, metric, finding.episode),
        project: project.to_string(),
        kind: KIND.to_string(),
        release: release.clone(),
        metric: metric.name().to_string(),
        window_start_ms: first_seen_ms,
        summary,
        ..Detection::default()
    })
}

/// The id of a release's `episode`th finding (from 1) on `metric`: derived from the project, the
/// release identity, the metric and the episode, so a replay gives the same finding the same id.
pub fn detection_id(project: &str, release: &Release, metric: Metric, episode: u32) -> String {
    hex128(&[
        KIND,
        &cohort_key(project, release),
        &release_key(release),
        metric.name(),
        &episode.to_string(),
    ])
}
