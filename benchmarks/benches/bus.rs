//! Publishing to the embedded log: the one-machine durability path (group-committed fsyncs).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trellis_bus::config::EmbeddedConfig;
use trellis_bus::embedded::EmbeddedBus;
use trellis_bus::{Bus, Message};

fn embedded_publish(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&EmbeddedConfig {
        path: dir.path().join("bench.redb"),
        ..Default::default()
    })
    .unwrap();
    runtime.block_on(bus.create_topic("bench", 8)).unwrap();
    let producer = bus.producer().unwrap();
    let payload = vec![7u8; 480];
    let mut group = c.benchmark_group("embedded_publish");
    group.measurement_time(Duration::from_secs(8));
    for batch in [1usize, 100] {
        for concurrent in [1usize, 8] {
            group.throughput(Throughput::Elements((batch * concurrent) as u64));
            group.bench_function(format!("batch {batch} x {concurrent} concurrent"), |b| {
                b.to_async(&runtime).iter(|| {
                    let producer = producer.clone();
                    let payload = payload.clone();
                    async move {
                        let calls = (0..concurrent).map(|c| {
                            let messages = (0..batch)
                                .map(|i| {
                                    Message::new(
                                        "bench",
                                        format!("device-{c}-{i}"),
                                        payload.clone(),
                                    )
                                })
                                .collect();
                            producer.publish(messages)
                        });
                        for r in futures::future::join_all(calls).await {
                            r.unwrap();
                        }
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, embedded_publish);
criterion_main!(benches);
