//! The pipeline driven without a bus: sessions, late data, determinism across checkpoints.

use std::collections::BTreeMap;

use trellis_schemas::records::{HealthPartial, SessionRecord};
use trellis_schemas::{
    AnalyticsEvent, Common, ErrorEvent, Event, Level, SessionStatus, SessionUpdate,
};

use super::*;
use crate::sim::{Fleet, FleetSpec};

const MIN: i64 = 60_000;
const T0: i64 = 1_790_000_000_000;

fn rules() -> Rules {
    Rules::from(&ProcessorConfig::default())
}

fn common(id: &str, device: &str, t: i64, sid: Option<&str>) -> Common {
    Common {
        event_id: id.into(),
        project: "p".into(),
        timestamp_ms: t,
        received_at_ms: t + 1000,
        device_id: Some(device.into()),
        session_id: sid.map(str::to_string),
        ..Default::default()
    }
}

fn screen(id: &str, device: &str, t: i64) -> Event {
    Event::Analytics(AnalyticsEvent {
        common: common(id, device, t, None),
        name: "$screen".into(),
        screen: Some("Home".into()),
        properties: "{}".into(),
    })
}

fn run(p: &mut Pipeline, events: Vec<Event>) -> (Vec<SessionRecord>, Vec<HealthPartial>) {
    let mut sessions = Vec::new();
    let mut partials = Vec::new();
    for (offset, e) in events.into_iter().enumerate() {
        p.handle(e, offset as u64);
        let (s, h) = p.take_closed();
        sessions.extend(s);
        partials.extend(h);
    }
    (sessions, partials)
}

fn flush(p: &mut Pipeline) -> (Vec<SessionRecord>, Vec<HealthPartial>) {
    p.idle(i64::MAX / 4);
    p.take_closed()
}

#[test]
fn implicit_sessions_split_on_the_gap_and_merge_when_bridged() {
    let mut p = Pipeline::new(rules(), 0);
    let (closed, _) = run(
        &mut p,
        vec![
            screen("a", "d1", T0),
            screen("b", "d1", T0 + 20 * MIN),
            // 40 minutes of silence: a new session.
            screen("c", "d1", T0 + 60 * MIN),
            // Another device's clock moves the watermark on.
            screen("x", "d2", T0 + 200 * MIN),
        ],
    );
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert_eq!(
        (closed[0].started_ms, closed[0].ended_ms, closed[0].events),
        (T0, T0 + 20 * MIN, 2)
    );
    assert_eq!((closed[1].started_ms, closed[1].events), (T0 + 60 * MIN, 1));
    assert!(
        closed
            .iter()
            .all(|s| s.status == SessionStatus::Ok && !s.explicit && !s.late)
    );

    // Out of order within the lateness: an event between two open sessions joins them.
    let mut lenient = rules();
    lenient.lateness_ms = 30 * MIN;
    let mut p = Pipeline::new(lenient, 0);
    let (closed, _) = run(
        &mut p,
        vec![
            screen("a", "d1", T0),
            screen("b", "d1", T0 + 50 * MIN),
            screen("c", "d1", T0 + 25 * MIN),
        ],
    );
    assert!(closed.is_empty());
    let (closed, _) = flush(&mut p);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].events, 3);
    assert_eq!(closed[0].ended_ms - closed[0].started_ms, 50 * MIN);
}

#[test]
fn an_implicit_session_never_spans_more_than_the_maximum() {
    let mut p = Pipeline::new(rules(), 0);
    let events: Vec<Event> = (0..60)
        .map(|i| screen(&format!("e{i}"), "d1", T0 + i * 25 * MIN))
        .collect();
    let (mut all, _) = run(&mut p, events);
    all.extend(flush(&mut p).0);
    all.sort_by_key(|s| s.started_ms);
    assert!(all.len() >= 2);
    assert!(
        all.iter()
            .all(|s| s.ended_ms - s.started_ms <= 24 * 60 * MIN)
    );
    assert_eq!(all.iter().map(|s| s.events).sum::<i64>(), 60);
}

#[test]
fn a_device_sending_times_back_through_the_months_holds_a_bounded_number_of_sessions() {
    let mut p = Pipeline::new(rules(), 0);
    // Each event 31 minutes before the last, back through 100 days: every one is late and
    // opens a session of its own that the watermark will not close for a long time.
    let events: Vec<Event> = (0..5_000)
        .map(|i| screen(&format!("e{i}"), "d1", T0 - i * 31 * MIN))
        .collect();
    let (mut all, _) = run(&mut p, events);
    let (_, open, _) = p.sizes();
    assert!(
        open <= sessions::MAX_OPEN_PER_DEVICE,
        "{open} sessions open"
    );
    assert_eq!(
        all.len(),
        5_000 - open,
        "the others ended early, one by one"
    );
    let mut counted = BTreeMap::new();
    p.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    assert_eq!(counted.get("session_evicted"), Some(&(all.len() as u64)));
    all.extend(flush(&mut p).0);
    assert_eq!(
        all.len(),
        5_000,
        "every event's session is closed exactly once"
    );
    assert_eq!(all.iter().map(|s| s.events).sum::<i64>(), 5_000);
}

#[test]
fn names_and_series_from_the_sdk_cannot_grow_a_record_past_the_broker_limit() {
    use trellis_schemas::PerformanceSample;
    let mut p = Pipeline::new(rules(), 0);
    let long = "s".repeat(100_000);
    let mut events = vec![screen("e-screen", "d1", T0)];
    if let Event::Analytics(a) = &mut events[0] {
        a.screen = Some(long.clone());
    }
    // 1,000 series of one release in one window, each with a 100,000-character name.
    events.extend((0..1_000).map(|i| {
        Event::Performance(PerformanceSample {
            common: common(&format!("perf-{i}"), "d1", T0 + i, None),
            metric: format!("{i}{long}"),
            value: 1.0,
            unit: "millisecond".into(),
            screen: Some(long.clone()),
            attributes: vec![],
        })
    }));
    let (mut sessions, mut partials) = run(&mut p, events);
    let mut counted = BTreeMap::new();
    p.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    let (s, h) = flush(&mut p);
    sessions.extend(s);
    partials.extend(h);
    assert_eq!(counted.get("perf_series_dropped"), Some(&744));
    let series: usize = partials.iter().map(|h| h.perf.len()).sum();
    assert_eq!(series, health::MAX_PERF_KEYS);
    for partial in &partials {
        assert!(
            partial
                .perf
                .iter()
                .all(|s| s.metric.len() <= 200 && s.screen.len() <= 200)
        );
        let bytes = trellis_schemas::records::encode(partial).unwrap().len();
        assert!(bytes < 500_000, "a partial of {bytes} bytes");
    }
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].screens, ["s".repeat(200)]);
}

#[test]
fn a_partial_with_more_users_than_one_record_holds_is_split_into_parts_that_read_as_one() {
    const DEVICES: usize = 120_000;
    let mut p = Pipeline::new(rules(), 0);
    let events = (0..DEVICES)
        .map(|i| {
            screen(
                &format!("e{i}"),
                &format!("device-{i}"),
                T0 + (i % 1_000) as i64,
            )
        })
        .collect();
    let (mut sessions, mut partials) = run(&mut p, events);
    let (s, h) = flush(&mut p);
    sessions.extend(s);
    partials.extend(h);
    let mut counted = BTreeMap::new();
    p.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    assert_eq!(sessions.len(), DEVICES);
    // 120,000 hashes at up to 10 bytes each need three records of at most 512 KiB.
    let parts: Vec<&HealthPartial> = partials.iter().filter(|h| !h.users.is_empty()).collect();
    assert_eq!(parts.len(), 3, "{} partials", partials.len());
    assert_eq!(counted.get("partial_parts_split"), Some(&2));
    let ids: std::collections::HashSet<&str> =
        parts.iter().map(|h| h.partial_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each part has an id of its own");
    for part in &parts {
        let bytes = trellis_schemas::records::encode(*part).unwrap().len();
        assert!(
            bytes <= health::MAX_PARTIAL_BYTES + 1024,
            "a part of {bytes} bytes"
        );
    }
    assert_eq!(
        parts.iter().map(|h| h.sessions).sum::<i64>(),
        DEVICES as i64
    );
    let whole = health::summarize(parts.iter().copied()).unwrap();
    assert_eq!(whole.users, DEVICES);
    assert_eq!(whole.sessions, DEVICES as i64);
    assert_eq!(whole.events.get("analytics"), Some(&(DEVICES as i64)));
}

#[test]
fn sessions_past_the_partition_cap_are_ended_early_and_none_is_lost() {
    let config = ProcessorConfig {
        max_open_sessions: 100,
        ..ProcessorConfig::default()
    };
    let mut p = Pipeline::new(Rules::from(&config), 0);
    // 1,000 session ids from one device (anyone with the key may choose them), and 500 devices
    // without session ids, a second apart: far more than 100 open at once.
    let mut events: Vec<Event> = (0..1_000)
        .map(|i| {
            let mut e = screen(&format!("e{i}"), "d1", T0 + i);
            if let Event::Analytics(a) = &mut e {
                a.common.session_id = Some(format!("sid-{i}"));
            }
            e
        })
        .collect();
    events.extend((0..500).map(|i| screen(&format!("i{i}"), &format!("dev-{i}"), T0 + 1_000 + i)));
    let (mut sessions, _) = run(&mut p, events);
    assert!(p.sessions.open() <= 100, "{} open", p.sessions.open());
    let mut counted = BTreeMap::new();
    p.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    assert_eq!(counted.get("session_evicted"), Some(&1_400));
    assert_eq!(sessions.len(), 1_400);
    // The earliest ended first.
    assert_eq!(sessions[0].session_id, "sid-0");
    let (s, _) = flush(&mut p);
    sessions.extend(s);
    assert_eq!(sessions.len(), 1_500, "every session has its record");
    let ids: std::collections::HashSet<&str> =
        sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids.len(), 1_500);
}

fn update(id: &str, t: i64, sid: &str, status: SessionStatus, seq: i64, errors: i64) -> Event {
    Event::Session(SessionUpdate {
        common: common(id, "d1", t, Some(sid)),
        init: seq == 0,
        status,
        errors,
        started_ms: T0,
        duration_ms: (seq > 0).then_some(t - T0),
        seq,
    })
}

#[test]
fn an_explicit_session_closes_after_its_final_update_and_counts_reordered_events() {
    let mut p = Pipeline::new(rules(), 0);
    let crash = Event::Error(ErrorEvent {
        common: common("err", "d1", T0 + 4 * MIN, Some("s1")),
        level: Level::Fatal,
        handled: false,
        ..Default::default()
    });
    let (closed, _) = run(
        &mut p,
        vec![
            update("u0", T0, "s1", SessionStatus::Ok, 0, 0),
            update("u1", T0 + 5 * MIN, "s1", SessionStatus::Crashed, 1, 1),
            // Sent before the final update, delivered after it.
            crash,
            // A stale update (lower sequence number) changes nothing.
            update("u0b", T0 + MIN, "s1", SessionStatus::Ok, 0, 0),
            screen("x", "d2", T0 + 10 * MIN),
        ],
    );
    assert_eq!(closed.len(), 1, "{closed:?}");
    let s = &closed[0];
    assert_eq!(s.session_id, "s1");
    assert!(s.explicit && s.crashed);
    assert_eq!(s.status, SessionStatus::Crashed);
    assert_eq!((s.events, s.errors, s.duration_ms), (1, 1, 5 * MIN));
    assert_eq!(s.version, 0);
    // A newer update after the close reopens the session: a new version replaces the record.
    let (closed, _) = run(
        &mut p,
        vec![update(
            "u2",
            T0 + 11 * MIN,
            "s1",
            SessionStatus::Exited,
            2,
            1,
        )],
    );
    assert!(closed.is_empty());
    let (closed, _) = flush(&mut p);
    let reopened: Vec<_> = closed.iter().filter(|s| s.session_id == "s1").collect();
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened[0].version, 1);
}

#[test]
fn a_late_offline_flush_is_its_own_session_and_corrects_its_window() {
    let mut p = Pipeline::new(rules(), 0);
    // Live traffic three hours on; then an offline session from the start arrives.
    let mut events = vec![screen("live", "d2", T0 + 180 * MIN)];
    for i in 0..5 {
        events.push(screen(&format!("off{i}"), "d1", T0 + i * MIN));
    }
    events.push(screen("live2", "d2", T0 + 200 * MIN));
    events.push(screen("live3", "d2", T0 + 300 * MIN));
    let (closed, partials) = run(&mut p, events);
    let late: Vec<_> = closed.iter().filter(|s| s.device_id == "d1").collect();
    assert_eq!(late.len(), 1, "{closed:?}");
    assert!(late[0].late);
    assert_eq!(late[0].events, 5);
    let corrections: Vec<_> = partials.iter().filter(|p| p.correction).collect();
    let corrected_events: i64 = corrections
        .iter()
        .flat_map(|p| &p.events)
        .map(|k| k.count)
        .sum();
    assert_eq!(corrected_events, 5);
    assert_eq!(corrections.iter().map(|p| p.sessions).sum::<i64>(), 1);
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut p = Pipeline::new(rules(), 0);
    let mut counted = BTreeMap::new();
    for (o, e) in [
        screen("a", "d", T0),
        screen("a", "d", T0),
        screen("b", "d", T0),
    ]
    .into_iter()
    .enumerate()
    {
        p.handle(e, o as u64);
    }
    p.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    assert_eq!(counted.get("duplicate"), Some(&1));
}

fn partitioned(fleet: &Fleet, partitions: u32) -> Vec<Vec<Event>> {
    let mut parts = vec![Vec::new(); partitions as usize];
    for e in fleet.wire() {
        let p = trellis_bus::partition_for(&e.partition_key(), partitions);
        parts[p as usize].push(e.clone());
    }
    parts
}

#[derive(Debug, PartialEq)]
struct Outputs {
    events: Vec<Event>,
    sessions: Vec<SessionRecord>,
    partials: Vec<HealthPartial>,
}

fn drive(parts: &[Vec<Event>], restart_at: Option<usize>) -> Outputs {
    let mut out = Outputs {
        events: vec![],
        sessions: vec![],
        partials: vec![],
    };
    for (partition, events) in parts.iter().enumerate() {
        let mut p = Pipeline::new(rules(), partition as u32);
        for (offset, e) in events.iter().enumerate() {
            if restart_at == Some(offset) {
                let bytes = p.snapshot().unwrap();
                p = Pipeline::restore(rules(), partition as u32, &bytes).unwrap();
            }
            if let Handled::Passed(e) = p.handle(e.clone(), offset as u64) {
                out.events.push(*e);
            }
            let (s, h) = p.take_closed();
            out.sessions.extend(s);
            out.partials.extend(h);
        }
        let (s, h) = flush(&mut p);
        out.sessions.extend(s);
        out.partials.extend(h);
    }
    out.sessions
        .sort_by(|a, b| (&a.session_id, a.version).cmp(&(&b.session_id, b.version)));
    out.partials.sort_by(|a, b| a.partial_id.cmp(&b.partial_id));
    out
}

#[test]
fn a_restored_checkpoint_continues_exactly_like_no_restart() {
    let fleet = Fleet::simulate(&FleetSpec {
        devices: 150,
        ..Default::default()
    });
    let parts = partitioned(&fleet, 2);
    let straight = drive(&parts, None);
    assert!(straight.sessions.len() > 150);
    for at in [1, 200, 777] {
        assert_eq!(drive(&parts, Some(at)), straight, "restart at offset {at}");
    }
}

#[test]
fn partials_from_many_partitions_merge_into_the_answer_of_one() {
    let fleet = Fleet::simulate(&FleetSpec {
        devices: 200,
        ..Default::default()
    });
    let summarize_by_window = |out: &Outputs| {
        let mut groups: BTreeMap<(String, Option<String>, i64), Vec<&HealthPartial>> =
            BTreeMap::new();
        for p in &out.partials {
            groups
                .entry((
                    p.release.app_version.clone(),
                    p.release.update_id.clone(),
                    p.window_start_ms,
                ))
                .or_default()
                .push(p);
        }
        groups
            .into_iter()
            .map(|(k, ps)| (k, health::summarize(ps).unwrap()))
            .collect::<BTreeMap<_, _>>()
    };
    let one = summarize_by_window(&drive(&partitioned(&fleet, 1), None));
    let many = summarize_by_window(&drive(&partitioned(&fleet, 5), None));
    assert!(one.values().any(|s| !s.perf.is_empty() && s.users > 1));
    for (key, s) in &one {
        assert_eq!(Some(s), many.get(key), "window {key:?}");
    }
    assert_eq!(one.len(), many.len());
}
