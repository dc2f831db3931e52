//! Checkpointing a large dedupe set: the state a week of event ids leaves in the `process`
//! stage, saved after a further 1% of new ids, as the stage saves it (content-defined chunks,
//! only changed ones written) and as one whole file, written and synced (the layout before
//! chunks). Both run in the same process on the same disk, so their ratio is the figure.
//! The bytes each chunked save writes are printed once.

use std::io::Write;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use trellis_processors::pipeline::dedupe::{Dedupe, event_key};
use trellis_processors::runtime::{Checkpoint, Checkpoints};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IDS: u64 = 2_000_000;
const NEW: u64 = IDS / 100;
const HOUR_MS: i64 = 3_600_000;
const WEEK_MS: i64 = 7 * 24 * HOUR_MS;

/// Ids spread evenly over a week of event time, oldest first; then `NEW` more in the newest
/// hour, a different set for each `round`.
fn dedupe() -> (Dedupe, i64) {
    let mut d = Dedupe::new(WEEK_MS, usize::MAX);
    let step = WEEK_MS / IDS as i64;
    for n in 0..IDS {
        d.check(key(n), n as i64 * step, 0);
    }
    (d, WEEK_MS)
}

/// The dedupe key of the `n`th event, as the stage derives it from a project and an event id.
fn key(n: u64) -> u128 {
    event_key("default", &format!("00000000-0000-4000-8000-{n:012}"))
}

fn add_round(d: &mut Dedupe, now_ms: i64, round: u64) {
    for n in 0..NEW {
        d.check(key(IDS + round * NEW + n), now_ms, now_ms);
    }
}

fn state(d: &Dedupe) -> Vec<u8> {
    postcard::to_stdvec(&d.state()).unwrap()
}

fn checkpoint(c: &mut Criterion) {
    // Under target/, on the disk checkpoints live on (not a tmpfs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Checkpoints::new(dir.path(), "process");
    let (mut d, now) = dedupe();
    let mut round = 0;
    let first = store
        .save(
            "raw",
            0,
            &Checkpoint {
                offset: 0,
                state: state(&d),
            },
        )
        .unwrap();
    round += 1;
    add_round(&mut d, now, round);
    let next = store
        .save(
            "raw",
            0,
            &Checkpoint {
                offset: 1,
                state: state(&d),
            },
        )
        .unwrap();
    println!(
        "{IDS} ids: first save wrote {:.1} MB of {:.1} MB; after {NEW} new ids, {:.2} MB of {:.1} MB",
        first.written_bytes as f64 / 1e6,
        first.state_bytes as f64 / 1e6,
        next.written_bytes as f64 / 1e6,
        next.state_bytes as f64 / 1e6,
    );

    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    let mut offset = 2;
    // Each iteration's input: the state after 1% more ids.
    let mut next_state = move || {
        round += 1;
        add_round(&mut d, now, round);
        state(&d)
    };
    group.bench_function("chunked, 1% new ids", |b| {
        b.iter_batched(
            &mut next_state,
            |state| {
                offset += 1;
                store.save("raw", 0, &Checkpoint { offset, state }).unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    let whole = dir.path().join("whole.ckpt");
    group.bench_function("whole file, 1% new ids", |b| {
        b.iter_batched(
            &mut next_state,
            |state| {
                let mut file = std::fs::File::create(&whole).unwrap();
                file.write_all(&state).unwrap();
                file.sync_all().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
