//! Settings of the `process` stage.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[processors]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// The consumer group every processor instance joins; instances split the partitions.
    pub group: String,
    /// How far the watermark trails the newest event time seen on a partition. Events later
    /// than this still reach the events and sessions outputs; aggregates get a correction.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How long an event id is remembered for deduplication (offline queues resend for days).
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Most event ids remembered per partition; past it the oldest ids of the oldest hour are
    /// forgotten early. One hour holds at most a quarter of them.
    pub dedupe_max_ids: usize,
    /// Inactivity that ends a session.
    #[serde(with = "humantime_serde")]
    pub session_gap: Duration,
    /// Longest implicit session.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// Most explicit sessions and devices with implicit sessions open per partition; past it,
    /// the sessions due to close first are ended early (counted as `session_evicted`).
    pub max_open_sessions: usize,
    /// Length of release-health windows.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How far behind the watermark a late event may still correct a closed window; older
    /// events are counted as too late for aggregates (they still reach the stores).
    #[serde(with = "humantime_serde")]
    pub correction_horizon: Duration,
    /// Where state checkpoints live; every instance must see the same directory. Relative to
    /// the data directory; default `checkpoints`.
    pub checkpoint_dir: PathBuf,
    /// How often each partition's state is checkpointed and its offset committed.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How long a partition must be quiet, with all its input read, before its watermark
    /// follows the wall clock (closing the windows and sessions of a fleet that went quiet).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most records handled per poll.
    pub poll_max: usize,
    /// Where `trellis process` serves `/metrics` (Prometheus text); off when unset. Under
    /// `trellis run` the processors' metrics are on ingest's `/metrics` instead.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The consumer group of the issues stage.
    pub issues_group: String,
    /// Most issues one partition of the issues stage keeps; past it, the tenth seen least
    /// recently are forgotten (an event of one opens it again as new).
    pub max_issues: usize,
    /// Error grouping rules for every project (in-app rules, fingerprint rules, lifecycle).
    pub grouping: crate::grouping::GroupingConfig,
    /// Per-project grouping rules, replacing `grouping` for that project.
    pub project_grouping: std::collections::BTreeMap<String, crate::grouping::GroupingConfig>,
    /// The `detect` stage: regression detectors and their thresholds.
    pub detect: crate::detect::DetectConfig,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            group: "trellis-process".into(),
            allowed_lateness: Duration::from_secs(120),
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            dedupe_max_ids: 20_000_000,
            session_gap: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(24 * 3600),
            max_open_sessions: 1_000_000,
            window: Duration::from_secs(60),
            correction_horizon: Duration::from_secs(7 * 24 * 3600),
            checkpoint_dir: PathBuf::from("checkpoints"),
            checkpoint_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            poll_max: 2000,
            metrics_listen: None,
            issues_group: "trellis-issues".into(),
            max_issues: crate::issues::DEFAULT_MAX_ISSUES,
            grouping: crate::grouping::GroupingConfig::default(),
            project_grouping: std::collections::BTreeMap::new(),
            detect: crate::detect::DetectConfig::default(),
        }
    }
}

impl ProcessorConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("processors.dedupe_window", self.dedupe_window),
            ("processors.session_gap", self.session_gap),
            ("processors.session_max", self.session_max),
            ("processors.window", self.window),
            ("processors.checkpoint_interval", self.checkpoint_interval),
            ("processors.idle_timeout", self.idle_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(format!("{key}: must be longer than 0s"));
            }
        }
        if !self.window.as_millis().is_multiple_of(1000) {
            return Err("processors.window: must be a whole number of seconds".into());
        }
        if self.session_max < self.session_gap {
            return Err("processors.session_max: must be at least processors.session_gap".into());
        }
        if self.dedupe_max_ids == 0 {
            return Err("processors.dedupe_max_ids: must be at least 1".into());
        }
        if self.max_open_sessions == 0 {
            return Err("processors.max_open_sessions: must be at least 1".into());
        }
        if self.max_issues < 10 {
            return Err("processors.max_issues: must be at least 10".into());
        }
        if self.poll_max == 0 {
            return Err("processors.poll_max: must be at least 1".into());
        }
        if self.group.trim().is_empty() {
            return Err("processors.group: is empty".into());
        }
        if self.issues_group.trim().is_empty() || self.issues_group == self.group {
            return Err(
                "processors.issues_group: must be set and differ from processors.group".into(),
            );
        }
        crate::issues::Groupers::new(&self.grouping, &self.project_grouping)?;
        self.detect.validate()?;
        for (key, group) in [
            ("group", &self.detect.group),
            ("perf_group", &self.detect.perf_group),
        ] {
            if *group == self.group || *group == self.issues_group {
                return Err(format!(
                    "processors.detect.{key}: must differ from processors.group and issues_group"
                ));
            }
        }
        Ok(())
    }
}
