//! The issue lifecycle as a pure state machine, driven by observed events and admin commands.
//! Time is passed in, never read.
//!
//! | from | on | to |
//! |---|---|---|
//! | (none) | the first event ([`Issue::open`]) | new |
//! | new | an event or a tick a window after the first event | ongoing |
//! | regressed | an event or a tick a window after the regression | ongoing |
//! | any | resolve, resolve in the next release, resolve in release X | resolved |
//! | any | ignore forever, until N more events, N more users, or a time | ignored |
//! | resolved | an event from a release newer than the resolution (below) | regressed |
//! | ignored | the N-th more event or user, or an event or tick at the time | ongoing |
//! | resolved, ignored | reopen | ongoing |
//!
//! Events count whatever the status. The window is [`LifecyclePolicy::new_issue_window_ms`].
//!
//! Resolutions and what reopens them (release order as in [`crate::grouping::release`]):
//! - **now**: an event after the resolve time from a release at least as new as the newest the
//!   issue had been seen in (per platform). Older builds still in use do not reopen it.
//! - **in the next release**: an event from a release strictly newer than the current one at
//!   resolve time (per platform: the newest the issue or the project had seen).
//! - **in release X**: an event from X or newer (X is the release with the fix).
//!
//! An event whose release cannot be ordered against the resolution (an OTA update the clock
//! has not seen) never reopens an issue.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use trellis_schemas::ErrorEvent;

use super::fingerprint::Grouper;
use super::issue::Issue;
use super::release::{ReleaseClock, ReleaseKey};

/// Lifecycle settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecyclePolicy {
    /// How long an issue stays `new` (and `regressed`) before it becomes `ongoing`, in ms.
    pub new_issue_window_ms: i64,
    /// Distinct devices a release newer than the newest must be seen on before it becomes the
    /// newest (see [`ReleaseClock::observe_from`]).
    pub release_min_devices: usize,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            new_issue_window_ms: 7 * 24 * 3_600_000,
            release_min_devices: DEFAULT_RELEASE_MIN_DEVICES,
        }
    }
}

/// Devices a new release must be seen on before it moves a project's release clock, by default.
pub const DEFAULT_RELEASE_MIN_DEVICES: usize = 5;

/// Where an issue is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// First seen within the new-issue window.
    New,
    /// Open, past the new-issue window.
    Ongoing,
    /// Marked fixed.
    Resolved {
        /// What counts as fixed.
        resolution: Resolution,
        /// When it was resolved, in ms since the epoch.
        at_ms: i64,
    },
    /// Seen again in a release that should have had the fix.
    Regressed {
        /// The release it came back in.
        release: ReleaseKey,
        /// The time of the event that reopened it, in ms since the epoch.
        at_ms: i64,
    },
    /// Muted until a condition is met.
    Ignored {
        /// The condition.
        until: IgnoreUntil,
        /// When it was ignored, in ms since the epoch.
        at_ms: i64,
        /// The event count when it was ignored.
        events_at: u64,
        /// The affected users when it was ignored.
        users_at: u64,
    },
}

impl Status {
    /// The status's name: `new`, `ongoing`, `resolved`, `regressed` or `ignored`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Ongoing => "ongoing",
            Status::Resolved { .. } => "resolved",
            Status::Regressed { .. } => "regressed",
            Status::Ignored { .. } => "ignored",
        }
    }
}

/// What a resolution covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Fixed now: the newest release per platform the issue had been seen in at resolve time.
    Now {
        /// Per platform, the newest release the issue had been seen in.
        latest: Vec<ReleaseKey>,
    },
    /// Fixed in whatever release comes after the current one.
    InNextRelease {
        /// Per platform, the current release at resolve time.
        current: Vec<ReleaseKey>,
    },
    /// Fixed in this release.
    InRelease {
        /// The first release with the fix.
        release: ReleaseKey,
    },
}

/// Until when an ignored issue stays ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreUntil {
    /// Until reopened by hand.
    Forever,
    /// Until this many more events.
    Count(u64),
    /// Until this many more distinct users are affected.
    Users(u64),
    /// Until this time, in ms since the epoch.
    UntilMs(i64),
}

/// An admin's command on one issue. Merging takes two issues: see
/// [`crate::grouping::merge_issues`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Resolve now.
    Resolve,
    /// Resolve in the release after the current one.
    ResolveInNextRelease,
    /// Resolve in this release.
    ResolveInRelease(ReleaseKey),
    /// Ignore until a condition.
    Ignore(IgnoreUntil),
    /// Reopen a resolved or ignored issue.
    Reopen,
}

/// What observing an event did to its issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The event opened a new issue.
    NewIssue {
        /// The release it was first seen in.
        first_release: ReleaseKey,
    },
    /// Counted; the status (new, ongoing or regressed) did not change.
    Seen,
    /// Counted; the issue left `new` or `regressed` for `ongoing`.
    BecameOngoing,
    /// Counted; the issue stays resolved: the release is not newer than the resolution.
    StillResolved {
        /// The event's release.
        release: ReleaseKey,
    },
    /// The issue was resolved and came back in a newer release.
    Regressed {
        /// The release it came back in.
        release: ReleaseKey,
    },
    /// Counted; the issue stays ignored.
    StillIgnored,
    /// The ignore condition was met; the issue is `ongoing` again.
    Unignored,
}

impl Outcome {
    /// Whether the issue's status changed (worth publishing an issue update for).
    pub fn changes_status(&self) -> bool {
        matches!(
            self,
            Outcome::NewIssue { .. }
                | Outcome::BecameOngoing
                | Outcome::Regressed { .. }
                | Outcome::Unignored
        )
    }
}

/// A command that cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LifecycleError {
    /// Ignore until zero more events or users.
    #[error("ignore until {0} more events or users: must be at least 1")]
    IgnoreZero(u64),
    /// Ignore until a time that has passed.
    #[error("ignore until {until_ms}: that time is not after now ({now_ms})")]
    IgnoreInPast {
        /// The time asked for.
        until_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// Resolve in a release without a version.
    #[error("resolve in release: the release has no app version")]
    ReleaseWithoutVersion,
    /// Reopen an issue that is not resolved or ignored.
    #[error("reopen: the issue is {0}, not resolved or ignored")]
    NotClosed(&'static str),
}

impl Issue {
    /// Counts `event` (which must carry this issue's fingerprint) and moves the lifecycle on,
    /// under the project's `grouper` (its in-app rules and lifecycle policy). Feeds the event's
    /// release to `clock` first, so OTA updates are ordered by first sight.
    pub fn observe(
        &mut self,
        grouper: &Grouper,
        event: &ErrorEvent,
        clock: &mut ReleaseClock,
    ) -> Outcome {
        let release = ReleaseKey::of(&event.common.release);
        let at = event.common.timestamp_ms;
        clock.observe_from(
            &release,
            at,
            super::issue::user_hash(&event.common),
            grouper.policy().release_min_devices,
        );
        self.record(grouper, event, &release);
        let window = grouper.policy().new_issue_window_ms;
        let (next, outcome) = match &self.status {
            Status::New if at.saturating_sub(self.first_seen_ms) >= window => {
                (Some(Status::Ongoing), Outcome::BecameOngoing)
            }
            Status::Regressed { at_ms, .. } if at.saturating_sub(*at_ms) >= window => {
                (Some(Status::Ongoing), Outcome::BecameOngoing)
            }
            Status::New | Status::Ongoing | Status::Regressed { .. } => (None, Outcome::Seen),
            Status::Resolved { resolution, at_ms } => {
                if regresses(resolution, *at_ms, &release, at, clock) {
                    let status = Status::Regressed {
                        release: release.clone(),
                        at_ms: at,
                    };
                    (Some(status), Outcome::Regressed { release })
                } else {
                    (None, Outcome::StillResolved { release })
                }
            }
            Status::Ignored {
                until,
                events_at,
                users_at,
                ..
            } => {
                let expired = match until {
                    IgnoreUntil::Forever => false,
                    IgnoreUntil::Count(n) => self.event_count.saturating_sub(*events_at) >= *n,
                    IgnoreUntil::Users(n) => self.users_affected().saturating_sub(*users_at) >= *n,
                    IgnoreUntil::UntilMs(until) => at >= *until,
                };
                if expired {
                    (Some(Status::Ongoing), Outcome::Unignored)
                } else {
                    (None, Outcome::StillIgnored)
                }
            }
        };
        if let Some(next) = next {
            self.status = next;
        }
        outcome
    }

    /// Applies an admin command at `now_ms`. `clock` is the project's, to know its current
    /// releases for "resolve in the next release".
    pub fn apply(
        &mut self,
        command: &Command,
        now_ms: i64,
        clock: &ReleaseClock,
    ) -> Result<(), LifecycleError> {
        self.status = match command {
            Command::Resolve => Status::Resolved {
                resolution: Resolution::Now {
                    latest: self.newest_releases(clock),
                },
                at_ms: now_ms,
            },
            Command::ResolveInNextRelease => {
                let mut current = self.newest_releases(clock);
                for newest in clock.newest() {
                    match current.iter_mut().find(|c| c.platform == newest.platform) {
                        Some(slot) => {
                            if clock.compare(newest, slot) == Some(Ordering::Greater) {
                                *slot = newest.clone();
                            }
                        }
                        None => current.push(newest.clone()),
                    }
                }
                Status::Resolved {
                    resolution: Resolution::InNextRelease { current },
                    at_ms: now_ms,
                }
            }
            Command::ResolveInRelease(release) => {
                if release.app_version.trim().is_empty() {
                    return Err(LifecycleError::ReleaseWithoutVersion);
                }
                Status::Resolved {
                    resolution: Resolution::InRelease {
                        release: release.clone(),
                    },
                    at_ms: now_ms,
                }
            }
            Command::Ignore(until) => {
                match *until {
                    IgnoreUntil::Count(0) | IgnoreUntil::Users(0) => {
                        return Err(LifecycleError::IgnoreZero(0));
                    }
                    IgnoreUntil::UntilMs(until_ms) if until_ms <= now_ms => {
                        return Err(LifecycleError::IgnoreInPast { until_ms, now_ms });
                    }
                    _ => {}
                }
                Status::Ignored {
                    until: until.clone(),
                    at_ms: now_ms,
                    events_at: self.event_count,
                    users_at: self.users_affected(),
                }
            }
            Command::Reopen => match self.status {
                Status::Resolved { .. } | Status::Ignored { .. } => Status::Ongoing,
                ref open => return Err(LifecycleError::NotClosed(open.name())),
            },
        };
        Ok(())
    }

    /// Moves the lifecycle on by time alone: `new` and `regressed` become `ongoing` after the
    /// window, and an issue ignored until a time comes back at that time.
    pub fn tick(&mut self, now_ms: i64, policy: &LifecyclePolicy) -> Option<Outcome> {
        let window = policy.new_issue_window_ms;
        let outcome = match &self.status {
            Status::New if now_ms.saturating_sub(self.first_seen_ms) >= window => {
                Outcome::BecameOngoing
            }
            Status::Regressed { at_ms, .. } if now_ms.saturating_sub(*at_ms) >= window => {
                Outcome::BecameOngoing
            }
            Status::Ignored {
                until: IgnoreUntil::UntilMs(until),
                ..
            } if now_ms >= *until => Outcome::Unignored,
            _ => return None,
        };
        self.status = Status::Ongoing;
        Some(outcome)
    }
}

/// Whether an event from `release` at `at` reopens an issue resolved as `resolution` at
/// `resolved_at`.
fn regresses(
    resolution: &Resolution,
    resolved_at: i64,
    release: &ReleaseKey,
    at: i64,
    clock: &ReleaseClock,
) -> bool {
    match resolution {
        Resolution::Now { latest } => at > resolved_at && newer(clock, release, latest, true),
        Resolution::InNextRelease { current } => newer(clock, release, current, false),
        Resolution::InRelease { release: fixed } => {
            newer(clock, release, std::slice::from_ref(fixed), true)
        }
    }
}

/// Whether `release` is newer than (or, with `or_equal`, as new as) the thresholds of its
/// platform, or of all platforms when none is of its platform.
fn newer(
    clock: &ReleaseClock,
    release: &ReleaseKey,
    thresholds: &[ReleaseKey],
    or_equal: bool,
) -> bool {
    let same_platform = |t: &&ReleaseKey| {
        t.platform.is_empty() || release.platform.is_empty() || t.platform == release.platform
    };
    let mut relevant: Vec<&ReleaseKey> = thresholds.iter().filter(same_platform).collect();
    if relevant.is_empty() {
        relevant = thresholds.iter().collect();
    }
    relevant
        .iter()
        .all(|threshold| match clock.compare(release, threshold) {
            Some(Ordering::Greater) => true,
            Some(Ordering::Equal) => or_equal,
            _ => false,
        })
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
