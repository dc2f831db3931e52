//! A small command-line client of the bus, for smoke checks and for the crash tests.
//!
//! ```text
//! trellis-bus-tool produce BUS TOPIC COUNT BATCH     # publishes COUNT numbered messages
//! trellis-bus-tool consume BUS TOPIC GROUP EVERY     # reads, committing every EVERY records
//! ```
//! `BUS` is `embedded:PATH` or `kafka:BROKERS`. `produce` prints `acked N` once messages 0..N are
//! acknowledged; message `i` has payload `i` and key `key-{i % 10}`. `consume` prints
//! `record PARTITION OFFSET PAYLOAD` for each record and `committed` after each commit. Both flush
//! every line, so a parent process knows exactly what happened before it killed them.

use std::io::Write;
use std::time::Duration;

use trellis_bus::config::{EmbeddedConfig, KafkaConfig};
use trellis_bus::{BusConfig, Message, Offsets};

fn bus_config(spec: &str) -> Result<BusConfig, String> {
    match spec.split_once(':') {
        Some(("embedded", path)) => Ok(BusConfig::Embedded(EmbeddedConfig {
            path: path.into(),
            ..EmbeddedConfig::default()
        })),
        Some(("kafka", brokers)) => Ok(BusConfig::Kafka(KafkaConfig {
            brokers: brokers.into(),
            session_timeout: Duration::from_secs(6),
            ..KafkaConfig::default()
        })),
        _ => Err(format!(
            "bus {spec:?} is neither embedded:PATH nor kafka:BROKERS"
        )),
    }
}

fn number(arg: Option<&String>, name: &str) -> Result<u64, String> {
    arg.ok_or(format!("missing {name}"))?
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

async fn run(args: &[String]) -> Result<(), String> {
    let usage =
        "usage: trellis-bus-tool produce BUS TOPIC COUNT BATCH | consume BUS TOPIC GROUP EVERY";
    let command = args.first().ok_or(usage)?;
    let bus = trellis_bus::open(&bus_config(args.get(1).ok_or(usage)?)?)
        .await
        .map_err(|e| e.to_string())?;
    let topic = args.get(2).ok_or(usage)?;
    let mut out = std::io::stdout().lock();
    match command.as_str() {
        "produce" => {
            let count = number(args.get(3), "COUNT")?;
            let batch = number(args.get(4), "BATCH")?.max(1);
            let producer = bus.producer().map_err(|e| e.to_string())?;
            let mut next = 0;
            while next < count {
                let end = (next + batch).min(count);
                let messages = (next..end)
                    .map(|i| Message::new(topic.as_str(), format!("key-{}", i % 10), i.to_string()))
                    .collect();
                producer
                    .publish(messages)
                    .await
                    .map_err(|e| e.to_string())?;
                writeln!(out, "acked {end}")
                    .and_then(|_| out.flush())
                    .map_err(|e| e.to_string())?;
                next = end;
            }
        }
        "consume" => {
            let group = args.get(3).ok_or(usage)?;
            let every = number(args.get(4), "EVERY")?.max(1) as usize;
            let mut consumer = bus
                .consumer(group, &[topic])
                .await
                .map_err(|e| e.to_string())?;
            let mut pending = Offsets::default();
            let mut uncommitted = 0;
            loop {
                let records = consumer
                    .poll(every, Duration::from_millis(200))
                    .await
                    .map_err(|e| e.to_string())?;
                for record in &records {
                    let payload = String::from_utf8_lossy(&record.payload);
                    writeln!(
                        out,
                        "record {} {} {payload}",
                        record.partition, record.offset
                    )
                    .map_err(|e| e.to_string())?;
                    pending.advance(record);
                    uncommitted += 1;
                    if uncommitted == every {
                        consumer.commit(&pending).await.map_err(|e| e.to_string())?;
                        writeln!(out, "committed").map_err(|e| e.to_string())?;
                        uncommitted = 0;
                    }
                }
                out.flush().map_err(|e| e.to_string())?;
            }
        }
        _ => return Err(usage.to_string()),
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args).await {
        eprintln!("trellis-bus-tool: {e}");
        std::process::exit(2);
    }
}
