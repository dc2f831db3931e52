//! Every kind survives Avro (the bus) and Arrow (Parquet) without losing anything.

use serde::Serialize;
use serde::de::DeserializeOwned;
use trellis_schemas::model::*;
use trellis_schemas::{arrow, avro, sample};

/// Sample events of every kind plus the extremes: all optional fields empty, odd text and numbers.
fn corpus() -> Vec<Event> {
    let mut events: Vec<Event> = (0..600)
        .map(|n| sample::event("plants", n % 37, n))
        .collect();
    let bare = Common {
        event_id: String::new(),
        project: "p".into(),
        ..Common::default()
    };
    let odd = Common {
        event_id: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
        project: "プロジェクト \"quoted\" \\ \n tab\t".into(),
        timestamp_ms: i64::MIN,
        sent_at_ms: Some(i64::MAX),
        received_at_ms: -1,
        device_id: Some("🌱".repeat(100)),
        user_id: Some(String::new()),
        session_id: Some("\u{0}".into()),
        release: Release {
            platform: "ios".into(),
            app_version: "0".into(),
            update_id: Some("u".into()),
            ..Release::default()
        },
        ..Common::default()
    };
    for common in [bare, odd] {
        events.push(Event::Analytics(AnalyticsEvent {
            common: common.clone(),
            properties: "{}".into(),
            ..Default::default()
        }));
        events.push(Event::Error(ErrorEvent {
            common: common.clone(),
            exceptions: vec![
                Exception {
                    frames: vec![Frame::default(); 3],
                    ..Exception::default()
                };
                2
            ],
            breadcrumbs: vec![Breadcrumb::default()],
            tags: vec![Tag::default()],
            fingerprint: vec![String::new(), "{{ default }}".into()],
            ..Default::default()
        }));
        events.push(Event::Performance(PerformanceSample {
            common: common.clone(),
            value: f64::MAX,
            ..Default::default()
        }));
        events.push(Event::Performance(PerformanceSample {
            common: common.clone(),
            value: -0.0,
            ..Default::default()
        }));
        events.push(Event::Transaction(Transaction {
            common: common.clone(),
            spans: vec![Span::default()],
            ..Default::default()
        }));
        events.push(Event::Session(SessionUpdate {
            common: common.clone(),
            status: SessionStatus::Abnormal,
            ..Default::default()
        }));
        events.push(Event::Notification(Notification {
            common,
            stage: NotificationStage::Failed,
            ..Default::default()
        }));
    }
    events
}

#[test]
fn every_kind_round_trips_through_avro() {
    let events = corpus();
    for kind in Kind::ALL {
        assert!(
            events.iter().filter(|e| e.kind() == kind).count() >= 10,
            "corpus lacks {kind}"
        );
    }
    for event in &events {
        let payload = avro::encode(event).unwrap();
        assert_eq!(avro::peek_kind(&payload).unwrap(), event.kind());
        assert_eq!(&avro::decode(&payload).unwrap(), event);
    }
}

fn arrow_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    kind: Kind,
    events: Vec<T>,
) {
    assert!(!events.is_empty());
    let batch = arrow::to_batch(kind, &events).unwrap();
    assert_eq!(batch.schema(), arrow::schema(kind));
    assert_eq!(batch.num_rows(), events.len());
    let back: Vec<T> = arrow::from_batch(kind, &batch).unwrap();
    assert_eq!(back, events, "{kind} changed on its way through Arrow");
}

#[test]
fn every_kind_round_trips_through_arrow() {
    let events = corpus();
    macro_rules! of {
        ($variant:ident) => {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::$variant(x) => Some(x.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
    }
    arrow_round_trip(Kind::Analytics, of!(Analytics));
    arrow_round_trip(Kind::Error, of!(Error));
    arrow_round_trip(Kind::Performance, of!(Performance));
    arrow_round_trip(Kind::Transaction, of!(Transaction));
    arrow_round_trip(Kind::Session, of!(Session));
    arrow_round_trip(Kind::Notification, of!(Notification));
}

#[test]
fn corrupt_payloads_are_rejected_with_a_reason() {
    let good = avro::encode(&sample::event("p", 1, 1)).unwrap();
    let err = avro::decode(&good[..5]).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
    let err = avro::decode(b"{\"json\": \"not avro\"}").unwrap_err();
    assert!(err.to_string().contains("marker"), "{err}");
    let mut unknown = good.clone();
    unknown[5] ^= 0xff;
    let err = avro::decode(&unknown).unwrap_err();
    assert!(err.to_string().contains("unknown writer schema"), "{err}");
    let err = avro::decode(&good[..good.len() - 3]).unwrap_err();
    assert!(
        err.to_string().contains("does not match its schema"),
        "{err}"
    );
    let mut longer = good.clone();
    longer.extend_from_slice(b"xx");
    let err = avro::decode(&longer).unwrap_err();
    assert!(err.to_string().contains("2 bytes after"), "{err}");
}

#[test]
fn partition_key_keeps_a_device_together() {
    let a = sample::event("plants", 7, 1);
    let b = sample::event("plants", 7, 2);
    let c = sample::event("other", 7, 1);
    assert_eq!(a.partition_key(), b.partition_key());
    assert_ne!(a.partition_key(), c.partition_key());
}
