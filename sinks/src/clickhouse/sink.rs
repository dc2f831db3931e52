//! The I/O shell: consume, batch, insert with retries, dead-letter refused rows, commit.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clickhouse::Client;
use futures::FutureExt;
use futures::future::Shared;
use trellis_bus::retry::Backoff;
use trellis_bus::{Bus, BusError, Consumer, Message, Producer, dead_letter};
use trellis_schemas::topics::Names;

use super::batch::{Batch, EncodedRows};
use super::config::ClickHouseConfig;
use super::encode::plan;
use super::error::{Class, Error, classify};
use super::migrations::{client, migrate};
use trellis_schemas::tables::Table;

/// The stage name dead letters carry.
pub const STAGE: &str = "sink.clickhouse";

/// The most records asked of the bus in one poll.
const POLL_MAX: usize = 5_000;

/// The shutdown future, shared so that it can be looked at between steps without waiting
/// (the same way the Parquet sink shares its own).
type Shutdown<F> = Shared<F>;

/// Whether `shutdown` has completed.
fn fired<F: Future<Output = ()>>(shutdown: &Shutdown<F>) -> bool {
    shutdown.clone().now_or_never().is_some()
}

/// The waits between retries: from `retry_initial_backoff`, doubling, with jitter, never longer
/// than `retry_max_backoff`.
fn backoff(config: &ClickHouseConfig) -> Backoff {
    Backoff::new(config.retry_initial_backoff, config.retry_max_backoff)
}

/// What became of one insert.
enum Inserted {
    Written,
    /// The server refused the data, with its reason.
    Refused(String),
    /// Shut down while retrying.
    Stopped,
}

struct Writer {
    client: Client,
    config: ClickHouseConfig,
    dedup_tokens: bool,
}

impl Writer {
    async fn insert_once(
        &self,
        target: Table,
        rows: &EncodedRows,
        range: Range<usize>,
        token: String,
    ) -> Result<(), clickhouse::error::Error> {
        let sql = plan(target).insert_sql(&self.config.database, target.name());
        let timeout = Some(self.config.request_timeout);
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(timeout, timeout);
        if self.dedup_tokens {
            insert = insert.with_option("insert_deduplication_token", token);
        }
        insert
            .send(Bytes::copy_from_slice(rows.bytes(range)))
            .await?;
        insert.end().await
    }

    /// One insert, retried with backoff while it fails for a retryable reason.
    async fn insert<F: Future<Output = ()>>(
        &self,
        batch: &Batch,
        target: Table,
        rows: &EncodedRows,
        range: Range<usize>,
        shutdown: &Shutdown<F>,
    ) -> Result<Inserted, Error> {
        let token = batch.token(target, range.clone());
        let mut backoff = backoff(&self.config);
        let mut attempt = 0;
        loop {
            let Err(e) = self
                .insert_once(target, rows, range.clone(), token.clone())
                .await
            else {
                return Ok(Inserted::Written);
            };
            match classify(&e) {
                Class::BadData => return Ok(Inserted::Refused(e.to_string())),
                Class::Fatal => {
                    return Err(Error::ClickHouse {
                        what: format!("INSERT INTO {}", target.name()),
                        source: e,
                    });
                }
                Class::Retryable if fired(shutdown) => return Ok(Inserted::Stopped),
                Class::Retryable => {
                    let wait = backoff.next_wait();
                    tracing::warn!(table = target.name(), attempt, ?wait, error = %e, "Insert failed, retrying.");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Writes a table's rows, in inserts of a bounded number of partitions ([`EncodedRows::inserts`]).
    /// When the server refuses the data, halves an insert until the refused rows are found;
    /// returns them (row index, reason), or `None` if shut down first.
    async fn write<F: Future<Output = ()>>(
        &self,
        batch: &Batch,
        target: Table,
        rows: &EncodedRows,
        shutdown: &Shutdown<F>,
    ) -> Result<Option<Vec<(usize, String)>>, Error> {
        let mut pending = rows.inserts();
        pending.reverse();
        let mut refused = Vec::new();
        while let Some(range) = pending.pop() {
            match self
                .insert(batch, target, rows, range.clone(), shutdown)
                .await?
            {
                Inserted::Written => {}
                Inserted::Stopped => return Ok(None),
                Inserted::Refused(reason) if range.len() == 1 => {
                    refused.push((range.start, reason))
                }
                Inserted::Refused(_) => {
                    let mid = range.start + range.len() / 2;
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
            }
        }
        if rows.len() > 1 && refused.len() == rows.len() {
            return Err(Error::SchemaMismatch {
                table: target.name(),
                rows: rows.len(),
                reason: refused.pop().map(|(_, r)| r).unwrap_or_default(),
            });
        }
        Ok(Some(refused))
    }
}

/// Retries a bus operation while it fails for a retryable reason and the sink is not stopping.
async fn bus_retry<T, Fut, F>(
    config: &ClickHouseConfig,
    shutdown: &Shutdown<F>,
    mut op: impl FnMut() -> Fut,
) -> Result<Option<T>, Error>
where
    Fut: Future<Output = Result<T, BusError>>,
    F: Future<Output = ()>,
{
    let mut backoff = backoff(config);
    loop {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.is_retryable() && !fired(shutdown) => {
                let wait = backoff.next_wait();
                tracing::warn!(retry_in = ?wait, error = %e, "Bus operation failed, retrying.");
                tokio::time::sleep(wait).await;
            }
            Err(e) if e.is_retryable() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes a batch, dead-letters what ClickHouse refused, then commits its offsets. Returns
/// `false` if the sink was shut down before the batch was durable (nothing committed).
async fn flush<F: Future<Output = ()>>(
    writer: &Writer,
    batch: &Batch,
    topics: &Names,
    producer: &Arc<dyn Producer>,
    consumer: &mut Box<dyn Consumer>,
    shutdown: &Shutdown<F>,
) -> Result<bool, Error> {
    let started = Instant::now();
    let letter = |index: usize, reason: &str| Message {
        topic: topics.dlq.clone(),
        ..dead_letter(batch.record(index), STAGE, reason)
    };
    let mut dead: Vec<Message> = batch.refused().iter().map(|(i, r)| letter(*i, r)).collect();
    let mut written = 0;
    for (target, rows) in batch.tables() {
        let Some(refused) = writer.write(batch, target, rows, shutdown).await? else {
            return Ok(false);
        };
        written += rows.len() - refused.len();
        for (row, reason) in refused {
            let reason = format!("clickhouse refused the row for {}: {reason}", target.name());
            dead.push(letter(rows.source(row), &reason));
        }
    }
    if !dead.is_empty() {
        tracing::warn!(records = dead.len(), "Records dead-lettered.");
        let published = bus_retry(&writer.config, shutdown, || producer.publish(dead.clone()));
        if published.await?.is_none() {
            return Ok(false);
        }
    }
    let offsets = batch.offsets();
    let mut backoff = backoff(&writer.config);
    while let Err(e) = consumer.commit(&offsets).await {
        if !e.is_retryable() {
            return Err(e.into());
        }
        if fired(shutdown) {
            return Ok(false);
        }
        let wait = backoff.next_wait();
        tracing::warn!(retry_in = ?wait, error = %e, "Commit failed, retrying.");
        tokio::time::sleep(wait).await;
    }
    tracing::debug!(records = batch.len(), rows = written, dead = dead.len(), elapsed = ?started.elapsed(), "Batch written.");
    Ok(true)
}

/// Runs the ClickHouse sink until `shutdown` completes: migrates the schema, then reads
/// the topics of every table of the registry in the configured consumer group and writes their
/// rows. On shutdown the batch in hand is written (one attempt per insert) before returning.
pub async fn run(
    bus: Arc<dyn Bus>,
    topics: Names,
    config: ClickHouseConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let shutdown = &shutdown.shared();
    // A server that is down or still starting is waited for: under `trellis run` the rest of
    // the pipeline goes on meanwhile, and the sink catches up from its committed offsets.
    let mut waits = backoff(&config);
    let migrated = loop {
        match migrate(&config).await {
            Ok(migrated) => break migrated,
            Err(e) if e.is_transient() && !fired(shutdown) => {
                let wait = waits.next_wait();
                tracing::warn!(retry_in = ?wait, error = %e, "ClickHouse not reachable; waiting for it.");
                tokio::time::sleep(wait).await;
            }
            Err(e) if e.is_transient() => return Ok(()),
            Err(e) => return Err(e),
        }
    };
    tracing::info!(server = %migrated.server, database = %config.database, applied = ?migrated.applied, "ClickHouse schema ready.");
    let retention =
        (migrated.server.has_ttl() || !config.retention.interval.is_zero()).then(|| {
            tokio::spawn(keep_retention(
                client(&config).with_compression(clickhouse::Compression::None),
                config.database.clone(),
                config.retention.clone(),
                migrated.server,
            ))
        });
    let writer = Writer {
        client: client(&config),
        dedup_tokens: migrated.server.has_dedup_tokens(),
        config,
    };
    let result = consume(&writer, bus, topics, shutdown).await;
    if let Some(task) = retention {
        task.abort();
    }
    result
}

/// Keeps `database` within `retention`: sets the tables' `TTL` once on a server that has it
/// (or removes the `TTL`s trellis set, when retention is off), else removes what expired every
/// `retention.interval`, the first time at once. Failures are logged and tried again at the
/// next pass (or the next start): retention never stops the sink.
async fn keep_retention(
    client: Client,
    database: String,
    retention: crate::retention::Retention,
    server: super::ServerVersion,
) {
    if server.has_ttl() {
        if let Err(e) = super::retention::apply_ttl(&client, &database, &retention).await {
            tracing::warn!(error = %e, "Setting the ClickHouse tables' TTL failed; retention is not applied until the next start.");
        }
        return;
    }
    if retention.interval.is_zero() {
        return;
    }
    let mut every = tokio::time::interval(retention.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        super::retention::expire(&client, &database, &retention, now_ms).await;
    }
}

/// Reads the topics of every table of the registry and writes their rows until `shutdown`.
async fn consume<F: Future<Output = ()>>(
    writer: &Writer,
    bus: Arc<dyn Bus>,
    topics: Names,
    shutdown: &Shutdown<F>,
) -> Result<(), Error> {
    let config = &writer.config;
    let inputs = trellis_schemas::tables::Table::topics(&topics);
    // A broker that is slow to answer at start-up (a metadata timeout) is waited out.
    let consumer = bus_retry(config, shutdown, || bus.consumer(&config.group, &inputs)).await?;
    let Some(mut consumer) = consumer else {
        return Ok(());
    };
    let producer = bus.producer()?;
    let mut batch = Batch::default();
    while !fired(shutdown) {
        let room = config
            .batch_rows
            .saturating_sub(batch.len())
            .clamp(1, POLL_MAX);
        let records = match consumer.poll(room, Duration::from_millis(100)).await {
            Ok(records) => records,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "Poll failed, retrying.");
                tokio::time::sleep(config.retry_initial_backoff).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let now = Instant::now();
        for record in records {
            batch.push(&topics, record, now);
        }
        let ready = batch.is_ready(config.batch_rows, config.batch_bytes, config.batch_age, now);
        if !batch.is_empty() && ready {
            if !flush(writer, &batch, &topics, &producer, &mut consumer, shutdown).await? {
                return Ok(());
            }
            batch = Batch::default();
        }
    }
    if !batch.is_empty() {
        flush(writer, &batch, &topics, &producer, &mut consumer, shutdown).await?;
    }
    Ok(())
}
