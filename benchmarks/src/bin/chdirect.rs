//! ClickHouse's own limit for the sink's rows: reads every record of a topic the ClickHouse sink
//! reads (`events` by default), encodes them exactly as the sink does (its `Batch`, so
//! `encode_record`, `RowBinary`, one insert per table per batch of `--batch-rows` records), then
//! times inserting those bytes straight into ClickHouse with the `clickhouse` crate configured as
//! the sink's client (LZ4, one insert at a time). No bus, no decoding in the timed part: what the
//! sink is compared against.
//!
//! ```text
//! chdirect --brokers B --prefix bench. --url http://127.0.0.1:8123 --database direct
//! chdirect --url http://127.0.0.1:8123 --database sinkdb --migrate-only   # create the schema
//! ```
//!
//! The database is created and migrated with the sink's migrations first (tables and rollups),
//! so both inserts do the same work in the server.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use trellis_bus::BusConfig;
use trellis_bus::config::KafkaConfig;
use trellis_schemas::topics::Names;
use trellis_sinks::clickhouse::ClickHouseConfig;
use trellis_sinks::clickhouse::batch::Batch;
use trellis_sinks::clickhouse::encode::plan;

#[derive(Parser)]
#[command(about = "Inserts a topic's rows straight into ClickHouse, as the sink would")]
struct Args {
    /// Bootstrap brokers (not needed with --migrate-only).
    #[arg(long, default_value = "")]
    brokers: String,
    /// Topic prefix.
    #[arg(long, default_value = "")]
    prefix: String,
    /// ClickHouse HTTP URL.
    #[arg(long)]
    url: String,
    /// Database to create, migrate and insert into.
    #[arg(long)]
    database: String,
    /// Records per batch, as `sinks.clickhouse.batch_rows`.
    #[arg(long, default_value_t = ClickHouseConfig::default().batch_rows)]
    batch_rows: usize,
    /// Send inserts uncompressed (the sink's `compression = false`).
    #[arg(long)]
    no_compression: bool,
    /// Records to read from the topic; by default its end offsets (which tansu's memory storage
    /// reports without the last producer batch).
    #[arg(long)]
    expect: Option<u64>,
    /// Only create and migrate the database.
    #[arg(long)]
    migrate_only: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("chdirect: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = ClickHouseConfig {
        url: args.url.clone(),
        database: args.database.clone(),
        batch_rows: args.batch_rows,
        compression: !args.no_compression,
        ..ClickHouseConfig::default()
    };
    config.validate().map_err(|e| e.to_string())?;
    let migrated = trellis_sinks::clickhouse::migrate(&config)
        .await
        .map_err(|e| format!("migrating {}: {e}", args.database))?;
    if args.migrate_only {
        if !args.json {
            println!("{} migrated on {}", args.database, migrated.server);
        }
        return Ok(());
    }

    // Read the whole topic first: none of this is timed.
    let names = Names::new(&args.prefix);
    let bus = trellis_bus::open(&BusConfig::Kafka(KafkaConfig {
        brokers: args.brokers.clone(),
        ..KafkaConfig::default()
    }))
    .await
    .map_err(|e| e.to_string())?;
    let topic = names.events.as_str();
    let group = format!(
        "chdirect-{}-{}",
        std::process::id(),
        trellis_ingest::time::now_ms()
    );
    let mut consumer = bus
        .consumer(&group, &[topic])
        .await
        .map_err(|e| e.to_string())?;
    let partitions = bus.partitions(topic).await.map_err(|e| e.to_string())?;
    let mut total = 0;
    for p in 0..partitions {
        total += consumer
            .end_offset(topic, p)
            .await
            .map_err(|e| e.to_string())?;
    }
    let total = args.expect.unwrap_or(total);
    let mut records = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(600);
    while (records.len() as u64) < total {
        if Instant::now() > deadline {
            return Err(format!(
                "read {} of {total} records in 600 s",
                records.len()
            ));
        }
        records.extend(
            consumer
                .poll(5_000, Duration::from_millis(200))
                .await
                .map_err(|e| e.to_string())?,
        );
    }

    // Encode as the sink does, batch by batch; keep only each table's bytes.
    let encode_started = Instant::now();
    let now = Instant::now();
    let mut inserts: Vec<(String, Bytes, usize)> = Vec::new();
    let (mut rows, mut refused) = (0, 0);
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let mut batch = Batch::default();
        for record in records.by_ref().take(args.batch_rows) {
            batch.push(&names, record, now);
        }
        refused += batch.refused().len();
        for (target, table_rows) in batch.tables() {
            let sql = plan(target).insert_sql(&args.database, target.name());
            let bytes = Bytes::copy_from_slice(table_rows.bytes(0..table_rows.len()));
            rows += table_rows.len();
            inserts.push((sql, bytes, table_rows.len()));
        }
    }
    let encode_s = encode_started.elapsed().as_secs_f64();
    if refused > 0 {
        return Err(format!("{refused} records did not encode"));
    }

    // The timed part: the same inserts the sink would send, one after the other.
    let client = trellis_sinks::clickhouse::migrations::client(&config);
    let bytes: usize = inserts.iter().map(|(_, b, _)| b.len()).sum();
    let started = Instant::now();
    for (i, (sql, data, _)) in inserts.iter().enumerate() {
        let timeout = Some(config.request_timeout);
        let mut insert = client
            .insert_formatted_with(sql.clone())
            .with_timeouts(timeout, timeout);
        if migrated.server.has_dedup_tokens() {
            insert = insert.with_option("insert_deduplication_token", format!("{group}-{i}"));
        }
        insert
            .send(data.clone())
            .await
            .map_err(|e| format!("insert {i}: {e}"))?;
        insert.end().await.map_err(|e| format!("insert {i}: {e}"))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "rows": rows,
        "inserts": inserts.len(),
        "batch_rows": args.batch_rows,
        "rowbinary_mb": (bytes as f64 / 1e6 * 10.0).round() / 10.0,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "rows_per_s": (rows as f64 / elapsed).round(),
        "encode_s": (encode_s * 1000.0).round() / 1000.0,
        "encode_rows_per_s": (rows as f64 / encode_s).round(),
        "server": migrated.server.to_string(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{rows} rows in {} inserts ({:.1} MB RowBinary): {:.2} s, {} rows/s (encoding them took {:.2} s)",
            inserts.len(),
            bytes as f64 / 1e6,
            elapsed,
            report["rows_per_s"],
            encode_s
        );
    }
    Ok(())
}
