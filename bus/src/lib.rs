//! The trellis bus: keyed, acknowledged publishing and partitioned consumption in consumer groups.
//!
//! The bus knows topics, partitions, offsets, keys and bytes, never event types. Two
//! implementations share one contract (the [`Bus`], [`Producer`] and [`Consumer`] traits):
//! - [`kafka`]: Apache Kafka (or any Kafka-protocol broker) through `rdkafka`, with an idempotent
//!   producer, `acks=all` and compression;
//! - [`embedded`]: a durable log inside the process, on the `redb` embedded database, for running
//!   trellis on one machine with no services.
//!
//! Data enters through [`Producer::publish`], which returns only once every message is durably
//! stored. It leaves through [`Consumer::poll`]; a consumer [commits](Consumer::commit) the offsets
//! of what it processed only after its own output is durable, so a crash replays what was not
//! finished and loses nothing. A payload a consumer cannot use goes to the dead-letter topic
//! ([`dead_letter`]) with its reason, and consumption goes on.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub mod config;
pub mod dlq;
pub mod embedded;
pub mod kafka;
mod partition;
pub mod retry;

pub use config::BusConfig;
pub use dlq::{
    DEAD_LETTER_TOPIC, DeadLetter, dead_letter, dead_letter_from, headers as dlq_headers,
};
pub use partition::partition_for;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The topic does not exist; topics are created explicitly, never on first use.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// The producer's queue stayed full past the deadline: the caller should back off.
    #[error("producer queue full for {0:?}")]
    QueueFull(Duration),
    /// The bus did not acknowledge in time.
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The broker could not be reached or refused the operation.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The embedded store failed.
    #[error("embedded log: {0}")]
    Storage(String),
    /// The embedded store cannot write now (a full disk, an I/O error); it reopens its file and
    /// writes again once it can, so the caller retries (ingest answers 503).
    #[error("embedded log cannot write now: {0}")]
    Unavailable(String),
    /// The bus was shut down.
    #[error("the bus is closed")]
    Closed,
    /// A configuration value is invalid.
    #[error("bus configuration: {0}")]
    Config(String),
}

impl BusError {
    /// Whether retrying the same operation later can succeed (the caller answers 503, or waits).
    pub fn is_retryable(&self) -> bool {
        match self {
            BusError::QueueFull(_) | BusError::Timeout(_) | BusError::Unavailable(_) => true,
            BusError::Kafka(e) => !matches!(
                e.rdkafka_error_code(),
                Some(
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                        | rdkafka::types::RDKafkaErrorCode::InvalidMessage
                        | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                )
            ),
            BusError::UnknownTopic(_)
            | BusError::Storage(_)
            | BusError::Closed
            | BusError::Config(_) => false,
        }
    }

    /// Whether the bus refused one message for what it is (its size, its bytes): sending it again
    /// will fail again, while other messages can still be stored.
    pub fn is_refusal(&self) -> bool {
        match self {
            BusError::Kafka(e) => matches!(
                e.rdkafka_error_code(),
                Some(
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                        | rdkafka::types::RDKafkaErrorCode::InvalidMessage
                        | rdkafka::types::RDKafkaErrorCode::InvalidRecord
                )
            ),
            _ => false,
        }
    }
}

/// A message header: a name and opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Header {
    /// A header from a name and a value.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Destination topic.
    pub topic: String,
    /// Partitioning key: messages with equal keys land on one partition, in order.
    pub key: Vec<u8>,
    /// The payload.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<Header>,
}

impl Message {
    /// A message with no headers.
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Message {
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
            headers: Vec::new(),
        }
    }
}

/// Where an acknowledged message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic it came from.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset within the partition.
    pub offset: u64,
    /// Its key.
    pub key: Vec<u8>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: Vec<Header>,
    /// When the bus stored it, in ms since the epoch.
    pub timestamp_ms: i64,
}

impl Record {
    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_slice())
    }
}

/// Consumer positions to commit: for each (topic, partition), the next offset to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets(BTreeMap<(String, u32), u64>);

impl Offsets {
    /// Offsets that mark every record of `records` as processed.
    pub fn after(records: &[Record]) -> Self {
        let mut offsets = Offsets::default();
        for record in records {
            offsets.advance(record);
        }
        offsets
    }

    /// Marks `record` (and everything before it on its partition) as processed.
    pub fn advance(&mut self, record: &Record) {
        let next = self
            .0
            .entry((record.topic.clone(), record.partition))
            .or_insert(0);
        *next = (*next).max(record.offset + 1);
    }

    /// Sets the next offset to read on a partition.
    pub fn set(&mut self, topic: &str, partition: u32, next: u64) {
        self.0.insert((topic.to_string(), partition), next);
    }

    /// Merges later offsets into these.
    pub fn merge(&mut self, other: &Offsets) {
        for ((topic, partition), &next) in &other.0 {
            let entry = self.0.entry((topic.clone(), *partition)).or_insert(0);
            *entry = (*entry).max(next);
        }
    }

    /// The next offset to read on a partition, if any record of it was processed.
    pub fn get(&self, topic: &str, partition: u32) -> Option<u64> {
        self.0.get(&(topic.to_string(), partition)).copied()
    }

    /// Every (topic, partition, next offset).
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, u64)> {
        self.0.iter().map(|((t, p), o)| (t.as_str(), *p, *o))
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A message the bus refused for good, handed back with the reason.
#[derive(Debug)]
pub struct Refusal {
    /// Why: an error for which [`BusError::is_refusal`] holds.
    pub error: BusError,
    /// The message as it was given.
    pub message: Message,
}

/// Publishes messages and reports when the bus has them durably.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Publishes every message; returns once all are acknowledged (durably stored), in order.
    ///
    /// On an error the caller must treat the whole call as failed and may retry it: some messages
    /// may have been stored, so consumers deduplicate (trellis derives ids from content).
    async fn publish(&self, messages: Vec<Message>) -> Result<Vec<Delivery>, BusError>;

    /// Publishes every message like [`Producer::publish`], but a message the bus refuses for good
    /// (too large, invalid: [`BusError::is_refusal`]) is answered on its own while the others are
    /// still stored. Any other failure fails the whole call, as `publish` does.
    async fn publish_settled(
        &self,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Delivery, Refusal>>, BusError> {
        Ok(self.publish(messages).await?.into_iter().map(Ok).collect())
    }

    /// Whether the bus is reachable now (for readiness checks).
    async fn is_ready(&self) -> bool;
}

/// Reads the partitions assigned to it within a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Up to `max` records from the assigned partitions, waiting at most `timeout` for the first.
    /// Records of one partition come in offset order. An empty result means nothing arrived.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError>;

    /// Records these offsets as processed for the group. Call only once the output derived from
    /// those records is durable: after a crash, the group resumes exactly here.
    async fn commit(&mut self, offsets: &Offsets) -> Result<(), BusError>;

    /// The group's committed position on a partition, if any.
    async fn committed(&self, topic: &str, partition: u32) -> Result<Option<u64>, BusError>;

    /// The (topic, partition) pairs this member reads now.
    fn assignment(&self) -> Vec<(String, u32)>;

    /// The offset the next record stored on a partition will get (Kafka's high watermark): a
    /// consumer whose position is there has read everything.
    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BusError>;

    /// Records in the assigned partitions not read yet, where the bus knows it without asking
    /// anyone: the embedded log does; on Kafka it is `None` (the broker's tools show a
    /// group's lag, and asking the broker for every partition's end on a stage's loop would
    /// slow the loop down).
    fn lag(&self) -> Option<u64> {
        None
    }
}

/// Commits `offsets`, waiting out a bus that is down (retryable errors, with
/// [`retry::Backoff::bus`]): stages call it once their output is durable, and must not go on
/// before it succeeds.
pub async fn commit_until_done(
    consumer: &mut dyn Consumer,
    offsets: &Offsets,
) -> Result<(), BusError> {
    let mut backoff = retry::Backoff::bus();
    loop {
        match consumer.commit(offsets).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "Committing offsets failed; retrying.");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A bus: creates topics, producers and consumers.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Creates a topic with `partitions` partitions; succeeds if it already exists.
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), BusError>;

    /// The number of partitions of a topic.
    async fn partitions(&self, topic: &str) -> Result<u32, BusError>;

    /// A producer; producers are cheap to share.
    fn producer(&self) -> Result<Arc<dyn Producer>, BusError>;

    /// A consumer in `group` reading `topics`; members of one group split the partitions.
    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BusError>;
}

/// Opens the bus a configuration names.
pub async fn open(config: &BusConfig) -> Result<Arc<dyn Bus>, BusError> {
    match config {
        BusConfig::Embedded(c) => Ok(Arc::new(embedded::EmbeddedBus::open(c)?)),
        BusConfig::Kafka(c) => Ok(Arc::new(kafka::KafkaBus::new(c)?)),
    }
}
