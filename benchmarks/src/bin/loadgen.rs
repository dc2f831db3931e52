//! Drives the HTTP ingest with a synthetic app fleet and reports accepted events/s, MB/s and
//! latency percentiles (HDR histogram).
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --key trellis_dev_key --batch 100 --connections 8 --duration 20s
//! loadgen ... --rate 50000            # a fixed rate in events/s instead of as fast as possible
//! ```

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use trellis_benchmarks::fleet::{Fleet, Mix};

#[derive(Parser, Clone)]
#[command(about = "Load generator for the trellis ingest")]
struct Args {
    /// Ingest base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Project key.
    #[arg(long, default_value = "trellis_dev_key")]
    key: String,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long to send.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Target rate in events/s across all connections; 0 sends as fast as answers come.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Body compression: none, gzip or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Event mix, for example analytics=70,errors=5,performance=15,sessions=5,notifications=5.
    #[arg(
        long,
        default_value = "analytics=70,errors=5,performance=15,sessions=5,notifications=5"
    )]
    mix: Mix,
    /// Simulated devices.
    #[arg(long, default_value_t = 10_000)]
    devices: u64,
    /// Distinct batches prepared per connection (sent round-robin).
    #[arg(long, default_value_t = 16)]
    prepared: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn compress(kind: &str, body: Vec<u8>) -> Vec<u8> {
    match kind {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body).expect("in memory");
            e.finish().expect("in memory")
        }
        "zstd" => zstd::encode_all(&body[..], 3).expect("in memory"),
        _ => body,
    }
}

struct Totals {
    ok_requests: AtomicU64,
    failed_requests: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !["none", "gzip", "zstd"].contains(&args.compression.as_str()) {
        eprintln!("loadgen: --compression must be none, gzip or zstd");
        std::process::exit(2);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .build()
        .expect("a client");
    // Prepare bodies up front, so generating JSON does not compete with the server for CPU.
    let mut raw_bytes = 0usize;
    let mut bodies = Vec::new();
    for c in 0..args.connections {
        let mut fleet = Fleet::new(args.seed.wrapping_add(c as u64), args.devices, args.mix);
        let mut mine = Vec::new();
        for _ in 0..args.prepared {
            let body = fleet.batch(args.batch);
            raw_bytes += body.len();
            mine.push(Arc::new(compress(&args.compression, body)));
        }
        bodies.push(mine);
    }
    let avg_event = raw_bytes / (args.connections * args.prepared * args.batch).max(1);

    // Check once that the server accepts what we send, so a misconfiguration is not measured.
    let probe = client
        .post(format!("{}/v1/batch", args.url))
        .bearer_auth(&args.key)
        .header("Content-Type", "application/json")
        .header(
            "Content-Encoding",
            if args.compression == "none" {
                "identity"
            } else {
                &args.compression
            },
        )
        .body(bodies[0][0].as_ref().clone())
        .send()
        .await;
    match probe {
        Ok(r) if r.status().is_success() => {
            let outcome: serde_json::Value = r.json().await.unwrap_or_default();
            if outcome["accepted"].as_u64() != Some(args.batch as u64) {
                eprintln!(
                    "loadgen: ingest accepted {} of {} events: {outcome}",
                    outcome["accepted"], args.batch
                );
                std::process::exit(1);
            }
        }
        Ok(r) => {
            eprintln!(
                "loadgen: ingest answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("loadgen: cannot reach {}: {e}", args.url);
            std::process::exit(1);
        }
    }

    let totals = Arc::new(Totals {
        ok_requests: AtomicU64::new(0),
        failed_requests: AtomicU64::new(0),
        events: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let deadline = started + args.duration;
    let per_connection_interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.connections as f64 / args.rate as f64)
    });
    let mut tasks = Vec::new();
    for mine in bodies {
        let client = client.clone();
        let args = args.clone();
        let totals = totals.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let url = format!("{}/v1/batch", args.url);
            let mut ticker = per_connection_interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut i = 0;
            let mut ok_requests = 0;
            while Instant::now() < deadline {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let body = mine[i % mine.len()].clone();
                i += 1;
                let len = body.len() as u64;
                let sent = Instant::now();
                let mut request = client
                    .post(&url)
                    .bearer_auth(&args.key)
                    .header("Content-Type", "application/json")
                    .body(body.as_ref().clone());
                if args.compression != "none" {
                    request = request.header("Content-Encoding", &args.compression);
                }
                let ok = match request.send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                let micros = sent.elapsed().as_micros() as u64;
                if ok {
                    ok_requests += 1;
                    histogram.saturating_record(micros.max(1));
                    totals.ok_requests.fetch_add(1, Ordering::Relaxed);
                    totals
                        .events
                        .fetch_add(args.batch as u64, Ordering::Relaxed);
                    totals.bytes.fetch_add(len, Ordering::Relaxed);
                } else {
                    totals.failed_requests.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Bodies are sent round-robin, so past `prepared` requests they repeat (duplicates
            // the processors drop). Exact when no request failed.
            (histogram, ok_requests.min(mine.len()) * args.batch)
        }));
    }
    let progress = (!args.quiet && !args.json).then(|| {
        let bar = indicatif::ProgressBar::new(args.duration.as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}")
                .expect("valid template"),
        );
        bar
    });
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(bar) = &progress {
            let secs = started.elapsed().as_secs_f64();
            bar.set_position(secs as u64);
            bar.set_message(format!(
                "{:.0} events/s",
                totals.events.load(Ordering::Relaxed) as f64 / secs
            ));
        }
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut distinct = 0;
    for t in tasks {
        let (h, d) = t.await.expect("a sender task");
        histogram.add(h).expect("same bounds");
        distinct += d;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let events = totals.events.load(Ordering::Relaxed);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "events_per_s": (events as f64 / elapsed).round(),
        "mb_per_s_wire": (totals.bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6 * 100.0).round() / 100.0,
        "requests_ok": totals.ok_requests.load(Ordering::Relaxed),
        "requests_failed": totals.failed_requests.load(Ordering::Relaxed),
        "events_accepted": events,
        "distinct_events": distinct,
        "started_unix_s": started_unix,
        "avg_event_bytes": avg_event,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": histogram.max() as f64 / 1000.0},
        "batch": args.batch, "connections": args.connections, "rate": args.rate, "compression": args.compression,
        "seconds": (elapsed * 10.0).round() / 10.0,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("accepted events/s   {}", report["events_per_s"]);
        println!("wire MB/s           {}", report["mb_per_s_wire"]);
        println!(
            "requests ok/failed  {}/{}",
            report["requests_ok"], report["requests_failed"]
        );
        println!("avg event bytes     {avg_event}");
        println!(
            "latency ms          p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0
        );
    }
}
