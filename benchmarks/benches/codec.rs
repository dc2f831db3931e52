//! Avro encode and decode of bus payloads, per kind: every event crosses the bus this way twice.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trellis_schemas::{Kind, avro, sample};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("avro");
    for kind in Kind::ALL {
        let events: Vec<_> = (0..600u64)
            .map(|n| sample::event("plants", n % 50, n))
            .filter(|e| e.kind() == kind)
            .collect();
        let payloads: Vec<Vec<u8>> = events.iter().map(|e| avro::encode(e).unwrap()).collect();
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(
            format!("encode/{kind} ({} B avg)", bytes / events.len()),
            |b| {
                let mut buf = Vec::with_capacity(1024);
                b.iter(|| {
                    for e in &events {
                        buf.clear();
                        avro::encode_into(e, &mut buf).unwrap();
                        std::hint::black_box(&buf);
                    }
                })
            },
        );
        group.bench_function(format!("decode/{kind}"), |b| {
            b.iter(|| {
                for p in &payloads {
                    std::hint::black_box(avro::decode(p).unwrap());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
