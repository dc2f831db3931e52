//! The processor framework: pure per-partition processors driven by a thin consumer loop.
//!
//! A [`Processor`] owns the state of one input partition and turns records into output messages
//! with plain code: no tokio, no bus, no clock (time is passed in). The [`runner`] reads the input
//! topic in a consumer group, hands each record to its partition's processor, publishes what it
//! emitted and waits for the bus to acknowledge it, and every `checkpoint_interval` saves each
//! processor's state with the input offset it reflects ([`checkpoint`]) before committing that
//! offset to the group.
//!
//! On restart, or when the group moves a partition to another instance, the new owner restores
//! the newest checkpoint and skips the records it already reflects. Records after it are
//! processed again; processors are deterministic, so they emit the same messages with the same
//! ids, which the sinks collapse.

pub mod checkpoint;
pub mod runner;

pub use checkpoint::{Checkpoint, CheckpointError, Checkpoints, Saved};
pub use runner::{RunError, RunnerConfig, run};

use trellis_bus::{Message, Record};

/// Why a processor's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The binary encoding failed.
    #[error("processor state: {0}")]
    Postcard(#[from] postcard::Error),
    /// The JSON encoding failed.
    #[error("processor state: {0}")]
    Json(#[from] serde_json::Error),
}

/// What processors emit while handling records, and the counters they keep.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to publish, in order.
    pub messages: Vec<Message>,
}

impl Output {
    /// Queues a message.
    pub fn emit(&mut self, message: Message) {
        self.messages.push(message);
    }
}

/// The logic of one stage for one input partition.
pub trait Processor: Send {
    /// Handles one record. Invalid input is the processor's to count and dead-letter; this
    /// never fails.
    fn process(&mut self, record: &Record, out: &mut Output);

    /// The input partition has been quiet for the configured idle time while the consumer is
    /// caught up: `now_ms` is the wall clock. Processors with event-time windows close what
    /// would otherwise wait for events that are not coming.
    fn on_idle(&mut self, _now_ms: i64, _out: &mut Output) {}

    /// Counters accumulated since the last call, as (name, increment); the runner exports them.
    fn drain_counters(&mut self, _into: &mut dyn FnMut(&'static str, u64)) {}

    /// The state to checkpoint.
    fn snapshot(&self) -> Result<Vec<u8>, StateError>;
}

/// Makes processors for a stage.
pub trait Factory: Send + Sync {
    /// The processor type.
    type Processor: Processor;

    /// The stage's name: its consumer group suffix and checkpoint directory.
    fn stage(&self) -> &'static str;

    /// A processor for `partition`, from a checkpointed state or empty.
    fn create(&self, partition: u32, state: Option<&[u8]>) -> Result<Self::Processor, StateError>;
}
