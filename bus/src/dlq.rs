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

/// The most payload bytes a dead letter of a consumed record keeps: with its key, reason and
/// source headers it stays well under any broker's message limit, where the record itself,
/// with headers added, might not.
pub const MAX_LETTER_PAYLOAD: usize = 512 << 10;

/// The dead-letter message for a consumed record that `stage` could not process: the record's
/// payload (its first [`MAX_LETTER_PAYLOAD`] bytes), the stage, the reason and where it was.
pub fn dead_letter(record: &Record, stage: &str, reason: &str) -> Message {
    let kept = record.payload.len().min(MAX_LETTER_PAYLOAD);
    Message {
        topic: DEAD_LETTER_TOPIC.to_string(),
        key: record.key.clone(),
        payload: record.payload[..kept].to_vec(),
        headers: vec![
            Header::new(headers::REASON, bounded(reason)),
            Header::new(headers::STAGE, stage),
            Header::new(headers::SOURCE_TOPIC, record.topic.as_str()),
            Header::new(headers::SOURCE_PARTITION, record.partition.to_string()),
            Header::new(headers::SOURCE_OFFSET, record.offset.to_string()),
        ],
    }
}

/// The most bytes of a reason a dead letter keeps (a server's message can quote the data).
const MAX_REASON: usize = 8 << 10;

fn bounded(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_of_a_record_near_the_message_limit_stays_well_under_it() {
        let record = Record {
            topic: "events".into(),
            partition: 3,
            offset: 7,
            key: b"k".to_vec(),
            payload: vec![7; 999_000],
            headers: vec![],
            timestamp_ms: 0,
        };
        let letter = dead_letter(&record, "sink.clickhouse", &"é".repeat(10_000));
        assert_eq!(letter.payload.len(), MAX_LETTER_PAYLOAD);
        let read = DeadLetter::from_record(&Record {
            headers: letter.headers.clone(),
            payload: letter.payload.clone(),
            ..record.clone()
        })
        .unwrap();
        assert_eq!(read.reason.len(), MAX_REASON);
        assert_eq!(read.stage, "sink.clickhouse");
        let small = dead_letter(
            &Record {
                payload: vec![1, 2, 3],
                ..record
            },
            "s",
            "r",
        );
        assert_eq!(small.payload, [1, 2, 3]);
    }
}
