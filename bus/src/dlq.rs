//! The dead-letter topic: where records that cannot be processed go, with the reason.

use crate::{Header, Message, Record};

/// The topic dead letters are published to.
pub const DEAD_LETTER_TOPIC: &str = "dlq";

/// Header names of a dead letter.
pub mod headers {
    /// Why the record was rejected.
    pub const REASON: &str = "trellis.dlq.reason";
    /// The stage that rejected it (`ingest`, `processor`, `sink.clickhouse`, ...).
    pub const STAGE: &str = "trellis.dlq.stage";
    /// The topic the record came from.
    pub const SOURCE_TOPIC: &str = "trellis.dlq.source_topic";
    /// The partition it came from.
    pub const SOURCE_PARTITION: &str = "trellis.dlq.source_partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "trellis.dlq.source_offset";
}

/// A dead letter read back from the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why it was rejected.
    pub reason: String,
    /// Which stage rejected it.
    pub stage: String,
    /// Where it came from: (topic, partition, offset), when it came from the bus.
    pub source: Option<(String, u32, u64)>,
    /// The rejected payload, unchanged.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// Reads a dead letter from a record of the dead-letter topic.
    pub fn from_record(record: &Record) -> Option<DeadLetter> {
        let text = |name| {
            record
                .header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let source = match (
            text(headers::SOURCE_TOPIC),
            text(headers::SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            text(headers::SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        ) {
            (Some(t), Some(p), Some(o)) => Some((t, p, o)),
            _ => None,
        };
        Some(DeadLetter {
            reason: text(headers::REASON)?,
            stage: text(headers::STAGE)?,
            source,
            payload: record.payload.clone(),
        })
    }
}

/// The dead-letter message for a consumed record that `stage` could not process.
pub fn dead_letter(record: &Record, stage: &str, reason: &str) -> Message {
    Message {
        topic: DEAD_LETTER_TOPIC.to_string(),
        key: record.key.clone(),
        payload: record.payload.clone(),
        headers: vec![
            Header::new(headers::REASON, reason),
            Header::new(headers::STAGE, stage),
            Header::new(headers::SOURCE_TOPIC, record.topic.as_str()),
            Header::new(headers::SOURCE_PARTITION, record.partition.to_string()),
            Header::new(headers::SOURCE_OFFSET, record.offset.to_string()),
        ],
    }
}

/// The dead-letter message for something that never reached the bus (for example an event
/// ingest refused): its key, its bytes, the stage and the reason.
pub fn dead_letter_from(key: &[u8], payload: Vec<u8>, stage: &str, reason: &str) -> Message {
    Message {
        topic: DEAD_LETTER_TOPIC.to_string(),
        key: key.to_vec(),
        payload,
        headers: vec![
            Header::new(headers::REASON, reason),
            Header::new(headers::STAGE, stage),
        ],
    }
}
