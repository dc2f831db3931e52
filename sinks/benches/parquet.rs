//! Encoding decoded events to zstd Parquet in memory: rows per second, per table.
//!
//! `cargo bench -p trellis-sinks --bench parquet`. The target is 1M rows/s per core.
//!
//! The measured work includes dropping the events, as the sink does once they are encoded.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use trellis_schemas::{Event, Kind, sample};
use trellis_sinks::parquet::Table;
use trellis_sinks::parquet::writer::{Row, encode_to_vec};

// The allocator of the `trellis` binary, so the figures are the sink's: with glibc's, freeing
// the encoded events' strings costs as much as the encoding.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: usize = 50_000;

fn events(kind: Kind) -> Vec<Event> {
    (0..)
        .map(|n| sample::event("plants", n % 500, n))
        .filter(|e| e.kind() == kind)
        .take(ROWS)
        .collect()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("parquet_encode");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    for kind in [Kind::Analytics, Kind::Error, Kind::Performance] {
        let events = events(kind);
        for level in [1, 3] {
            group.bench_function(format!("{}_zstd{level}", kind.table()), |b| {
                b.iter_batched(
                    || events.clone(),
                    |events| {
                        let rows = events.into_iter().map(Row::Event);
                        black_box(encode_to_vec(Table::Event(kind), rows, level).unwrap())
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
