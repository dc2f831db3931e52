//! Retention of the embedded log: the writer thread deletes, every [`Retention::every`], what
//! every reading group has committed and [`Retention::keep`] lets go (see the parent module).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redb::{Durability, ReadableTable};

use super::{Db, OFFSETS, RECORDS, StoredRecord, storage};
use crate::BusError;

/// What the log keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// How long a committed record is kept; zero keeps everything.
    pub(crate) keep: Duration,
    /// How often retention runs.
    pub(crate) every: Duration,
}

/// Most records one retention pass deletes, so a pass after a long pause cannot hold the writer
/// (and every publish behind it) for long; the next pass goes on.
const MAX_DELETES_PER_PASS: usize = 200_000;

/// Deletes what retention lets go, keeping records for `keep`; how many records.
pub(super) fn expire(
    db: &Db,
    topics: &Mutex<HashMap<String, Vec<u64>>>,
    keep: Duration,
) -> Result<u64, BusError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let cutoff_ms = now_ms.saturating_sub(keep.as_millis() as i64);
    // With each partition its end: the newest record always stays, since a reopened log
    // finds a partition's next offset from its last record.
    let partitions: Vec<(String, u32, u64)> = match topics.lock() {
        Ok(t) => t
            .iter()
            .flat_map(|(name, next)| {
                next.iter()
                    .enumerate()
                    .map(|(p, end)| (name.clone(), p as u32, *end))
            })
            .collect(),
        Err(_) => return Ok(0),
    };
    let db = db.get()?;
    let mut txn = db
        .begin_write()
        .map_err(storage("beginning a retention pass"))?;
    txn.set_durability(Durability::Immediate)
        .map_err(storage("setting durability"))?;
    let mut deleted = 0u64;
    {
        // Each group's committed offsets, and the groups that read each topic: a group
        // that committed on one partition of a topic and not yet on another holds the other
        // from its start.
        let mut committed: HashMap<(String, String, u32), u64> = HashMap::new();
        let mut readers: HashMap<String, Vec<String>> = HashMap::new();
        let offsets = txn
            .open_table(OFFSETS)
            .map_err(storage("opening offsets"))?;
        for entry in offsets.iter().map_err(storage("listing offsets"))? {
            let (key, offset) = entry.map_err(storage("reading an offset"))?;
            let (group, topic, partition) = key.value();
            committed.insert(
                (group.to_string(), topic.to_string(), partition),
                offset.value(),
            );
            let groups = readers.entry(topic.to_string()).or_default();
            if !groups.iter().any(|g| g == group) {
                groups.push(group.to_string());
            }
        }
        drop(offsets);
        let mut records = txn
            .open_table(RECORDS)
            .map_err(storage("opening records"))?;
        let mut budget = MAX_DELETES_PER_PASS;
        for (topic, partition, end_offset) in partitions {
            if budget == 0 {
                break;
            }
            let limit = readers.get(&topic).map_or(u64::MAX, |groups| {
                groups
                    .iter()
                    .map(|g| {
                        committed
                            .get(&(g.clone(), topic.clone(), partition))
                            .copied()
                            .unwrap_or(0)
                    })
                    .min()
                    .unwrap_or(u64::MAX)
            });
            let limit = limit.min(end_offset.saturating_sub(1));
            let key = |offset| (topic.as_str(), partition, offset);
            let mut end = None;
            let mut n = 0;
            for entry in records
                .range(key(0)..key(limit))
                .map_err(storage("reading records"))?
            {
                let (k, v) = entry.map_err(storage("reading a record"))?;
                let stored: StoredRecord = postcard::from_bytes(v.value())
                    .map_err(|e| BusError::Storage(format!("an unreadable record: {e}")))?;
                if stored.timestamp_ms >= cutoff_ms || n == budget {
                    break;
                }
                end = Some(k.value().2 + 1);
                n += 1;
            }
            let Some(end) = end else {
                continue;
            };
            records
                .retain_in(key(0)..key(end), |_, _| false)
                .map_err(storage("deleting records"))?;
            budget -= n;
            deleted += n as u64;
        }
    }
    txn.commit()
        .map_err(storage("committing a retention pass"))?;
    Ok(deleted)
}
