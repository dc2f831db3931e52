//! Release identity and order: which of two app releases is newer.
//!
//! Releases are ordered by app version (semver where it parses, `2.14` read as `2.14.0`; else a
//! natural, numbers-aware string order), then by build (numbers-aware), then by OTA update. An
//! event names its OTA update by id only, with no publish time, so a [`ReleaseClock`] remembers
//! when each update was first seen (the earliest event time from it) and orders updates by that;
//! the embedded bundle (no update) is older than any update of the same build. Builds and updates
//! are compared within one platform only: two platforms' builds of the same version are equal.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use trellis_schemas::Release;

/// The parts of a release that its order depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ReleaseKey {
    /// `ios`, `android`, ...; empty when unknown (then it matches every platform).
    pub platform: String,
    /// The store version, for example `2.14.0`.
    pub app_version: String,
    /// The native build number.
    pub build: Option<String>,
    /// The OTA update that was running; `None` for the embedded bundle.
    pub update_id: Option<String>,
}

impl ReleaseKey {
    /// The key of an event's release.
    pub fn of(release: &Release) -> Self {
        let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        Self {
            platform: release.platform.trim().to_ascii_lowercase(),
            app_version: release.app_version.trim().to_owned(),
            build: non_empty(&release.build),
            update_id: non_empty(&release.update_id),
        }
    }
}

impl fmt::Display for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.platform.is_empty() {
            write!(f, "{} ", self.platform)?;
        }
        f.write_str(&self.app_version)?;
        if let Some(build) = &self.build {
            write!(f, " ({build})")?;
        }
        if let Some(update) = &self.update_id {
            write!(f, " update {update}")?;
        }
        Ok(())
    }
}

/// Most OTA updates a clock remembers the first sight of; past it, the earliest seen is
/// forgotten (comparisons with it become unknown).
pub const MAX_UPDATES: usize = 10_000;

/// Most releases a clock holds as candidates for its newest, not yet seen from enough devices;
/// past it, the candidate with the fewest devices (then the latest seen first) is forgotten.
pub const MAX_CANDIDATES: usize = 1_000;

/// Most platforms a clock keeps a newest release for.
pub const MAX_PLATFORMS: usize = 64;

/// A release newer than its platform's newest, waiting for enough devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Candidate {
    release: ReleaseKey,
    first_ms: i64,
    /// Hashes of the devices (or users) seen running it, up to the number needed.
    devices: BTreeSet<u64>,
}

/// What a project knows about the order of its releases: when each OTA update was first seen,
/// and the newest release per platform. Keep one per project and feed it every session start
/// and error; it is pure data, serializable for checkpoints.
///
/// The newest release moves only for a release seen from `min_devices` distinct devices (see
/// [`ReleaseClock::observe_from`]): anyone holding a project's ingest key can announce
/// `app_version: 999999.0`, and one such event must not become the release "resolve in the
/// next release" waits for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseClock {
    /// OTA update id → the earliest event time seen from it, in ms since the epoch.
    updates: BTreeMap<String, i64>,
    /// Platform → the newest release seen on it.
    newest: BTreeMap<String, ReleaseKey>,
    /// Releases newer than their platform's newest, by printed form, not yet seen from enough
    /// devices.
    #[serde(default)]
    candidates: BTreeMap<String, Candidate>,
}

impl ReleaseClock {
    /// Records that `release` was running at `at_ms`, trusting it at once (for a release known
    /// from elsewhere, and for tests).
    pub fn observe(&mut self, release: &ReleaseKey, at_ms: i64) {
        self.observe_from(release, at_ms, None, 1);
    }

    /// Records that `release` was running at `at_ms` on `device` (a hash of the device or user
    /// id, if known). A release newer than its platform's newest becomes the newest once
    /// `min_devices` distinct devices were seen running it; until then it is a candidate.
    pub fn observe_from(
        &mut self,
        release: &ReleaseKey,
        at_ms: i64,
        device: Option<u64>,
        min_devices: usize,
    ) {
        if let Some(update) = &release.update_id {
            self.updates
                .entry(update.clone())
                .and_modify(|first| *first = (*first).min(at_ms))
                .or_insert(at_ms);
            if self.updates.len() > MAX_UPDATES {
                let earliest = self
                    .updates
                    .iter()
                    .min_by_key(|(id, first)| (**first, *id))
                    .map(|(id, _)| id.clone());
                if let Some(earliest) = earliest {
                    self.updates.remove(&earliest);
                }
            }
        }
        let newer = match self.newest.get(&release.platform) {
            None => self.newest.len() < MAX_PLATFORMS,
            Some(newest) => self.compare(release, newest) == Some(Ordering::Greater),
        };
        if !newer {
            return;
        }
        if min_devices > 1 {
            let key = release.to_string();
            let candidate = self
                .candidates
                .entry(key.clone())
                .or_insert_with(|| Candidate {
                    release: release.clone(),
                    first_ms: at_ms,
                    devices: BTreeSet::new(),
                });
            candidate.first_ms = candidate.first_ms.min(at_ms);
            if let Some(device) = device {
                candidate.devices.insert(device);
            }
            if candidate.devices.len() < min_devices {
                self.forget_weakest_candidate(&key);
                return;
            }
            self.candidates.remove(&key);
        }
        self.newest
            .insert(release.platform.clone(), release.clone());
        // Candidates the new newest has overtaken can never move the clock.
        let overtaken: Vec<String> = self
            .candidates
            .iter()
            .filter(|(_, c)| {
                c.release.platform == release.platform
                    && self.compare(&c.release, release) != Some(Ordering::Greater)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in overtaken {
            self.candidates.remove(&key);
        }
    }

    fn forget_weakest_candidate(&mut self, keep: &str) {
        if self.candidates.len() <= MAX_CANDIDATES {
            return;
        }
        let weakest = self
            .candidates
            .iter()
            .filter(|(key, _)| key.as_str() != keep)
            .min_by_key(|(key, c)| (c.devices.len(), std::cmp::Reverse(c.first_ms), *key))
            .map(|(key, _)| key.clone());
        if let Some(weakest) = weakest {
            self.candidates.remove(&weakest);
        }
    }

    /// How many releases wait for enough devices to become their platform's newest.
    pub fn candidates(&self) -> usize {
        self.candidates.len()
    }

    /// When an OTA update was first seen, in ms since the epoch.
    pub fn update_first_seen(&self, update_id: &str) -> Option<i64> {
        self.updates.get(update_id).copied()
    }

    /// The newest release seen on each platform.
    pub fn newest(&self) -> impl Iterator<Item = &ReleaseKey> {
        self.newest.values()
    }

    /// How `a` compares to `b`; `None` when the order is unknown (two OTA updates this clock
    /// has not both seen, or first seen at the same millisecond).
    pub fn compare(&self, a: &ReleaseKey, b: &ReleaseKey) -> Option<Ordering> {
        let version = compare_versions(&a.app_version, &b.app_version);
        if version != Ordering::Equal {
            return Some(version);
        }
        let same_platform =
            a.platform.is_empty() || b.platform.is_empty() || a.platform == b.platform;
        if !same_platform {
            return Some(Ordering::Equal);
        }
        if let (Some(x), Some(y)) = (&a.build, &b.build) {
            let build = natural_cmp(x, y);
            if build != Ordering::Equal {
                return Some(build);
            }
        }
        match (&a.update_id, &b.update_id) {
            (None, None) => Some(Ordering::Equal),
            (Some(_), None) => Some(Ordering::Greater),
            (None, Some(_)) => Some(Ordering::Less),
            (Some(x), Some(y)) if x == y => Some(Ordering::Equal),
            (Some(x), Some(y)) => match (self.updates.get(x), self.updates.get(y)) {
                (Some(tx), Some(ty)) if tx != ty => Some(tx.cmp(ty)),
                _ => None,
            },
        }
    }
}

/// Compares app versions: by semver precedence when both parse (`v` prefix and missing minor or
/// patch allowed), else by [`natural_cmp`].
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (lenient_semver(a), lenient_semver(b)) {
        (Some(x), Some(y)) => x.cmp_precedence(&y),
        _ => natural_cmp(a, b),
    }
}

fn lenient_semver(version: &str) -> Option<semver::Version> {
    let version = version.trim();
    let version = version.strip_prefix(['v', 'V']).unwrap_or(version);
    if let Ok(parsed) = semver::Version::parse(version) {
        return Some(parsed);
    }
    let split = version.find(['-', '+']).unwrap_or(version.len());
    let (core, rest) = version.split_at(split);
    let parts = core.split('.').count();
    if parts >= 3 || core.is_empty() {
        return None;
    }
    let padded = format!("{core}{}{rest}", ".0".repeat(3 - parts));
    semver::Version::parse(&padded).ok()
}

/// Compares strings with runs of digits compared as numbers: `build9 < build10`, `1.9 < 1.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (x_run, x_rest) = split_digits(a);
                let (y_run, y_rest) = split_digits(b);
                let x_run = trim_zeros(x_run);
                let y_run = trim_zeros(y_run);
                let order = x_run.len().cmp(&y_run.len()).then_with(|| x_run.cmp(y_run));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (x_rest, y_rest);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(bytes: &[u8]) -> (&[u8], &[u8]) {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    bytes.split_at(digits)
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|b| **b == b'0').count();
    &digits[zeros.min(digits.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(platform: &str, version: &str, build: Option<&str>, update: Option<&str>) -> ReleaseKey {
        ReleaseKey {
            platform: platform.into(),
            app_version: version.into(),
            build: build.map(Into::into),
            update_id: update.map(Into::into),
        }
    }

    #[test]
    fn versions_order_by_semver_then_naturally() {
        use Ordering::*;
        assert_eq!(compare_versions("2.9.0", "2.10.0"), Less);
        assert_eq!(compare_versions("2.10", "2.9.1"), Greater);
        assert_eq!(compare_versions("v3", "3.0.0"), Equal);
        assert_eq!(compare_versions("1.0.0-beta.2", "1.0.0"), Less);
        assert_eq!(compare_versions("1.0.0-beta.2", "1.0.0-beta.10"), Less);
        assert_eq!(
            compare_versions("2024.10.03-hotfix", "2024.9.30-x"),
            Greater
        );
        assert_eq!(compare_versions("build9", "build10"), Less);
        assert_eq!(natural_cmp("007", "7"), Equal);
        assert_eq!(natural_cmp("1045", "999"), Greater);
    }

    #[test]
    fn candidates_are_bounded_and_a_release_many_devices_run_outlasts_a_flood() {
        let mut clock = ReleaseClock::default();
        let real = key("ios", "2.15.0", None, None);
        for device in 0..4 {
            clock.observe_from(&real, 10, Some(device), 5);
        }
        for i in 0..5_000 {
            let fake = key("ios", &format!("{}.0.0", 100 + i), None, None);
            clock.observe_from(&fake, 20, Some(99), 5);
        }
        assert_eq!(clock.candidates(), MAX_CANDIDATES);
        assert_eq!(clock.newest().count(), 0);
        clock.observe_from(&real, 30, Some(4), 5);
        assert_eq!(clock.newest().collect::<Vec<_>>(), [&real]);
        // Every candidate is newer than 2.15.0 and stays; the one promoted is gone.
        assert_eq!(clock.candidates(), MAX_CANDIDATES - 1);
    }

    #[test]
    fn builds_then_updates_order_within_a_version() {
        use Ordering::*;
        let mut clock = ReleaseClock::default();
        let embedded = key("android", "2.3.0", Some("45"), None);
        let first = key("android", "2.3.0", Some("45"), Some("u-first"));
        let second = key("android", "2.3.0", Some("45"), Some("u-second"));
        clock.observe(&second, 2_000);
        clock.observe(&first, 1_500);
        clock.observe(&first, 1_000);
        assert_eq!(clock.update_first_seen("u-first"), Some(1_000));
        assert_eq!(clock.compare(&first, &second), Some(Less));
        assert_eq!(clock.compare(&second, &first), Some(Greater));
        assert_eq!(clock.compare(&embedded, &first), Some(Less));
        let unknown = key("android", "2.3.0", Some("45"), Some("u-never-seen"));
        assert_eq!(clock.compare(&unknown, &first), None);

        let next_build = key("android", "2.3.0", Some("46"), None);
        assert_eq!(clock.compare(&next_build, &second), Some(Greater));
        let ios = key("ios", "2.3.0", Some("7"), None);
        assert_eq!(clock.compare(&ios, &second), Some(Equal));
        let newer_ios = key("ios", "2.4.0", Some("1"), None);
        assert_eq!(clock.compare(&newer_ios, &second), Some(Greater));
        assert_eq!(clock.newest().collect::<Vec<_>>(), [&second]);
    }

    #[test]
    fn keys_come_from_events_and_print_readably() {
        let release = Release {
            platform: "Android".into(),
            app_version: "2.3.0".into(),
            build: Some("45".into()),
            update_id: Some(String::new()),
            ..Release::default()
        };
        let key = ReleaseKey::of(&release);
        assert_eq!(key.update_id, None);
        assert_eq!(key.to_string(), "android 2.3.0 (45)");
    }
}
