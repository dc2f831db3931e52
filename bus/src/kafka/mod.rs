//! The Kafka bus, through `rdkafka` (librdkafka).
//!
//! The producer is idempotent with `acks=all`, so an acknowledged message is on every in-sync
//! replica and retries inside librdkafka never duplicate or reorder it. Keys are placed with
//! `murmur2_random`, Kafka's default partitioner, the same hash the embedded log uses.
//! Consumers never auto-commit: offsets move only through [`Consumer::commit`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{
    BorrowedMessage, Header as KafkaHeader, Headers, Message as _, OwnedHeaders,
};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::{
    Bus, BusError, Consumer, Delivery, Header, Message, Offsets, Producer, Record, Refusal,
};

/// The Kafka bus.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
}

impl KafkaBus {
    /// Connects (lazily: librdkafka dials on first use) to the configured brokers.
    pub fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        let valid = ["none", "gzip", "snappy", "lz4", "zstd"];
        if !valid.contains(&config.compression.as_str()) {
            return Err(BusError::Config(format!(
                "bus.compression {:?} is not one of {valid:?}",
                config.compression
            )));
        }
        let mut settings = client_config(config);
        // Defaults `extra` may override: a broker that mishandles idempotent producers can be
        // given `enable.idempotence = "false"` (see the fault matrix in ARCHITECTURE.md).
        for (key, value) in [("enable.idempotence", "true"), ("acks", "all")] {
            if !config.extra.contains_key(key) {
                settings.set(key, value);
            }
        }
        let producer: FutureProducer = settings
            .set("compression.type", &config.compression)
            .set("linger.ms", config.linger.as_millis().to_string())
            .set("partitioner", "murmur2_random")
            .set(
                "message.timeout.ms",
                config.ack_timeout.as_millis().max(1).to_string(),
            )
            .create()?;
        let admin = client_config(config).create()?;
        Ok(KafkaBus {
            config: config.clone(),
            producer,
            admin,
        })
    }

    /// The topic's partition count from broker metadata, or `None` if it does not exist.
    /// librdkafka's metadata call blocks, so it runs off the async workers.
    async fn topic_partitions(&self, topic: &str) -> Result<Option<u32>, BusError> {
        let producer = self.producer.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().len() as u32)
                .filter(|n| *n > 0))
        })
        .await
        .map_err(|_| BusError::Closed)?
    }
}

/// How long `create_topic` waits for a created topic to appear in the broker's metadata.
const TOPIC_VISIBLE_WITHIN: Duration = Duration::from_secs(30);

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.extra {
        c.set(k, v);
    }
    c
}

#[async_trait]
impl Bus for KafkaBus {
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), BusError> {
        let topic = NewTopic::new(
            name,
            partitions as i32,
            TopicReplication::Fixed(self.config.replication),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self.admin.create_topics([&topic], &options).await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Config(format!(
                        "creating topic {topic:?}: {code}"
                    )));
                }
            }
        }
        // Wait until the topic is visible in metadata, so producers do not race its creation.
        // A busy broker can let one metadata request time out; that is retried until the
        // deadline, and only a wrong partition count or a permanent error ends the wait early.
        let deadline = tokio::time::Instant::now() + TOPIC_VISIBLE_WITHIN;
        loop {
            match self.topic_partitions(name).await {
                Ok(Some(n)) if n == partitions => return Ok(()),
                Ok(Some(n)) => {
                    return Err(BusError::Config(format!(
                        "topic {name:?} exists with {n} partitions, not {partitions}"
                    )));
                }
                Ok(None) => {}
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(topic = name, error = %e, "topic metadata not answered yet");
                }
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Timeout(TOPIC_VISIBLE_WITHIN));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.topic_partitions(topic)
            .await?
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))
    }

    fn producer(&self) -> Result<Arc<dyn Producer>, BusError> {
        Ok(Arc::new(KafkaProducer {
            producer: self.producer.clone(),
            ack_timeout: self.config.ack_timeout,
            known_topics: Mutex::new(HashSet::new()),
        }))
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BusError> {
        for topic in topics {
            if self.topic_partitions(topic).await?.is_none() {
                return Err(BusError::UnknownTopic(topic.to_string()));
            }
        }
        let mut settings = client_config(&self.config);
        if !self.config.extra.contains_key("fetch.wait.max.ms") {
            settings.set(
                "fetch.wait.max.ms",
                self.config.fetch_wait.as_millis().to_string(),
            );
        }
        let consumer: StreamConsumer = settings
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                self.config.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.config.session_timeout.as_millis() / 3)
                    .max(1)
                    .to_string(),
            )
            .create()?;
        consumer.subscribe(topics)?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
        }))
    }
}

struct KafkaProducer {
    producer: FutureProducer,
    ack_timeout: Duration,
    /// Topics seen in metadata: librdkafka would otherwise wait out `message.timeout.ms` on a
    /// topic that does not exist, and the caller would see a timeout instead of the cause.
    known_topics: Mutex<HashSet<String>>,
}

impl KafkaProducer {
    /// Sorts a failed send: `Ok` with the error when the broker refused this one message for
    /// good (the rest of the call goes on), `Err` when the whole call has failed.
    fn produce_error(&self, e: KafkaError, message: &Message) -> Result<BusError, BusError> {
        let error = match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => {
                BusError::Timeout(self.ack_timeout)
            }
            KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                BusError::UnknownTopic(message.topic.clone())
            }
            e => BusError::from(e),
        };
        if error.is_refusal() {
            Ok(error)
        } else {
            Err(error)
        }
    }

    async fn check_topics(&self, messages: &[Message]) -> Result<(), BusError> {
        let unknown: HashSet<String> = {
            let known = self.known_topics.lock().map_err(|_| BusError::Closed)?;
            messages
                .iter()
                .filter(|m| !known.contains(&m.topic))
                .map(|m| m.topic.clone())
                .collect()
        };
        for topic in unknown {
            let producer = self.producer.clone();
            let name = topic.clone();
            let exists = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .map(|m| {
                        m.topics().iter().any(|t| {
                            t.name() == name && t.error().is_none() && !t.partitions().is_empty()
                        })
                    })
            })
            .await
            .map_err(|_| BusError::Closed)??;
            if !exists {
                return Err(BusError::UnknownTopic(topic));
            }
            self.known_topics
                .lock()
                .map_err(|_| BusError::Closed)?
                .insert(topic);
        }
        Ok(())
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn publish(&self, messages: Vec<Message>) -> Result<Vec<Delivery>, BusError> {
        self.publish_settled(messages)
            .await?
            .into_iter()
            .map(|settled| settled.map_err(|refusal| refusal.error))
            .collect()
    }

    async fn publish_settled(
        &self,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Delivery, Refusal>>, BusError> {
        self.check_topics(&messages).await?;
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let mut pending = Vec::with_capacity(messages.len());
        for message in &messages {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
            for h in &message.headers {
                headers = headers.insert(KafkaHeader {
                    key: &h.name,
                    value: Some(&h.value),
                });
            }
            let mut record = FutureRecord::to(&message.topic)
                .key(&message.key)
                .payload(&message.payload)
                .headers(headers);
            // A full queue is back-pressure: wait for room until the deadline, then give up.
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(Ok(delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(BusError::QueueFull(self.ack_timeout));
                        }
                        record = r;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => {
                        pending.push(Err(self.produce_error(e, message)?));
                        break;
                    }
                }
            }
        }
        let mut deliveries = Vec::with_capacity(pending.len());
        for (sent, message) in pending.into_iter().zip(messages) {
            let future = match sent {
                Ok(future) => future,
                Err(error) => {
                    deliveries.push(Err(Refusal { error, message }));
                    continue;
                }
            };
            // librdkafka enforces `message.timeout.ms`; this outer timeout only guards a hang.
            let outcome = tokio::time::timeout(self.ack_timeout + Duration::from_secs(5), future)
                .await
                .map_err(|_| BusError::Timeout(self.ack_timeout))?
                .map_err(|_| BusError::Closed)?;
            deliveries.push(match outcome {
                Ok(d) => Ok(Delivery {
                    partition: d.partition as u32,
                    offset: d.offset as u64,
                }),
                Err((e, _)) => {
                    let error = self.produce_error(e, &message)?;
                    Err(Refusal { error, message })
                }
            });
        }
        Ok(deliveries)
    }

    async fn is_ready(&self) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|m| !m.brokers().is_empty())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
}

fn to_record(m: &BorrowedMessage<'_>) -> Record {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header::new(h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: m.topic().to_string(),
        partition: m.partition() as u32,
        offset: m.offset() as u64,
        key: m.key().unwrap_or_default().to_vec(),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError> {
        let mut out = Vec::new();
        match tokio::time::timeout(timeout, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(first) => out.push(to_record(&first?)),
        }
        // Take what is already buffered, without waiting. An error after some records were read
        // must not lose them: librdkafka's position is already past them.
        while out.len() < max.max(1) {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(to_record(&m)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka poll error after {} records; returning them.", out.len());
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<(), BusError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut map = HashMap::new();
        for (topic, partition, next) in offsets.iter() {
            map.insert(
                (topic.to_string(), partition as i32),
                Offset::Offset(next as i64),
            );
        }
        let list = TopicPartitionList::from_topic_map(&map)?;
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|_| BusError::Closed)??;
        Ok(())
    }

    async fn committed(&self, topic: &str, partition: u32) -> Result<Option<u64>, BusError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition as i32);
        let consumer = self.consumer.clone();
        let list = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(list, Duration::from_secs(5))
        })
        .await
        .map_err(|_| BusError::Closed)??;
        Ok(list.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }))
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        self.consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition() as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BusError> {
        let consumer = self.consumer.clone();
        let topic = topic.to_string();
        let (_, high) = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition as i32, Duration::from_secs(5))
        })
        .await
        .map_err(|_| BusError::Closed)??;
        Ok(high.max(0) as u64)
    }
}
