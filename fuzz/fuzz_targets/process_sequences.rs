//! The `process` stage fed any sequence of records (events of every kind with colliding ids,
//! sessions, clocks far apart, garbage payloads, idle ticks): no panic, and a run that stops at a
//! checkpoint and goes on from it emits exactly what an uninterrupted run emits.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trellis_bus::Record;
use trellis_processors::runtime::{Factory, Output, Processor};
use trellis_processors::{PipelineFactory, ProcessorConfig};
use trellis_schemas::topics::Names;
use trellis_schemas::{
    AnalyticsEvent, Common, ErrorEvent, Event, Exception, Frame, Level, Notification,
    PerformanceSample, Release, SessionStatus, SessionUpdate, Transaction, avro,
};

const T0: i64 = 1_790_000_000_000;

#[derive(Arbitrary, Debug)]
enum Op {
    Event(Ev),
    Garbage(Vec<u8>),
    Idle(u16),
    Checkpoint,
}

#[derive(Arbitrary, Debug)]
struct Ev {
    kind: u8,
    id: u8,
    device: u8,
    user: Option<u8>,
    session: Option<u8>,
    minutes: i16,
    seconds: u8,
    lag_s: i16,
    release: u8,
    update: Option<u8>,
    status: u8,
    seq: u8,
    errors: u8,
    value: f32,
    screen: Option<u8>,
}

fn event(e: &Ev) -> Event {
    let t = T0 + i64::from(e.minutes) * 60_000 + i64::from(e.seconds) * 1_000;
    let common = Common {
        event_id: format!("00000000-0000-4000-8000-{:012}", e.id),
        project: if e.id % 7 == 0 { "q" } else { "p" }.into(),
        timestamp_ms: t,
        received_at_ms: t + i64::from(e.lag_s) * 1_000,
        device_id: Some(format!("d{}", e.device % 16)),
        user_id: e.user.map(|u| format!("u{}", u % 8)),
        session_id: e.session.map(|s| format!("s{}", s % 8)),
        release: Release {
            platform: if e.release % 2 == 0 { "ios" } else { "android" }.into(),
            app_version: format!("1.{}.0", e.release % 4),
            update_id: e.update.map(|u| format!("up{}", u % 4)),
            ..Release::default()
        },
        ..Common::default()
    };
    let screen = e.screen.map(|s| format!("Screen{}", s % 5));
    match e.kind % 6 {
        0 => Event::Analytics(AnalyticsEvent {
            common,
            name: if screen.is_some() { "$screen" } else { "tap" }.into(),
            screen,
            properties: "{}".into(),
        }),
        1 => Event::Error(ErrorEvent {
            common,
            level: if e.status % 2 == 0 { Level::Fatal } else { Level::Error },
            handled: e.status % 3 == 0,
            exceptions: vec![Exception {
                exception_type: format!("E{}", e.errors % 3),
                value: Some("boom".into()),
                frames: vec![Frame {
                    function: Some(format!("f{}", e.seq % 3)),
                    in_app: true,
                    ..Frame::default()
                }],
                ..Exception::default()
            }],
            contexts: "{}".into(),
            ..ErrorEvent::default()
        }),
        2 => Event::Performance(PerformanceSample {
            common,
            metric: format!("m{}", e.seq % 3),
            value: f64::from(e.value),
            unit: "millisecond".into(),
            screen,
            attributes: vec![],
        }),
        3 => Event::Transaction(Transaction {
            common,
            name: "load".into(),
            start_us: t * 1_000,
            end_us: t * 1_000 + i64::from(e.seq) * 1_000,
            ..Transaction::default()
        }),
        4 => Event::Session(SessionUpdate {
            common,
            init: e.seq == 0,
            status: match e.status % 5 {
                0 => SessionStatus::Ok,
                1 => SessionStatus::Exited,
                2 => SessionStatus::Crashed,
                3 => SessionStatus::Abnormal,
                _ => SessionStatus::Errored,
            },
            errors: i64::from(e.errors),
            started_ms: t - i64::from(e.seq) * 1_000,
            duration_ms: Some(i64::from(e.seq) * 1_000),
            seq: i64::from(e.seq),
        }),
        _ => Event::Notification(Notification {
            common,
            notification_id: format!("n{}", e.seq % 4),
            ..Notification::default()
        }),
    }
}

type Emitted = Vec<(String, Vec<u8>, Vec<u8>)>;

fn drain(out: &mut Output, into: &mut Emitted) {
    for m in out.messages.drain(..) {
        into.push((m.topic, m.key, m.payload));
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let factory = PipelineFactory::new(&ProcessorConfig::default(), Names::default())
        .expect("the default config is valid");
    let mut straight = factory.create(0, None).unwrap();
    let mut resumed = factory.create(0, None).unwrap();
    let (mut a, mut b) = (Emitted::new(), Emitted::new());
    let mut out = Output::default();
    for (offset, op) in ops.iter().enumerate() {
        let payload = match op {
            Op::Event(e) => avro::encode(&event(e)).expect("a built event encodes"),
            Op::Garbage(bytes) => bytes.clone(),
            Op::Idle(minutes) => {
                let now = T0 + i64::from(*minutes) * 60_000;
                straight.on_idle(now, &mut out);
                drain(&mut out, &mut a);
                resumed.on_idle(now, &mut out);
                drain(&mut out, &mut b);
                continue;
            }
            Op::Checkpoint => {
                let state = resumed.snapshot().expect("a state snapshots");
                resumed = factory.create(0, Some(&state)).expect("a snapshot restores");
                continue;
            }
        };
        let record = Record {
            topic: "events.raw".into(),
            partition: 0,
            offset: offset as u64,
            key: b"k".to_vec(),
            payload,
            headers: vec![],
            timestamp_ms: T0,
        };
        straight.process(&record, &mut out);
        drain(&mut out, &mut a);
        resumed.process(&record, &mut out);
        drain(&mut out, &mut b);
    }
    if a != b {
        let show = |m: Option<&(String, Vec<u8>, Vec<u8>)>| match m {
            None => "nothing".to_string(),
            Some((topic, _, payload)) => format!(
                "{topic}: {}",
                avro::decode(payload)
                    .map(|e| format!("{e:?}"))
                    .or_else(|_| {
                        trellis_schemas::records::decode::<trellis_schemas::records::SessionRecord>(
                            payload,
                        )
                        .map(|r| format!("{r:?}"))
                    })
                    .or_else(|_| {
                        trellis_schemas::records::decode::<trellis_schemas::records::HealthPartial>(
                            payload,
                        )
                        .map(|r| format!("{r:?}"))
                    })
                    .unwrap_or_else(|_| format!("{} bytes", payload.len()))
            ),
        };
        let at = (0..a.len().max(b.len()))
            .find(|&i| a.get(i) != b.get(i))
            .unwrap_or(0);
        panic!(
            "a resumed run emits other records: {} and {} records, first apart at {at}:\n\
             straight: {}\nresumed:  {}",
            a.len(),
            b.len(),
            show(a.get(at)),
            show(b.get(at))
        );
    }
});
