//! Ingest's parsers on realistic bodies: native batches (100 events of the load generator's
//! fleet), Sentry envelopes (one React Native error event with a 16-frame Hermes stack,
//! breadcrumbs, contexts and tags, as `@sentry/react-native` sends it) and PostHog batches (100
//! captured events with properties). Throughput is events per second, one core.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use trellis_benchmarks::fleet::{Fleet, Mix};
use trellis_ingest::accept::Item;
use trellis_ingest::config::LimitsConfig;
use trellis_ingest::metrics::IngestMetrics;
use trellis_ingest::{native, posthog, sentry};

/// The allocator the `trellis` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS_PER_BATCH: usize = 100;

fn sentry_envelope(n: usize) -> Vec<u8> {
    let frames: Vec<_> = (0..16)
        .map(|i| {
            json!({
                "function": format!("anonymous{i}"),
                "filename": "app:///index.android.bundle",
                "module": format!("app/screens/Plant{}", i % 4),
                "lineno": 1,
                "colno": 12_000 + i * 37,
                "in_app": i < 6,
                "platform": "javascript"
            })
        })
        .collect();
    let event = json!({
        "event_id": format!("{n:032x}"),
        "timestamp": 1_795_660_800.25 + n as f64,
        "platform": "javascript",
        "level": "error",
        "release": "com.growbuddy.app@2.14.0+1402",
        "dist": "1402",
        "environment": "production",
        "user": {"id": format!("user-{}", n % 500)},
        "tags": {"expo-update-id": "6f1c2a9e-0b7d-4f3e-9a51-2d8c7e4b1a01", "expo-channel": "production"},
        "contexts": {
            "device": {"model": "Pixel 8", "family": "Google", "simulator": false},
            "os": {"name": "Android", "version": "15"},
            "app": {"app_start_time": "2026-11-25T10:00:00Z"}
        },
        "breadcrumbs": {"values": (0..10).map(|i| json!({
            "timestamp": 1_795_660_700.0 + i as f64, "category": "navigation",
            "message": format!("PlantDetail -> Screen{i}")
        })).collect::<Vec<_>>()},
        "exception": {"values": [{
            "type": "TypeError",
            "value": format!("undefined is not an object (evaluating 'plant.schedule[{n}]')"),
            "mechanism": {"type": "onerror", "handled": false},
            "stacktrace": {"frames": frames}
        }]},
        "sdk": {"name": "sentry.javascript.react-native", "version": "6.4.0"}
    });
    let event = serde_json::to_vec(&event).unwrap();
    let mut body = format!(
        "{{\"event_id\":\"{n:032x}\",\"sent_at\":\"2026-11-25T10:00:01Z\"}}\n{{\"type\":\"event\",\"length\":{}}}\n",
        event.len()
    )
    .into_bytes();
    body.extend_from_slice(&event);
    body.push(b'\n');
    body
}

fn posthog_batch(seed: usize) -> Vec<u8> {
    let events: Vec<_> = (0..EVENTS_PER_BATCH)
        .map(|i| {
            let n = seed * EVENTS_PER_BATCH + i;
            let name = ["plant_watered", "$screen", "post_liked", "strain_searched"][i % 4];
            json!({
                "event": name,
                "distinct_id": format!("user-{}", n % 700),
                "uuid": format!("0190f4a0-0000-7000-8000-{n:012}"),
                "timestamp": "2026-11-25T16:27:49.934524+00:00",
                "properties": {
                    "$os": "iOS", "$os_version": "18.1", "$app_version": "2.14.0",
                    "$app_build": "1402", "$device_model": "iPhone15,2",
                    "$screen_name": "PlantDetail", "$session_id": format!("0190f4a0-0000-7000-8000-{:012}", n / 40),
                    "$lib": "posthog-react-native", "$lib_version": "4.2.0",
                    "plant_id": n % 97, "watered_ml": 250, "room": "living room"
                }
            })
        })
        .collect();
    serde_json::to_vec(&json!({"api_key": "phc_bench", "batch": events})).unwrap()
}

/// Every item parsed into an event: the bench measures the success path, not a rejection.
fn all_events(items: &[Item], what: &str) {
    for item in items {
        if let Item::Invalid { reason, .. } = item {
            panic!("a {what} item did not parse: {reason}");
        }
    }
}

fn parse(c: &mut Criterion) {
    let limits = LimitsConfig::default();
    let max_event = limits.max_event_bytes;
    let mut group = c.benchmark_group("parse");

    let mut fleet = Fleet::new(7, 1000, Mix::default());
    let bodies: Vec<Vec<u8>> = (0..50).map(|_| fleet.batch(EVENTS_PER_BATCH)).collect();
    all_events(
        &native::parse(&bodies[0], max_event, 10_000).unwrap().1,
        "native",
    );
    group.throughput(Throughput::Elements(
        (bodies.len() * EVENTS_PER_BATCH) as u64,
    ));
    group.bench_function("native_batch", |b| {
        b.iter(|| {
            let mut n = 0;
            for body in &bodies {
                n += native::parse(body, max_event, 10_000).unwrap().1.len();
            }
            n
        })
    });

    let envelopes: Vec<Vec<u8>> = (0..500).map(sentry_envelope).collect();
    let metrics = IngestMetrics::default();
    let first = sentry::parse_envelope(&envelopes[0], &limits, &metrics, "plants").unwrap();
    assert_eq!(first.items.len(), 1);
    all_events(&first.items, "Sentry");
    group.throughput(Throughput::Elements(envelopes.len() as u64));
    group.bench_function("sentry_envelope", |b| {
        b.iter(|| {
            let mut n = 0;
            for body in &envelopes {
                n += sentry::parse_envelope(body, &limits, &metrics, "plants")
                    .unwrap()
                    .items
                    .len();
            }
            n
        })
    });

    let batches: Vec<Vec<u8>> = (0..50).map(posthog_batch).collect();
    let first = posthog::parse(&batches[0], 10_000, max_event).unwrap();
    assert_eq!(first.items.len(), EVENTS_PER_BATCH);
    all_events(&first.items, "PostHog");
    group.throughput(Throughput::Elements(
        (batches.len() * EVENTS_PER_BATCH) as u64,
    ));
    group.bench_function("posthog_batch", |b| {
        b.iter(|| {
            let mut n = 0;
            for body in &batches {
                n += posthog::parse(body, 10_000, max_event).unwrap().items.len();
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
