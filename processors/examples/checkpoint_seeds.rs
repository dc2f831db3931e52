//! Writes checkpoints of the process and issues stages after a few hundred sample events, as
//! the starting corpus of the `checkpoint_restore` fuzz target:
//! `cargo run -p trellis-processors --example checkpoint_seeds -- fuzz/corpus/checkpoint_restore`.

use std::sync::Arc;

use trellis_bus::Record;
use trellis_processors::issues::{Groupers, IssueFactory};
use trellis_processors::runtime::{Factory, Output, Processor};
use trellis_processors::{PipelineFactory, ProcessorConfig};
use trellis_schemas::topics::Names;
use trellis_schemas::{Event, avro, sample};

fn feed(processor: &mut dyn Processor, events: &[Event]) {
    let mut out = Output::default();
    for (offset, event) in events.iter().enumerate() {
        let record = Record {
            topic: "events".into(),
            partition: 0,
            offset: offset as u64,
            key: event.partition_key(),
            payload: avro::encode(event).expect("a sample event encodes"),
            headers: vec![],
            timestamp_ms: 0,
        };
        processor.process(&record, &mut out);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: checkpoint_seeds DIRECTORY")?;
    std::fs::create_dir_all(&dir)?;
    let events: Vec<Event> = (0..300)
        .map(|n| sample::event("plants", n % 13, n))
        .collect();
    let errors: Vec<Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Error(_)))
        .cloned()
        .collect();
    let pipeline = PipelineFactory::new(&ProcessorConfig::default(), Names::default())?;
    let issues = IssueFactory::new(Arc::new(Groupers::default_rules()), Names::default());
    for n in [1, 30, 300] {
        let mut p = pipeline.create(0, None)?;
        feed(&mut p, &events[..n]);
        std::fs::write(format!("{dir}/process-{n}"), p.snapshot()?)?;
        let mut i = issues.create(0, None)?;
        feed(&mut i, &errors[..n.min(errors.len())]);
        std::fs::write(format!("{dir}/issues-{n}"), i.snapshot()?)?;
    }
    Ok(())
}
