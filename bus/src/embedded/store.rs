//! The log's storage: `redb` tables and the one thread that writes them.
//!
//! Tables:
//! - `topics`: topic name → partition count;
//! - `records`: (topic, partition, offset) → the record (postcard-encoded [`StoredRecord`]);
//! - `offsets`: (group, topic, partition) → the group's next offset to read.
//!
//! All writes (appends and commits) go through one writer thread. It takes every request waiting
//! in its queue, applies them in one write transaction and commits it with `Durability::Immediate`
//! (fsync) before answering any of them: group commit, so many small concurrent publishes share
//! one fsync, and an answered publish is on disk.
//!
//! The same thread applies retention every [`Retention::every`]: a partition's records older
//! than [`Retention::keep`] are deleted up to the lowest offset committed on it by the groups
//! that read its topic (a group that has committed on the topic but not on this partition holds
//! all of it; the records of a topic no group has committed on age out alike), so nothing a
//! group has yet to read goes; a partition's newest record always stays (a reopened log finds
//! the partition's next offset from it). Records are appended in time order, so the scan stops
//! at the first record too young or not yet committed. Deleted pages are reused by later
//! appends: the file stops growing once retention deletes as fast as ingest appends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::{BusError, Delivery, Header, Message, Record, partition_for};

mod retention;

pub(crate) use retention::Retention;

pub(crate) const TOPICS: TableDefinition<&str, u32> = TableDefinition::new("topics");
pub(crate) const RECORDS: TableDefinition<(&str, u32, u64), &[u8]> =
    TableDefinition::new("records");
pub(crate) const OFFSETS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("offsets");

/// How many queued requests one transaction takes at most.
const MAX_REQUESTS_PER_COMMIT: usize = 1024;

/// A record as stored in the `records` table.
#[derive(Serialize, Deserialize)]
struct StoredRecord<'a> {
    timestamp_ms: i64,
    #[serde(borrow, with = "serde_bytes")]
    key: &'a [u8],
    headers: Vec<Header>,
    #[serde(borrow, with = "serde_bytes")]
    payload: &'a [u8],
}

fn storage<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> BusError {
    move |e| BusError::Storage(format!("{context}: {e}"))
}

enum Request {
    Append {
        messages: Vec<Message>,
        reply: oneshot::Sender<Result<Vec<Delivery>, BusError>>,
    },
    Commit {
        group: String,
        offsets: Vec<(String, u32, u64)>,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
}

/// The open database file. After a failed write (a full disk, an I/O error) redb refuses every
/// further write until the file is reopened, so the writer reopens it here, and readers take
/// the current handle for each read.
struct Db {
    path: PathBuf,
    current: RwLock<Option<Arc<Database>>>,
    /// The last write failed and the file has not written since: readiness is off.
    failed: AtomicBool,
}

impl Db {
    fn get(&self) -> Result<Arc<Database>, BusError> {
        self.current
            .read()
            .map_err(|_| BusError::Closed)?
            .clone()
            .ok_or_else(|| BusError::Unavailable("the log file is being reopened".into()))
    }

    /// Closes the file (once the reads in flight let go of it) and opens it again; redb checks
    /// and repairs it on open.
    fn reopen(&self) -> Result<(), BusError> {
        let mut slot = self.current.write().map_err(|_| BusError::Closed)?;
        if let Some(mut old) = slot.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_read) if Instant::now() < deadline => {
                        old = still_read;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still_read) => {
                        *slot = Some(still_read);
                        return Err(BusError::Unavailable(
                            "reads kept the log file open; reopening it later".into(),
                        ));
                    }
                }
            }
        }
        let db = Database::create(&self.path).map_err(|e| {
            BusError::Unavailable(format!("reopening {}: {e}", self.path.display()))
        })?;
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

/// The shared state of an open log.
pub(crate) struct Store {
    db: Arc<Db>,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Topic → next offset per partition; the length is the partition count.
    topics: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    /// Bumped after every commit that appended records, to wake waiting consumers.
    appended: watch::Sender<u64>,
    /// Records deleted by retention since the log was opened.
    expired: Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    pub(crate) fn open(path: &Path, retention: Retention) -> Result<Store, BusError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(storage("creating the data directory"))?;
        }
        let database = Database::create(path)
            .map_err(|e| BusError::Storage(format!("opening {}: {e}", path.display())))?;
        let topics = Arc::new(Mutex::new(load_topics(&database)?));
        let db = Arc::new(Db {
            path: path.to_path_buf(),
            current: RwLock::new(Some(Arc::new(database))),
            failed: AtomicBool::new(false),
        });
        let (appended, _) = watch::channel(0);
        let (tx, rx) = mpsc::channel();
        let expired = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = Writer {
            db: db.clone(),
            topics: topics.clone(),
            appended: appended.clone(),
            retention,
            expired: expired.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("trellis-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(storage("starting the writer thread"))?;
        Ok(Store {
            db,
            requests: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            topics,
            appended,
            expired,
        })
    }

    /// Records deleted by retention since the log was opened.
    pub(crate) fn expired(&self) -> u64 {
        self.expired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The first offset a partition still holds (its end when it holds none).
    pub(crate) fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, BusError> {
        // The handle stays held while the read lasts, so a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage("beginning a read"))?;
        let table = txn
            .open_table(RECORDS)
            .map_err(storage("opening records"))?;
        let first = table
            .range((topic, partition, 0)..=(topic, partition, u64::MAX))
            .map_err(storage("reading records"))?
            .next()
            .transpose()
            .map_err(storage("reading a record"))?
            .map(|(k, _)| k.value().2);
        match first {
            Some(offset) => Ok(offset),
            None => self.end_offset(topic, partition),
        }
    }

    fn send(&self, request: Request) -> Result<(), BusError> {
        let guard = self.requests.lock().map_err(|_| BusError::Closed)?;
        guard
            .as_ref()
            .ok_or(BusError::Closed)?
            .send(request)
            .map_err(|_| BusError::Closed)
    }

    pub(crate) async fn append(&self, messages: Vec<Message>) -> Result<Vec<Delivery>, BusError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Append { messages, reply })?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    pub(crate) async fn commit(
        &self,
        group: &str,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Commit {
            group: group.to_string(),
            offsets,
            reply,
        })?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    pub(crate) async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), BusError> {
        if partitions == 0 {
            return Err(BusError::Config(format!(
                "topic {name:?} needs at least one partition"
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Request::CreateTopic {
            name: name.to_string(),
            partitions,
            reply,
        })?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    /// The next offset of a partition.
    pub(crate) fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BusError> {
        let topics = self.topics.lock().map_err(|_| BusError::Closed)?;
        topics
            .get(topic)
            .and_then(|p| p.get(partition as usize).copied())
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))
    }

    pub(crate) fn partitions(&self, topic: &str) -> Option<u32> {
        let topics = self.topics.lock().ok()?;
        topics.get(topic).map(|p| p.len() as u32)
    }

    /// Whether the last write failed (a full disk, an I/O error) and none has succeeded since.
    pub(crate) fn is_failing(&self) -> bool {
        self.db.failed.load(Ordering::Relaxed)
    }

    /// Whether the writer thread is running (it stops on close, or if it panicked).
    pub(crate) fn is_alive(&self) -> bool {
        let open = self.requests.lock().map(|r| r.is_some()).unwrap_or(false);
        let running = self
            .writer
            .lock()
            .map(|w| w.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false);
        open && running
    }

    pub(crate) fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Up to `max` records of one partition from `from` on.
    pub(crate) fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<Record>, BusError> {
        // The handle stays held while the read lasts, so a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage("beginning a read"))?;
        let table = txn
            .open_table(RECORDS)
            .map_err(storage("opening records"))?;
        let mut out = Vec::new();
        let range = table
            .range((topic, partition, from)..=(topic, partition, u64::MAX))
            .map_err(storage("reading records"))?;
        for entry in range.take(max) {
            let (key, value) = entry.map_err(storage("reading a record"))?;
            let (_, _, offset) = key.value();
            let stored: StoredRecord = postcard::from_bytes(value.value()).map_err(|e| {
                BusError::Storage(format!(
                    "record {topic}/{partition}/{offset} is unreadable: {e}"
                ))
            })?;
            out.push(Record {
                topic: topic.to_string(),
                partition,
                offset,
                key: stored.key.to_vec(),
                payload: stored.payload.to_vec(),
                headers: stored.headers,
                timestamp_ms: stored.timestamp_ms,
            });
        }
        Ok(out)
    }

    pub(crate) fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, BusError> {
        // The handle stays held while the read lasts, so a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage("beginning a read"))?;
        let table = match txn.open_table(OFFSETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage("opening offsets")(e)),
        };
        Ok(table
            .get((group, topic, partition))
            .map_err(storage("reading an offset"))?
            .map(|v| v.value()))
    }

    /// Stops the writer after it has answered every queued request, and waits for it, so the
    /// database file is released when this returns.
    pub(crate) fn close(&self) {
        if let Ok(mut guard) = self.requests.lock() {
            guard.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

fn load_topics(db: &Database) -> Result<HashMap<String, Vec<u64>>, BusError> {
    let txn = db
        .begin_write()
        .map_err(storage("beginning the start-up transaction"))?;
    let mut topics = HashMap::new();
    {
        let names = txn.open_table(TOPICS).map_err(storage("opening topics"))?;
        let records = txn
            .open_table(RECORDS)
            .map_err(storage("opening records"))?;
        txn.open_table(OFFSETS)
            .map_err(storage("opening offsets"))?;
        for entry in names.iter().map_err(storage("listing topics"))? {
            let (name, partitions) = entry.map_err(storage("reading a topic"))?;
            let name = name.value().to_string();
            if partitions.value() == 0 {
                return Err(BusError::Storage(format!(
                    "topic {name:?} is stored with 0 partitions"
                )));
            }
            let mut next = Vec::new();
            for p in 0..partitions.value() {
                let last = records
                    .range((name.as_str(), p, 0)..=(name.as_str(), p, u64::MAX))
                    .map_err(storage("finding a partition's end"))?
                    .next_back()
                    .transpose()
                    .map_err(storage("finding a partition's end"))?
                    .map(|(k, _)| k.value().2 + 1)
                    .unwrap_or(0);
                next.push(last);
            }
            topics.insert(name, next);
        }
    }
    txn.commit()
        .map_err(storage("committing the start-up transaction"))?;
    Ok(topics)
}

struct Writer {
    db: Arc<Db>,
    topics: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    appended: watch::Sender<u64>,
    retention: Retention,
    expired: Arc<std::sync::atomic::AtomicU64>,
}

impl Writer {
    fn run(self, requests: mpsc::Receiver<Request>) {
        let mut next_pass = Instant::now() + self.retention.every;
        let mut next_reopen = Instant::now();
        loop {
            let wait = next_pass.saturating_duration_since(Instant::now());
            match requests.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_REQUESTS_PER_COMMIT {
                        match requests.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if self.db.failed.load(Ordering::Relaxed) {
                        // A write failed: reopen the file (at most once a second) before the
                        // next one; until that works, refuse at once, as retryable.
                        let reopened = if Instant::now() >= next_reopen {
                            next_reopen = Instant::now() + Duration::from_secs(1);
                            self.db.reopen()
                        } else {
                            Err(BusError::Unavailable(
                                "the last write failed; the log file is reopened shortly".into(),
                            ))
                        };
                        if let Err(e) = reopened {
                            tracing::warn!(error = %e, "The embedded log cannot write yet.");
                            for request in batch {
                                request.refuse(&e);
                            }
                            continue;
                        }
                        tracing::info!("The embedded log file was reopened; writing again.");
                    }
                    self.apply(batch);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_pass {
                if !self.retention.keep.is_zero() && !self.db.failed.load(Ordering::Relaxed) {
                    match retention::expire(&self.db, &self.topics, self.retention.keep) {
                        Ok(0) => {}
                        Ok(n) => {
                            self.expired
                                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(records = n, "Embedded log retention deleted records.");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Embedded log retention failed; it is tried again.")
                        }
                    }
                }
                next_pass = Instant::now() + self.retention.every;
            }
        }
        tracing::debug!("Embedded log writer stopped.");
    }

    fn apply(&self, batch: Vec<Request>) {
        // Only this thread changes `topics`, so work on a copy and swap it in after the commit:
        // readers are never blocked behind the fsync.
        let mut next = match self.topics.lock() {
            Ok(t) => t.clone(),
            Err(_) => return,
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut outcomes: Vec<Reply> = Vec::with_capacity(batch.len());
        let result = self.write(batch, &mut next, now_ms, &mut outcomes);
        match result {
            Ok(appended_any) => {
                self.db.failed.store(false, Ordering::Relaxed);
                if let Ok(mut topics) = self.topics.lock() {
                    *topics = next;
                }
                if appended_any {
                    self.appended.send_modify(|n| *n += 1);
                }
                for outcome in outcomes {
                    outcome.answer(None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Embedded log transaction failed; nothing in it was stored.");
                // redb writes nothing more after a failed commit until the file is reopened;
                // callers retry.
                self.db.failed.store(true, Ordering::Relaxed);
                let e = BusError::Unavailable(e.to_string());
                for outcome in outcomes {
                    outcome.answer(Some(&e));
                }
            }
        }
    }

    /// Applies the batch in one transaction. Every request gets an outcome, even when a storage
    /// failure aborts the transaction part way.
    fn write(
        &self,
        batch: Vec<Request>,
        next: &mut HashMap<String, Vec<u64>>,
        now_ms: i64,
        outcomes: &mut Vec<Reply>,
    ) -> Result<bool, BusError> {
        let mut pending = batch.into_iter();
        let result = (|| -> Result<bool, BusError> {
            let db = self.db.get()?;
            let mut txn = db.begin_write().map_err(storage("beginning a write"))?;
            txn.set_durability(Durability::Immediate)
                .map_err(storage("setting durability"))?;
            let mut appended_any = false;
            {
                let mut names = txn.open_table(TOPICS).map_err(storage("opening topics"))?;
                let mut records = txn
                    .open_table(RECORDS)
                    .map_err(storage("opening records"))?;
                let mut offsets = txn
                    .open_table(OFFSETS)
                    .map_err(storage("opening offsets"))?;
                let mut buf = Vec::with_capacity(1024);
                for request in pending.by_ref() {
                    match request {
                        Request::Append { messages, reply } => {
                            outcomes.push(Reply::Appended(reply, Err(BusError::Closed)));
                            let result = append(&mut records, next, &messages, now_ms, &mut buf)?;
                            appended_any |= result.is_ok();
                            if let Some(Reply::Appended(_, r)) = outcomes.last_mut() {
                                *r = result;
                            }
                        }
                        Request::Commit {
                            group,
                            offsets: list,
                            reply,
                        } => {
                            outcomes.push(Reply::Done(reply, Ok(())));
                            for (topic, partition, offset) in &list {
                                offsets
                                    .insert((group.as_str(), topic.as_str(), *partition), offset)
                                    .map_err(storage("writing an offset"))?;
                            }
                        }
                        Request::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let result = match next.get(&name) {
                                Some(existing) if existing.len() as u32 == partitions => Ok(()),
                                Some(existing) => Err(BusError::Config(format!(
                                    "topic {name:?} exists with {} partitions, not {partitions}",
                                    existing.len()
                                ))),
                                None => {
                                    outcomes.push(Reply::Done(reply, Ok(())));
                                    names
                                        .insert(name.as_str(), partitions)
                                        .map_err(storage("creating a topic"))?;
                                    next.insert(name.clone(), vec![0; partitions as usize]);
                                    continue;
                                }
                            };
                            outcomes.push(Reply::Done(reply, result));
                        }
                    }
                }
            }
            txn.commit().map_err(storage("committing"))?;
            Ok(appended_any)
        })();
        // Requests the failure cut off still need an answer.
        for request in pending {
            outcomes.push(match request {
                Request::Append { reply, .. } => Reply::Appended(reply, Err(BusError::Closed)),
                Request::Commit { reply, .. } | Request::CreateTopic { reply, .. } => {
                    Reply::Done(reply, Ok(()))
                }
            });
        }
        result
    }
}

impl Request {
    /// Answers the request with `e` without trying it.
    fn refuse(self, e: &BusError) {
        let e = || BusError::Unavailable(e.to_string());
        match self {
            Request::Append { reply, .. } => drop(reply.send(Err(e()))),
            Request::Commit { reply, .. } | Request::CreateTopic { reply, .. } => {
                drop(reply.send(Err(e())))
            }
        }
    }
}

/// A request's answer, sent once the transaction's fate is known.
enum Reply {
    Appended(
        oneshot::Sender<Result<Vec<Delivery>, BusError>>,
        Result<Vec<Delivery>, BusError>,
    ),
    Done(oneshot::Sender<Result<(), BusError>>, Result<(), BusError>),
}

impl Reply {
    /// Answers with the request's own result, or with the transaction's failure.
    fn answer(self, failure: Option<&BusError>) {
        let failed = || match failure {
            Some(BusError::Unavailable(e)) => BusError::Unavailable(e.clone()),
            other => BusError::Storage(other.map(|e| e.to_string()).unwrap_or_default()),
        };
        match self {
            Reply::Appended(reply, r) => {
                drop(reply.send(if failure.is_some() { Err(failed()) } else { r }))
            }
            Reply::Done(reply, r) => {
                drop(reply.send(if failure.is_some() { Err(failed()) } else { r }))
            }
        }
    }
}

/// Appends one publish call's messages. The inner result rejects the request alone (checked
/// before anything is written); the outer one is a storage failure that aborts the transaction,
/// so no request in it is half-stored.
fn append(
    records: &mut redb::Table<(&str, u32, u64), &[u8]>,
    next: &mut HashMap<String, Vec<u64>>,
    messages: &[Message],
    now_ms: i64,
    buf: &mut Vec<u8>,
) -> Result<Result<Vec<Delivery>, BusError>, BusError> {
    if let Some(m) = messages.iter().find(|m| !next.contains_key(&m.topic)) {
        return Ok(Err(BusError::UnknownTopic(m.topic.clone())));
    }
    let mut deliveries = Vec::with_capacity(messages.len());
    for message in messages {
        let partitions = next.get_mut(&message.topic).expect("checked above");
        let partition = partition_for(&message.key, partitions.len() as u32);
        let offset = partitions[partition as usize];
        buf.clear();
        let stored = StoredRecord {
            timestamp_ms: now_ms,
            key: &message.key,
            headers: message.headers.clone(),
            payload: &message.payload,
        };
        let encoded = postcard::to_extend(&stored, std::mem::take(buf))
            .map_err(|e| BusError::Storage(format!("encoding a record: {e}")))?;
        records
            .insert(
                (message.topic.as_str(), partition, offset),
                encoded.as_slice(),
            )
            .map_err(storage("appending a record"))?;
        *buf = encoded;
        partitions[partition as usize] = offset + 1;
        deliveries.push(Delivery { partition, offset });
    }
    Ok(Ok(deliveries))
}
