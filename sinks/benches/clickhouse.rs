//! ClickHouse row encoding: Avro payloads from a simulated fleet to `RowBinary` rows, the sink's
//! per-record CPU cost (`encode_rows`), against the same rows through a serde tree with each
//! column looked up by path (`encode_rows_via_tree`, the encoder before it, kept as the reference).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trellis_processors::sim::{Fleet, FleetSpec};
use trellis_schemas::Event;
use trellis_schemas::avro;
use trellis_schemas::topics::Names;
use trellis_sinks::clickhouse::encode::{encode_record, plan};

/// The allocator the `trellis` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn encode(c: &mut Criterion) {
    let fleet = Fleet::simulate(&FleetSpec {
        devices: 200,
        ..Default::default()
    });
    let payloads: Vec<Vec<u8>> = fleet.wire().map(|e| avro::encode(e).unwrap()).collect();
    let names = Names::new("");
    let mut group = c.benchmark_group("clickhouse");
    group.throughput(Throughput::Elements(payloads.len() as u64));
    group.bench_function("encode_rows", |b| {
        let mut out = Vec::with_capacity(1 << 20);
        b.iter(|| {
            out.clear();
            for p in &payloads {
                encode_record(&names, &names.events, p, &mut out).unwrap();
            }
            out.len()
        })
    });
    group.bench_function("encode_rows_via_tree", |b| {
        let mut out = Vec::with_capacity(1 << 20);
        b.iter(|| {
            out.clear();
            for p in &payloads {
                let event = avro::decode(p).unwrap();
                let tree = match &event {
                    Event::Analytics(e) => serde_json::to_value(e),
                    Event::Error(e) => serde_json::to_value(e),
                    Event::Performance(e) => serde_json::to_value(e),
                    Event::Transaction(e) => serde_json::to_value(e),
                    Event::Session(e) => serde_json::to_value(e),
                    Event::Notification(e) => serde_json::to_value(e),
                }
                .unwrap();
                plan(event.kind().table()).encode(&tree, &mut out).unwrap();
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
