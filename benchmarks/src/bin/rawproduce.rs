//! The broker's limit: pushes the fleet's events (the same JSON bytes the load generator sends,
//! one message each) into Kafka with a plain rdkafka producer, configured as trellis's own
//! (idempotent, acks=all, lz4, linger 5 ms), and reports acknowledged messages/s. No parsing, no
//! HTTP: what ingest is compared against.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use trellis_benchmarks::fleet::{Fleet, Mix};

#[derive(Parser)]
#[command(about = "Plain rdkafka producer baseline")]
struct Args {
    /// Bootstrap brokers.
    #[arg(long)]
    brokers: String,
    /// Topic (created with 8 partitions if missing).
    #[arg(long, default_value = "bench.raw")]
    topic: String,
    /// How long to send.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Distinct events prepared (sent round-robin).
    #[arg(long, default_value_t = 10_000)]
    prepared: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

struct Counter(Arc<AtomicU64>, Arc<AtomicU64>);
impl ClientContext for Counter {}
impl ProducerContext for Counter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.1.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(&args.topic, 8, TopicReplication::Fixed(1));
    let _ = admin.create_topics([&topic], &AdminOptions::new()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut fleet = Fleet::new(7, 10_000, Mix::default());
    let events: Vec<(String, Vec<u8>)> = (0..args.prepared)
        .map(|_| {
            let e = fleet.event();
            (
                e["device_id"].as_str().unwrap_or("d").to_string(),
                serde_json::to_vec(&e).expect("serializable"),
            )
        })
        .collect();
    let avg = events.iter().map(|(_, p)| p.len()).sum::<usize>() / events.len().max(1);
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let producer: ThreadedProducer<Counter> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create_with_context(Counter(acked.clone(), failed.clone()))
        .expect("producer");
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut i = 0usize;
    while Instant::now() < deadline {
        let (key, payload) = &events[i % events.len()];
        let mut record = BaseRecord::to(&args.topic).key(key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => {
                    eprintln!("rawproduce: {e}");
                    std::process::exit(1);
                }
            }
        }
        i += 1;
    }
    let _ = producer.flush(Duration::from_secs(30));
    let elapsed = started.elapsed().as_secs_f64();
    let n = acked.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "events_per_s": (n as f64 / elapsed).round(),
        "mb_per_s": (n as f64 * avg as f64 / elapsed / 1e6 * 100.0).round() / 100.0,
        "acked": n, "failed": failed.load(Ordering::Relaxed), "avg_event_bytes": avg,
        "seconds": (elapsed * 10.0).round() / 10.0,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "acked messages/s {} ({} MB/s, {} B each), failed {}",
            report["events_per_s"], report["mb_per_s"], avg, report["failed"]
        );
    }
}
