//! Exact deduplication by (project, event id) over a window of event time.
//!
//! Mobile SDKs keep offline queues for days and resend what they are unsure was delivered, so the
//! same event can arrive again long after the first copy. Each partition remembers the ids it has
//! passed on for `window` of event time (default 7 days):
//!
//! - `seen`: a hash set of the 128-bit xxh3 hashes of `project \0 event_id`. 128 bits make a false "duplicate" practically impossible (about
//!   n²/2¹²⁹: for 10⁹ ids, 10⁻²¹), so within the window the check is exact;
//! - `buckets`: for each hour of event time, the ids first seen in it, so expiry walks only the
//!   hours that fell out of the window (`BTreeMap::pop_first`), never the whole map.
//!
//! Memory is bounded by `max_ids`: past it, the oldest ids of the oldest hour are forgotten
//! early, one for each new one, and counted. One hour holds at most a quarter of `max_ids`
//! (past it, that hour forgets its own oldest ids), so a flood of new ids in one hour cannot
//! push the rest of the window out.
//! [`Dedupe::bytes_per_id`] measures the cost of one tracked id; the figure is in
//! benchmarks/README.md. An event older than the window cannot be checked and is passed on,
//! counted as `dedupe_beyond_window`.

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

const HOUR_MS: i64 = 3_600_000;

/// What the dedupe decided about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time seen: pass it on.
    New,
    /// Seen before within the window: drop it.
    Duplicate,
    /// Older than the window: passed on unchecked.
    BeyondWindow,
}

/// The id of an event for deduplication.
pub fn event_key(project: &str, event_id: &str) -> u128 {
    let mut h = Xxh3::new();
    h.update(project.as_bytes());
    h.update(&[0]);
    h.update(event_id.as_bytes());
    h.digest128()
}

/// One partition's remembered ids.
#[derive(Debug, Default)]
pub struct Dedupe {
    window_ms: i64,
    max_ids: usize,
    seen: HashSet<u128>,
    buckets: BTreeMap<i32, VecDeque<u128>>,
    /// Ids forgotten before their window ended, since the last drain.
    pub evicted_early: u64,
}

/// What a checkpoint holds: the ids of each hour (the map is rebuilt from them).
#[derive(Serialize, Deserialize)]
pub struct DedupeState {
    buckets: Vec<(i32, Vec<u128>)>,
}

impl Dedupe {
    /// Remembers ids for `window_ms` of event time, at most `max_ids` of them.
    pub fn new(window_ms: i64, max_ids: usize) -> Self {
        Dedupe {
            window_ms,
            max_ids,
            ..Default::default()
        }
    }

    /// Checks an event with key `key` and event time `event_ms`, remembering it if new.
    /// `watermark_ms` is the partition's watermark, which the window trails.
    pub fn check(&mut self, key: u128, event_ms: i64, watermark_ms: i64) -> Verdict {
        let floor = watermark_ms.saturating_sub(self.window_ms);
        if event_ms < floor {
            return if self.seen.contains(&key) {
                Verdict::Duplicate
            } else {
                Verdict::BeyondWindow
            };
        }
        let hour = (event_ms.div_euclid(HOUR_MS)) as i32;
        if !self.seen.insert(key) {
            return Verdict::Duplicate;
        }
        let max_per_hour = self.max_per_hour();
        let bucket = self.buckets.entry(hour).or_default();
        bucket.push_back(key);
        if bucket.len() > max_per_hour
            && let Some(old) = bucket.pop_front()
        {
            self.seen.remove(&old);
            self.evicted_early += 1;
        }
        while self.seen.len() > self.max_ids {
            self.evict_oldest();
        }
        Verdict::New
    }

    /// Forgets the hours that fell out of the window.
    pub fn expire(&mut self, watermark_ms: i64) {
        let floor = watermark_ms.saturating_sub(self.window_ms);
        // An hour is dropped once all of it is older than the window.
        while let Some((&hour, _)) = self.buckets.first_key_value() {
            if (hour as i64 + 1) * HOUR_MS > floor {
                break;
            }
            self.drop_oldest_bucket();
        }
    }

    /// Most ids one hour holds.
    fn max_per_hour(&self) -> usize {
        (self.max_ids / 4).max(1)
    }

    /// Forgets the oldest id of the oldest hour.
    fn evict_oldest(&mut self) {
        let Some(mut first) = self.buckets.first_entry() else {
            return;
        };
        if let Some(old) = first.get_mut().pop_front() {
            self.seen.remove(&old);
            self.evicted_early += 1;
        }
        if first.get().is_empty() {
            first.remove();
        }
    }

    fn drop_oldest_bucket(&mut self) -> Option<usize> {
        let (_, keys) = self.buckets.pop_first()?;
        for key in &keys {
            self.seen.remove(key);
        }
        Some(keys.len())
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Heap bytes per remembered id, from the map's and the buckets' allocated capacity.
    pub fn bytes_per_id(&self) -> f64 {
        if self.seen.is_empty() {
            return 0.0;
        }
        // hashbrown: one control byte per slot plus the key.
        let map = self.seen.capacity() as f64
            * (std::mem::size_of::<u128>() as f64 + 1.0)
            // capacity() is what fits before growing, at a 7/8 load: slots are 8/7 of it.
            * 8.0
            / 7.0;
        let buckets: usize = self
            .buckets
            .values()
            .map(|v| v.capacity() * std::mem::size_of::<u128>())
            .sum();
        (map + buckets as f64) / self.seen.len() as f64
    }

    /// The state to checkpoint.
    pub fn state(&self) -> DedupeState {
        DedupeState {
            buckets: self
                .buckets
                .iter()
                .map(|(h, keys)| (*h, keys.iter().copied().collect()))
                .collect(),
        }
    }

    /// Rebuilds from a checkpoint.
    pub fn restore(window_ms: i64, max_ids: usize, state: DedupeState) -> Self {
        let mut dedupe = Dedupe::new(window_ms, max_ids);
        let total = state.buckets.iter().map(|(_, k)| k.len()).sum();
        dedupe.seen.reserve(total);
        for (hour, keys) in state.buckets {
            dedupe.seen.extend(keys.iter().copied());
            dedupe.buckets.insert(hour, keys.into());
        }
        dedupe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * HOUR_MS;

    #[test]
    fn duplicates_within_the_window_are_caught_and_forgotten_after_it() {
        let mut d = Dedupe::new(7 * DAY, 1_000_000);
        let t0 = 100 * DAY;
        let a = event_key("p", "a");
        assert_eq!(d.check(a, t0, t0), Verdict::New);
        // Resent six days later (an offline queue): still caught.
        assert_eq!(d.check(a, t0, t0 + 6 * DAY), Verdict::Duplicate);
        // Another project with the same event id is a different event.
        assert_eq!(d.check(event_key("q", "a"), t0, t0), Verdict::New);
        d.expire(t0 + 6 * DAY);
        assert_eq!(d.len(), 2);
        d.expire(t0 + 8 * DAY);
        assert_eq!(d.len(), 0);
        // Past the window the event cannot be checked: passed on, marked as such.
        assert_eq!(d.check(a, t0, t0 + 8 * DAY), Verdict::BeyondWindow);
    }

    #[test]
    fn the_id_limit_forgets_the_oldest_ids_of_the_oldest_hour_first() {
        let mut d = Dedupe::new(7 * DAY, 8);
        for (i, hour) in [0, 0, 1, 1, 2, 2, 3, 3, 4].into_iter().enumerate() {
            d.check(event_key("p", &i.to_string()), hour * HOUR_MS, 0);
        }
        assert_eq!(d.evicted_early, 1);
        assert_eq!(d.len(), 8);
        assert_eq!(d.check(event_key("p", "1"), 0, 0), Verdict::Duplicate);
        assert_eq!(d.check(event_key("p", "0"), 0, 0), Verdict::New);
    }

    #[test]
    fn a_flood_of_ids_in_one_hour_leaves_the_other_hours_remembered() {
        let mut d = Dedupe::new(7 * DAY, 1_000);
        // A day of ordinary traffic, 30 ids an hour.
        for hour in 0..24 {
            for i in 0..30 {
                d.check(event_key("p", &format!("{hour}-{i}")), hour * HOUR_MS, 0);
            }
        }
        // 100,000 new ids in the next hour.
        for i in 0..100_000 {
            d.check(event_key("p", &format!("flood-{i}")), 24 * HOUR_MS, 0);
        }
        assert_eq!(
            d.len(),
            720 + 250,
            "a day of ids and a quarter of the limit"
        );
        assert_eq!(d.evicted_early, 100_000 - 250);
        for hour in 0..24 {
            let key = event_key("p", &format!("{hour}-0"));
            assert_eq!(d.check(key, hour * HOUR_MS, 0), Verdict::Duplicate);
        }
        // The flood's newest ids are remembered.
        let newest = event_key("p", "flood-99999");
        assert_eq!(d.check(newest, 24 * HOUR_MS, 0), Verdict::Duplicate);
    }

    #[test]
    fn a_restored_state_knows_the_same_ids() {
        let mut d = Dedupe::new(7 * DAY, 100);
        for i in 0..50 {
            d.check(event_key("p", &i.to_string()), i * HOUR_MS, 0);
        }
        let bytes = postcard::to_allocvec(&d.state()).unwrap();
        let mut r = Dedupe::restore(7 * DAY, 100, postcard::from_bytes(&bytes).unwrap());
        assert_eq!(r.len(), 50);
        for i in 0..50 {
            assert_eq!(
                r.check(event_key("p", &i.to_string()), i * HOUR_MS, 0),
                Verdict::Duplicate
            );
        }
        assert!(d.bytes_per_id() > 16.0);
    }
}
