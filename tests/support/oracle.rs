//! What the processors must output for a simulated fleet, computed from the fleet's truth (its
//! sessions as they happened), not from the processors' algorithms; and the check that compares.

use std::collections::{BTreeMap, BTreeSet};

use trellis_processors::pipeline::health::{self, Summary};
use trellis_processors::sim::{Fleet, SimSession, Style};
use trellis_schemas::records::{self, HealthPartial, SessionRecord};
use trellis_schemas::{Event, Level, SessionStatus, avro};

/// One session as the pipeline must report it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedSession {
    pub explicit: bool,
    pub ended_ms: i64,
    pub duration_ms: i64,
    pub events: i64,
    pub screen_views: i64,
    pub screens: Vec<String>,
    pub errors: i64,
    pub crashed: bool,
    pub status: SessionStatus,
    pub user_id: Option<String>,
    pub release: String,
}

/// One release's one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpectedWindow {
    pub sessions: i64,
    pub crashed: i64,
    pub abnormal: i64,
    pub errored: i64,
    pub users: BTreeSet<String>,
    pub crashed_users: BTreeSet<String>,
    pub events: BTreeMap<String, i64>,
    /// Samples by (metric, device class, screen).
    pub perf: BTreeMap<(String, String, String), Vec<f64>>,
}

/// Everything expected.
#[derive(Debug)]
pub struct Expected {
    /// Events sent, duplicates included.
    pub wire: usize,
    /// Distinct events.
    pub unique: usize,
    /// Sessions by (device, start).
    pub sessions: BTreeMap<(String, i64), ExpectedSession>,
    /// Windows by (release, window start).
    pub windows: BTreeMap<(String, i64), ExpectedWindow>,
}

fn release_key(r: &trellis_schemas::Release) -> String {
    format!("{r:?}")
}

fn expected_session(s: &SimSession) -> ExpectedSession {
    let mut events = 0;
    let mut screen_views = 0;
    let mut screens: Vec<String> = Vec::new();
    let mut error_events = 0;
    let mut reported = 0;
    let mut crashed = false;
    let mut final_status = SessionStatus::Ok;
    let mut duration = None;
    for e in &s.events {
        match e {
            Event::Session(u) => {
                reported = reported.max(u.errors);
                final_status = u.status;
                duration = u.duration_ms.or(duration);
            }
            Event::Analytics(a) => {
                events += 1;
                if a.name == "$screen" {
                    screen_views += 1;
                }
                if let Some(screen) = &a.screen
                    && !screens.contains(screen)
                {
                    screens.push(screen.clone());
                }
            }
            Event::Error(err) => {
                events += 1;
                error_events += 1;
                crashed |= !err.handled || err.level == Level::Fatal;
            }
            _ => events += 1,
        }
    }
    crashed |= final_status == SessionStatus::Crashed;
    let errors = reported.max(error_events);
    let started = s.events[0].common().timestamp_ms;
    let ended = s
        .events
        .iter()
        .map(|e| e.common().timestamp_ms)
        .max()
        .unwrap();
    let status = if crashed {
        SessionStatus::Crashed
    } else if final_status == SessionStatus::Abnormal {
        SessionStatus::Abnormal
    } else if errors > 0 {
        SessionStatus::Errored
    } else if final_status == SessionStatus::Exited {
        SessionStatus::Exited
    } else {
        SessionStatus::Ok
    };
    ExpectedSession {
        explicit: s.style != Style::Implicit,
        ended_ms: ended,
        duration_ms: duration.unwrap_or(ended - started),
        events,
        screen_views,
        screens,
        errors,
        crashed,
        status,
        user_id: s.user_id.clone(),
        release: release_key(&s.release),
    }
}

fn device_class(e: &Event) -> String {
    let c = e.common();
    let os = c.device.os_name.clone().unwrap();
    let model = c.device.model.clone().unwrap();
    let family: String = model
        .chars()
        .take_while(|ch| !ch.is_ascii_digit() && *ch != ',')
        .collect();
    format!("{os}/{}", family.trim())
}

/// What the processors must output for `fleet` with windows of `window_ms`.
pub fn expect(fleet: &Fleet, window_ms: i64) -> Expected {
    let window = |t: i64| t.div_euclid(window_ms) * window_ms;
    let mut sessions = BTreeMap::new();
    let mut windows: BTreeMap<(String, i64), ExpectedWindow> = BTreeMap::new();
    let mut unique = 0;
    for s in &fleet.sessions {
        let exp = expected_session(s);
        let user = s
            .user_id
            .clone()
            .unwrap_or_else(|| format!("device:{}", s.device_id));
        let w = windows
            .entry((exp.release.clone(), window(exp.ended_ms)))
            .or_default();
        w.sessions += 1;
        w.users.insert(user.clone());
        match exp.status {
            SessionStatus::Crashed => {
                w.crashed += 1;
                w.crashed_users.insert(user);
            }
            SessionStatus::Abnormal => w.abnormal += 1,
            SessionStatus::Errored => w.errored += 1,
            _ => {}
        }
        for e in &s.events {
            unique += 1;
            let t = e.common().timestamp_ms;
            let w = windows
                .entry((release_key(&e.common().release), window(t)))
                .or_default();
            *w.events.entry(e.kind().as_str().to_string()).or_default() += 1;
            if let Event::Performance(p) = e {
                w.perf
                    .entry((
                        p.metric.clone(),
                        device_class(e),
                        p.screen.clone().unwrap_or_default(),
                    ))
                    .or_default()
                    .push(p.value);
            }
        }
        let started = s.events[0].common().timestamp_ms;
        let previous = sessions.insert((s.device_id.clone(), started), exp);
        assert!(
            previous.is_none(),
            "the simulation made two sessions start together"
        );
    }
    Expected {
        wire: fleet.wire().count(),
        unique,
        sessions,
        windows,
    }
}

/// What the processors wrote, each record once (replays collapse by id, as the sinks do).
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// Events by project and event id.
    pub events: BTreeMap<String, Event>,
    /// The newest version of each session.
    pub sessions: BTreeMap<String, SessionRecord>,
    /// Partials by id.
    pub partials: BTreeMap<String, HealthPartial>,
    /// Records read, replays included.
    pub records_read: usize,
}

impl Observed {
    /// Adds one record read from `topic` (one of events, sessions, aggregates by suffix).
    /// A replayed record must equal the one it replays.
    pub fn add(&mut self, kind: &str, payload: &[u8]) {
        self.records_read += 1;
        match kind {
            "events" => {
                let e = avro::decode(payload).unwrap();
                let id = e.common().event_id.clone();
                if let Some(old) = self.events.insert(id, e.clone()) {
                    assert_eq!(old, e, "a replayed event differs from the first copy");
                }
            }
            "sessions" => {
                let s: SessionRecord = records::decode(payload).unwrap();
                match self.sessions.get(&s.session_id) {
                    Some(old) if old.version > s.version => {}
                    Some(old) if old.version == s.version => {
                        assert_eq!(old, &s, "a replayed session record differs")
                    }
                    _ => {
                        self.sessions.insert(s.session_id.clone(), s);
                    }
                }
            }
            "aggregates" => {
                let p: HealthPartial = records::decode(payload).unwrap();
                if let Some(old) = self.partials.insert(p.partial_id.clone(), p.clone()) {
                    assert_eq!(old, p, "a replayed partial differs");
                }
            }
            other => panic!("unexpected output {other}"),
        }
    }

    /// Merged windows by (release, window start).
    pub fn windows(&self) -> BTreeMap<(String, i64), Summary> {
        let mut groups: BTreeMap<(String, i64), Vec<&HealthPartial>> = BTreeMap::new();
        for p in self.partials.values() {
            groups
                .entry((release_key(&p.release), p.window_start_ms))
                .or_default()
                .push(p);
        }
        groups
            .into_iter()
            .map(|(k, ps)| (k, health::summarize(ps).unwrap()))
            .collect()
    }
}

/// Asserts that `observed` is exactly what `expected` says.
pub fn check(expected: &Expected, observed: &Observed) {
    assert_eq!(
        observed.events.len(),
        expected.unique,
        "distinct events out ({} sent with duplicates)",
        expected.wire
    );
    assert!(
        observed
            .events
            .values()
            .all(|e| e.common().session_id.is_some()),
        "every event carries its session id"
    );
    assert!(
        observed.events.values().all(|e| match e {
            Event::Error(error) => error.issue_id.as_deref().is_some_and(|id| id.len() == 32),
            _ => true,
        }),
        "every error event carries its issue id"
    );

    let by_start: BTreeMap<(String, i64), &SessionRecord> = observed
        .sessions
        .values()
        .map(|s| ((s.device_id.clone(), s.started_ms), s))
        .collect();
    assert_eq!(
        by_start.len(),
        observed.sessions.len(),
        "two sessions start together"
    );
    for (key, exp) in &expected.sessions {
        let got = by_start
            .get(key)
            .unwrap_or_else(|| panic!("session {key:?} is missing"));
        let got = ExpectedSession {
            explicit: got.explicit,
            ended_ms: got.ended_ms,
            duration_ms: got.duration_ms,
            events: got.events,
            screen_views: got.screen_views,
            screens: got.screens.clone(),
            errors: got.errors,
            crashed: got.crashed,
            status: got.status,
            user_id: got.user_id.clone(),
            release: release_key(&got.release),
        };
        assert_eq!(&got, exp, "session {key:?}");
    }
    assert_eq!(observed.sessions.len(), expected.sessions.len(), "sessions");

    let windows = observed.windows();
    let mut crash_free_checked = 0;
    for (key, exp) in &expected.windows {
        let got = windows
            .get(key)
            .unwrap_or_else(|| panic!("window {key:?} is missing"));
        assert_eq!(
            (
                got.sessions,
                got.crashed_sessions,
                got.abnormal_sessions,
                got.errored_sessions
            ),
            (exp.sessions, exp.crashed, exp.abnormal, exp.errored),
            "sessions of window {key:?}"
        );
        assert_eq!(
            (got.users, got.crashed_users),
            (exp.users.len(), exp.crashed_users.len()),
            "users of window {key:?}"
        );
        if exp.sessions > 0 {
            let rate = 1.0 - exp.crashed as f64 / exp.sessions as f64;
            assert_eq!(
                got.crash_free_sessions(),
                rate,
                "crash-free sessions {key:?}"
            );
            let users = 1.0 - exp.crashed_users.len() as f64 / exp.users.len() as f64;
            assert_eq!(got.crash_free_users(), users, "crash-free users {key:?}");
            crash_free_checked += 1;
        }
        assert_eq!(got.events, exp.events, "event counts of window {key:?}");
        assert_eq!(
            got.perf.len(),
            exp.perf.len(),
            "perf keys of window {key:?}"
        );
        for (pk, samples) in &exp.perf {
            let (count, quantiles) = got.perf[pk];
            assert_eq!(
                count as usize,
                samples.len(),
                "samples of {pk:?} in {key:?}"
            );
            let mut sorted = samples.clone();
            sorted.sort_by(f64::total_cmp);
            for (q, got) in [0.5, 0.75, 0.95, 0.99].into_iter().zip(quantiles) {
                let exact = sorted[(q * (sorted.len() - 1) as f64) as usize];
                assert!(
                    (got - exact).abs() <= exact * 0.0101,
                    "p{} of {pk:?} in {key:?}: sketch {got}, exact {exact}",
                    q * 100.0
                );
            }
        }
    }
    assert_eq!(windows.len(), expected.windows.len(), "windows");
    assert!(crash_free_checked > 0);
}
