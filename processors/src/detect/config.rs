//! Settings of the `detect` stage: `[processors.detect]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[processors.detect]` section. The defaults are the ones the rollout simulator measured
/// (`benchmarks/README.md`, "Detection quality").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Whether the `detect` stage runs under `trellis run` and `trellis process`.
    pub enabled: bool,
    /// The consumer group of the `detect` stage.
    pub group: String,
    /// False-positive budget of one metric's sequential test for one release: the chance that a
    /// release as healthy as its baseline is ever flagged on that metric, however long it runs.
    pub alpha: f64,
    /// Smallest relative worsening reported: a candidate must be at least this much worse than
    /// its baseline (0.25: 25% worse), however significant a smaller difference is. The rate
    /// test's grid of alternatives starts here (1.25, 1.5, 2, 3, 5 and 9 times the baseline).
    pub min_relative_effect: f64,
    /// No verdict on a release with fewer sessions than this.
    pub min_sessions: i64,
    /// No verdict on a metric with fewer events (crashes, ...) than this in the candidate.
    pub min_events: i64,
    /// A baseline needs at least this many sessions; with fewer concurrent sessions from the
    /// rest of the fleet (the release has the whole fleet), the previous release is the baseline.
    pub min_baseline_sessions: i64,
    /// How much of the previous release's history before the candidate's first session is its
    /// baseline, when the previous release is the baseline.
    #[serde(with = "humantime_serde")]
    pub previous_release_span: Duration,
    /// Event time between opening a detection on provisional data and deciding it: confirmed if
    /// the evidence still holds then, retracted if not. The default is the session gap, after
    /// which the sessions of the opening windows are all known.
    #[serde(with = "humantime_serde")]
    pub confirm_after: Duration,
    /// A confirmed regression is resolved when its release has had no session for this long
    /// (rolled back or superseded).
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
    /// How much event time of per-minute counts is kept per release.
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// Most releases tracked per project; past it the longest-quiet release is forgotten
    /// (counted as `release_evicted`).
    pub max_releases: usize,
    /// Most users remembered per release for the crashed-user rate; past it new users are left
    /// out of the user counts (counted as `users_capped`). About 40 bytes each, in memory and in
    /// every checkpoint.
    pub max_users: usize,
    /// The consumer group of the performance detector (it reads `aggregates`).
    pub perf_group: String,
    /// The percentile performance is judged on (0.75: p75).
    pub perf_quantile: f64,
    /// No performance verdict on fewer candidate samples of a metric and screen.
    pub perf_min_samples: i64,
    /// Smallest relative slowdown of the percentile reported (0.1: 10% slower).
    pub perf_min_relative_effect: f64,
    /// The anticipated rise in the share of candidate samples above the baseline's percentile
    /// (the mSPRT's mixing standard deviation for performance).
    pub perf_prior_effect: f64,
    /// Whether the issues stage reports issue spikes.
    pub spikes: bool,
    /// An issue's rate is compared with its mean over this span before (per 5-minute bucket).
    #[serde(with = "humantime_serde")]
    pub spike_baseline: Duration,
    /// A spike is at least this many times the issue's mean rate,
    pub spike_factor: f64,
    /// and at least this many events in 5 minutes.
    pub spike_min_events: i64,
    /// The least mean rate assumed for the Poisson test (events per 5 minutes), so an issue that
    /// was silent through its baseline is not certain to stay silent.
    pub spike_min_mean: f64,
    /// A confirmed spike is resolved after this many complete 5-minute buckets under the
    /// threshold.
    pub spike_quiet_buckets: u32,
    /// Most issues whose rates are tracked per project; the quietest is forgotten past it.
    pub spike_max_issues: usize,
    /// Whether the issues stage reports new-issue velocity: an issue new to a release that
    /// reaches `velocity_share` of the release's users within `velocity_window`.
    pub velocity: bool,
    /// The share of a release's users (those who started a session of it within the window)
    /// an issue must reach.
    pub velocity_share: f64,
    /// How long after its first event in a release an issue is judged for velocity.
    #[serde(with = "humantime_serde")]
    pub velocity_window: Duration,
    /// The least users an issue must affect to be reported,
    pub velocity_min_users: i64,
    /// among at least this many users of the release.
    pub velocity_min_release_users: i64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            group: "trellis-detect".into(),
            alpha: 0.005,
            min_relative_effect: 0.25,
            min_sessions: 300,
            min_events: 8,
            min_baseline_sessions: 2000,
            previous_release_span: Duration::from_secs(24 * 3600),
            confirm_after: Duration::from_secs(30 * 60),
            resolve_after: Duration::from_secs(24 * 3600),
            history: Duration::from_secs(48 * 3600),
            max_releases: 256,
            max_users: 200_000,
            perf_group: "trellis-detect-perf".into(),
            perf_quantile: 0.75,
            perf_min_samples: 200,
            perf_min_relative_effect: 0.1,
            perf_prior_effect: 0.1,
            spikes: true,
            spike_baseline: Duration::from_secs(6 * 3600),
            spike_factor: 3.0,
            spike_min_events: 20,
            spike_min_mean: 0.5,
            spike_quiet_buckets: 3,
            spike_max_issues: 10_000,
            velocity: true,
            velocity_share: 0.01,
            velocity_window: Duration::from_secs(30 * 60),
            velocity_min_users: 10,
            velocity_min_release_users: 200,
        }
    }
}

impl DetectConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let key = |k: &str| format!("processors.detect.{k}");
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(format!("{}: must be in (0, 0.5)", key("alpha")));
        }
        if !(self.min_relative_effect >= 0.0 && self.min_relative_effect.is_finite()) {
            return Err(format!("{}: must be 0 or more", key("min_relative_effect")));
        }
        for (name, value) in [
            ("min_sessions", self.min_sessions),
            ("min_events", self.min_events),
            ("min_baseline_sessions", self.min_baseline_sessions),
        ] {
            if value < 1 {
                return Err(format!("{}: must be at least 1", key(name)));
            }
        }
        for (name, value) in [
            ("previous_release_span", self.previous_release_span),
            ("confirm_after", self.confirm_after),
            ("resolve_after", self.resolve_after),
            ("history", self.history),
        ] {
            if value < Duration::from_secs(60) {
                return Err(format!("{}: must be at least 1m", key(name)));
            }
        }
        if self.history < self.previous_release_span + self.confirm_after {
            return Err(format!(
                "{}: must cover previous_release_span plus confirm_after",
                key("history")
            ));
        }
        if self.max_users < 1 {
            return Err(format!("{}: must be at least 1", key("max_users")));
        }
        if self.max_releases < 2 {
            return Err(format!("{}: must be at least 2", key("max_releases")));
        }
        if self.group.trim().is_empty() {
            return Err(format!("{}: is empty", key("group")));
        }
        if self.perf_group.trim().is_empty() || self.perf_group == self.group {
            return Err(format!(
                "{}: must be set and differ from group",
                key("perf_group")
            ));
        }
        if !(self.perf_quantile > 0.0 && self.perf_quantile < 1.0) {
            return Err(format!("{}: must be in (0, 1)", key("perf_quantile")));
        }
        if self.perf_min_samples < 1 {
            return Err(format!("{}: must be at least 1", key("perf_min_samples")));
        }
        if !(self.perf_min_relative_effect >= 0.0 && self.perf_min_relative_effect.is_finite()) {
            return Err(format!(
                "{}: must be 0 or more",
                key("perf_min_relative_effect")
            ));
        }
        if !(self.perf_prior_effect > 0.0 && self.perf_prior_effect < 1.0) {
            return Err(format!("{}: must be in (0, 1)", key("perf_prior_effect")));
        }
        if self.spike_baseline < Duration::from_secs(3600) {
            return Err(format!("{}: must be at least 1h", key("spike_baseline")));
        }
        if !(self.spike_factor >= 1.0 && self.spike_factor.is_finite()) {
            return Err(format!("{}: must be at least 1", key("spike_factor")));
        }
        if self.spike_min_events < 1 {
            return Err(format!("{}: must be at least 1", key("spike_min_events")));
        }
        if !(self.spike_min_mean > 0.0 && self.spike_min_mean.is_finite()) {
            return Err(format!("{}: must be above 0", key("spike_min_mean")));
        }
        if self.spike_quiet_buckets < 1 {
            return Err(format!(
                "{}: must be at least 1",
                key("spike_quiet_buckets")
            ));
        }
        if self.spike_max_issues < 1 {
            return Err(format!("{}: must be at least 1", key("spike_max_issues")));
        }
        if !(self.velocity_share > 0.0 && self.velocity_share <= 1.0) {
            return Err(format!("{}: must be in (0, 1]", key("velocity_share")));
        }
        if self.velocity_window < Duration::from_secs(60) {
            return Err(format!("{}: must be at least 1m", key("velocity_window")));
        }
        for (name, value) in [
            ("velocity_min_users", self.velocity_min_users),
            (
                "velocity_min_release_users",
                self.velocity_min_release_users,
            ),
        ] {
            if value < 1 {
                return Err(format!("{}: must be at least 1", key(name)));
            }
        }
        Ok(())
    }
}
