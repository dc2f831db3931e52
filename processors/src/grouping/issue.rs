//! Issues: one record per group of events, under an id every processor instance derives alike.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use trellis_schemas::{Common, ErrorEvent, Level};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use super::fingerprint::{Fingerprint, FingerprintHash, Grouper, GroupingRule};
use super::lifecycle::{Outcome, Status};
use super::release::{ReleaseClock, ReleaseKey};

/// Titles are cut to this many characters.
const MAX_TITLE_CHARS: usize = 200;

/// Most user hashes an issue keeps: past it, it keeps only the hashes with one more low zero
/// bit, each standing for twice as many users (adaptive hash sampling: exact below the bound,
/// within a few percent above it, and the same whatever order events arrive in).
pub const MAX_ISSUE_USERS: usize = 4096;

/// Most releases an issue keeps its per-release counts for: a new one past it forgets the
/// release the issue was seen in least recently.
pub const MAX_ISSUE_RELEASES: usize = 100;

fn sampled(hash: u64, level: u32) -> bool {
    level == 0 || hash.trailing_zeros() >= level
}

/// An issue's id: 32 hex digits of xxh3-128 over the project and the fingerprint hash, so every
/// processor instance (and every replay) names a group alike without coordination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IssueId(String);

impl IssueId {
    /// The id of the issue of `fingerprint` in `project`.
    pub fn derive(project: &str, fingerprint: FingerprintHash) -> Self {
        let mut hasher = Xxh3Default::new();
        hasher.update(&(project.len() as u64).to_le_bytes());
        hasher.update(project.as_bytes());
        hasher.update(&fingerprint.0.to_le_bytes());
        Self(format!("{:032x}", hasher.digest128()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id as [`IssueId::derive`] writes it (32 lowercase hex digits), or `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| Self(text.to_string()))
    }
}

impl fmt::Display for IssueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an issue occurred in one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSeen {
    /// The release.
    pub release: ReleaseKey,
    /// The earliest event time in this release, in ms since the epoch.
    pub first_seen_ms: i64,
    /// The latest event time in this release, in ms since the epoch.
    pub last_seen_ms: i64,
    /// Events in this release.
    pub events: u64,
}

/// A group of error events with one fingerprint (or several, after merges) and its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    /// The project.
    pub project: String,
    /// The id, derived from the project and `fingerprint`.
    pub id: IssueId,
    /// The fingerprint hash the issue was opened for.
    pub fingerprint: FingerprintHash,
    /// The rule that produced the fingerprint.
    pub grouping: GroupingRule,
    /// The fingerprint's components, to explain the grouping and to find similar issues.
    pub components: Vec<String>,
    /// `ExceptionType: message` of the earliest event, or its message.
    pub title: String,
    /// The innermost in-app frame of the earliest event, as `function @ module`.
    pub culprit: Option<String>,
    /// The most severe level seen.
    pub level: Level,
    /// The earliest event time, in ms since the epoch.
    pub first_seen_ms: i64,
    /// The latest event time, in ms since the epoch.
    pub last_seen_ms: i64,
    /// The release of the earliest event.
    pub first_release: ReleaseKey,
    /// Events counted (every observed event; deduplication happens upstream).
    pub event_count: u64,
    /// Hashes (xxh3-64) of the affected users' ids, or of the device id when an event has no
    /// user: exact up to [`MAX_ISSUE_USERS`], then sampled at `users_level`.
    pub users: BTreeSet<u64>,
    /// The users' sampling level: each hash kept stands for 2^level users.
    #[serde(default)]
    pub users_level: u32,
    /// Releases forgotten to stay within [`MAX_ISSUE_RELEASES`].
    #[serde(default)]
    pub releases_forgotten: u64,
    /// Per release (keyed by its printed form), where and how often the issue occurred.
    pub releases: BTreeMap<String, ReleaseSeen>,
    /// The earliest event's id (ties: the smallest id), for a sample to show. With the title,
    /// the culprit and every count it makes the record a function of the set of events, whatever
    /// order they arrive in.
    pub sample_event_id: String,
    /// Where the issue is in its lifecycle.
    pub status: Status,
    /// Issues merged into this one; events fingerprinted to them belong here.
    pub aliases: Vec<IssueId>,
    /// The fingerprint hashes of the merged issues.
    pub merged_fingerprints: Vec<FingerprintHash>,
}

impl Issue {
    /// Opens an issue for the first event of a fingerprint; the outcome is
    /// [`Outcome::NewIssue`] with the release the issue was first seen in.
    pub fn open(
        grouper: &Grouper,
        fingerprint: &Fingerprint,
        event: &ErrorEvent,
        clock: &mut ReleaseClock,
    ) -> (Issue, Outcome) {
        let common = &event.common;
        let release = ReleaseKey::of(&common.release);
        clock.observe_from(
            &release,
            common.timestamp_ms,
            user_hash(common),
            grouper.policy().release_min_devices,
        );
        let mut issue = Issue {
            project: common.project.clone(),
            id: IssueId::derive(&common.project, fingerprint.hash),
            fingerprint: fingerprint.hash,
            grouping: fingerprint.rule.clone(),
            components: fingerprint.components.clone(),
            title: title(event),
            culprit: grouper.culprit(event),
            level: event.level,
            first_seen_ms: common.timestamp_ms,
            last_seen_ms: common.timestamp_ms,
            first_release: release.clone(),
            event_count: 0,
            users: BTreeSet::new(),
            users_level: 0,
            releases_forgotten: 0,
            releases: BTreeMap::new(),
            sample_event_id: common.event_id.clone(),
            status: Status::New,
            aliases: Vec::new(),
            merged_fingerprints: Vec::new(),
        };
        issue.record(grouper, event, &release);
        let outcome = Outcome::NewIssue {
            first_release: release,
        };
        (issue, outcome)
    }

    /// How many distinct users (or devices, for events without a user) were affected.
    pub fn users_affected(&self) -> u64 {
        (self.users.len() as u64) << self.users_level
    }

    /// Counts a user's hash, sampling more sparsely past [`MAX_ISSUE_USERS`].
    pub(crate) fn add_users(&mut self, hashes: impl IntoIterator<Item = u64>, level: u32) {
        let level = level.max(self.users_level);
        if level > self.users_level {
            self.users_level = level;
            self.users.retain(|h| sampled(*h, level));
        }
        for hash in hashes {
            if sampled(hash, self.users_level) {
                self.users.insert(hash);
            }
            while self.users.len() > MAX_ISSUE_USERS {
                self.users_level += 1;
                let level = self.users_level;
                self.users.retain(|h| sampled(*h, level));
            }
        }
    }

    /// Counts events in `release` (keyed by its printed form), forgetting the release seen
    /// least recently when the issue holds [`MAX_ISSUE_RELEASES`] others.
    pub(crate) fn add_release(&mut self, key: String, seen: ReleaseSeen) {
        if let Some(mine) = self.releases.get_mut(&key) {
            mine.first_seen_ms = mine.first_seen_ms.min(seen.first_seen_ms);
            mine.last_seen_ms = mine.last_seen_ms.max(seen.last_seen_ms);
            mine.events += seen.events;
            return;
        }
        if self.releases.len() >= MAX_ISSUE_RELEASES {
            let stalest = self
                .releases
                .iter()
                .min_by(|a, b| (a.1.last_seen_ms, a.0).cmp(&(b.1.last_seen_ms, b.0)))
                .map(|(k, _)| k.clone());
            if let Some(stalest) = stalest {
                self.releases.remove(&stalest);
                self.releases_forgotten += 1;
            }
        }
        self.releases.insert(key, seen);
    }

    /// The newest release the issue was seen in, one per platform.
    pub fn newest_releases(&self, clock: &ReleaseClock) -> Vec<ReleaseKey> {
        let mut newest: BTreeMap<&str, &ReleaseKey> = BTreeMap::new();
        for seen in self.releases.values() {
            let release = &seen.release;
            let slot = newest.entry(&release.platform).or_insert(release);
            if clock.compare(release, slot) == Some(std::cmp::Ordering::Greater) {
                *slot = release;
            }
        }
        newest.into_values().cloned().collect()
    }

    /// Counts one event: times, users, level and release; an earlier event than all before
    /// becomes the sample.
    pub(crate) fn record(&mut self, grouper: &Grouper, event: &ErrorEvent, release: &ReleaseKey) {
        let common = &event.common;
        let at = common.timestamp_ms;
        self.event_count += 1;
        let earlier =
            (at, common.event_id.as_str()) < (self.first_seen_ms, self.sample_event_id.as_str());
        if earlier {
            self.first_seen_ms = at;
            self.first_release = release.clone();
            if common.event_id != self.sample_event_id {
                self.sample_event_id = common.event_id.clone();
                self.title = title(event);
                self.culprit = grouper.culprit(event);
            }
        }
        self.last_seen_ms = self.last_seen_ms.max(at);
        if let Some(user) = user_hash(&event.common) {
            self.add_users([user], 0);
        }
        if severity(event.level) > severity(self.level) {
            self.level = event.level;
        }
        self.add_release(
            release.to_string(),
            ReleaseSeen {
                release: release.clone(),
                first_seen_ms: at,
                last_seen_ms: at,
                events: 1,
            },
        );
    }
}

/// The hash an event's user is counted under: its user id, else its device id.
pub fn user_hash(common: &Common) -> Option<u64> {
    fn non_empty(value: &Option<String>) -> Option<&str> {
        value.as_deref().filter(|v| !v.is_empty())
    }
    if let Some(user) = non_empty(&common.user_id) {
        return Some(xxh3_64(format!("user:{user}").as_bytes()));
    }
    non_empty(&common.device_id).map(|device| xxh3_64(format!("device:{device}").as_bytes()))
}

/// An issue title for an event: `ExceptionType: first line of the message`, or the message.
pub fn title(event: &ErrorEvent) -> String {
    let main = event.exceptions.first();
    let exception_type = main.map_or("", |e| e.exception_type.trim());
    let message = main
        .and_then(|e| e.value.as_deref())
        .or(event.message.as_deref())
        .and_then(|m| m.lines().map(str::trim).find(|line| !line.is_empty()))
        .unwrap_or("");
    let mut title = match (exception_type.is_empty(), message.is_empty()) {
        (false, false) => format!("{exception_type}: {message}"),
        (false, true) => exception_type.to_owned(),
        (true, false) => message.to_owned(),
        (true, true) => "<no message>".to_owned(),
    };
    if let Some((cut, _)) = title.char_indices().nth(MAX_TITLE_CHARS) {
        title.truncate(cut);
    }
    title
}

/// Orders levels from debug (0) to fatal (4).
pub(crate) fn severity(level: Level) -> u8 {
    match level {
        Level::Debug => 0,
        Level::Info => 1,
        Level::Warning => 2,
        Level::Error => 3,
        Level::Fatal => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_schemas::{Exception, Release};

    fn event(id: &str, at: i64, user: Option<&str>, version: &str, level: Level) -> ErrorEvent {
        ErrorEvent {
            common: Common {
                event_id: id.into(),
                project: "plants".into(),
                timestamp_ms: at,
                user_id: user.map(Into::into),
                device_id: Some(format!("device-{id}")),
                release: Release {
                    platform: "ios".into(),
                    app_version: version.into(),
                    ..Release::default()
                },
                ..Common::default()
            },
            level,
            exceptions: vec![Exception {
                exception_type: "TypeError".into(),
                value: Some("undefined is not an object\n(evaluating 'a.b')".into()),
                ..Exception::default()
            }],
            ..ErrorEvent::default()
        }
    }

    #[test]
    fn ids_are_deterministic_per_project_and_fingerprint() {
        let hash = FingerprintHash::of(&["type:TypeError"]);
        let id = IssueId::derive("plants", hash);
        assert_eq!(id, IssueId::derive("plants", hash));
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, IssueId::derive("garden", hash));
        assert_ne!(
            id,
            IssueId::derive("plants", FingerprintHash::of(&["type:Error"]))
        );
    }

    #[test]
    fn an_issue_counts_events_users_releases_and_level() {
        let grouper = Grouper::default();
        let mut clock = ReleaseClock::default();
        let first = event("e1", 5_000, Some("u1"), "1.0.0", Level::Error);
        let print = grouper.fingerprint(&first);
        let (mut issue, outcome) = Issue::open(&grouper, &print, &first, &mut clock);
        assert_eq!(issue.title, "TypeError: undefined is not an object");
        assert_eq!(issue.id, IssueId::derive("plants", print.hash));
        let Outcome::NewIssue { first_release } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(first_release.app_version, "1.0.0");

        let mut earlier = event("e2", 4_000, Some("u2"), "0.9.0", Level::Fatal);
        earlier.exceptions[0].value = Some("null is not an object".into());
        issue.record(&grouper, &earlier, &ReleaseKey::of(&earlier.common.release));
        let anonymous = event("e3", 6_000, None, "1.0.0", Level::Warning);
        issue.record(
            &grouper,
            &anonymous,
            &ReleaseKey::of(&anonymous.common.release),
        );
        let again = event("e4", 7_000, Some("u1"), "1.0.0", Level::Info);
        issue.record(&grouper, &again, &ReleaseKey::of(&again.common.release));

        assert_eq!(issue.event_count, 4);
        assert_eq!(issue.users_affected(), 3, "u1, u2 and the device of e3");
        assert_eq!((issue.first_seen_ms, issue.last_seen_ms), (4_000, 7_000));
        assert_eq!(issue.first_release.app_version, "0.9.0");
        assert_eq!(issue.level, Level::Fatal);
        assert_eq!(
            issue.sample_event_id, "e2",
            "the earliest event is the sample"
        );
        assert_eq!(issue.title, "TypeError: null is not an object");
        assert_eq!(issue.releases["ios 1.0.0"].events, 3);
        assert_eq!(issue.newest_releases(&clock)[0].app_version, "1.0.0");

        let json = serde_json::to_string(&issue).unwrap();
        assert_eq!(serde_json::from_str::<Issue>(&json).unwrap(), issue);
        let bytes = postcard::to_allocvec(&issue).unwrap();
        assert_eq!(postcard::from_bytes::<Issue>(&bytes).unwrap(), issue);
    }
}
