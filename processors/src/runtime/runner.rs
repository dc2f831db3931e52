//! The consumer loop around processors: poll, process, publish, checkpoint, commit.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use trellis_bus::retry::{self, Backoff};
use trellis_bus::{Bus, BusError, Consumer, Message, Offsets, Producer, Record};

use super::{Checkpoint, CheckpointError, Checkpoints, Factory, Output, Processor, StateError};
use crate::metrics::ProcessorMetrics;

/// How the loop reads, checkpoints and idles.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The consumer group.
    pub group: String,
    /// The input topic.
    pub topic: String,
    /// The dead-letter topic: an output the bus refuses for good (over the broker's message size)
    /// goes there, cut to its first bytes, instead of stopping the stage on every replay.
    pub dlq: String,
    /// Most records per poll.
    pub poll_max: usize,
    /// Longest wait for a poll.
    pub poll_timeout: Duration,
    /// How often each partition's state is checkpointed and its offset committed.
    pub checkpoint_interval: Duration,
    /// How long a partition must be quiet, with the consumer caught up, before `on_idle`.
    pub idle_timeout: Duration,
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The bus failed in a way retrying does not fix.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A processor's state could not be saved or restored.
    #[error("partition {partition}: {source}")]
    State {
        /// The partition.
        partition: u32,
        /// What failed.
        #[source]
        source: StateError,
    },
}

struct Slot<P> {
    processor: P,
    /// The next offset this state expects.
    next_offset: u64,
    /// The offset of the last checkpoint saved or restored.
    checkpointed: Option<u64>,
    last_record: Instant,
    idle_done: bool,
}

struct Loop<F: Factory> {
    factory: F,
    config: RunnerConfig,
    checkpoints: Checkpoints,
    metrics: Arc<ProcessorMetrics>,
    slots: HashMap<u32, Slot<F::Processor>>,
}

/// Runs `factory`'s stage on `bus` until `shutdown` resolves, then checkpoints and commits what
/// was processed.
pub async fn run<F: Factory>(
    bus: Arc<dyn Bus>,
    factory: F,
    checkpoints: Checkpoints,
    config: RunnerConfig,
    metrics: Arc<ProcessorMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // A broker that is slow to answer at start-up (a metadata timeout) is waited out.
    let inputs = [config.topic.as_str()];
    let mut consumer = retry::until_done("Joining the consumer group", || {
        bus.consumer(&config.group, &inputs)
    })
    .await?;
    let producer = bus.producer()?;
    let mut state = Loop {
        factory,
        config,
        checkpoints,
        metrics,
        slots: HashMap::new(),
    };
    tracing::info!(stage = state.factory.stage(), group = %state.config.group, "Processor started.");
    let mut last_checkpoint = Instant::now();
    let mut checkpoint_cost = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let polled = tokio::select! {
            _ = &mut shutdown => break,
            polled = consumer.poll(state.config.poll_max, state.config.poll_timeout) => polled,
        };
        let records = match polled {
            Ok(records) => records,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "Poll failed; retrying.");
                state.metrics.fault(state.factory.stage(), "poll_retried");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Output::default();
        state.restore_assigned(consumer.as_ref())?;
        state.process(&records, &mut out)?;
        if records.is_empty() {
            state.idle(consumer.as_mut(), &mut out).await;
        }
        publish(
            producer.as_ref(),
            out.messages,
            &state.config.dlq,
            state.factory.stage(),
            &state.metrics,
        )
        .await?;
        state.drain_counters();
        state.drop_revoked(consumer.as_ref());
        if last_checkpoint.elapsed()
            >= checkpoint_wait(state.config.checkpoint_interval, checkpoint_cost)
        {
            let started = Instant::now();
            match state.checkpoint(consumer.as_mut()).await {
                Ok(()) => checkpoint_cost = started.elapsed(),
                // A disk that is full or fails a sync: nothing was committed past the last good
                // checkpoint, the state stays in memory, and the next interval tries again with
                // a new file (a failed sync says nothing of what the old file holds).
                Err(RunError::Checkpoint(e)) => {
                    tracing::warn!(stage = state.factory.stage(), error = %e, "Checkpoint failed; offsets stay at the last good one, retrying next interval.");
                    state
                        .metrics
                        .fault(state.factory.stage(), "checkpoint_failed");
                }
                Err(e) => return Err(e),
            }
            last_checkpoint = Instant::now();
            if let Some(lag) = consumer.lag() {
                state.metrics.set_lag(state.factory.stage(), lag);
            }
        }
    }
    state.checkpoint(consumer.as_mut()).await?;
    tracing::info!(
        stage = state.factory.stage(),
        "Processor stopped after a final checkpoint."
    );
    Ok(())
}

/// How long after a checkpoint the next is due: `interval`, or ten times what the last one cost
/// (serializing and writing the state) when that is longer, so a stage with large state spends
/// at most a tenth of its time on checkpoints instead of rewriting it every `interval`. A
/// restart then replays more input, which the checkpoint's offsets make exact.
pub fn checkpoint_wait(interval: Duration, last_cost: Duration) -> Duration {
    interval.max(last_cost.saturating_mul(10))
}

/// Bytes of a refused output kept in its dead letter.
const DEAD_LETTER_BYTES: usize = 4096;

/// Publishes until the bus acknowledges; a bus that is down is waited for, not skipped. An
/// output the bus refuses for good is dead-lettered with the reason (and counted as
/// `output_refused`), so it cannot stop the stage on every replay.
async fn publish(
    producer: &dyn Producer,
    mut messages: Vec<Message>,
    dlq: &str,
    stage: &'static str,
    metrics: &ProcessorMetrics,
) -> Result<(), RunError> {
    let mut backoff = Backoff::bus();
    let mut letters = false;
    while !messages.is_empty() {
        match producer.publish_settled(messages.clone()).await {
            Ok(settled) => {
                let refused: Vec<_> = settled.into_iter().filter_map(Result::err).collect();
                if let Some(refusal) = refused.first().filter(|_| letters) {
                    return Err(RunError::Bus(BusError::Config(format!(
                        "the dead-letter topic {dlq:?} refused a letter: {}",
                        refusal.error
                    ))));
                }
                metrics.record(stage, "output_refused", refused.len() as u64);
                messages = refused
                    .into_iter()
                    .map(|refusal| {
                        let reason = format!(
                            "output to {} of {} bytes refused by the bus: {}",
                            refusal.message.topic,
                            refusal.message.payload.len(),
                            refusal.error
                        );
                        tracing::error!(stage, %reason, "Output dead-lettered.");
                        let mut payload = refusal.message.payload;
                        payload.truncate(DEAD_LETTER_BYTES);
                        Message {
                            topic: dlq.to_string(),
                            ..trellis_bus::dead_letter_from(
                                &refusal.message.key,
                                payload,
                                stage,
                                &reason,
                            )
                        }
                    })
                    .collect();
                letters = true;
            }
            Err(e) if e.is_retryable() => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "Publishing outputs failed; retrying.");
                metrics.fault(stage, "publish_retried");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl<F: Factory> Loop<F> {
    fn process(&mut self, records: &[Record], out: &mut Output) -> Result<(), RunError> {
        let stage = self.factory.stage();
        let (mut processed, mut skipped) = (0, 0);
        for record in records {
            let slot = self.slot_for(record)?;
            if record.offset < slot.next_offset {
                skipped += 1;
                continue;
            }
            slot.processor.process(record, out);
            slot.next_offset = record.offset + 1;
            slot.last_record = Instant::now();
            slot.idle_done = false;
            processed += 1;
        }
        self.metrics.record(stage, "processed", processed);
        if skipped > 0 {
            self.metrics.record(stage, "skipped_replayed", skipped);
        }
        Ok(())
    }

    /// The state for `record`'s partition, restored from its checkpoint when this loop has none
    /// or when the input jumped ahead of it (another instance owned the partition meanwhile).
    fn slot_for(&mut self, record: &Record) -> Result<&mut Slot<F::Processor>, RunError> {
        let partition = record.partition;
        let current = self.slots.get(&partition).map(|s| s.next_offset);
        if current.is_none_or(|next| record.offset > next) {
            let restored = self.checkpoints.load(&self.config.topic, partition)?;
            let (processor, next_offset, checkpointed) = match restored {
                Some(Checkpoint { offset, state }) => {
                    let processor = self
                        .factory
                        .create(partition, Some(&state))
                        .map_err(|source| RunError::State { partition, source })?;
                    (processor, offset, Some(offset))
                }
                None => {
                    let processor = self
                        .factory
                        .create(partition, None)
                        .map_err(|source| RunError::State { partition, source })?;
                    (processor, record.offset, None)
                }
            };
            let next_offset = if next_offset < record.offset {
                if checkpointed.is_some() || record.offset > 0 {
                    tracing::warn!(
                        partition,
                        from = next_offset,
                        to = record.offset,
                        "Input offsets skipped ahead of the checkpoint."
                    );
                    self.metrics.gap(self.factory.stage());
                }
                record.offset
            } else {
                next_offset
            };
            tracing::debug!(partition, next_offset, "Partition state restored.");
            self.slots.insert(
                partition,
                Slot {
                    processor,
                    next_offset,
                    checkpointed,
                    last_record: Instant::now(),
                    idle_done: false,
                },
            );
        }
        Ok(self.slots.get_mut(&partition).expect("inserted above"))
    }

    /// Restores every assigned partition that has a checkpoint but no state here yet, so that
    /// a partition whose input is all processed still closes its windows when it goes idle.
    fn restore_assigned(&mut self, consumer: &dyn Consumer) -> Result<(), RunError> {
        for (topic, partition) in consumer.assignment() {
            if topic != self.config.topic || self.slots.contains_key(&partition) {
                continue;
            }
            let Some(Checkpoint { offset, state }) = self.checkpoints.load(&topic, partition)?
            else {
                continue;
            };
            let processor = self
                .factory
                .create(partition, Some(&state))
                .map_err(|source| RunError::State { partition, source })?;
            tracing::debug!(partition, offset, "Partition state restored on assignment.");
            self.slots.insert(
                partition,
                Slot {
                    processor,
                    next_offset: offset,
                    checkpointed: Some(offset),
                    last_record: Instant::now(),
                    idle_done: false,
                },
            );
        }
        Ok(())
    }

    /// Runs `on_idle` for partitions quiet for the idle timeout whose input is all read: a
    /// slow fetch (a stalled broker, a rebalance) is not quiet, and must not move a watermark to
    /// the wall clock while records are still waiting.
    async fn idle(&mut self, consumer: &mut dyn Consumer, out: &mut Output) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        for (&partition, slot) in self.slots.iter_mut() {
            if slot.idle_done || slot.last_record.elapsed() < self.config.idle_timeout {
                continue;
            }
            match consumer.end_offset(&self.config.topic, partition).await {
                Ok(end) if slot.next_offset >= end => {
                    slot.processor.on_idle(now_ms, out);
                    slot.idle_done = true;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(partition, error = %e, "End offset unknown; not idle."),
            }
        }
    }

    fn drain_counters(&mut self) {
        let stage = self.factory.stage();
        let metrics = &self.metrics;
        for slot in self.slots.values_mut() {
            slot.processor
                .drain_counters(&mut |name, n| metrics.record(stage, name, n));
        }
    }

    /// Forgets partitions the group moved elsewhere: their next owner restores them.
    fn drop_revoked(&mut self, consumer: &dyn Consumer) {
        let assigned = consumer.assignment();
        self.slots.retain(|partition, _| {
            assigned
                .iter()
                .any(|(t, p)| *t == self.config.topic && p == partition)
        });
    }

    /// Saves every partition whose state moved since its last checkpoint, then commits those
    /// offsets: the group never resumes past what a checkpoint holds.
    async fn checkpoint(&mut self, consumer: &mut dyn Consumer) -> Result<(), RunError> {
        let mut offsets = Offsets::default();
        let mut saved = Vec::new();
        for (&partition, slot) in &self.slots {
            if slot.checkpointed == Some(slot.next_offset) {
                continue;
            }
            // Serializing large state is CPU work: on a multi-threaded runtime it leaves the
            // worker thread to the other stages' tasks while it lasts.
            let snapshot = || slot.processor.snapshot();
            let state = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(snapshot),
                _ => snapshot(),
            }
            .map_err(|source| RunError::State { partition, source })?;
            saved.push((partition, slot.next_offset, state));
        }
        if saved.is_empty() {
            return Ok(());
        }
        let store = self.checkpoints.clone();
        let topic = self.config.topic.clone();
        // Partitions saved before one that fails are committed all the same.
        let (saved, failed) = tokio::task::spawn_blocking(move || {
            let mut done = Vec::with_capacity(saved.len());
            for (partition, offset, state) in saved {
                match store.save(&topic, partition, &Checkpoint { offset, state }) {
                    Ok(saved) => done.push((partition, offset, saved)),
                    Err(e) => return (done, Some(e)),
                }
            }
            (done, None)
        })
        .await
        .map_err(|e| CheckpointError::Io {
            path: "checkpoint writer".into(),
            source: std::io::Error::other(e),
        })?;
        for (partition, offset, bytes) in &saved {
            if let Some(slot) = self.slots.get_mut(partition) {
                slot.checkpointed = Some(*offset);
            }
            offsets.set(&self.config.topic, *partition, *offset);
            self.metrics.checkpoint(self.factory.stage(), bytes);
        }
        if !saved.is_empty() {
            trellis_bus::commit_until_done(consumer, &offsets).await?;
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::checkpoint_wait;

    #[test]
    fn large_state_is_checkpointed_less_often() {
        let five = Duration::from_secs(5);
        assert_eq!(checkpoint_wait(five, Duration::from_millis(40)), five);
        assert_eq!(
            checkpoint_wait(five, Duration::from_millis(1_500)),
            Duration::from_secs(15)
        );
    }
}
