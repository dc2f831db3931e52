//! The `trellis` command: runs the pipeline on one machine, or one stage of it for scale-out.
//!
//! Data enters through the HTTP ingest (`trellis_ingest`), which publishes Avro events
//! (`trellis_schemas`) to the bus (`trellis_bus`: Kafka or the embedded log); processors and sinks
//! read them from there. See ARCHITECTURE.md for the whole path.

mod app;
mod cohorts;
mod config;
mod demo;
mod funnel;
mod guard;
mod issues;
mod paths;
mod push;
mod status;

/// Ingest allocates and frees small buffers per event; mimalloc does that in a fraction of the
/// time glibc's allocator takes (profile in benchmarks/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use trellis_schemas::tables::Table;
use trellis_schemas::{Kind, avro, clickhouse, records};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "trellis",
    version,
    about = "Event-streaming analytics for mobile apps"
)]
struct Cli {
    /// Configuration file (TOML). Without it, defaults plus TRELLIS_* environment variables.
    #[arg(long, short, global = true, env = "TRELLIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the whole pipeline in this process (one machine; embedded bus by default).
    Run,
    /// Runs only the HTTP ingest (scale-out: several ingest processes share one Kafka).
    Ingest,
    /// Runs only the processors (scale-out: instances in one consumer group split the
    /// partitions and share `processors.checkpoint_dir`).
    Process,
    /// Runs only the alert stage: decides alerts from `detections` and delivers them
    /// (scale-out; `trellis run` includes it).
    Alert,
    /// Shows the rollout guard at work: starts trellis on a temporary directory with a built-in
    /// receiver, sends a fleet with a bad OTA update on 5% of it, and prints the Slack message
    /// and the signed `rollout.halt` call.
    Demo {
        /// Devices in the simulated fleet.
        #[arg(long, default_value_t = 8000)]
        devices: u32,
        /// Seed of the simulated fleet.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Give up after this long without a halt.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Prints the effective configuration, after the file and the environment, as TOML.
    Config,
    /// Schema tools.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Changes an issue through the admin API of a running trellis.
    Issues(issues::IssuesArgs),
    /// Lists rollouts and the guard's view of them; registers, halts, resumes or ignores one.
    #[command(subcommand)]
    Rollouts(guard::Rollouts),
    /// Lists alerts; acknowledges or silences one.
    #[command(subcommand)]
    Alerts(guard::Alerts),
    /// Weekly retention: cohorts by the week of people's first event or by its OTA update, and
    /// how many of each were active each week after, from the Parquet files.
    Cohorts(cohorts::CohortsArgs),
    /// How many people went through steps in order (event names, or `screen:NAME`), from the
    /// Parquet files.
    Funnel(funnel::FunnelArgs),
    /// Where people go after a screen: the most followed paths of screen views, from the
    /// Parquet files.
    Paths(paths::PathsArgs),
    /// What Expo's push tickets and receipts say: the tokens to stop sending to.
    #[command(subcommand)]
    Push(push::Push),
    /// Runs one sink alone (scale-out).
    Sink {
        /// Which sink.
        #[arg(value_enum)]
        sink: SinkKind,
    },
    /// Answers SQL over the Parquet files (tables: events, errors, perf, transactions,
    /// session_updates, notifications, sessions, health_partials, issues, detections, alerts,
    /// audit, deploys, push), also while trellis runs.
    Query {
        /// The SQL.
        sql: String,
        /// How to print the answer: table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SinkKind {
    /// Parquet files under `sinks.parquet.root`.
    Parquet,
    /// ClickHouse tables (`sinks.clickhouse`).
    Clickhouse,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Writes the Avro schema of every kind as DIR/KIND.avsc.
    Export {
        /// Where to write them.
        #[arg(long, default_value = "schemas/avro")]
        dir: PathBuf,
    },
    /// Prints the ClickHouse DDL of every table.
    Clickhouse {
        /// Database the tables live in.
        #[arg(long, default_value = "trellis")]
        database: String,
    },
}

/// Answers `sql` over the Parquet files under `root` and prints it in `format` (table, csv or
/// json); `what` names the query in an error.
pub(crate) async fn print_query(
    root: &std::path::Path,
    sql: &str,
    format: &str,
    what: &str,
) -> anyhow::Result<()> {
    let format: trellis_sinks::query::OutputFormat = format
        .parse()
        .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    let answer = trellis_sinks::query::query(root, sql, format)
        .await
        .context(what.to_string())?;
    print!("{answer}");
    if !answer.ends_with('\n') {
        println!();
    }
    Ok(())
}

async fn bind(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.ingest.listen)
        .await
        .with_context(|| format!("listening on {} (ingest.listen)", config.ingest.listen))
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schema(SchemaCommand::Export { dir }) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let events = Kind::ALL.map(|kind| (kind.as_str(), avro::derived_avsc(kind)));
            for (name, avsc) in events.into_iter().chain(records::every_avsc()) {
                let path = dir.join(format!("{name}.avsc"));
                std::fs::write(&path, avsc)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Schema(SchemaCommand::Clickhouse { database }) => {
            println!("CREATE DATABASE IF NOT EXISTS {database};\n");
            for table in Table::all() {
                println!(
                    "{};\n",
                    clickhouse::create_table(&database, table).trim_end()
                );
            }
            Ok(())
        }
        Command::Issues(args) => issues::run(args),
        Command::Rollouts(command) => {
            let config = Config::load(cli.config.as_deref())?;
            guard::rollouts(command, &config.sinks.parquet.root).await
        }
        Command::Alerts(command) => {
            let config = Config::load(cli.config.as_deref())?;
            guard::alerts(command, &config.sinks.parquet.root).await
        }
        Command::Cohorts(args) => {
            let config = Config::load(cli.config.as_deref())?;
            cohorts::run(args, &config.sinks.parquet.root).await
        }
        Command::Paths(args) => {
            let config = Config::load(cli.config.as_deref())?;
            paths::run(args, &config.sinks.parquet.root).await
        }
        Command::Funnel(args) => {
            let config = Config::load(cli.config.as_deref())?;
            funnel::run(args, &config.sinks.parquet.root).await
        }
        Command::Push(command) => {
            let config = Config::load(cli.config.as_deref())?;
            push::run(command, &config.sinks.parquet.root).await
        }
        Command::Demo {
            devices,
            seed,
            timeout,
        } => demo::run(devices, seed, timeout).await,
        Command::Query { sql, format } => {
            let config = Config::load(cli.config.as_deref())?;
            print_query(&config.sinks.parquet.root, &sql, &format, "query").await
        }
        Command::Sink { sink } => {
            let config = Config::load(cli.config.as_deref())?;
            init_tracing(&config.log);
            let bus = app::open_bus(&config).await?;
            match sink {
                SinkKind::Parquet => {
                    let metrics = Arc::new(trellis_sinks::parquet::ParquetMetrics::default());
                    app::run_parquet_sink(
                        &config,
                        bus,
                        metrics,
                        app::shutdown_on_signal().cancelled_owned(),
                    )
                    .await
                }
                SinkKind::Clickhouse => {
                    app::run_clickhouse_sink(
                        &config,
                        bus,
                        app::shutdown_on_signal().cancelled_owned(),
                    )
                    .await
                }
            }
        }
        Command::Config => {
            let config = Config::load(cli.config.as_deref())?;
            print!(
                "{}",
                config
                    .redacted_toml()
                    .context("rendering the configuration")?
            );
            Ok(())
        }
        Command::Ingest => {
            let config = Config::load(cli.config.as_deref())?;
            init_tracing(&config.log);
            let bus = app::open_bus(&config).await?;
            let listener = bind(&config).await?;
            tracing::info!(bus = ?config.bus, "trellis ingest started.");
            let state = app::ingest_state(&config, bus.as_ref(), Vec::new())?;
            app::run_ingest(state, listener, app::shutdown_on_signal().cancelled_owned()).await
        }
        Command::Process | Command::Alert => {
            let config = Config::load(cli.config.as_deref())?;
            init_tracing(&config.log);
            let bus = app::open_bus(&config).await?;
            let metrics = Arc::new(trellis_processors::ProcessorMetrics::default());
            if let Some(addr) = config.processors.metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr} (processors.metrics_listen)"))?;
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let serving = app::serve_metrics(listener, metrics, std::future::pending());
                    if let Err(e) = serving.await {
                        tracing::error!(error = %e, "Metrics endpoint failed.");
                    }
                });
            }
            if matches!(cli.command, Command::Alert) {
                tracing::info!(bus = ?config.bus, "trellis alert started.");
                return app::run_alerts(&config, bus, metrics, &app::shutdown_on_signal()).await;
            }
            tracing::info!(bus = ?config.bus, "trellis processors started.");
            app::run_processors(&config, bus, metrics, &app::shutdown_on_signal()).await
        }
        Command::Run => {
            let config = Config::load(cli.config.as_deref())?;
            init_tracing(&config.log);
            let bus = app::open_bus(&config).await?;
            let listener = bind(&config).await?;
            let shutdown = app::shutdown_on_signal();
            let metrics = Arc::new(trellis_processors::ProcessorMetrics::default());
            let sink_metrics = Arc::new(trellis_sinks::parquet::ParquetMetrics::default());
            let sources: Vec<trellis_ingest::MetricsSource> = vec![
                Box::new({
                    let metrics = metrics.clone();
                    move |registry| metrics.register(registry)
                }),
                Box::new({
                    let metrics = sink_metrics.clone();
                    move |registry| metrics.register(registry)
                }),
            ];
            let ingest = app::ingest_state(&config, bus.as_ref(), sources)?;
            if !config.status_interval.is_zero() {
                let sources = status::Sources {
                    ingest: ingest.clone(),
                    processors: metrics.clone(),
                    parquet: sink_metrics.clone(),
                    stages: app::processor_stages(&config),
                    lags_known: matches!(config.bus, trellis_bus::BusConfig::Embedded(_)),
                };
                let every = config.status_interval;
                tokio::spawn(status::report(
                    sources,
                    every,
                    shutdown.clone().cancelled_owned(),
                ));
            }
            tracing::info!(bus = ?config.bus, "trellis started.");
            tokio::try_join!(
                app::run_ingest(ingest, listener, shutdown.clone().cancelled_owned()),
                app::run_processors(&config, bus.clone(), metrics.clone(), &shutdown),
                app::run_alerts(&config, bus.clone(), metrics, &shutdown),
                app::run_parquet_sink(
                    &config,
                    bus.clone(),
                    sink_metrics,
                    shutdown.clone().cancelled_owned()
                ),
                async {
                    if !config.sinks.clickhouse.enabled {
                        return Ok(());
                    }
                    app::run_clickhouse_sink(&config, bus, shutdown.clone().cancelled_owned()).await
                },
            )?;
            Ok(())
        }
    }
}
