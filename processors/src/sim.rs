//! A seeded simulation of an app fleet, for tests and benchmarks of the processors.
//!
//! It writes down the truth first (devices, their sessions, each session's events) and then how
//! that truth reaches ingest: devices send batches every half minute, some batches are sent
//! twice (an SDK retrying after a lost response), some arrive out of order within the allowed
//! lateness, and some sessions happen offline and arrive hours later in one flush. Tests compute
//! what the pipeline must output from [`Fleet::sessions`] (the truth), independently of the
//! pipeline's algorithms, and feed [`Fleet::deliveries`] (the wire) to it.

use trellis_schemas::{
    AnalyticsEvent, Common, Device, ErrorEvent, Event, Exception, Level, Notification,
    NotificationStage, PerformanceSample, Release, Sdk, SessionStatus, SessionUpdate,
};

/// How a session's device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Sentry: session updates (init, then a final status) and events carrying the session id.
    Sentry,
    /// PostHog: events carrying `$session_id`, no updates.
    PostHog,
    /// No session id at all: the processors cut sessions by inactivity.
    Implicit,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Seed: the same seed gives the same fleet.
    pub seed: u64,
    /// The project.
    pub project: String,
    /// Devices.
    pub devices: usize,
    /// Event time of the first session, in ms since the epoch.
    pub start_ms: i64,
    /// Fraction of batches sent twice.
    pub duplicate_rate: f64,
    /// Fraction of batches delayed by up to `reorder_ms` (arriving after later ones).
    pub reorder_rate: f64,
    /// Longest reordering delay, in ms (keep it under the allowed lateness).
    pub reorder_ms: i64,
    /// Fraction of sessions that happen offline and arrive hours late.
    pub offline_rate: f64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            seed: 7,
            project: "plants".into(),
            devices: 2000,
            start_ms: 1_790_000_000_000,
            duplicate_rate: 0.05,
            reorder_rate: 0.1,
            reorder_ms: 40_000,
            offline_rate: 0.04,
        }
    }
}

/// One session as it happened.
#[derive(Debug, Clone)]
pub struct SimSession {
    /// The device.
    pub device_id: String,
    /// The user, if signed in.
    pub user_id: Option<String>,
    /// How the device reports sessions.
    pub style: Style,
    /// The SDK's session id (none for implicit sessions).
    pub sid: Option<String>,
    /// The release it ran.
    pub release: Release,
    /// Every event of the session in time order, session updates included.
    pub events: Vec<Event>,
    /// Whether it happened offline (its events arrive hours late).
    pub offline: bool,
}

/// One HTTP batch reaching ingest.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// When it arrived, in ms since the epoch.
    pub arrival_ms: i64,
    /// Its events, in the device's order, `received_at_ms` set.
    pub events: Vec<Event>,
}

/// A simulated fleet: the truth and the wire.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Every session, as it happened.
    pub sessions: Vec<SimSession>,
    /// Every batch, in arrival order (duplicates included).
    pub deliveries: Vec<Delivery>,
}

const SCREENS: [&str; 6] = [
    "Home",
    "PlantDetail",
    "Community",
    "StrainSearch",
    "Diagnosis",
    "Calendar",
];
const ACTIONS: [&str; 5] = [
    "plant_watered",
    "post_liked",
    "strain_searched",
    "diagnosis_started",
    "reminder_set",
];
const MODELS: [(&str, &str, &str); 4] = [
    ("iPhone15,2", "iOS", "ios"),
    ("iPhone12,1", "iOS", "ios"),
    ("Pixel 7", "Android", "android"),
    ("SM-G991B", "Android", "android"),
];

/// The releases the fleet runs: two store builds and OTA updates on top of them.
pub fn releases(platform: &str) -> Vec<Release> {
    let r = |version: &str, build: &str, update: Option<&str>| Release {
        platform: platform.to_string(),
        app_version: version.to_string(),
        build: Some(build.to_string()),
        runtime_version: Some("1.0".to_string()),
        update_id: update.map(str::to_string),
        channel: Some("production".to_string()),
        environment: Some("production".to_string()),
    };
    vec![
        r("2.14.0", "1402", None),
        r(
            "2.14.0",
            "1402",
            Some("6f1c2a9e-0b7d-4f3e-9a51-2d8c7e4b1a01"),
        ),
        r(
            "2.14.0",
            "1402",
            Some("8a3d5b7c-1e2f-4a6b-8c9d-0e1f2a3b4c02"),
        ),
        r("2.15.0", "1410", None),
    ]
}

struct Gen {
    rng: fastrand::Rng,
    spec: FleetSpec,
}

impl Gen {
    fn id(&mut self) -> String {
        let v = self.rng.u128(..);
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16 & 0xfff,
            (v >> 48) as u16 & 0xfff,
            v as u64 & 0xffff_ffff_ffff
        )
    }

    fn common(&mut self, s: &SimSession, model: (&str, &str, &str), t: i64) -> Common {
        Common {
            event_id: self.id(),
            project: self.spec.project.clone(),
            timestamp_ms: t,
            sent_at_ms: None,
            received_at_ms: 0,
            device_id: Some(s.device_id.clone()),
            user_id: s.user_id.clone(),
            session_id: s.sid.clone(),
            release: s.release.clone(),
            device: Device {
                model: Some(model.0.to_string()),
                os_name: Some(model.1.to_string()),
                os_version: Some("17.4".to_string()),
                locale: Some("en-US".to_string()),
                timezone: Some("Europe/Berlin".to_string()),
            },
            sdk: Sdk {
                name: match s.style {
                    Style::Sentry => "sentry.javascript.react-native",
                    Style::PostHog => "posthog-react-native",
                    Style::Implicit => "trellis.native",
                }
                .to_string(),
                version: "1.0.0".to_string(),
            },
        }
    }

    /// One session's events from `start`.
    fn session(&mut self, s: &mut SimSession, model: (&str, &str, &str), start: i64) -> i64 {
        let steps = self.rng.usize(3..40);
        let crash = self.rng.f64() < 0.08;
        let abnormal = !crash && self.rng.f64() < 0.03;
        let mut t = start;
        let mut errors = 0;
        if s.style == Style::Sentry {
            let common = self.common(s, model, t);
            s.events.push(Event::Session(SessionUpdate {
                common,
                init: true,
                status: SessionStatus::Ok,
                errors: 0,
                started_ms: start,
                duration_ms: None,
                seq: 0,
            }));
        }
        let cold = self.rng.f64() * 900.0 + 300.0;
        let common = self.common(s, model, t);
        s.events.push(Event::Performance(PerformanceSample {
            common,
            metric: "app_start_cold".into(),
            value: cold.round(),
            unit: "millisecond".into(),
            screen: None,
            attributes: vec![],
        }));
        for _ in 0..steps {
            t += self.rng.i64(2_000..90_000);
            let roll = self.rng.u32(0..100);
            let screen = SCREENS[self.rng.usize(..SCREENS.len())];
            let common = self.common(s, model, t);
            let event = match roll {
                0..=34 => Event::Analytics(AnalyticsEvent {
                    common,
                    name: "$screen".into(),
                    screen: Some(screen.into()),
                    properties: "{}".into(),
                }),
                35..=69 => Event::Analytics(AnalyticsEvent {
                    common,
                    name: ACTIONS[self.rng.usize(..ACTIONS.len())].into(),
                    screen: Some(screen.into()),
                    properties: r#"{"plant_id":42}"#.into(),
                }),
                70..=84 => Event::Performance(PerformanceSample {
                    common,
                    metric: "screen_load".into(),
                    value: (self.rng.f64() * 1500.0 + 50.0).round(),
                    unit: "millisecond".into(),
                    screen: Some(screen.into()),
                    attributes: vec![],
                }),
                85..=91 => {
                    errors += 1;
                    Event::Error(error(common, true))
                }
                _ => Event::Notification(Notification {
                    common,
                    stage: NotificationStage::Opened,
                    notification_id: format!("n-{}", self.rng.u32(..1000)),
                    campaign: Some("watering-reminder".into()),
                    deep_link: None,
                    provider: Some("apns".into()),
                    error_code: None,
                }),
            };
            s.events.push(event);
        }
        if crash {
            t += self.rng.i64(1_000..20_000);
            errors += 1;
            let common = self.common(s, model, t);
            s.events.push(Event::Error(error(common, false)));
        }
        if s.style == Style::Sentry {
            t += 500;
            let status = if crash {
                SessionStatus::Crashed
            } else if abnormal {
                SessionStatus::Abnormal
            } else {
                SessionStatus::Exited
            };
            let common = self.common(s, model, t);
            s.events.push(Event::Session(SessionUpdate {
                common,
                init: false,
                status,
                errors,
                started_ms: start,
                duration_ms: Some(t - start),
                seq: 1,
            }));
        }
        t
    }
}

fn error(common: Common, handled: bool) -> ErrorEvent {
    ErrorEvent {
        common,
        level: if handled { Level::Error } else { Level::Fatal },
        handled,
        message: None,
        exceptions: vec![Exception {
            exception_type: if handled { "NetworkError" } else { "TypeError" }.into(),
            value: Some("undefined is not an object".into()),
            ..Default::default()
        }],
        breadcrumbs: vec![],
        tags: vec![],
        fingerprint: vec![],
        transaction: None,
        contexts: "{}".into(),
        issue_id: None,
    }
}

/// Every event must arrive on the wire with the time ingest received it.
fn stamped(mut events: Vec<Event>, arrival_ms: i64) -> Vec<Event> {
    for e in &mut events {
        let common = match e {
            Event::Analytics(e) => &mut e.common,
            Event::Error(e) => &mut e.common,
            Event::Performance(e) => &mut e.common,
            Event::Transaction(e) => &mut e.common,
            Event::Session(e) => &mut e.common,
            Event::Notification(e) => &mut e.common,
        };
        common.received_at_ms = arrival_ms;
        common.sent_at_ms = Some(arrival_ms);
    }
    events
}

impl Fleet {
    /// Simulates `spec`.
    pub fn simulate(spec: &FleetSpec) -> Fleet {
        let mut g = Gen {
            rng: fastrand::Rng::with_seed(spec.seed),
            spec: spec.clone(),
        };
        let mut sessions = Vec::new();
        let mut deliveries = Vec::new();
        for d in 0..spec.devices {
            let model = MODELS[g.rng.usize(..MODELS.len())];
            let releases = releases(model.2);
            let style = match g.rng.u32(0..3) {
                0 => Style::Sentry,
                1 => Style::PostHog,
                _ => Style::Implicit,
            };
            // Pairs of devices share a user (a phone and a tablet); some users never sign in.
            let user_id = (d % 5 != 0).then(|| format!("user-{}", d / 2));
            let device_id = format!("device-{d:05}");
            let mut release = g.rng.usize(..2);
            let mut t = spec.start_ms + g.rng.i64(0..3_600_000);
            for _ in 0..g.rng.usize(1..=4) {
                let mut s = SimSession {
                    device_id: device_id.clone(),
                    user_id: user_id.clone(),
                    style,
                    sid: (style != Style::Implicit).then(|| g.id()),
                    release: releases[release].clone(),
                    events: Vec::new(),
                    offline: g.rng.f64() < spec.offline_rate,
                };
                let end = g.session(&mut s, model, t);
                g.deliver(&s, &mut deliveries);
                sessions.push(s);
                // Well past the session gap (30 minutes) before the next one; sometimes an
                // update installs in between.
                t = end + g.rng.i64(45 * 60_000..3 * 3_600_000);
                if g.rng.f64() < 0.3 {
                    release = (release + 1).min(releases.len() - 1);
                }
            }
        }
        deliveries.sort_by_key(|d: &Delivery| d.arrival_ms);
        Fleet {
            sessions,
            deliveries,
        }
    }

    /// The events on the wire, in arrival order.
    pub fn wire(&self) -> impl Iterator<Item = &Event> {
        self.deliveries.iter().flat_map(|d| d.events.iter())
    }
}

impl Gen {
    fn deliver(&mut self, s: &SimSession, out: &mut Vec<Delivery>) {
        let mut batches: Vec<(i64, Vec<Event>)> = Vec::new();
        if s.offline {
            let end = s.events.last().map_or(0, |e| e.common().timestamp_ms);
            let arrival = end + self.rng.i64(2 * 3_600_000..5 * 3_600_000);
            batches.push((arrival, s.events.clone()));
        } else {
            let mut current: Vec<Event> = Vec::new();
            let mut opened = i64::MIN;
            for e in &s.events {
                let t = e.common().timestamp_ms;
                if !current.is_empty() && t - opened > 30_000 {
                    let last = current.last().map_or(t, |e| e.common().timestamp_ms);
                    batches.push((
                        last + self.rng.i64(200..3_000),
                        std::mem::take(&mut current),
                    ));
                }
                if current.is_empty() {
                    opened = t;
                }
                current.push(e.clone());
            }
            if let Some(last) = current.last() {
                let at = last.common().timestamp_ms + self.rng.i64(200..3_000);
                batches.push((at, current));
            }
        }
        for (arrival, events) in batches {
            let arrival = if self.rng.f64() < self.spec.reorder_rate {
                arrival + self.rng.i64(1..self.spec.reorder_ms.max(2))
            } else {
                arrival
            };
            if self.rng.f64() < self.spec.duplicate_rate {
                let again = arrival + self.rng.i64(5_000..2 * 3_600_000);
                out.push(Delivery {
                    arrival_ms: again,
                    events: stamped(events.clone(), again),
                });
            }
            out.push(Delivery {
                arrival_ms: arrival,
                events: stamped(events, arrival),
            });
        }
    }
}
