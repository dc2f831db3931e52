//! Release health: per release and one-minute window of event time, sessions, crashes, users,
//! event counts by kind, and performance percentiles in mergeable sketches.
//!
//! Each input partition keeps its own *partials*: maps from window start to release to counts
//! (`BTreeMap` drained in order with `pop_first` when the watermark passes them). A window closes
//! when the watermark passes its end plus the session gap: a session is counted in the window it
//! ended in, and an implicit session is only known to have ended a gap after its last event.
//!
//! A window's answer is the merge of its partials ([`summarize`]): counts add, user sets unite,
//! and DDSketches (1% relative accuracy, from `sketches-ddsketch`) merge bucket by bucket, so
//! partials from many partitions give the same percentiles as one sketch of every sample.
//!
//! **Late data** gets a *correction*: an event or session whose window already closed opens a
//! correction partial for that window, emitted once the watermark has moved on by a window and a
//! gap. It merges into the window's answer like any other partial (so the window is corrected,
//! and its `correction` flag says how). Anything older than the correction horizon (default
//! 7 days) behind the watermark is counted as `aggregate_too_late` and left out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use trellis_schemas::records::{HealthPartial, KindCount, PerfSketch, SessionRecord};
use trellis_schemas::{Device, Event, Kind, Release, SessionStatus};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Window rules.
#[derive(Debug, Clone, Copy)]
pub struct WindowRules {
    /// Window length in ms.
    pub window_ms: i64,
    /// How long after its end a window waits for sessions that ended in it (the session gap).
    pub close_delay_ms: i64,
    /// How far behind the watermark a late event may still correct a window.
    pub horizon_ms: i64,
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct HealthCounters {
    /// Late inputs counted into corrections.
    pub corrections: u64,
    /// Late inputs older than the horizon.
    pub too_late: u64,
    /// Performance samples left out of a partial because it held [`MAX_PERF_KEYS`] series.
    pub perf_dropped: u64,
    /// Partials emitted.
    pub emitted: u64,
    /// Further parts emitted for partials too large for one record (see [`split`]).
    pub split: u64,
}

/// Most (metric, device class, screen) series one partial holds: metric and screen names come
/// from the SDK, and each series is a sketch in the partial's record, which must stay under the
/// broker's message limit.
pub const MAX_PERF_KEYS: usize = 256;

/// Most bytes one partial record may take, about: half of Kafka's default message limit. A
/// partial whose users and sketches need more is emitted as several parts (see [`split`]).
pub const MAX_PARTIAL_BYTES: usize = 512 * 1024;

/// The bytes a user hash takes at most in Avro (a zig-zag varint of 64 bits).
const USER_BYTES: usize = 10;

fn perf_bytes(p: &PerfSketch) -> usize {
    p.sketch.len() + p.metric.len() + p.device_class.len() + p.screen.len() + 2 * USER_BYTES
}

/// `partial` as one record, or as several when its user hashes and sketches would take more
/// than [`MAX_PARTIAL_BYTES`]: the first part keeps the counts and as many hashes and sketches
/// as fit; each further part (an id of its own, zero counts) carries the next ones. Every reader
/// already adds counts and unites users and sketches over the partials of a window (one per
/// input partition), so the parts read as the whole.
pub fn split(mut partial: HealthPartial) -> Vec<HealthPartial> {
    let size = |p: &HealthPartial| {
        USER_BYTES * (p.users.len() + p.crashed_users.len())
            + p.perf.iter().map(perf_bytes).sum::<usize>()
    };
    if size(&partial) <= MAX_PARTIAL_BYTES {
        return vec![partial];
    }
    let users = std::mem::take(&mut partial.users);
    let crashed = std::mem::take(&mut partial.crashed_users);
    let perf = std::mem::take(&mut partial.perf);
    let template = HealthPartial {
        sessions: 0,
        crashed_sessions: 0,
        abnormal_sessions: 0,
        errored_sessions: 0,
        events: Vec::new(),
        ..partial.clone()
    };
    let mut parts = vec![partial];
    let mut used = 0;
    let mut room = |parts: &mut Vec<HealthPartial>, bytes: usize| {
        if used + bytes > MAX_PARTIAL_BYTES && used > 0 {
            let mut id = Xxh3::new();
            id.update(template.partial_id.as_bytes());
            id.update(&(parts.len() as u64).to_le_bytes());
            parts.push(HealthPartial {
                partial_id: format!("{:032x}", id.digest128()),
                ..template.clone()
            });
            used = 0;
        }
        used += bytes;
        parts.len() - 1
    };
    for u in users {
        let at = room(&mut parts, USER_BYTES);
        parts[at].users.push(u);
    }
    for u in crashed {
        let at = room(&mut parts, USER_BYTES);
        parts[at].crashed_users.push(u);
    }
    for p in perf {
        let at = room(&mut parts, perf_bytes(&p));
        parts[at].perf.push(p);
    }
    parts
}

/// Longest metric or screen name a series keeps (longer ones are cut at a character boundary).
pub const MAX_NAME_CHARS: usize = 200;

/// `name` cut to [`MAX_NAME_CHARS`] characters.
pub fn bounded_name(name: &str) -> &str {
    match name.char_indices().nth(MAX_NAME_CHARS) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Perf {
    metric: String,
    device_class: String,
    screen: String,
    sketch: DDSketch,
}

#[derive(Clone, Serialize, Deserialize)]
struct Partial {
    project: String,
    release: Release,
    opened_offset: u64,
    correction: bool,
    sessions: i64,
    crashed: i64,
    abnormal: i64,
    errored: i64,
    users: HashSet<u64>,
    crashed_users: HashSet<u64>,
    events: [i64; Kind::ALL.len()],
    perf: HashMap<u64, Perf>,
}

/// One partition's open windows.
pub struct Health {
    rules: WindowRules,
    partition: u32,
    windows: BTreeMap<i64, HashMap<u64, Partial>>,
    corrections: HashMap<(i64, u64), Partial>,
    correction_order: VecDeque<(i64, i64, u64)>,
    /// Counters since the last drain.
    pub counters: HealthCounters,
}

/// What a checkpoint holds.
#[derive(Serialize, Deserialize)]
pub struct HealthState {
    windows: Vec<(i64, Vec<(u64, Partial)>)>,
    corrections: Vec<((i64, u64), Partial)>,
    correction_order: Vec<(i64, i64, u64)>,
}

fn release_key(project: &str, r: &Release) -> u64 {
    // Absent fields hash differently from empty ones.
    fn opt(o: &Option<String>) -> &str {
        o.as_deref().unwrap_or("\u{1}")
    }
    crate::pipeline::sessions::key(&[
        project,
        &r.platform,
        &r.app_version,
        opt(&r.build),
        opt(&r.runtime_version),
        opt(&r.update_id),
        opt(&r.channel),
        opt(&r.environment),
    ])
}

/// The hash a user is counted by: the user id, else the device id.
pub fn user_hash(user_id: Option<&str>, device_id: &str) -> u64 {
    match user_id {
        Some(u) => xxh3_64(u.as_bytes()),
        None => xxh3_64(device_id.as_bytes()) ^ 0x9e37_79b9_7f4a_7c15,
    }
}

/// The device class performance is split by: the OS and the model's family (the model without
/// its generation digits), for example `iOS/iPhone` or `Android/Pixel`.
pub fn device_class(device: &Device, platform: &str) -> String {
    let (os, family) = device_class_parts(device, platform);
    format!("{os}/{family}")
}

fn device_class_parts<'a>(device: &'a Device, platform: &'a str) -> (&'a str, &'a str) {
    let os = device.os_name.as_deref().unwrap_or(platform);
    let family = device
        .model
        .as_deref()
        .map(|m| {
            m.split(|c: char| c.is_ascii_digit() || c == ',')
                .next()
                .unwrap_or("")
                .trim()
        })
        .filter(|f| !f.is_empty())
        .unwrap_or("unknown");
    (os, family)
}

fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

fn sketch() -> DDSketch {
    DDSketch::new(SketchConfig::defaults())
}

impl Partial {
    fn new(project: &str, release: &Release, offset: u64, correction: bool) -> Self {
        Partial {
            project: project.to_string(),
            release: release.clone(),
            opened_offset: offset,
            correction,
            sessions: 0,
            crashed: 0,
            abnormal: 0,
            errored: 0,
            users: HashSet::new(),
            crashed_users: HashSet::new(),
            events: [0; Kind::ALL.len()],
            perf: HashMap::new(),
        }
    }

    /// Counts an event; answers `false` for a performance sample left out because the partial
    /// holds [`MAX_PERF_KEYS`] series already.
    fn add_event(&mut self, event: &Event) -> bool {
        self.events[kind_index(event.kind())] += 1;
        if let Event::Performance(p) = event {
            let (os, family) = device_class_parts(&p.common.device, &p.common.release.platform);
            let screen = bounded_name(p.screen.as_deref().unwrap_or(""));
            let metric = bounded_name(&p.metric);
            let k = crate::pipeline::sessions::key(&[metric, os, family, screen]);
            if self.perf.len() >= MAX_PERF_KEYS && !self.perf.contains_key(&k) {
                return false;
            }
            self.perf
                .entry(k)
                .or_insert_with(|| Perf {
                    metric: metric.to_string(),
                    device_class: format!("{os}/{family}"),
                    screen: screen.to_string(),
                    sketch: sketch(),
                })
                .sketch
                .add(p.value);
        }
        true
    }

    fn add_session(&mut self, s: &SessionRecord) {
        self.sessions += 1;
        let user = user_hash(s.user_id.as_deref(), &s.device_id);
        self.users.insert(user);
        match s.status {
            SessionStatus::Crashed => {
                self.crashed += 1;
                self.crashed_users.insert(user);
            }
            SessionStatus::Abnormal => self.abnormal += 1,
            SessionStatus::Errored => self.errored += 1,
            _ => {}
        }
    }

    fn emit(self, window_start: i64, rules: &WindowRules, partition: u32) -> HealthPartial {
        let mut id = Xxh3::new();
        id.update(&release_key(&self.project, &self.release).to_le_bytes());
        id.update(&window_start.to_le_bytes());
        id.update(&partition.to_le_bytes());
        id.update(&self.opened_offset.to_le_bytes());
        let sorted = |set: HashSet<u64>| {
            let mut v: Vec<i64> = set.into_iter().map(|u| u as i64).collect();
            v.sort_unstable();
            v
        };
        let mut perf: Vec<PerfSketch> = self
            .perf
            .into_values()
            .map(|p| PerfSketch {
                count: p.sketch.count() as i64,
                sketch: serde_json::to_string(&p.sketch).unwrap_or_default(),
                metric: p.metric,
                device_class: p.device_class,
                screen: p.screen,
            })
            .collect();
        perf.sort_by(|a, b| {
            (&a.metric, &a.device_class, &a.screen).cmp(&(&b.metric, &b.device_class, &b.screen))
        });
        HealthPartial {
            partial_id: format!("{:032x}", id.digest128()),
            project: self.project,
            release: self.release,
            window_start_ms: window_start,
            window_ms: rules.window_ms,
            partition: partition as i32,
            correction: self.correction,
            sessions: self.sessions,
            crashed_sessions: self.crashed,
            abnormal_sessions: self.abnormal,
            errored_sessions: self.errored,
            users: sorted(self.users),
            crashed_users: sorted(self.crashed_users),
            events: Kind::ALL
                .iter()
                .zip(self.events)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| KindCount {
                    kind: k.as_str().to_string(),
                    count: n,
                })
                .collect(),
            perf,
        }
    }
}

impl Health {
    /// No open windows.
    pub fn new(rules: WindowRules, partition: u32) -> Self {
        Health {
            rules,
            partition,
            windows: BTreeMap::new(),
            corrections: HashMap::new(),
            correction_order: VecDeque::new(),
            counters: HealthCounters::default(),
        }
    }

    fn window_of(&self, t: i64) -> i64 {
        t.div_euclid(self.rules.window_ms) * self.rules.window_ms
    }

    fn is_closed(&self, window: i64, wm: i64) -> bool {
        window + self.rules.window_ms + self.rules.close_delay_ms <= wm
    }

    /// The partial an input at time `t` counts into, or none if it is too late.
    fn partial(
        &mut self,
        t: i64,
        project: &str,
        release: &Release,
        offset: u64,
        wm: i64,
    ) -> Option<&mut Partial> {
        if t < wm.saturating_sub(self.rules.horizon_ms) {
            self.counters.too_late += 1;
            return None;
        }
        let window = self.window_of(t);
        let rk = release_key(project, release);
        if self.is_closed(window, wm) {
            self.counters.corrections += 1;
            let due = wm + self.rules.window_ms + self.rules.close_delay_ms;
            let order = &mut self.correction_order;
            return Some(self.corrections.entry((window, rk)).or_insert_with(|| {
                order.push_back((due, window, rk));
                Partial::new(project, release, offset, true)
            }));
        }
        Some(
            self.windows
                .entry(window)
                .or_default()
                .entry(rk)
                .or_insert_with(|| Partial::new(project, release, offset, false)),
        )
    }

    /// Counts an event at event time `t`.
    pub fn add_event(&mut self, event: &Event, t: i64, offset: u64, wm: i64) {
        let common = event.common();
        if let Some(p) = self.partial(t, &common.project, &common.release, offset, wm)
            && !p.add_event(event)
        {
            self.counters.perf_dropped += 1;
        }
    }

    /// Counts a closed session into the window it ended in.
    pub fn add_session(&mut self, session: &SessionRecord, offset: u64, wm: i64) {
        if let Some(p) = self.partial(
            session.ended_ms,
            &session.project,
            &session.release,
            offset,
            wm,
        ) {
            p.add_session(session);
        }
    }

    /// Emits every window and correction the watermark has passed.
    pub fn close_due(&mut self, wm: i64, out: &mut Vec<HealthPartial>) {
        while let Some((&window, _)) = self.windows.first_key_value() {
            if !self.is_closed(window, wm) {
                break;
            }
            let (_, partials) = self.windows.pop_first().expect("peeked");
            let mut partials: Vec<_> = partials.into_iter().collect();
            partials.sort_by_key(|(rk, _)| *rk);
            for (_, p) in partials {
                let parts = split(p.emit(window, &self.rules, self.partition));
                self.counters.split += parts.len() as u64 - 1;
                out.extend(parts);
                self.counters.emitted += 1;
            }
        }
        while let Some(&(due, window, rk)) = self.correction_order.front() {
            if due > wm {
                break;
            }
            self.correction_order.pop_front();
            if let Some(p) = self.corrections.remove(&(window, rk)) {
                let parts = split(p.emit(window, &self.rules, self.partition));
                self.counters.split += parts.len() as u64 - 1;
                out.extend(parts);
                self.counters.emitted += 1;
            }
        }
    }

    /// Open partials (windows times releases, plus corrections).
    pub fn open(&self) -> usize {
        self.windows.values().map(HashMap::len).sum::<usize>() + self.corrections.len()
    }

    /// The state to checkpoint.
    pub fn state(&self) -> HealthState {
        HealthState {
            windows: self
                .windows
                .iter()
                .map(|(w, m)| (*w, m.iter().map(|(k, p)| (*k, p.clone())).collect()))
                .collect(),
            corrections: self
                .corrections
                .iter()
                .map(|(k, p)| (*k, p.clone()))
                .collect(),
            correction_order: self.correction_order.iter().copied().collect(),
        }
    }

    /// Rebuilds from a checkpoint.
    pub fn restore(rules: WindowRules, partition: u32, state: HealthState) -> Self {
        let mut h = Health::new(rules, partition);
        h.windows = state
            .windows
            .into_iter()
            .map(|(w, v)| (w, v.into_iter().collect()))
            .collect();
        h.corrections = state.corrections.into_iter().collect();
        h.correction_order = state.correction_order.into_iter().collect();
        h
    }
}

/// A window's answer for one release: the merge of its partials.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Sessions that ended in the window.
    pub sessions: i64,
    /// Crashed sessions.
    pub crashed_sessions: i64,
    /// Abnormal sessions.
    pub abnormal_sessions: i64,
    /// Errored sessions.
    pub errored_sessions: i64,
    /// Distinct users with a session ending in the window.
    pub users: usize,
    /// Distinct users with a crashed session.
    pub crashed_users: usize,
    /// Events by kind.
    pub events: BTreeMap<String, i64>,
    /// Per (metric, device class, screen): sample count and p50, p75, p95, p99.
    pub perf: BTreeMap<(String, String, String), (u64, [f64; 4])>,
}

impl Summary {
    /// Sessions that did not crash, as a fraction (1 when there were none).
    pub fn crash_free_sessions(&self) -> f64 {
        if self.sessions == 0 {
            1.0
        } else {
            1.0 - self.crashed_sessions as f64 / self.sessions as f64
        }
    }

    /// Users without a crashed session, as a fraction (1 when there were none).
    pub fn crash_free_users(&self) -> f64 {
        if self.users == 0 {
            1.0
        } else {
            1.0 - self.crashed_users as f64 / self.users as f64
        }
    }
}

/// Why partials could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A partial's sketch is not a DDSketch in JSON.
    #[error("partial {id}: sketch of {metric}: {source}")]
    Sketch {
        /// The partial.
        id: String,
        /// The metric.
        metric: String,
        /// What JSON said.
        #[source]
        source: serde_json::Error,
    },
    /// Two sketches were built with different settings.
    #[error("partial {id}: sketches of {metric} have different settings")]
    Incompatible {
        /// The partial.
        id: String,
        /// The metric.
        metric: String,
    },
}

/// Merges partials of one window and release (from any partitions, corrections included).
pub fn summarize<'a>(
    partials: impl IntoIterator<Item = &'a HealthPartial>,
) -> Result<Summary, MergeError> {
    let mut users = HashSet::new();
    let mut crashed_users = HashSet::new();
    let mut summary = Summary {
        sessions: 0,
        crashed_sessions: 0,
        abnormal_sessions: 0,
        errored_sessions: 0,
        users: 0,
        crashed_users: 0,
        events: BTreeMap::new(),
        perf: BTreeMap::new(),
    };
    let mut sketches: BTreeMap<(String, String, String), DDSketch> = BTreeMap::new();
    for p in partials {
        summary.sessions += p.sessions;
        summary.crashed_sessions += p.crashed_sessions;
        summary.abnormal_sessions += p.abnormal_sessions;
        summary.errored_sessions += p.errored_sessions;
        users.extend(p.users.iter().copied());
        crashed_users.extend(p.crashed_users.iter().copied());
        for k in &p.events {
            *summary.events.entry(k.kind.clone()).or_default() += k.count;
        }
        for s in &p.perf {
            let sketch: DDSketch =
                serde_json::from_str(&s.sketch).map_err(|source| MergeError::Sketch {
                    id: p.partial_id.clone(),
                    metric: s.metric.clone(),
                    source,
                })?;
            let key = (s.metric.clone(), s.device_class.clone(), s.screen.clone());
            match sketches.get_mut(&key) {
                Some(acc) => acc.merge(&sketch).map_err(|_| MergeError::Incompatible {
                    id: p.partial_id.clone(),
                    metric: s.metric.clone(),
                })?,
                None => {
                    sketches.insert(key, sketch);
                }
            }
        }
    }
    summary.users = users.len();
    summary.crashed_users = crashed_users.len();
    for (key, sketch) in sketches {
        let q = |x: f64| sketch.quantile(x).ok().flatten().unwrap_or(f64::NAN);
        summary.perf.insert(
            key,
            (sketch.count() as u64, [q(0.5), q(0.75), q(0.95), q(0.99)]),
        );
    }
    Ok(summary)
}
