//! Watches a stage's progress from outside and reports when it finished: the end-to-end
//! benchmark scenarios start a stage, then this, and read off the time it took.
//!
//! ```text
//! progress topic-end  --brokers B --topics bench.events --until 950000     # records on the topics
//! progress group      --brokers B --group G --topics bench.events --until 950000   # committed by G
//! progress parquet    --root data/parquet --topic events --until 950000    # records in renamed files
//! progress metrics    --url http://127.0.0.1:9464/metrics \
//!   --metric 'trellis_processor_records_total{stage="process",outcome="processed"}' --until 524931
//! progress clickhouse --url http://127.0.0.1:8123 --query "SELECT count() FROM db.t" --until 950000
//! ```
//!
//! The value is sampled every `--interval`; the report (JSON) gives the value at the start, the
//! last value and its parts (per partition for the Kafka modes), the
//! time of the first change and the value then, the time the value reached `--until` (seconds since this program
//! started, or since `--t0`, a Unix time), and the CPU seconds each `--cpu NAME=PID` process used
//! in between (from `/proc`). It exits 1 with the report if `--timeout` passes first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Parser)]
#[command(about = "Waits until a stage has done N records and reports how long it took")]
struct Args {
    /// How often to sample.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Give up after this long.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Measure times from this Unix time (seconds, fractional) instead of from this program's start.
    #[arg(long)]
    t0: Option<f64>,
    /// A process whose CPU time to report, as NAME=PID (repeatable).
    #[arg(long, value_parser = parse_cpu)]
    cpu: Vec<(String, u32)>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The records on topics: the sum of their partitions' end offsets.
    TopicEnd {
        #[arg(long)]
        brokers: String,
        /// Comma-separated topics.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        #[arg(long)]
        until: u64,
    },
    /// The records a consumer group has committed on topics (without joining the group).
    Group {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        group: String,
        /// Comma-separated topics.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        #[arg(long)]
        until: u64,
    },
    /// The input records of `topic` held in finished Parquet files under `root` (from the file
    /// names, `<topic>-<partition>-<first>-<last>.parquet`; a segment's files share a name).
    Parquet {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        until: u64,
    },
    /// The sum of a Prometheus metric's samples that carry the given labels, from a `/metrics`
    /// endpoint: `--metric 'trellis_processor_records_total{stage="process"}'`.
    Metrics {
        #[arg(long)]
        url: String,
        #[arg(long)]
        metric: String,
        #[arg(long)]
        until: u64,
    },
    /// A number a ClickHouse query answers.
    Clickhouse {
        #[arg(long)]
        url: String,
        #[arg(long)]
        query: String,
        #[arg(long)]
        until: u64,
    },
}

fn parse_cpu(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((name.to_string(), pid.parse().map_err(|e| format!("{e}"))?))
}

/// User plus system CPU seconds of a process (all its threads), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

struct Kafka {
    consumer: BaseConsumer,
    partitions: Vec<(String, i32)>,
}

impl Kafka {
    fn new(brokers: &str, group: &str, topics: &[String]) -> Result<Kafka, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut partitions = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| format!("metadata of {topic}: {e}"))?;
            let t = &metadata.topics()[0];
            if t.partitions().is_empty() {
                return Err(format!("topic {topic} has no partitions (does it exist?)"));
            }
            partitions.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
        Ok(Kafka {
            consumer,
            partitions,
        })
    }

    fn end_offsets(&self) -> Result<Vec<u64>, String> {
        let mut ends = Vec::new();
        for (topic, partition) in &self.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(topic, *partition, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            ends.push(high.max(0) as u64);
        }
        Ok(ends)
    }

    fn committed(&self) -> Result<Vec<u64>, String> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in &self.partitions {
            list.add_partition(topic, *partition);
        }
        let committed = self
            .consumer
            .committed_offsets(list, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(n) if n > 0 => n as u64,
                _ => 0,
            })
            .collect())
    }
}

/// Records of `topic` in finished files: the union of the offset ranges in the file names.
fn parquet_records(root: &Path, topic: &str) -> u64 {
    fn walk(dir: &Path, topic: &str, ranges: &mut BTreeSet<(u32, u64, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                walk(&path, topic, ranges);
            } else if let Some(stem) = name.strip_suffix(".parquet") {
                let mut parts = stem.rsplitn(4, '-');
                let (Some(last), Some(first), Some(partition), Some(t)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if t != topic {
                    continue;
                }
                if let (Ok(p), Ok(f), Ok(l)) = (partition.parse(), first.parse(), last.parse()) {
                    ranges.insert((p, f, l));
                }
            }
        }
    }
    let mut ranges = BTreeSet::new();
    walk(root, topic, &mut ranges);
    ranges.iter().map(|(_, f, l)| l + 1 - f).sum()
}

/// The sum of the samples of `selector` (`name` or `name{k="v",...}`) in Prometheus text.
fn metric_sum(text: &str, selector: &str) -> u64 {
    let (name, labels) = match selector.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (selector, ""),
    };
    let wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            (series_name == name && wanted.iter().all(|w| series_labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum::<f64>() as u64
}

fn http_get(url: &str) -> Result<String, String> {
    let mut response = ureq::get(url).call().map_err(|e| e.to_string())?;
    response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())
}

fn clickhouse_number(url: &str, query: &str) -> Result<u64, String> {
    let mut response = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .send(query)
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("ClickHouse answered {status}: {text}"));
    }
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<f64>()
        .map(|v| v as u64)
        .map_err(|_| format!("ClickHouse answered {text:?}, not a number"))
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let offset = match args.t0 {
        Some(t0) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(t0);
            (now - t0).max(0.0)
        }
        None => 0.0,
    };
    let cpu_start: Vec<Option<f64>> = args.cpu.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let since = |at: Instant| offset + at.duration_since(started).as_secs_f64();

    // Each sample is a list of parts (one per partition for the Kafka modes); the value is their sum.
    type Sample = Box<dyn FnMut() -> Result<Vec<u64>, String>>;
    let (until, mut sample): (u64, Sample) = match &args.what {
        What::TopicEnd {
            brokers,
            topics,
            until,
        } => {
            let kafka =
                Kafka::new(brokers, "trellis-progress", topics).unwrap_or_else(|e| fail(&e));
            (*until, Box::new(move || kafka.end_offsets()))
        }
        What::Group {
            brokers,
            group,
            topics,
            until,
        } => {
            let kafka = Kafka::new(brokers, group, topics).unwrap_or_else(|e| fail(&e));
            (*until, Box::new(move || kafka.committed()))
        }
        What::Parquet { root, topic, until } => {
            let (root, topic) = (root.clone(), topic.clone());
            (
                *until,
                Box::new(move || Ok(vec![parquet_records(&root, &topic)])),
            )
        }
        What::Metrics { url, metric, until } => {
            let (url, metric) = (url.clone(), metric.clone());
            (
                *until,
                Box::new(move || http_get(&url).map(|text| vec![metric_sum(&text, &metric)])),
            )
        }
        What::Clickhouse { url, query, until } => {
            let (url, query) = (url.clone(), query.clone());
            (
                *until,
                Box::new(move || clickhouse_number(&url, &query).map(|v| vec![v])),
            )
        }
    };

    let mut errors = 0;
    let mut start_value = None;
    let mut first_change = None;
    let mut first_value = 0;
    let mut value = 0;
    let mut parts = Vec::new();
    let done = loop {
        match sample() {
            Ok(p) => {
                let v = p.iter().sum();
                value = v;
                parts = p;
                let start = *start_value.get_or_insert(v);
                if first_change.is_none() && v != start {
                    first_change = Some(Instant::now());
                    first_value = v;
                }
                if v >= until {
                    break Some(Instant::now());
                }
            }
            Err(e) => {
                errors += 1;
                if errors % 50 == 1 {
                    eprintln!("progress: {e}");
                }
            }
        }
        if started.elapsed() > args.timeout {
            break None;
        }
        std::thread::sleep(args.interval);
    };
    let cpu: serde_json::Map<String, serde_json::Value> = args
        .cpu
        .iter()
        .zip(cpu_start)
        .map(|((name, pid), start)| {
            let used = match (start, cpu_seconds(*pid)) {
                (Some(a), Some(b)) => serde_json::json!(((b - a) * 100.0).round() / 100.0),
                _ => serde_json::Value::Null,
            };
            (name.clone(), used)
        })
        .collect();
    let round = |s: f64| (s * 1000.0).round() / 1000.0;
    let report = serde_json::json!({
        "until": until,
        "value": value,
        "start_value": start_value.unwrap_or(0),
        "first_change_s": first_change.map(|t| round(since(t))),
        "first_value": first_value,
        "done_s": done.map(|t| round(since(t))),
        "timed_out": done.is_none(),
        "parts": parts,
        "cpu_s": cpu,
    });
    println!("{report}");
    if done.is_none() {
        eprintln!(
            "progress: {value} of {until} after {:.0} s",
            args.timeout.as_secs_f64()
        );
        std::process::exit(1);
    }
}

fn fail(reason: &str) -> ! {
    eprintln!("progress: {reason}");
    std::process::exit(2);
}
