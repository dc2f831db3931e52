//! The processors' pure logic, without a bus: dedupe, sessionize and aggregate decoded events.
//!
//! Input: a simulated fleet (`trellis_processors::sim`), in arrival order, duplicates included,
//! split over 8 partitions as the bus would. Each iteration feeds every event to a fresh
//! pipeline per partition (the events are cloned outside the timed part), then flushes.
//! `bytes per remembered id` is printed once: the dedupe state's memory per tracked event id.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use trellis_processors::issues::Groupers;
use trellis_processors::pipeline::dedupe::{Dedupe, event_key};
use trellis_processors::pipeline::health::Health;
use trellis_processors::pipeline::sessions::Sessions;
use trellis_processors::pipeline::{Handled, Rules};
use trellis_processors::sim::{Fleet, FleetSpec};
use trellis_processors::{Pipeline, ProcessorConfig};
use trellis_schemas::{ErrorEvent, Event};

const PARTITIONS: u32 = 8;

/// The allocator the `trellis` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn partitioned(fleet: &Fleet) -> Vec<Vec<Event>> {
    let mut parts = vec![Vec::new(); PARTITIONS as usize];
    for e in fleet.wire() {
        parts[trellis_bus::partition_for(&e.partition_key(), PARTITIONS) as usize].push(e.clone());
    }
    parts
}

fn run(rules: Rules, parts: Vec<Vec<Event>>) -> usize {
    let mut out = 0;
    for (partition, events) in parts.into_iter().enumerate() {
        let mut p = Pipeline::new(rules, partition as u32);
        for (offset, e) in events.into_iter().enumerate() {
            if let Handled::Passed(e) = p.handle(e, offset as u64) {
                std::hint::black_box(e);
                out += 1;
            }
            let (s, h) = p.take_closed();
            out += s.len() + h.len();
        }
        p.idle(i64::MAX / 4);
        let (s, h) = p.take_closed();
        out += s.len() + h.len();
    }
    out
}

fn process(c: &mut Criterion) {
    let fleet = Fleet::simulate(&FleetSpec {
        devices: 1500,
        ..Default::default()
    });
    let parts = partitioned(&fleet);
    let events: usize = parts.iter().map(Vec::len).sum();
    let rules = Rules::from(&ProcessorConfig::default());

    let mut group = c.benchmark_group("process");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events as u64));
    group.bench_function(format!("pipeline/{events} events"), |b| {
        b.iter_batched(
            || parts.clone(),
            |parts| run(rules, parts),
            BatchSize::LargeInput,
        )
    });

    // Dedupe alone, and its memory per remembered id.
    let keys: Vec<(u128, i64)> = fleet
        .wire()
        .map(|e| {
            let c = e.common();
            (event_key(&c.project, &c.event_id), c.timestamp_ms)
        })
        .collect();
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("dedupe/check", |b| {
        b.iter(|| {
            let mut d = Dedupe::new(7 * 86_400_000, usize::MAX);
            for (k, t) in &keys {
                std::hint::black_box(d.check(*k, *t, 0));
            }
            d.len()
        })
    });

    // Sessionizing alone: every event of one partition, in arrival order, then the flush.
    let wire: Vec<Event> = fleet.wire().cloned().collect();
    group.throughput(Throughput::Elements(wire.len() as u64));
    group.bench_function("sessionize", |b| {
        b.iter_batched(
            || wire.clone(),
            |events| {
                let mut sessions = Sessions::new(rules.sessions);
                let mut closed = Vec::new();
                for mut e in events {
                    let t = e.common().timestamp_ms;
                    sessions.on_event(&mut e, t, t - rules.lateness_ms);
                }
                sessions.close_due(i64::MAX / 4, &mut closed);
                closed.len()
            },
            BatchSize::LargeInput,
        )
    });

    // Release health alone: counters, user sets and DDSketch updates per performance sample.
    let samples = wire
        .iter()
        .filter(|e| matches!(e, Event::Performance(_)))
        .count();
    eprintln!(
        "health input: {} events, {samples} of them performance samples (sketch updates)",
        wire.len()
    );
    group.bench_function("health", |b| {
        b.iter(|| {
            let mut health = Health::new(rules.windows, 0);
            for (offset, e) in wire.iter().enumerate() {
                let t = e.common().timestamp_ms;
                health.add_event(e, t, offset as u64, t - rules.lateness_ms);
            }
            let mut out = Vec::new();
            health.close_due(i64::MAX / 4, &mut out);
            out.len()
        })
    });

    // Fingerprinting error events (normalizing frames and messages, hashing).
    let errors: Vec<ErrorEvent> = wire
        .iter()
        .filter_map(|e| match e {
            Event::Error(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let grouper = Groupers::default_rules();
    let grouper = grouper.for_project("plants");
    group.throughput(Throughput::Elements(errors.len() as u64));
    group.bench_function("fingerprint", |b| {
        b.iter(|| {
            let mut n = 0;
            for e in &errors {
                n += std::hint::black_box(grouper.fingerprint(e))
                    .components
                    .len();
            }
            n
        })
    });
    group.finish();

    let mut d = Dedupe::new(7 * 86_400_000, usize::MAX);
    for i in 0..1_000_000u64 {
        d.check(event_key("plants", &format!("{i:032x}")), 0, 0);
    }
    eprintln!(
        "dedupe memory: {:.1} bytes per remembered id (1,000,000 ids)",
        d.bytes_per_id()
    );
}

criterion_group!(benches, process);
criterion_main!(benches);
