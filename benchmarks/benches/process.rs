//! The processors' pure logic, without a bus: dedupe, sessionize and aggregate decoded events.
//!
//! Input: a simulated fleet (`trellis_processors::sim`), in arrival order, duplicates included,
//! split over 8 partitions as the bus would. Each iteration feeds every event to a fresh
//! pipeline per partition (the events are cloned outside the timed part), then flushes.
//! `bytes per remembered id` is printed once: the dedupe state's memory per tracked event id.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use trellis_processors::pipeline::dedupe::{Dedupe, event_key};
use trellis_processors::pipeline::{Handled, Rules};
use trellis_processors::sim::{Fleet, FleetSpec};
use trellis_processors::{Pipeline, ProcessorConfig};
use trellis_schemas::Event;

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
