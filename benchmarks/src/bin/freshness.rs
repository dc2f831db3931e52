//! Freshness: how long an event takes from the moment an SDK sends it to the moment an analyst
//! can see it, in the Parquet files (`trellis query` reads every renamed file) and in ClickHouse.
//!
//! Sends analytics events at a steady, modest rate to a running ingest (native batches), each
//! with a unique id and the send time as its event time, and remembers when each was sent. Two
//! watchers poll the stores every `--interval`: new finished files under
//! `<parquet-root>/events/` are read (their `event_id` column), and ClickHouse's `events` table is
//! asked for the ids with an event time at or after the oldest one not yet seen. An event's
//! latency is the time from its send to the first poll that saw it, measured on this program's
//! clock (so polling adds up to one interval, half on average). `--kafka-topics` adds watchers
//! that read bus topics (`events.raw`, `events`) from their end, to split the time by stage.
//!
//! ```text
//! freshness --url http://127.0.0.1:8080 --key KEY --rate 1000 --duration 30s \
//!   --parquet-root data/parquet --clickhouse-url http://127.0.0.1:8123 --clickhouse-database trellis
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use clap::Parser;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

#[derive(Parser, Clone)]
#[command(about = "Send-to-visible latency of events, in Parquet and in ClickHouse")]
struct Args {
    /// Ingest base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Project key.
    #[arg(long, default_value = "trellis_dev_key")]
    key: String,
    /// The project the key belongs to (as stored in the rows).
    #[arg(long, default_value = "default")]
    project: String,
    /// Events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Events per request.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// How long to send.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After sending, how long to wait for the last events to become visible.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// How often each store is polled.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// The Parquet sink's root (`data_dir/parquet`); omit to skip Parquet.
    #[arg(long)]
    parquet_root: Option<PathBuf>,
    /// ClickHouse HTTP URL; omit to skip ClickHouse.
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Also time the events' arrival on these topics (comma-separated, for example
    /// `events.raw,events`), to see which stage the time goes to; needs `--kafka-brokers`.
    #[arg(long, value_delimiter = ',')]
    kafka_topics: Vec<String>,
    /// Bootstrap brokers, for `--kafka-topics`.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// The ClickHouse sink's database.
    #[arg(long, default_value = "trellis")]
    clickhouse_database: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Events sent and acknowledged: id -> (send instant, event time in ms).
type Sent = Arc<Mutex<HashMap<String, (Instant, i64)>>>;

fn now_ms() -> i64 {
    trellis_ingest::time::now_ms()
}

/// A store the watcher polls.
trait Store: Send + 'static {
    /// Ids visible now (of this run or not), given the acknowledged events not yet seen (id ->
    /// event time).
    fn poll(&mut self, unseen: &HashMap<String, i64>) -> Result<Vec<String>, String>;
}

struct ParquetStore {
    dir: PathBuf,
    read: HashSet<PathBuf>,
}

impl ParquetStore {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if path.is_dir() {
                Self::files(&path, out);
            } else if !hidden && path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }

    /// The `common.event_id` column of a file (`event_id` in a flat layout).
    fn event_ids(path: &Path) -> Result<Vec<String>, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let leaf = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| matches!(c.path().string().as_str(), "common.event_id" | "event_id"))
            .ok_or_else(|| format!("{}: no event_id column", path.display()))?;
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| e.to_string())?;
        let mut ids = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            let mut column = batch.column(0).clone();
            while let Some(nested) = column.as_struct_opt() {
                column = nested
                    .column_by_name("event_id")
                    .ok_or("no event_id in the struct")?
                    .clone();
            }
            if let Some(a) = column.as_string_opt::<i32>() {
                ids.extend(a.iter().flatten().map(str::to_string));
            } else if let Some(a) = column.as_string_opt::<i64>() {
                ids.extend(a.iter().flatten().map(str::to_string));
            } else if let Some(a) = column.as_string_view_opt() {
                ids.extend(a.iter().flatten().map(str::to_string));
            } else {
                return Err(format!("event_id is {}", column.data_type()));
            }
        }
        Ok(ids)
    }
}

impl Store for ParquetStore {
    fn poll(&mut self, _: &HashMap<String, i64>) -> Result<Vec<String>, String> {
        let mut files = Vec::new();
        Self::files(&self.dir, &mut files);
        let mut ids = Vec::new();
        for file in files {
            if self.read.contains(&file) {
                continue;
            }
            ids.extend(Self::event_ids(&file)?);
            self.read.insert(file);
        }
        Ok(ids)
    }
}

/// A topic, read from its end as it was when the watcher started: Avro events, by id.
struct TopicStore {
    consumer: rdkafka::consumer::BaseConsumer,
}

impl TopicStore {
    fn new(brokers: &str, topic: &str) -> Result<TopicStore, String> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "trellis-freshness")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| format!("{topic}: {e}"))?;
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            assignment
                .add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(high))
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        Ok(TopicStore { consumer })
    }
}

impl Store for TopicStore {
    fn poll(&mut self, _: &HashMap<String, i64>) -> Result<Vec<String>, String> {
        use rdkafka::Message;
        let mut ids = Vec::new();
        while let Some(message) = self.consumer.poll(Duration::ZERO) {
            let message = message.map_err(|e| e.to_string())?;
            if let Some(event) = message
                .payload()
                .and_then(|p| trellis_schemas::avro::decode(p).ok())
            {
                ids.push(event.common().event_id.clone());
            }
        }
        Ok(ids)
    }
}

struct ClickHouseStore {
    url: String,
    database: String,
    project: String,
}

impl Store for ClickHouseStore {
    fn poll(&mut self, unseen: &HashMap<String, i64>) -> Result<Vec<String>, String> {
        let Some(oldest) = unseen.values().min() else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT event_id FROM {}.events WHERE project = '{}' AND timestamp_ms >= {oldest} FORMAT TabSeparated",
            self.database,
            self.project.replace('\'', "")
        );
        let mut response = ureq::post(&self.url)
            .config()
            .http_status_as_error(false)
            .build()
            .send(&sql)
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("ClickHouse answered {status}: {text}"));
        }
        Ok(text.lines().map(str::to_string).collect())
    }
}

/// Polls `store` every `interval` until `stop` is set and every acknowledged event (arriving on
/// `acked`) was seen, or until [`STOP_NOW`]; returns the instant each id was first seen.
///
/// An event can be seen before its acknowledgement arrives: ingest answers once the broker has
/// the record, so a topic's consumer may read it first. Such ids wait in `early`, as a topic's
/// consumer never reads them again.
fn watch(
    mut store: impl Store,
    acked: std::sync::mpsc::Receiver<(String, i64)>,
    stop: Arc<AtomicBool>,
    interval: Duration,
    name: &'static str,
) -> HashMap<String, Instant> {
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut unseen: HashMap<String, i64> = HashMap::new();
    let mut early: HashMap<String, Instant> = HashMap::new();
    let mut errors = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        for (id, sent_ms) in acked.try_iter() {
            match early.remove(&id) {
                Some(at) => {
                    seen.insert(id, at);
                }
                None => {
                    unseen.insert(id, sent_ms);
                }
            }
        }
        if stopping && unseen.is_empty() {
            return seen;
        }
        match store.poll(&unseen) {
            Ok(ids) => {
                let at = Instant::now();
                for id in ids {
                    if unseen.remove(&id).is_some() {
                        seen.insert(id, at);
                    } else if !seen.contains_key(&id) {
                        early.entry(id).or_insert(at);
                    }
                }
            }
            Err(e) => {
                errors += 1;
                if errors % 20 == 1 {
                    eprintln!("freshness: {name}: {e}");
                }
            }
        }
        if stopping && STOP_NOW.load(Ordering::Relaxed) {
            return seen;
        }
        std::thread::sleep(interval);
    }
}

/// Set when the wait for stragglers is over.
static STOP_NOW: AtomicBool = AtomicBool::new(false);

fn percentiles(
    sent: &HashMap<String, (Instant, i64)>,
    seen: &HashMap<String, Instant>,
) -> serde_json::Value {
    let mut ms: Vec<f64> = seen
        .iter()
        .filter_map(|(id, at)| {
            sent.get(id)
                .map(|(s, _)| at.duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if ms.is_empty() {
            serde_json::Value::Null
        } else {
            let i = ((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1;
            json!((ms[i]).round())
        }
    };
    json!({
        "seen": ms.len(),
        "missing": sent.len() - ms.len(),
        "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": q(1.0),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.parquet_root.is_none() && args.clickhouse_url.is_none() && args.kafka_topics.is_empty()
    {
        eprintln!("freshness: give --parquet-root, --clickhouse-url, --kafka-topics or several");
        std::process::exit(2);
    }
    let run = fastrand::u32(..);
    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut feeds = Vec::new();
    if let Some(root) = &args.parquet_root {
        let store = ParquetStore {
            dir: root.join("events"),
            read: HashSet::new(),
        };
        let (feed, acked) = std::sync::mpsc::channel();
        feeds.push(feed);
        let (stop, interval) = (stop.clone(), args.interval);
        watchers.push((
            "parquet",
            std::thread::spawn(move || watch(store, acked, stop, interval, "parquet")),
        ));
    }
    if let Some(url) = &args.clickhouse_url {
        let store = ClickHouseStore {
            url: url.clone(),
            database: args.clickhouse_database.clone(),
            project: args.project.clone(),
        };
        let (feed, acked) = std::sync::mpsc::channel();
        feeds.push(feed);
        let (stop, interval) = (stop.clone(), args.interval);
        watchers.push((
            "clickhouse",
            std::thread::spawn(move || watch(store, acked, stop, interval, "clickhouse")),
        ));
    }

    for topic in &args.kafka_topics {
        let Some(brokers) = &args.kafka_brokers else {
            eprintln!("freshness: --kafka-topics needs --kafka-brokers");
            std::process::exit(2);
        };
        let store = TopicStore::new(brokers, topic).unwrap_or_else(|e| {
            eprintln!("freshness: {e}");
            std::process::exit(1);
        });
        let (feed, acked) = std::sync::mpsc::channel();
        feeds.push(feed);
        let (stop, interval) = (stop.clone(), args.interval);
        let name: &'static str = Box::leak(format!("topic {topic}").into_boxed_str());
        watchers.push((
            name,
            std::thread::spawn(move || watch(store, acked, stop, interval, name)),
        ));
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("a client");
    let failed = Arc::new(AtomicU64::new(0));
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(
        args.batch as f64 / args.rate.max(1) as f64,
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    while started.elapsed() < args.duration {
        ticker.tick().await;
        let at = Instant::now();
        let ts = now_ms();
        let events: Vec<(String, serde_json::Value)> = (0..args.batch)
            .map(|_| {
                seq += 1;
                let id = format!("{run:08x}-0000-4000-8000-{seq:012x}");
                let device = seq % 500;
                let event = json!({
                    "kind": "analytics", "event_id": id, "timestamp": ts,
                    "device_id": format!("fresh-device-{device}"),
                    "release": {"platform": "ios", "app_version": "2.14.0", "build": "1402", "channel": "production"},
                    "name": "freshness_probe", "screen": "Home", "properties": {"seq": seq},
                });
                (id, event)
            })
            .collect();
        let body =
            json!({"sent_at": ts, "events": events.iter().map(|(_, e)| e).collect::<Vec<_>>()});
        let request = client
            .post(format!("{}/v1/batch", args.url))
            .bearer_auth(&args.key)
            .json(&body);
        let (sent, failed, batch) = (sent.clone(), failed.clone(), args.batch);
        let feeds = feeds.clone();
        requests.spawn(async move {
            let accepted = match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let outcome: serde_json::Value = r.json().await.unwrap_or_default();
                    outcome["accepted"].as_u64() == Some(batch as u64)
                }
                _ => false,
            };
            if accepted {
                let mut sent = sent.lock().expect("not poisoned");
                for (id, _) in events {
                    for feed in &feeds {
                        let _ = feed.send((id.clone(), ts));
                    }
                    sent.insert(id, (at, ts));
                }
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        while let Some(done) = requests.try_join_next() {
            done.expect("a request task");
        }
    }
    while let Some(done) = requests.join_next().await {
        done.expect("a request task");
    }
    let sent_for = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let wait_until = Instant::now() + args.wait;
    while Instant::now() < wait_until && watchers.iter().any(|(_, w)| !w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    STOP_NOW.store(true, Ordering::Relaxed);
    let sent = sent.lock().expect("not poisoned").clone();
    let mut report = json!({
        "sent": sent.len(),
        "failed_requests": failed.load(Ordering::Relaxed),
        "rate": args.rate,
        "seconds": (sent_for * 10.0).round() / 10.0,
        "interval_ms": args.interval.as_millis() as u64,
    });
    for (name, watcher) in watchers {
        let seen = watcher.join().expect("a watcher");
        report[name] = percentiles(&sent, &seen);
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    }
}
