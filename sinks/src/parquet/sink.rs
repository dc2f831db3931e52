//! The consumer loop: poll, decode, write segments, dead-letter, commit after the rename.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;

use trellis_bus::retry::{Backoff, until_done};
use trellis_bus::{Bus, Consumer, Message, Offsets, Producer, Record, dead_letter};
use trellis_schemas::records::{self, GuardCommand};
use trellis_schemas::tables::{RowType, Stored};
use trellis_schemas::{avro, topics::Names};

use super::Error;
use super::config::ParquetConfig;
use super::layout::Table;
use super::metrics::ParquetMetrics;
use super::segment::{Finished, Limits, PartitionWriter};
use super::writer::Row;

/// The stage name on dead letters.
pub const STAGE: &str = "sink.parquet";

/// Runs the Parquet sink until `shutdown` resolves, then ends every open segment, commits and
/// returns. Counters go to a private [`ParquetMetrics`]; use [`run_with_metrics`] to export them.
pub async fn run(
    bus: Arc<dyn Bus>,
    topics: Names,
    config: ParquetConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_with_metrics(
        bus,
        topics,
        config,
        Arc::new(ParquetMetrics::default()),
        shutdown,
    )
    .await
}

/// [`run`], counting into `metrics`.
///
/// A fault the sink can wait out (a file that cannot be written, as on a full disk; the bus
/// failing for a while) does not end it: it drops the segments it had open (their temporary
/// files go), waits with backoff, and starts again from the committed offsets, which only ever
/// cover renamed files, so nothing is lost or written twice. Each restart is counted.
pub async fn run_with_metrics(
    bus: Arc<dyn Bus>,
    topics: Names,
    config: ParquetConfig,
    metrics: Arc<ParquetMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let shutdown = shutdown.shared();
    let retention = (!config.retention.interval.is_zero()).then(|| {
        tokio::spawn(expire_every_interval(
            config.root.clone(),
            config.retention.clone(),
            metrics.clone(),
        ))
    });
    let result = consume(bus, topics, config, metrics, shutdown).await;
    if let Some(task) = retention {
        task.abort();
    }
    result
}

/// Removes what expired once every `retention.interval`, the first time at once.
async fn expire_every_interval(
    root: std::path::PathBuf,
    retention: super::retention::Retention,
    metrics: Arc<ParquetMetrics>,
) {
    let mut every = tokio::time::interval(retention.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (root, rules) = (root.clone(), retention.clone());
        let pass =
            tokio::task::spawn_blocking(move || super::retention::expire(&root, &rules, now_ms()));
        match pass.await {
            Ok(Ok(expired)) => {
                if expired.files > 0 {
                    tracing::info!(
                        files = expired.files,
                        bytes = expired.bytes,
                        "Parquet files past their retention removed."
                    );
                }
                metrics.expired(expired);
            }
            // The next pass tries again; nothing is lost by waiting.
            Ok(Err(e)) => tracing::warn!(error = %e, "Removing expired Parquet files failed."),
            Err(e) => tracing::warn!(error = %e, "The retention pass ended early."),
        }
    }
}

/// [`run_with_metrics`] without retention: the consumer, started again after each fault.
async fn consume(
    bus: Arc<dyn Bus>,
    topics: Names,
    config: ParquetConfig,
    metrics: Arc<ParquetMetrics>,
    shutdown: futures::future::Shared<impl Future<Output = ()>>,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let run = run_once(
            bus.clone(),
            &topics,
            &config,
            metrics.clone(),
            shutdown.clone(),
        );
        let e = match run.await {
            Err(e) if e.is_retryable() => e,
            done => return done,
        };
        let reason = match e {
            Error::Bus(_) => "bus",
            _ => "io",
        };
        metrics.restart(reason);
        let wait = backoff.next_wait();
        tracing::error!(error = %e, retry_in = ?wait, "Parquet sink failed; starting again from the committed offsets.");
        tokio::select! {
            _ = shutdown.clone() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One run of the sink, from joining the group until `shutdown` or an error.
async fn run_once(
    bus: Arc<dyn Bus>,
    topics: &Names,
    config: &ParquetConfig,
    metrics: Arc<ParquetMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.root).map_err(Error::io(&config.root))?;
    super::layout::migrate_renamed(&config.root).map_err(Error::io(&config.root))?;
    let inputs = Table::topics(topics);
    // A broker that is slow to answer at start-up (a metadata timeout) is waited out.
    let mut consumer = until_done("Joining the consumer group", || {
        bus.consumer(&config.group, &inputs)
    })
    .await?;
    let producer = bus.producer()?;
    let mut state = State {
        root: config.root.clone(),
        limits: Limits {
            max_rows: config.max_rows,
            max_bytes: config.max_bytes,
            max_age_ms: i64::try_from(config.max_age.as_millis()).unwrap_or(i64::MAX),
            zstd_level: config.zstd_level,
            max_open_files: config.max_open_files,
        },
        topics: topics.clone(),
        writers: HashMap::new(),
        metrics,
    };
    tracing::info!(root = %config.root.display(), group = %config.group, "Parquet sink started.");
    tokio::pin!(shutdown);
    let mut lag_read = Instant::now();
    loop {
        let polled = tokio::select! {
            _ = &mut shutdown => break,
            polled = consumer.poll(config.poll_max, config.poll_timeout) => polled,
        };
        let records = match polled {
            Ok(records) => records,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "Poll failed; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        state.drop_revoked(&consumer.assignment());
        let step;
        (state, step) = blocking(state, move |s| s.ingest(records, now_ms())).await?;
        deliver(&state.metrics, producer.as_ref(), consumer.as_mut(), step).await?;
        if lag_read.elapsed() >= Duration::from_secs(1) {
            lag_read = Instant::now();
            if let Some(lag) = consumer.lag() {
                state.metrics.set_lag(lag);
            }
        }
    }
    let step;
    (state, step) = blocking(state, |s| s.finish_all()).await?;
    deliver(&state.metrics, producer.as_ref(), consumer.as_mut(), step).await?;
    tracing::info!("Parquet sink stopped after writing every open segment.");
    Ok(())
}

/// What one step produced: dead letters to publish, then segments to commit.
#[derive(Default)]
struct Step {
    dead: Vec<Message>,
    finished: Vec<Finished>,
}

struct State {
    root: PathBuf,
    limits: Limits,
    topics: Names,
    writers: HashMap<(String, u32), PartitionWriter>,
    metrics: Arc<ParquetMetrics>,
}

impl State {
    fn ingest(&mut self, records: Vec<Record>, now_ms: i64) -> Result<Step, Error> {
        let mut step = Step::default();
        for record in &records {
            let key = (record.topic.clone(), record.partition);
            let rewound = self
                .writers
                .get(&key)
                .and_then(PartitionWriter::next_offset)
                .is_some_and(|next| record.offset < next);
            if rewound {
                // The group moved the partition away and back: start over from what is on disk.
                if let Some(mut writer) = self.writers.remove(&key) {
                    writer.abort();
                }
            }
            let writer = match self.writers.entry(key) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let writer = PartitionWriter::open(
                        &self.root,
                        &record.topic,
                        record.partition,
                        self.limits,
                    )?;
                    v.insert(writer)
                }
            };
            let row = match decode(&self.topics, record) {
                Ok(row) => row,
                Err(reason) => {
                    tracing::debug!(topic = %record.topic, partition = record.partition,
                        offset = record.offset, %reason, "Record dead-lettered.");
                    let mut message = dead_letter(record, STAGE, &reason);
                    message.topic = self.topics.dlq.clone();
                    step.dead.push(message);
                    self.metrics.dead_letter(&record.topic);
                    None
                }
            };
            writer.push(
                record.offset,
                record.payload.len(),
                row,
                now_ms,
                &mut step.finished,
            )?;
        }
        for writer in self.writers.values_mut() {
            writer.tick(now_ms, &mut step.finished)?;
        }
        Ok(step)
    }

    fn finish_all(&mut self) -> Result<Step, Error> {
        let mut step = Step::default();
        for writer in self.writers.values_mut() {
            writer.finish(&mut step.finished)?;
        }
        Ok(step)
    }

    /// Forgets partitions the group moved elsewhere; their open segments were never committed.
    fn drop_revoked(&mut self, assigned: &[(String, u32)]) {
        self.writers.retain(|(topic, partition), writer| {
            let keep = assigned.iter().any(|(t, p)| t == topic && p == partition);
            if !keep {
                writer.abort();
            }
            keep
        });
    }
}

/// The row `record` is stored as; `None` for the guard's commands, which travel on
/// `detections` but are stored as what they caused (audit entries, alert versions).
fn decode(topics: &Names, record: &Record) -> Result<Option<Row>, String> {
    let payload = &record.payload;
    if record.topic == topics.detections && records::is::<GuardCommand>(payload) {
        return Ok(None);
    }
    let Some(table) = Table::of_topic(topics, &record.topic) else {
        return Err(format!(
            "the Parquet sink does not read topic {:?}",
            record.topic
        ));
    };
    table.with_row_type(DecodeRow(payload)).map(Some)
}

/// Decodes a payload as a row of its table, whatever the table.
struct DecodeRow<'a>(&'a [u8]);

impl RowType for DecodeRow<'_> {
    type Out = Result<Row, String>;

    fn event(self, _: trellis_schemas::Kind) -> Self::Out {
        avro::decode(self.0)
            .map(Row::Event)
            .map_err(|e| e.to_string())
    }

    fn record<T: Stored>(self) -> Self::Out {
        records::decode::<T>(self.0)
            .map(Row::record)
            .map_err(|e| e.to_string())
    }
}

/// Runs `f` on the state on a blocking thread (it writes files) and hands the state back.
async fn blocking(
    mut state: State,
    f: impl FnOnce(&mut State) -> Result<Step, Error> + Send + 'static,
) -> Result<(State, Step), Error> {
    let (state, step) = tokio::task::spawn_blocking(move || {
        let step = f(&mut state);
        (state, step)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?;
    Ok((state, step?))
}

/// Publishes the dead letters, counts the files, then commits the finished segments' offsets.
async fn deliver(
    metrics: &ParquetMetrics,
    producer: &dyn Producer,
    consumer: &mut dyn Consumer,
    step: Step,
) -> Result<(), Error> {
    if !step.dead.is_empty() {
        until_done("Publishing dead letters", || {
            producer.publish(step.dead.clone())
        })
        .await?;
    }
    if step.finished.is_empty() {
        return Ok(());
    }
    let mut offsets = Offsets::default();
    for finished in &step.finished {
        for (table, rows) in &finished.files {
            metrics.file_written(table.name(), *rows);
        }
        let current = offsets
            .get(&finished.topic, finished.partition)
            .unwrap_or(0);
        offsets.set(
            &finished.topic,
            finished.partition,
            current.max(finished.next_offset),
        );
    }
    Ok(trellis_bus::commit_until_done(consumer, &offsets).await?)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
