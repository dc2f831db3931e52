//! The embedded log: a durable, partitioned log inside the process, on the `redb` database.
//!
//! It gives the same contract as Kafka on one machine with nothing to install: keyed messages
//! land on partitions by the same hash Kafka uses, a publish returns once its records are fsynced,
//! consumer groups split partitions among their members, and committed offsets survive restarts.
//! One process opens a log file at a time (redb locks it); consumers in that process share it.

mod group;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::config::EmbeddedConfig;
use crate::{Bus, BusError, Consumer, Delivery, Message, Offsets, Producer, Record};
use group::Coordinator;
use store::Store;

/// The embedded bus. Cloning shares the open log.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    groups: Coordinator,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.store.close();
    }
}

impl EmbeddedBus {
    /// Opens (or creates) the log at the configured path.
    pub fn open(config: &EmbeddedConfig) -> Result<Self, BusError> {
        Ok(EmbeddedBus {
            inner: Arc::new(Inner {
                store: Store::open(
                    &config.path,
                    store::Retention {
                        keep: config.retention,
                        every: config.retention_interval.max(Duration::from_millis(10)),
                    },
                )?,
                groups: Coordinator::default(),
            }),
        })
    }
}

impl EmbeddedBus {
    /// Records retention has deleted since the log was opened.
    pub fn expired_records(&self) -> u64 {
        self.inner.store.expired()
    }

    /// The first offset a partition still holds: retention deletes from the start.
    pub fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, BusError> {
        self.inner.store.start_offset(topic, partition)
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), BusError> {
        self.inner.store.create_topic(name, partitions).await
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.inner
            .store
            .partitions(topic)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))
    }

    fn producer(&self) -> Result<Arc<dyn Producer>, BusError> {
        Ok(Arc::new(EmbeddedProducer {
            inner: self.inner.clone(),
        }))
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BusError> {
        for topic in topics {
            if self.inner.store.partitions(topic).is_none() {
                return Err(BusError::UnknownTopic(topic.to_string()));
            }
        }
        let member = self.inner.groups.join(group, topics);
        Ok(Box::new(EmbeddedConsumer {
            appended: self.inner.store.subscribe_appends(),
            inner: self.inner.clone(),
            group: group.to_string(),
            member,
            generation: None,
            positions: HashMap::new(),
            order: Vec::new(),
            cursor: 0,
        }))
    }
}

struct EmbeddedProducer {
    inner: Arc<Inner>,
}

#[async_trait]
impl Producer for EmbeddedProducer {
    async fn publish(&self, messages: Vec<Message>) -> Result<Vec<Delivery>, BusError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.store.append(messages).await
    }

    async fn is_ready(&self) -> bool {
        self.inner.store.is_alive() && !self.inner.store.is_failing()
    }
}

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    group: String,
    member: u64,
    appended: watch::Receiver<u64>,
    /// The generation the current assignment belongs to.
    generation: Option<u64>,
    /// Next offset to read, per assigned partition.
    positions: HashMap<(String, u32), u64>,
    /// Assigned partitions in a fixed order, polled round-robin from `cursor`.
    order: Vec<(String, u32)>,
    cursor: usize,
}

impl EmbeddedConsumer {
    /// Picks up a new assignment if the group changed since the last poll.
    fn rebalance(&mut self) -> Result<(), BusError> {
        let current = self.inner.groups.generation(&self.group);
        if self.generation == Some(current) {
            return Ok(());
        }
        let store = &self.inner.store;
        let (generation, owned) = self
            .inner
            .groups
            .assignment(&self.group, self.member, |t| store.partitions(t));
        let mut positions = HashMap::new();
        for (topic, partition) in &owned {
            let key = (topic.clone(), *partition);
            let position = match self.positions.get(&key) {
                Some(p) => *p,
                None => store
                    .committed(&self.group, topic, *partition)?
                    .unwrap_or(0),
            };
            positions.insert(key, position);
        }
        tracing::debug!(group = %self.group, member = self.member, partitions = owned.len(), "Assignment changed.");
        self.positions = positions;
        self.order = owned;
        self.cursor = 0;
        self.generation = Some(generation);
        Ok(())
    }

    fn read_available(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let mut out = Vec::new();
        let n = self.order.len();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let key = &self.order[(self.cursor + i) % n];
            let position = self.positions[key];
            let records = self
                .inner
                .store
                .read(&key.0, key.1, position, max - out.len())?;
            if let Some(last) = records.last() {
                self.positions.insert(key.clone(), last.offset + 1);
            }
            out.extend(records);
        }
        if n > 0 {
            self.cursor = (self.cursor + 1) % n;
        }
        Ok(out)
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.inner.groups.leave(&self.group, self.member);
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.appended.borrow_and_update();
            self.rebalance()?;
            let records = self.read_available(max.max(1))?;
            if !records.is_empty() {
                return Ok(records);
            }
            // Wake on the next append, or re-check the group now and then.
            let wait = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_millis(100));
            if wait.is_zero() {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout(wait, self.appended.changed()).await;
        }
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<(), BusError> {
        // A member commits only partitions it still owns: after a rebalance the new owner
        // re-reads from the last commit, and a late commit from the old owner must not move it.
        self.rebalance()?;
        let owned: std::collections::HashSet<&(String, u32)> = self.order.iter().collect();
        let mut list = Vec::new();
        for (t, p, o) in offsets.iter() {
            if owned.contains(&(t.to_string(), p)) {
                list.push((t.to_string(), p, o));
            } else {
                tracing::debug!(group = %self.group, topic = t, partition = p, "Not committing a partition this member no longer owns.");
            }
        }
        if list.is_empty() {
            return Ok(());
        }
        self.inner.store.commit(&self.group, list).await
    }

    async fn committed(&self, topic: &str, partition: u32) -> Result<Option<u64>, BusError> {
        self.inner.store.committed(&self.group, topic, partition)
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        self.order.clone()
    }

    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BusError> {
        self.inner.store.end_offset(topic, partition)
    }

    fn lag(&self) -> Option<u64> {
        let mut lag = 0;
        for ((topic, partition), position) in &self.positions {
            let end = self.inner.store.end_offset(topic, *partition).ok()?;
            lag += end.saturating_sub(*position);
        }
        Some(lag)
    }
}
