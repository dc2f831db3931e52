//! Any bytes where a checkpoint should be restore to a processor or to an error: a damaged or
//! hostile checkpoint file must not panic a stage (the store's checksum catches accidents; this
//! covers what passes it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use trellis_processors::detect::{DetectConfig, DetectFactory, PerfDetector, ReleaseDetector};
use trellis_processors::issues::{Groupers, IssueFactory};
use trellis_processors::runtime::{Factory, Processor};
use trellis_processors::{PipelineFactory, ProcessorConfig};
use trellis_schemas::topics::Names;

fuzz_target!(|data: &[u8]| {
    let pipeline = PipelineFactory::new(&ProcessorConfig::default(), Names::default())
        .expect("the default config is valid");
    if let Ok(p) = pipeline.create(0, Some(data)) {
        p.snapshot().expect("a restored state snapshots");
    }
    let issues = IssueFactory::new(Arc::new(Groupers::default_rules()), Names::default());
    if let Ok(p) = issues.create(0, Some(data)) {
        p.snapshot().expect("a restored state snapshots");
    }
    let release = DetectFactory::<ReleaseDetector>::new(DetectConfig::default(), Names::default());
    if let Ok(p) = release.create(0, Some(data)) {
        p.snapshot().expect("a restored state snapshots");
    }
    let perf = DetectFactory::<PerfDetector>::new(DetectConfig::default(), Names::default());
    if let Ok(p) = perf.create(0, Some(data)) {
        p.snapshot().expect("a restored state snapshots");
    }
});
