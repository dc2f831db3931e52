//! Sessionization: explicit SDK sessions and implicit sessions cut from a device's events.
//!
//! - **Explicit** sessions have an id from the SDK: Sentry session updates (`init`, status, error
//!   count, duration, sequence number) and events that carry a session id (PostHog
//!   `$session_id`). A session with a final status (`exited`, `crashed`, `abnormal`) closes once
//!   the watermark passes that update, so events reordered within the allowed lateness still
//!   count; one without closes after `gap` without news. An update older (by sequence number) than one already applied is
//!   stale and ignored; an update newer than the one that closed a session reopens it and its
//!   record is emitted again with a higher `version`.
//! - **Implicit** sessions group a device's events that carry no session id: an event within
//!   `gap` (30 minutes) of a session's range joins it, one that bridges two merges them, and no
//!   session spans more than `max` (24 hours). Events may arrive out of order: sessions close only
//!   when the watermark passes their last event plus `gap`.
//! - **Late** events (behind the watermark) still form sessions: such a session closes once the
//!   watermark has moved `gap` past the time its last event *arrived* (the watermark then), so a
//!   device's offline queue flushed in one go becomes its sessions, not one per event.
//!
//! Closing is driven by a min-heap of close times; entries go stale when a session grows and are
//! re-queued when popped, so each event costs one map lookup.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use trellis_schemas::records::{SessionRecord, SessionStart};
use trellis_schemas::{Common, Event, Level, Release, SessionStatus, SessionUpdate};
use xxhash_rust::xxh3::Xxh3;

/// Most distinct screens a session record lists.
const MAX_SCREENS: usize = 64;

/// Most implicit sessions one device may have open at once. Events hours apart each open one;
/// past this, the session that saw its last event longest ago ends early (counted as
/// `session_evicted`), so a device sending times spread over months cannot grow the stage's
/// state, or the scan of its sessions, without bound.
pub const MAX_OPEN_PER_DEVICE: usize = 32;

/// Session rules.
#[derive(Debug, Clone, Copy)]
pub struct SessionRules {
    /// Inactivity that ends a session, in ms.
    pub gap_ms: i64,
    /// Longest implicit session, in ms.
    pub max_ms: i64,
    /// Whether opening sessions are announced ([`Sessions::take_started`]), for new-issue
    /// velocity.
    pub announce_starts: bool,
    /// Most explicit sessions and devices with implicit sessions open at once; past it, the
    /// sessions due to close first are ended early (see [`Sessions::take_evicted`]).
    pub max_open: usize,
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionCounters {
    /// Session updates older than one already applied.
    pub stale_updates: u64,
    /// Events naming a session that had already ended.
    pub events_after_end: u64,
    /// Sessions closed.
    pub closed: u64,
    /// Implicit sessions ended early because their device had too many open.
    pub evicted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Open {
    id: String,
    explicit: bool,
    project: String,
    device_id: String,
    user_id: Option<String>,
    release: Release,
    started_ms: i64,
    last_ms: i64,
    /// The watermark when an event last touched the session (late sessions close by it).
    touched_wm: i64,
    sdk_duration_ms: Option<i64>,
    status: SessionStatus,
    reported_errors: i64,
    error_events: i64,
    events: i64,
    screen_views: i64,
    /// Distinct screens with the time each was first viewed.
    screens: Vec<(i64, String)>,
    crashed: bool,
    late: bool,
    seq: i64,
    version: i64,
    /// A final status arrived: close as soon as the watermark passes it.
    ended: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ended {
    seq: i64,
    version: i64,
    /// Forgotten once the watermark passes this.
    forget_at: i64,
}

/// Which map a timer points into.
const IMPLICIT: u8 = 0;
const EXPLICIT: u8 = 1;

/// One partition's open sessions.
#[derive(Debug)]
pub struct Sessions {
    rules: SessionRules,
    implicit: HashMap<u64, Vec<Open>>,
    explicit: HashMap<u64, Open>,
    ended: HashMap<u64, Ended>,
    ended_order: VecDeque<(i64, u64)>,
    timers: BinaryHeap<Reverse<(i64, u64, u8)>>,
    /// Sessions opened since the last [`Sessions::take_started`], when announced.
    started: Vec<SessionStart>,
    /// Sessions ended early since the last [`Sessions::take_evicted`].
    evicted: Vec<SessionRecord>,
    /// Counters since the last drain.
    pub counters: SessionCounters,
}

/// What a checkpoint holds (timers are rebuilt).
#[derive(Serialize, Deserialize)]
pub struct SessionsState {
    implicit: Vec<(u64, Vec<Open>)>,
    explicit: Vec<(u64, Open)>,
    ended: Vec<(u64, Ended)>,
}

/// The 64-bit hash of `parts`, each followed by a 0 byte (one-shot xxh3 over a stack buffer
/// for short keys: the streaming hasher costs more than the hash at these sizes).
pub(crate) fn key(parts: &[&str]) -> u64 {
    let mut buf = [0u8; 256];
    let mut len = 0;
    for p in parts {
        let bytes = p.as_bytes();
        if len + bytes.len() + 1 > buf.len() {
            let mut h = Xxh3::new();
            for p in parts {
                h.update(p.as_bytes());
                h.update(&[0]);
            }
            return h.digest();
        }
        buf[len..len + bytes.len()].copy_from_slice(bytes);
        buf[len + bytes.len()] = 0;
        len += bytes.len() + 1;
    }
    xxhash_rust::xxh3::xxh3_64(&buf[..len])
}

/// The device an event came from, as partitioning sees it.
pub fn device_of(common: &Common) -> &str {
    common
        .device_id
        .as_deref()
        .or(common.user_id.as_deref())
        .unwrap_or(&common.event_id)
}

/// The id of an implicit session: project, device and the event that opened it.
fn implicit_id(project: &str, device: &str, event_id: &str) -> String {
    let mut h = Xxh3::new();
    for p in [project, device, event_id] {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    format!("{:032x}", h.digest128())
}

impl Open {
    fn new(common: &Common, id: String, explicit: bool, t: i64, wm: i64) -> Self {
        Open {
            id,
            explicit,
            project: common.project.clone(),
            device_id: device_of(common).to_string(),
            user_id: common.user_id.clone(),
            release: common.release.clone(),
            started_ms: t,
            last_ms: t,
            touched_wm: wm,
            sdk_duration_ms: None,
            status: SessionStatus::Ok,
            reported_errors: 0,
            error_events: 0,
            events: 0,
            screen_views: 0,
            screens: Vec::new(),
            crashed: false,
            late: t < wm,
            seq: i64::MIN,
            version: 0,
            ended: false,
        }
    }

    fn start(&self) -> SessionStart {
        SessionStart {
            project: self.project.clone(),
            session_id: self.id.clone(),
            device_id: self.device_id.clone(),
            user_id: self.user_id.clone(),
            release: self.release.clone(),
            started_ms: self.started_ms,
        }
    }

    fn close_at(&self, gap_ms: i64) -> i64 {
        let last = self.last_ms.max(self.touched_wm);
        if self.ended {
            last
        } else {
            last.saturating_add(gap_ms)
        }
    }

    fn add(&mut self, event: &Event, t: i64, wm: i64) {
        self.started_ms = self.started_ms.min(t);
        self.last_ms = self.last_ms.max(t);
        self.touched_wm = self.touched_wm.max(wm);
        if self.user_id.is_none() {
            self.user_id.clone_from(&event.common().user_id);
        }
        self.events += 1;
        match event {
            Event::Analytics(a) => {
                if a.name == "$screen" || a.name == "screen_view" {
                    self.screen_views += 1;
                }
                if let Some(screen) = &a.screen {
                    self.saw_screen(t, screen);
                }
            }
            Event::Error(e) => {
                self.error_events += 1;
                if !e.handled || e.level == Level::Fatal {
                    self.crashed = true;
                }
            }
            _ => {}
        }
    }

    /// Remembers that `screen` was viewed at `t` (events arrive out of order: keep the first).
    fn saw_screen(&mut self, t: i64, screen: &str) {
        let screen = crate::pipeline::health::bounded_name(screen);
        if let Some((first, _)) = self.screens.iter_mut().find(|(_, s)| s == screen) {
            *first = (*first).min(t);
        } else if self.screens.len() < MAX_SCREENS {
            self.screens.push((t, screen.to_string()));
        }
    }

    fn merge(&mut self, other: Open) {
        self.started_ms = self.started_ms.min(other.started_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
        self.touched_wm = self.touched_wm.max(other.touched_wm);
        if self.user_id.is_none() {
            self.user_id = other.user_id;
        }
        self.events += other.events;
        self.screen_views += other.screen_views;
        for (t, s) in other.screens {
            self.saw_screen(t, &s);
        }
        self.error_events += other.error_events;
        self.crashed |= other.crashed;
        self.late &= other.late;
    }

    fn record(&self) -> SessionRecord {
        let errors = self.reported_errors.max(self.error_events);
        let crashed = self.crashed || self.status == SessionStatus::Crashed;
        let status = if crashed {
            SessionStatus::Crashed
        } else if self.status == SessionStatus::Abnormal {
            SessionStatus::Abnormal
        } else if errors > 0 {
            SessionStatus::Errored
        } else if self.status == SessionStatus::Exited {
            SessionStatus::Exited
        } else {
            SessionStatus::Ok
        };
        SessionRecord {
            session_id: self.id.clone(),
            project: self.project.clone(),
            device_id: self.device_id.clone(),
            user_id: self.user_id.clone(),
            release: self.release.clone(),
            explicit: self.explicit,
            started_ms: self.started_ms,
            ended_ms: self.last_ms,
            duration_ms: self
                .sdk_duration_ms
                .unwrap_or(self.last_ms - self.started_ms),
            status,
            events: self.events,
            screen_views: self.screen_views,
            screens: {
                let mut screens = self.screens.clone();
                screens.sort();
                screens.into_iter().map(|(_, s)| s).collect()
            },
            errors,
            crashed,
            late: self.late,
            version: self.version,
        }
    }
}

fn is_final(status: SessionStatus) -> bool {
    matches!(
        status,
        SessionStatus::Exited | SessionStatus::Crashed | SessionStatus::Abnormal
    )
}

impl Sessions {
    /// No open sessions.
    pub fn new(rules: SessionRules) -> Self {
        Sessions {
            rules,
            implicit: HashMap::new(),
            explicit: HashMap::new(),
            ended: HashMap::new(),
            evicted: Vec::new(),
            ended_order: VecDeque::new(),
            timers: BinaryHeap::new(),
            started: Vec::new(),
            counters: SessionCounters::default(),
        }
    }

    /// The sessions opened since the last call, when [`SessionRules::announce_starts`].
    pub fn take_started(&mut self) -> Vec<SessionStart> {
        std::mem::take(&mut self.started)
    }

    /// Open sessions.
    pub fn open(&self) -> usize {
        self.explicit.len() + self.implicit.values().map(Vec::len).sum::<usize>()
    }

    /// Counts `event` (at event time `t`, under watermark `wm`) into its session. An implicit
    /// session's id is written into the event. Sessions close in [`Sessions::close_due`].
    pub fn on_event(&mut self, event: &mut Event, t: i64, wm: i64) {
        if let Event::Session(update) = event {
            self.on_update(update, t, wm);
            return;
        }
        match event.common().session_id.as_deref() {
            Some(sid) => {
                let k = key(&[&event.common().project, sid]);
                if self.ended.contains_key(&k) {
                    self.counters.events_after_end += 1;
                    return;
                }
                let gap = self.rules.gap_ms;
                let open = match self.explicit.entry(k) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let open = Open::new(event.common(), sid.to_string(), true, t, wm);
                        self.timers.push(Reverse((open.close_at(gap), k, EXPLICIT)));
                        if self.rules.announce_starts {
                            self.started.push(open.start());
                        }
                        v.insert(open)
                    }
                };
                open.add(event, t, wm);
            }
            None => {
                let id = self.on_implicit(event, t, wm);
                match event {
                    Event::Analytics(e) => e.common.session_id = Some(id),
                    Event::Error(e) => e.common.session_id = Some(id),
                    Event::Performance(e) => e.common.session_id = Some(id),
                    Event::Transaction(e) => e.common.session_id = Some(id),
                    Event::Notification(e) => e.common.session_id = Some(id),
                    Event::Session(_) => {}
                }
            }
        }
    }

    fn on_implicit(&mut self, event: &Event, t: i64, wm: i64) -> String {
        let common = event.common();
        let device = device_of(common);
        let k = key(&[&common.project, device]);
        let SessionRules { gap_ms, max_ms, .. } = self.rules;
        let list = self.implicit.entry(k).or_default();
        let fits = |s: &Open| {
            t >= s.started_ms - gap_ms
                && t <= s.last_ms + gap_ms
                && s.last_ms.max(t) - s.started_ms.min(t) <= max_ms
        };
        let mut hits = list
            .iter()
            .enumerate()
            .filter(|(_, s)| fits(s))
            .map(|(i, _)| i);
        let first = hits.next();
        let second = hits.next();
        let index = match (first, second) {
            (None, _) => {
                let open = Open::new(
                    common,
                    implicit_id(&common.project, device, &common.event_id),
                    false,
                    t,
                    wm,
                );
                self.timers
                    .push(Reverse((open.close_at(gap_ms), k, IMPLICIT)));
                if self.rules.announce_starts {
                    self.started.push(open.start());
                }
                if list.len() >= MAX_OPEN_PER_DEVICE
                    && let Some(oldest) = (0..list.len()).min_by_key(|&i| list[i].last_ms)
                {
                    let ended = list.remove(oldest);
                    self.counters.evicted += 1;
                    self.counters.closed += 1;
                    self.evicted.push(ended.record());
                }
                let at = list.partition_point(|s| s.started_ms <= t);
                list.insert(at, open);
                at
            }
            (Some(i), Some(j)) => {
                // The event bridges two sessions: they become one, unless that one would be
                // longer than the maximum.
                let merged_span = list[j].last_ms.max(list[i].last_ms)
                    - list[i].started_ms.min(list[j].started_ms);
                if merged_span <= max_ms {
                    let other = list.remove(j);
                    list[i].merge(other);
                }
                i
            }
            (Some(i), None) => i,
        };
        list[index].add(event, t, wm);
        list[index].id.clone()
    }

    fn on_update(&mut self, update: &SessionUpdate, t: i64, wm: i64) {
        let common = &update.common;
        let Some(sid) = common.session_id.as_deref() else {
            return;
        };
        let k = key(&[&common.project, sid]);
        let mut version = 0;
        if let Some(ended) = self.ended.get(&k) {
            if update.seq <= ended.seq {
                self.counters.stale_updates += 1;
                return;
            }
            version = ended.version + 1;
            self.ended.remove(&k);
        }
        let gap = self.rules.gap_ms;
        let open = match self.explicit.entry(k) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut open = Open::new(common, sid.to_string(), true, t, wm);
                open.version = version;
                self.timers.push(Reverse((open.close_at(gap), k, EXPLICIT)));
                if self.rules.announce_starts {
                    self.started.push(open.start());
                }
                v.insert(open)
            }
        };
        if update.seq < open.seq {
            self.counters.stale_updates += 1;
            return;
        }
        open.seq = update.seq;
        open.status = update.status;
        open.reported_errors = open.reported_errors.max(update.errors);
        if update.duration_ms.is_some() {
            open.sdk_duration_ms = update.duration_ms;
        }
        if update.started_ms > 0 {
            open.started_ms = update.started_ms;
        }
        open.last_ms = open.last_ms.max(t);
        open.touched_wm = open.touched_wm.max(wm);
        if open.user_id.is_none() {
            open.user_id.clone_from(&common.user_id);
        }
        open.ended = is_final(update.status);
        if open.ended {
            self.timers.push(Reverse((open.close_at(gap), k, EXPLICIT)));
        }
    }

    fn end_explicit(&mut self, k: u64, open: Open, wm: i64, closed: &mut Vec<SessionRecord>) {
        // Remember the end long enough to tell stale updates from a reopening.
        let forget_at = wm.saturating_add(2 * self.rules.gap_ms);
        self.ended.insert(
            k,
            Ended {
                seq: open.seq,
                version: open.version,
                forget_at,
            },
        );
        self.ended_order.push_back((forget_at, k));
        self.counters.closed += 1;
        closed.push(open.record());
    }

    /// Sessions ended early for their device's cap or the partition's since the last call: the
    /// caller closes them with the ones [`Sessions::close_due`] closes, before the next
    /// checkpoint.
    pub fn take_evicted(&mut self, closed: &mut Vec<SessionRecord>, wm: i64) {
        self.keep_within_max_open(wm);
        closed.append(&mut self.evicted);
    }

    /// Past `max_open` explicit sessions and devices with implicit ones, ends the sessions due
    /// to close first (all of a device's implicit ones at once), whatever the watermark: ids an
    /// SDK (or anyone with the project's key) chooses cannot grow the open set without bound.
    fn keep_within_max_open(&mut self, wm: i64) {
        let gap = self.rules.gap_ms;
        while self.explicit.len() + self.implicit.len() > self.rules.max_open {
            let Some(Reverse((at, k, which))) = self.timers.pop() else {
                return;
            };
            if which == EXPLICIT {
                let Some(open) = self.explicit.get(&k) else {
                    continue;
                };
                let due = open.close_at(gap);
                if due != at {
                    // The session went on since this timer was set: its own timer decides.
                    self.timers.push(Reverse((due, k, EXPLICIT)));
                    continue;
                }
                let open = self.explicit.remove(&k).expect("present above");
                self.counters.evicted += 1;
                let mut ended = Vec::with_capacity(1);
                self.end_explicit(k, open, wm, &mut ended);
                self.evicted.append(&mut ended);
            } else {
                let Some(list) = self.implicit.get(&k) else {
                    continue;
                };
                let due = list.iter().map(|s| s.close_at(gap)).min();
                if due != Some(at) {
                    if let Some(due) = due {
                        self.timers.push(Reverse((due, k, IMPLICIT)));
                    }
                    continue;
                }
                for open in self.implicit.remove(&k).expect("present above") {
                    self.counters.evicted += 1;
                    self.counters.closed += 1;
                    self.evicted.push(open.record());
                }
            }
        }
    }

    /// Closes every session the watermark has passed, in the order of their ends (then project,
    /// id and version): the timers that find them depend on the path the state took (a restored
    /// checkpoint rebuilds them), the order they are emitted in must not.
    pub fn close_due(&mut self, wm: i64, closed: &mut Vec<SessionRecord>) {
        let first = closed.len();
        self.close_timers_due(wm, closed);
        closed[first..].sort_by(|a, b| {
            (a.ended_ms, &a.project, &a.session_id, a.version).cmp(&(
                b.ended_ms,
                &b.project,
                &b.session_id,
                b.version,
            ))
        });
    }

    fn close_timers_due(&mut self, wm: i64, closed: &mut Vec<SessionRecord>) {
        let gap = self.rules.gap_ms;
        while let Some(&Reverse((at, k, which))) = self.timers.peek() {
            if at >= wm {
                break;
            }
            self.timers.pop();
            if which == EXPLICIT {
                let Some(open) = self.explicit.get(&k) else {
                    continue;
                };
                let due = open.close_at(gap);
                if due < wm {
                    let open = self.explicit.remove(&k).expect("present above");
                    self.end_explicit(k, open, wm, closed);
                } else if due != at {
                    self.timers.push(Reverse((due, k, EXPLICIT)));
                }
            } else {
                let Some(list) = self.implicit.get_mut(&k) else {
                    continue;
                };
                let mut i = 0;
                while i < list.len() {
                    if list[i].close_at(gap) < wm {
                        let open = list.remove(i);
                        self.counters.closed += 1;
                        closed.push(open.record());
                    } else {
                        i += 1;
                    }
                }
                match list.iter().map(|s| s.close_at(gap)).min() {
                    Some(next) => self.timers.push(Reverse((next, k, IMPLICIT))),
                    None => {
                        self.implicit.remove(&k);
                    }
                }
            }
        }
        while let Some(&(forget_at, k)) = self.ended_order.front() {
            if forget_at >= wm {
                break;
            }
            self.ended_order.pop_front();
            if self.ended.get(&k).is_some_and(|e| e.forget_at == forget_at) {
                self.ended.remove(&k);
            }
        }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> SessionsState {
        SessionsState {
            implicit: self.implicit.iter().map(|(k, v)| (*k, v.clone())).collect(),
            explicit: self.explicit.iter().map(|(k, v)| (*k, v.clone())).collect(),
            ended: self.ended.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }

    /// Rebuilds from a checkpoint.
    pub fn restore(rules: SessionRules, state: SessionsState) -> Self {
        let mut s = Sessions::new(rules);
        for (k, list) in state.implicit {
            if let Some(next) = list.iter().map(|o| o.close_at(rules.gap_ms)).min() {
                s.timers.push(Reverse((next, k, IMPLICIT)));
            }
            s.implicit.insert(k, list);
        }
        for (k, open) in state.explicit {
            s.timers
                .push(Reverse((open.close_at(rules.gap_ms), k, EXPLICIT)));
            s.explicit.insert(k, open);
        }
        let mut ended: Vec<_> = state.ended;
        ended.sort_by_key(|(k, e)| (e.forget_at, *k));
        for (k, e) in ended {
            s.ended_order.push_back((e.forget_at, k));
            s.ended.insert(k, e);
        }
        s
    }
}
