//! The `detect` stage: judges what the processors aggregate and reports what got worse.
//!
//! It reads `sessions` (keyed by project, so one instance holds every release of a project)
//! in its own consumer group, counts each closed session into its release's per-minute counts
//! and, as event time moves on, runs the release-regression detector ([`release`]): a release
//! or OTA update whose crash, abnormal-exit or errored-session rate is worse than its baseline
//! (the rest of the fleet on the same channel and runtime version, or the previous release) by
//! a sequential test that stays valid when looked at every minute ([`stats`]).
//!
//! Beside it, in a group of its own, the performance detector ([`perf`], stage `detect-perf`)
//! reads `aggregates` (also keyed by project) and judges the percentiles in the health
//! partials' sketches the same way. Issue spikes ([`spike`]) are judged by the `issues` stage,
//! which owns each project's issues. All share the findings' lifecycle ([`finding`]) and write
//! to `detections`.
//!
//! Everything runs in event time: a quiet input moves nothing (there is no wall-clock idle hook),
//! so what the stage emits is a function of the sessions in the order the topic holds them, and
//! a replay of compressed or historical data gives the same findings as live traffic.
//!
//! Findings are [`Detection`] records on `detections`, keyed by project: one versioned record
//! per finding, its id derived from its content, so a replay after a crash emits the same ids
//! and statuses, which the sinks collapse. State is checkpointed with the input offset like
//! every stage's.
//!
//! [`sim`] is a seeded rollout simulator that feeds the same detector, for tests and the quality
//! figures in `benchmarks/README.md`.

pub mod config;
pub mod finding;
pub mod perf;
pub mod release;
pub mod sim;
pub mod spike;
pub mod stats;
pub mod velocity;

#[cfg(test)]
mod tests;

use std::marker::PhantomData;
use std::sync::Arc;

use trellis_bus::{Message, Record, dead_letter};
use trellis_schemas::records::{self, Detection, HealthPartial, SessionRecord};
use trellis_schemas::topics;

pub use config::DetectConfig;
pub use perf::{PerfDetector, PerfState};
pub use release::{DetectorState, ReleaseDetector};

use crate::runtime::{Factory, Output, Processor, StateError};

/// The stage name of the release-regression detector (on `sessions`).
pub const STAGE: &str = "detect";
/// The stage name of the performance-regression detector (on `aggregates`).
pub const PERF_STAGE: &str = "detect-perf";

/// The key of a project's messages on `sessions` and `detections`: the project, so one instance
/// of a reading stage holds all of it.
pub fn project_key(project: &str) -> Vec<u8> {
    project.as_bytes().to_vec()
}

/// A detector a stage runs over one input topic: pure logic, fed one decoded record at a time.
pub trait Detector: Send + Sized {
    /// The record type of its input topic.
    type Input: records::Record;
    /// The stage's name: its checkpoint directory and metrics label.
    const STAGE: &'static str;

    /// A detector with `config`, from a checkpointed state or empty.
    fn open(config: DetectConfig, state: Option<&[u8]>) -> Result<Self, StateError>;
    /// Counts one input record; findings go to `out`.
    fn observe(&mut self, input: &Self::Input, out: &mut Vec<Detection>);
    /// Counters since the last call, as (name, increment).
    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64));
    /// The state to checkpoint.
    fn snapshot(&self) -> Result<Vec<u8>, StateError>;
}

impl Detector for ReleaseDetector {
    type Input = SessionRecord;
    const STAGE: &'static str = STAGE;

    fn open(config: DetectConfig, state: Option<&[u8]>) -> Result<Self, StateError> {
        Ok(match state {
            Some(bytes) => ReleaseDetector::restore(config, postcard::from_bytes(bytes)?),
            None => ReleaseDetector::new(config),
        })
    }

    fn observe(&mut self, input: &SessionRecord, out: &mut Vec<Detection>) {
        ReleaseDetector::observe(self, input, out);
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let c = std::mem::take(&mut self.counters);
        for (name, n) in [
            ("sessions_counted", c.sessions),
            ("replayed", c.replayed),
            ("too_old", c.too_old),
            ("release_evicted", c.release_evicted),
            ("users_capped", c.users_capped),
            ("detections", c.emitted),
        ] {
            into(name, n);
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(postcard::to_stdvec(&self.state())?)
    }
}

impl Detector for PerfDetector {
    type Input = HealthPartial;
    const STAGE: &'static str = PERF_STAGE;

    fn open(config: DetectConfig, state: Option<&[u8]>) -> Result<Self, StateError> {
        Ok(match state {
            Some(bytes) => PerfDetector::restore(config, postcard::from_bytes(bytes)?),
            None => PerfDetector::new(config),
        })
    }

    fn observe(&mut self, input: &HealthPartial, out: &mut Vec<Detection>) {
        PerfDetector::observe(self, input, out);
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let c = std::mem::take(&mut self.counters);
        for (name, n) in [
            ("partials_counted", c.partials),
            ("replayed", c.replayed),
            ("invalid_sketch", c.invalid_sketch),
            ("too_old", c.too_old),
            ("detections", c.emitted),
        ] {
            into(name, n);
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(postcard::to_stdvec(&self.state())?)
    }
}

/// One input partition's detector, as the runtime drives it: decodes, observes, publishes the
/// findings on `detections` keyed by project, dead-letters what does not decode.
pub struct DetectProcessor<D> {
    detector: D,
    topics: Arc<topics::Names>,
    found: Vec<Detection>,
    invalid: u64,
}

impl<D: Detector> Processor for DetectProcessor<D> {
    fn process(&mut self, record: &Record, out: &mut Output) {
        let input = match records::decode::<D::Input>(&record.payload) {
            Ok(input) => input,
            Err(e) => {
                self.invalid += 1;
                let mut letter = dead_letter(record, D::STAGE, &e.to_string());
                letter.topic.clone_from(&self.topics.dlq);
                out.emit(letter);
                return;
            }
        };
        self.detector.observe(&input, &mut self.found);
        for d in self.found.drain(..) {
            match records::encode(&d) {
                Ok(payload) => out.emit(Message::new(
                    self.topics.detections.as_str(),
                    project_key(&d.project),
                    payload,
                )),
                Err(e) => tracing::error!(error = %e, "A detection does not encode."),
            }
        }
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let mut nonzero = |name, n| {
            if n > 0 {
                into(name, n);
            }
        };
        self.detector.drain_counters(&mut nonzero);
        nonzero("invalid", std::mem::take(&mut self.invalid));
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        self.detector.snapshot()
    }
}

/// Makes a detector stage's processors.
pub struct DetectFactory<D> {
    config: DetectConfig,
    topics: Arc<topics::Names>,
    detector: PhantomData<fn() -> D>,
}

impl<D: Detector> DetectFactory<D> {
    /// The stage with `config`, writing to `topics`.
    pub fn new(config: DetectConfig, topics: topics::Names) -> Self {
        DetectFactory {
            config,
            topics: Arc::new(topics),
            detector: PhantomData,
        }
    }
}

impl<D: Detector> Factory for DetectFactory<D> {
    type Processor = DetectProcessor<D>;

    fn stage(&self) -> &'static str {
        D::STAGE
    }

    fn create(
        &self,
        _partition: u32,
        state: Option<&[u8]>,
    ) -> Result<DetectProcessor<D>, StateError> {
        Ok(DetectProcessor {
            detector: D::open(self.config.clone(), state)?,
            topics: self.topics.clone(),
            found: Vec::new(),
            invalid: 0,
        })
    }
}
