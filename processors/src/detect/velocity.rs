//! New-issue velocity: an issue new to a release that reaches a share of the release's users
//! within minutes of its first event there (Firebase's velocity alert).
//!
//! Run by the `issues` stage, which owns a project's issues and, beside its errors on
//! `errors.grouped`, gets a `SessionStart` for every session the `process` stage opens. The
//! release's users are those who started a session of it (or had an error on it) from one
//! `velocity_window` before the issue's first event there on; an issue's users are those its
//! errors on that release came from, from its first event there on (the earliest read before a
//! finding opens, since partitions interleave). While the window after that first event lasts, the issue is judged
//! on every error: it opens a finding when it has at least `velocity_min_users` users among at
//! least `velocity_min_release_users`, at least `velocity_share` of them, and more than an issue
//! at half that share would reach by chance (a Poisson upper tail below `alpha`). When the window
//! ends the finding is `confirmed` if the share still holds (the release's users kept coming),
//! else `retracted`; a confirmed finding is `resolved` once the issue has been quiet on the
//! release for `resolve_after`. An issue whose window passed without a finding is not judged
//! again on that release until it has been quiet as long.
//!
//! User sets are bounded by adaptive hash sampling: past [`MAX_USERS`] users, a set keeps only
//! the users whose hash has one more low zero bit, and counts stand for 2^level users each. The
//! issue's users and the release's are sampled alike, so their ratio stays unbiased.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis_schemas::Release;
use trellis_schemas::records::Detection;

use super::DetectConfig;
use super::finding::Status;
use super::release::{MINUTE_MS, clamp_ms, cohort_key, describe, hex128, minute_of, release_key};
use super::spike::poisson_log_upper_tail;

/// The `kind` of the detections this module emits.
pub const KIND: &str = "issue_velocity";

/// The metric name in records: affected users over the release's users.
pub const METRIC: &str = "affected_user_rate";

/// Most users a set keeps before it samples more sparsely.
pub const MAX_USERS: usize = 4096;

/// A set of user hashes, sampled at `level`: it holds the users whose hash has `level` low zero
/// bits, each standing for 2^level users.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Users {
    level: u32,
    /// By hash: the newest time seen.
    seen: BTreeMap<u64, i64>,
}

fn sampled(hash: u64, level: u32) -> bool {
    level == 0 || hash.trailing_zeros() >= level
}

impl Users {
    fn add(&mut self, hash: u64, t: i64) {
        if !sampled(hash, self.level) {
            return;
        }
        let newest = self.seen.entry(hash).or_insert(t);
        *newest = (*newest).max(t);
        while self.seen.len() > MAX_USERS {
            self.level += 1;
            let level = self.level;
            self.seen.retain(|h, _| sampled(*h, level));
        }
    }

    /// The users seen at or after `since`, estimated at `level` (at least this set's own).
    fn count(&self, since: i64, level: u32) -> i64 {
        let level = level.max(self.level);
        let n = self
            .seen
            .iter()
            .filter(|(h, t)| **t >= since && sampled(**h, level))
            .count() as i64;
        n << level
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Finding {
    status: Status,
    version: i64,
    opened_ms: i64,
    at_ms: i64,
    affected: i64,
    release_users: i64,
}

/// One issue on one release, from its first event there.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spread {
    project: String,
    issue_id: String,
    release: Release,
    release_id: String,
    first_ms: i64,
    last_ms: i64,
    users: Users,
    /// The window after the first event is over: nothing more to judge.
    judged: bool,
    finding: Option<Finding>,
}

/// What a checkpoint holds (inside the issues stage's state).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VelocityState {
    /// By project and release: who used it lately.
    releases: BTreeMap<String, Users>,
    /// By project, issue and release.
    spreads: BTreeMap<String, Spread>,
    /// The newest minute per project.
    clocks: BTreeMap<String, i64>,
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct VelocityCounters {
    /// Session starts counted.
    pub starts: u64,
    /// Issues on releases forgotten to stay within `spike_max_issues` per project.
    pub evicted: u64,
    /// Detection records emitted.
    pub emitted: u64,
}

/// The velocity detector of the projects one partition of `errors.grouped` holds. Its state is
/// a [`VelocityState`] kept (and checkpointed) by the issues stage beside its issues.
pub struct VelocityDetector {
    config: DetectConfig,
    /// Counters since the last drain.
    pub counters: VelocityCounters,
}

/// The key of `project`'s `release`: its cohort and the release within it.
fn release_id(project: &str, r: &Release) -> String {
    format!("{}\u{0}{}", cohort_key(project, r), release_key(r))
}

/// The id of the finding on `issue_id` in the release `release_id`, tracked from `first_ms`.
pub fn detection_id(project: &str, issue_id: &str, release_id: &str, first_ms: i64) -> String {
    hex128(&[KIND, project, issue_id, release_id, &first_ms.to_string()])
}

impl VelocityDetector {
    /// A detector with `config`.
    pub fn new(config: DetectConfig) -> Self {
        VelocityDetector {
            config,
            counters: VelocityCounters::default(),
        }
    }

    fn window_ms(&self) -> i64 {
        self.config.velocity_window.as_millis() as i64
    }

    /// Counts a session that started: `user` (a user hash) uses `release` at `t`.
    pub fn observe_start(
        &mut self,
        state: &mut VelocityState,
        project: &str,
        release: &Release,
        user: u64,
        t: i64,
        out: &mut Vec<Detection>,
    ) {
        let before = out.len();
        let t = clamp_ms(t);
        self.counters.starts += 1;
        self.tick(state, project, t, out);
        state
            .releases
            .entry(release_id(project, release))
            .or_default()
            .add(user, t);
        self.counters.emitted += (out.len() - before) as u64;
    }

    /// Counts an error of `issue_id` on `release` from `user` at `t`.
    #[allow(clippy::too_many_arguments)]
    pub fn observe_error(
        &mut self,
        state: &mut VelocityState,
        project: &str,
        issue_id: &str,
        release: &Release,
        user: u64,
        t: i64,
        out: &mut Vec<Detection>,
    ) {
        let before = out.len();
        let t = clamp_ms(t);
        self.tick(state, project, t, out);
        let rid = release_id(project, release);
        let release_users = state.releases.entry(rid.clone()).or_default();
        release_users.add(user, t);
        let key = format!("{project}\u{0}{issue_id}\u{0}{rid}");
        let spread = state.spreads.entry(key).or_insert_with(|| Spread {
            project: project.to_string(),
            issue_id: issue_id.to_string(),
            release: release.clone(),
            release_id: rid,
            first_ms: t,
            last_ms: t,
            users: Users::default(),
            judged: false,
            finding: None,
        });
        spread.last_ms = spread.last_ms.max(t);
        // The process stage interleaves its partitions, so errors of different devices reach
        // this stage a little out of time order: until a finding opens, the window starts at
        // the earliest error read, as long as a window from there would not be over already.
        let clock = state.clocks.get(project).copied().unwrap_or(i64::MIN);
        if t < spread.first_ms
            && spread.finding.is_none()
            && !spread.judged
            && t.saturating_add(self.window_ms()) > clock
        {
            spread.first_ms = t;
        }
        if spread.judged || t < spread.first_ms || t > spread.first_ms + self.window_ms() {
            return;
        }
        spread.users.add(user, t);
        if spread.finding.is_none() {
            let (affected, total) = counts(spread, release_users, self.window_ms());
            if self.crosses(affected, total) {
                spread.finding = Some(Finding {
                    status: Status::Open,
                    version: 1,
                    opened_ms: t,
                    at_ms: t,
                    affected,
                    release_users: total,
                });
                out.push(record(spread, &self.config));
            }
        }
        self.evict(state, project);
        self.counters.emitted += (out.len() - before) as u64;
    }

    /// Whether `affected` of `total` users is a finding: at least the floors, at least the
    /// share, and more than chance would give an issue at half the share (a Poisson upper tail
    /// below `alpha`), so that an issue well under the share does not cross it on its first
    /// handful of users.
    fn crosses(&self, affected: i64, total: i64) -> bool {
        let c = &self.config;
        affected >= c.velocity_min_users
            && total >= c.velocity_min_release_users
            && affected as f64 >= c.velocity_share * total as f64
            && -poisson_log_upper_tail(affected, 0.5 * c.velocity_share * total as f64)
                >= super::stats::threshold(c.alpha)
    }

    /// Moves the project's clock to `t`'s minute; on a new minute, ends the windows that are
    /// over, resolves quiet findings and forgets what is no longer needed.
    fn tick(&mut self, state: &mut VelocityState, project: &str, t: i64, out: &mut Vec<Detection>) {
        let minute = minute_of(t);
        match state.clocks.get(project) {
            Some(clock) if *clock >= minute => return,
            _ => state.clocks.insert(project.to_string(), minute),
        };
        let window = self.window_ms();
        let quiet = self.config.resolve_after.as_millis() as i64;
        let prefix = format!("{project}\u{0}");
        let mut forget = Vec::new();
        for (key, spread) in state.spreads.range_mut(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            if !spread.judged && minute >= spread.first_ms + window {
                spread.judged = true;
                let release_users = state.releases.get(&spread.release_id);
                let (affected, total) = match release_users {
                    Some(r) => counts(spread, r, window),
                    None => (0, 0),
                };
                let holds = self.crosses(affected, total);
                if let Some(f) = spread.finding.as_mut() {
                    f.status = if holds {
                        Status::Confirmed
                    } else {
                        Status::Retracted
                    };
                    f.version += 1;
                    f.at_ms = spread.first_ms + window;
                    f.affected = affected;
                    f.release_users = total;
                    out.push(record(spread, &self.config));
                }
            }
            let quiet_now = minute >= spread.last_ms.saturating_add(quiet);
            if let Some(f) = spread
                .finding
                .as_mut()
                .filter(|f| f.status == Status::Confirmed)
                && quiet_now
            {
                f.status = Status::Resolved;
                f.version += 1;
                f.at_ms = minute;
                out.push(record(spread, &self.config));
            }
            if spread.judged && quiet_now {
                forget.push(key.clone());
            }
        }
        for key in forget {
            state.spreads.remove(&key);
        }
        // Issues still judged started at most a window ago, and count the release's users from
        // a window before that: older users are no longer needed.
        let oldest = minute - 2 * window - MINUTE_MS;
        let prefix = format!("{project}\u{0}");
        let mut empty = Vec::new();
        for (key, users) in state.releases.range_mut(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            users.seen.retain(|_, seen| *seen >= oldest);
            if users.seen.is_empty() {
                empty.push(key.clone());
            }
        }
        for key in empty {
            state.releases.remove(&key);
        }
    }

    /// Keeps a project within `spike_max_issues` issues on releases, forgetting the longest
    /// quiet of those without a finding in progress.
    fn evict(&mut self, state: &mut VelocityState, project: &str) {
        let prefix = format!("{project}\u{0}");
        let tracked = || {
            state
                .spreads
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
        };
        if tracked().count() <= self.config.spike_max_issues {
            return;
        }
        let quietest = tracked()
            .filter(|(_, s)| {
                s.finding
                    .as_ref()
                    .is_none_or(|f| matches!(f.status, Status::Retracted | Status::Resolved))
            })
            .min_by_key(|(_, s)| s.last_ms)
            .map(|(k, _)| k.clone());
        if let Some(key) = quietest {
            state.spreads.remove(&key);
            self.counters.evicted += 1;
        }
    }
}

/// The issue's users, and the release's users from a window before the issue's first event on,
/// sampled alike.
fn counts(spread: &Spread, release: &Users, window: i64) -> (i64, i64) {
    let level = spread.users.level.max(release.level);
    let affected = spread.users.count(i64::MIN, level);
    let total = release.count(spread.first_ms - window, level).max(affected);
    (affected, total)
}

fn record(spread: &Spread, config: &DetectConfig) -> Detection {
    let f = spread
        .finding
        .as_ref()
        .expect("a record is made of a finding");
    let share = if f.release_users > 0 {
        f.affected as f64 / f.release_users as f64
    } else {
        0.0
    };
    let minutes = config.velocity_window.as_secs() / 60;
    let release = describe(&spread.release);
    let summary = match f.status {
        Status::Resolved => format!("Issue {} is quiet on {release}; resolved.", spread.issue_id),
        Status::Retracted => format!(
            "Issue {} stayed under {:.1}% of the users of {release} ({} of {}); retracted.",
            spread.issue_id,
            config.velocity_share * 100.0,
            f.affected,
            f.release_users
        ),
        status => format!(
            "New issue {} reached {:.1}% of the users of {release} ({} of {}) within {minutes} \
             minutes of its first event there ({}).",
            spread.issue_id,
            share * 100.0,
            f.affected,
            f.release_users,
            status.name()
        ),
    };
    Detection {
        detection_id: detection_id(
            &spread.project,
            &spread.issue_id,
            &spread.release_id,
            spread.first_ms,
        ),
        project: spread.project.clone(),
        kind: KIND.to_string(),
        release: spread.release.clone(),
        issue_id: Some(spread.issue_id.clone()),
        metric: METRIC.to_string(),
        baseline: "velocity threshold".to_string(),
        baseline_value: config.velocity_share,
        baseline_count: f.release_users,
        candidate_value: share,
        candidate_count: f.affected,
        statistic: share,
        threshold: config.velocity_share,
        window_start_ms: spread.first_ms,
        window_end_ms: f.at_ms,
        opened_ms: f.opened_ms,
        status: f.status.name().to_string(),
        summary,
        version: f.version,
        ..Detection::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_790_000_000_000;

    fn release(update: &str) -> Release {
        Release {
            platform: "ios".into(),
            app_version: "2.15.0".into(),
            update_id: Some(update.into()),
            channel: Some("production".into()),
            ..Release::default()
        }
    }

    fn user(n: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes())
    }

    /// `users` start sessions of the release over its first ten minutes.
    fn fleet(
        d: &mut VelocityDetector,
        s: &mut VelocityState,
        users: u64,
        out: &mut Vec<Detection>,
    ) {
        for n in 0..users {
            let t = T0 + (n as i64 * 10 * MIN) / users as i64;
            d.observe_start(s, "shop", &release("u-1"), user(n), t, out);
        }
    }

    #[test]
    fn an_issue_reaching_its_share_of_the_release_opens_then_confirms_then_resolves() {
        let mut d = VelocityDetector::new(DetectConfig::default());
        let mut s = VelocityState::default();
        let mut out = Vec::new();
        fleet(&mut d, &mut s, 1000, &mut out);
        // 2% of the release's users hit the issue within 15 minutes.
        for n in 0..20 {
            let t = T0 + 10 * MIN + n * 45_000;
            d.observe_error(
                &mut s,
                "shop",
                "i-1",
                &release("u-1"),
                user(n as u64),
                t,
                &mut out,
            );
        }
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].status, "open");
        assert_eq!(out[0].kind, KIND);
        assert_eq!(out[0].issue_id.as_deref(), Some("i-1"));
        assert_eq!(out[0].release, release("u-1"));
        // 10 users are 1% of 1,000, but an issue at half the share reaches 10 by chance too
        // often (p > α): 13 is the first count that is evidence.
        assert_eq!((out[0].candidate_count, out[0].baseline_count), (13, 1000));
        let tail = |k| -poisson_log_upper_tail(k, 5.0);
        let bar = crate::detect::stats::threshold(DetectConfig::default().alpha);
        assert!(tail(12) < bar && tail(13) >= bar);
        // The window ends with the share held; a day of quiet resolves it.
        d.observe_start(
            &mut s,
            "shop",
            &release("u-1"),
            user(5000),
            T0 + 45 * MIN,
            &mut out,
        );
        d.observe_start(
            &mut s,
            "shop",
            &release("u-1"),
            user(5001),
            T0 + 27 * 60 * MIN,
            &mut out,
        );
        let statuses: Vec<_> = out.iter().map(|d| (d.status.as_str(), d.version)).collect();
        assert_eq!(statuses, [("open", 1), ("confirmed", 2), ("resolved", 3)]);
        assert!(out.iter().all(|x| x.detection_id == out[0].detection_id));
        assert!(s.spreads.is_empty(), "forgotten once resolved and quiet");
    }

    #[test]
    fn errors_read_out_of_time_order_count_from_the_earliest() {
        let mut d = VelocityDetector::new(DetectConfig::default());
        let mut s = VelocityState::default();
        let mut out = Vec::new();
        fleet(&mut d, &mut s, 1000, &mut out);
        // The second error is read first (another partition's), then the first, then the rest.
        let order = [1, 0].into_iter().chain(2..20);
        for n in order {
            let t = T0 + 10 * MIN + n * 45_000;
            d.observe_error(
                &mut s,
                "shop",
                "i-1",
                &release("u-1"),
                user(n as u64),
                t,
                &mut out,
            );
        }
        d.observe_start(
            &mut s,
            "shop",
            &release("u-1"),
            user(5000),
            T0 + 45 * MIN,
            &mut out,
        );
        let confirmed = out.last().unwrap();
        assert_eq!(confirmed.status, "confirmed", "{out:#?}");
        assert_eq!(confirmed.candidate_count, 20, "{confirmed:#?}");
        assert_eq!(confirmed.window_start_ms, T0 + 10 * MIN);
    }

    #[test]
    fn a_rare_issue_and_a_small_release_are_not_reported() {
        let mut d = VelocityDetector::new(DetectConfig::default());
        let mut s = VelocityState::default();
        let mut out = Vec::new();
        fleet(&mut d, &mut s, 5000, &mut out);
        // 9 users: under the floor, though 100% of nothing would be plenty.
        for n in 0..9 {
            d.observe_error(
                &mut s,
                "shop",
                "i-1",
                &release("u-1"),
                user(n),
                T0 + 11 * MIN,
                &mut out,
            );
        }
        // 0.5% of the release: under the share.
        for n in 100..125 {
            d.observe_error(
                &mut s,
                "shop",
                "i-2",
                &release("u-1"),
                user(n),
                T0 + 12 * MIN,
                &mut out,
            );
        }
        // A release of 50 users, all affected: under the release floor.
        for n in 0..50 {
            d.observe_error(
                &mut s,
                "shop",
                "i-3",
                &release("u-2"),
                user(n),
                T0 + 12 * MIN,
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:#?}");
        // After the window, the issue is judged no more on that release.
        for n in 200..400 {
            d.observe_error(
                &mut s,
                "shop",
                "i-2",
                &release("u-1"),
                user(n),
                T0 + 50 * MIN,
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:#?}");
    }

    #[test]
    fn a_share_diluted_by_the_users_who_came_later_is_retracted() {
        let mut d = VelocityDetector::new(DetectConfig::default());
        let mut s = VelocityState::default();
        let mut out = Vec::new();
        fleet(&mut d, &mut s, 400, &mut out);
        for n in 0..10 {
            d.observe_error(
                &mut s,
                "shop",
                "i-1",
                &release("u-1"),
                user(n),
                T0 + 11 * MIN,
                &mut out,
            );
        }
        assert_eq!(out.len(), 1);
        for n in 1000..3000 {
            let t = T0 + 12 * MIN + (n - 1000) as i64 * 300;
            d.observe_start(&mut s, "shop", &release("u-1"), user(n), t, &mut out);
        }
        d.observe_start(
            &mut s,
            "shop",
            &release("u-1"),
            user(9999),
            T0 + 42 * MIN,
            &mut out,
        );
        assert_eq!(out.last().unwrap().status, "retracted", "{out:#?}");
    }

    #[test]
    fn sampling_keeps_sets_bounded_and_the_share_close() {
        let mut d = VelocityDetector::new(DetectConfig::default());
        let mut s = VelocityState::default();
        let mut out = Vec::new();
        fleet(&mut d, &mut s, 100_000, &mut out);
        for n in 0..3000 {
            let t = T0 + 10 * MIN + n as i64 * 100;
            d.observe_error(&mut s, "shop", "i-1", &release("u-1"), user(n), t, &mut out);
        }
        let users = &s.releases.values().next().unwrap();
        assert!(users.seen.len() <= MAX_USERS && users.level > 0);
        let open = &out[0];
        let share = open.candidate_count as f64 / open.baseline_count as f64;
        assert!((0.008..0.015).contains(&share), "{share}: {open:?}");
    }
}
