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

#[cfg(test)]
mod tests;

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

/// One input partition's detectors.
pub struct DetectProcessor {
    detector: ReleaseDetector,
    topics: Arc<topics::Names>,
    found: Vec<Detection>,
    invalid: u64,
}

/// Queues `found` on `detections`, keyed by project.
fn emit(topics: &topics::Names, found: &mut Vec<Detection>, out: &mut Output) {
    for d in found.drain(..) {
        match records::encode(&d) {
            Ok(payload) => out.emit(Message::new(
                topics.detections.as_str(),
                project_key(&d.project),
                payload,
            )),
            Err(e) => tracing::error!(error = %e, "A detection does not encode."),
        }
    }
}

/// A payload that does not decode, to `dlq` with the reason.
fn dead(topics: &topics::Names, stage: &str, record: &Record, reason: &str) -> Message {
    let mut letter = dead_letter(record, stage, reason);
    letter.topic.clone_from(&topics.dlq);
    letter
}

impl Processor for DetectProcessor {
    fn process(&mut self, record: &Record, out: &mut Output) {
        let session = match records::decode::<SessionRecord>(&record.payload) {
            Ok(session) => session,
            Err(e) => {
                self.invalid += 1;
                out.emit(dead(&self.topics, STAGE, record, &e.to_string()));
                return;
            }
        };
        self.detector.observe(&session, &mut self.found);
        emit(&self.topics, &mut self.found, out);
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let c = std::mem::take(&mut self.detector.counters);
        for (name, n) in [
            ("sessions_counted", c.sessions),
            ("replayed", c.replayed),
            ("too_old", c.too_old),
            ("release_evicted", c.release_evicted),
            ("detections", c.emitted),
            ("invalid", std::mem::take(&mut self.invalid)),
        ] {
            if n > 0 {
                into(name, n);
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(postcard::to_stdvec(&self.detector.state())?)
    }
}

/// Makes the `detect` stage's processors.
pub struct DetectFactory {
    config: DetectConfig,
    topics: Arc<topics::Names>,
}

impl DetectFactory {
    /// The stage with `config`, writing to `topics`.
    pub fn new(config: DetectConfig, topics: topics::Names) -> Self {
        DetectFactory {
            config,
            topics: Arc::new(topics),
        }
    }
}

impl Factory for DetectFactory {
    type Processor = DetectProcessor;

    fn stage(&self) -> &'static str {
        STAGE
    }

    fn create(&self, _partition: u32, state: Option<&[u8]>) -> Result<DetectProcessor, StateError> {
        let detector = match state {
            Some(bytes) => {
                let state: DetectorState = postcard::from_bytes(bytes)?;
                ReleaseDetector::restore(self.config.clone(), state)
            }
            None => ReleaseDetector::new(self.config.clone()),
        };
        Ok(DetectProcessor {
            detector,
            topics: self.topics.clone(),
            found: Vec::new(),
            invalid: 0,
        })
    }
}

/// One input partition's performance detector.
pub struct PerfProcessor {
    detector: PerfDetector,
    topics: Arc<topics::Names>,
    found: Vec<Detection>,
    invalid: u64,
}

impl Processor for PerfProcessor {
    fn process(&mut self, record: &Record, out: &mut Output) {
        let partial = match records::decode::<HealthPartial>(&record.payload) {
            Ok(partial) => partial,
            Err(e) => {
                self.invalid += 1;
                out.emit(dead(&self.topics, PERF_STAGE, record, &e.to_string()));
                return;
            }
        };
        self.detector.observe(&partial, &mut self.found);
        emit(&self.topics, &mut self.found, out);
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let c = std::mem::take(&mut self.detector.counters);
        for (name, n) in [
            ("partials_counted", c.partials),
            ("replayed", c.replayed),
            ("invalid_sketch", c.invalid_sketch),
            ("too_old", c.too_old),
            ("detections", c.emitted),
            ("invalid", std::mem::take(&mut self.invalid)),
        ] {
            if n > 0 {
                into(name, n);
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(postcard::to_stdvec(&self.detector.state())?)
    }
}

/// Makes the performance detector's processors.
pub struct PerfFactory {
    config: DetectConfig,
    topics: Arc<topics::Names>,
}

impl PerfFactory {
    /// The stage with `config`, writing to `topics`.
    pub fn new(config: DetectConfig, topics: topics::Names) -> Self {
        PerfFactory {
            config,
            topics: Arc::new(topics),
        }
    }
}

impl Factory for PerfFactory {
    type Processor = PerfProcessor;

    fn stage(&self) -> &'static str {
        PERF_STAGE
    }

    fn create(&self, _partition: u32, state: Option<&[u8]>) -> Result<PerfProcessor, StateError> {
        let detector = match state {
            Some(bytes) => {
                let state: PerfState = postcard::from_bytes(bytes)?;
                PerfDetector::restore(self.config.clone(), state)
            }
            None => PerfDetector::new(self.config.clone()),
        };
        Ok(PerfProcessor {
            detector,
            topics: self.topics.clone(),
            found: Vec::new(),
            invalid: 0,
        })
    }
}
