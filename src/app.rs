//! Start-up wiring: open the bus, create the topics, start the stages, stop them cleanly.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;

/// Opens the configured bus and makes sure every topic exists.
pub async fn open_bus(config: &Config) -> anyhow::Result<Arc<dyn trellis_bus::Bus>> {
    let bus = trellis_bus::open(&config.bus)
        .await
        .context("opening the bus")?;
    for topic in config.topics.names().all() {
        bus.create_topic(topic, config.topics.partitions)
            .await
            .with_context(|| format!("creating topic {topic}"))?;
    }
    Ok(bus)
}

/// The ingest stage's state on `bus`; `other_metrics` are served on `/metrics` beside ingest's
/// own.
pub fn ingest_state(
    config: &Config,
    bus: &dyn trellis_bus::Bus,
    other_metrics: Vec<trellis_ingest::MetricsSource>,
) -> anyhow::Result<trellis_ingest::AppState> {
    Ok(trellis_ingest::state_with(
        config.ingest.clone(),
        bus.producer()?,
        config.topics.names(),
        other_metrics,
    ))
}

/// Serves the ingest stage on `listener` until `shutdown` resolves.
pub async fn run_ingest(
    state: trellis_ingest::AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    trellis_ingest::run(listener, state, shutdown)
        .await
        .context("serving ingest")
}

/// The processor stages `trellis run` runs with `config`, in data-flow order.
pub fn processor_stages(config: &Config) -> Vec<&'static str> {
    use trellis_processors::{detect, issues, pipeline};
    let mut stages = vec![pipeline::STAGE, issues::STAGE];
    if config.processors.detect.enabled {
        stages.extend([detect::STAGE, detect::PERF_STAGE]);
    }
    if config.alerts.enabled {
        stages.push(trellis_alerts::STAGE);
    }
    stages
}

/// Runs the processors (the `process`, `issues` and, unless disabled, `detect` stages) until
/// `shutdown` resolves; they checkpoint before returning.
pub async fn run_processors(
    config: &Config,
    bus: Arc<dyn trellis_bus::Bus>,
    metrics: Arc<trellis_processors::ProcessorMetrics>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    use trellis_processors::runtime::{self, Checkpoints, RunnerConfig};
    let p = &config.processors;
    let names = config.topics.names();
    let runner = |group: &str, topic: &str| RunnerConfig {
        group: group.to_string(),
        topic: topic.to_string(),
        dlq: names.dlq.clone(),
        poll_max: p.poll_max,
        poll_timeout: std::time::Duration::from_millis(200),
        checkpoint_interval: p.checkpoint_interval,
        idle_timeout: p.idle_timeout,
    };
    let groupers = trellis_processors::issues::Groupers::new(&p.grouping, &p.project_grouping)
        .map_err(|reason| anyhow::anyhow!("configuration: {reason}"))?;
    let process = runtime::run(
        bus.clone(),
        trellis_processors::PipelineFactory::new(p, names.clone())
            .map_err(|reason| anyhow::anyhow!("configuration: {reason}"))?,
        Checkpoints::new(&p.checkpoint_dir, trellis_processors::pipeline::STAGE),
        runner(&p.group, &names.raw),
        metrics.clone(),
        shutdown.clone().cancelled_owned(),
    );
    let issues = runtime::run(
        bus.clone(),
        {
            let issues =
                trellis_processors::issues::IssueFactory::new(Arc::new(groupers), names.clone())
                    .with_max_issues(p.max_issues);
            if p.detect.enabled && (p.detect.spikes || p.detect.velocity) {
                issues.with_detection(p.detect.clone())
            } else {
                issues
            }
        },
        Checkpoints::new(&p.checkpoint_dir, trellis_processors::issues::STAGE),
        runner(&p.issues_group, &names.grouped),
        metrics.clone(),
        shutdown.clone().cancelled_owned(),
    );
    use trellis_processors::detect::{self, DetectFactory, PerfDetector, ReleaseDetector};
    let detect = async {
        if !p.detect.enabled {
            return Ok(());
        }
        let releases = runtime::run(
            bus.clone(),
            DetectFactory::<ReleaseDetector>::new(p.detect.clone(), names.clone()),
            Checkpoints::new(&p.checkpoint_dir, detect::STAGE),
            runner(&p.detect.group, &names.sessions),
            metrics.clone(),
            shutdown.clone().cancelled_owned(),
        );
        let perf = runtime::run(
            bus,
            DetectFactory::<PerfDetector>::new(p.detect.clone(), names.clone()),
            Checkpoints::new(&p.checkpoint_dir, detect::PERF_STAGE),
            runner(&p.detect.perf_group, &names.aggregates),
            metrics,
            shutdown.clone().cancelled_owned(),
        );
        tokio::try_join!(releases, perf).map(|_| ())
    };
    tokio::try_join!(
        async { process.await.context("running the process stage") },
        async { issues.await.context("running the issues stage") },
        async { detect.await.context("running the detect stage") },
    )?;
    Ok(())
}

/// Runs the `alert` stage (unless `alerts.enabled` is false) until `shutdown` resolves: the
/// decider over `detections`, which checkpoints before returning, and the deliverer over
/// `alerts`.
pub async fn run_alerts(
    config: &Config,
    bus: Arc<dyn trellis_bus::Bus>,
    metrics: Arc<trellis_processors::ProcessorMetrics>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    use trellis_processors::runtime::{self, Checkpoints, RunnerConfig};
    if !config.alerts.enabled {
        shutdown.cancelled().await;
        return Ok(());
    }
    let p = &config.processors;
    let names = config.topics.names();
    let decide = runtime::run(
        bus.clone(),
        trellis_alerts::AlertFactory::new(config.alerts.clone(), names.clone()),
        Checkpoints::new(&p.checkpoint_dir, trellis_alerts::STAGE),
        RunnerConfig {
            group: config.alerts.group.clone(),
            topic: names.detections.clone(),
            dlq: names.dlq.clone(),
            poll_max: p.poll_max,
            poll_timeout: std::time::Duration::from_millis(200),
            checkpoint_interval: p.checkpoint_interval,
            idle_timeout: p.idle_timeout,
        },
        metrics.clone(),
        shutdown.clone().cancelled_owned(),
    );
    let state_dir = p.checkpoint_dir.join(trellis_alerts::deliver::STAGE);
    let deliver = trellis_alerts::deliver::run(
        bus,
        config.alerts.clone(),
        names,
        metrics,
        &state_dir,
        shutdown.clone().cancelled_owned(),
    );
    tokio::try_join!(
        async { decide.await.context("running the alert stage") },
        async { deliver.await.context("delivering alerts") },
    )?;
    Ok(())
}

/// Runs the Parquet sink until `shutdown` resolves, counting into `metrics`.
pub async fn run_parquet_sink(
    config: &Config,
    bus: Arc<dyn trellis_bus::Bus>,
    metrics: Arc<trellis_sinks::parquet::ParquetMetrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    trellis_sinks::parquet::run_with_metrics(
        bus,
        config.topics.names(),
        config.sinks.parquet.clone(),
        metrics,
        shutdown,
    )
    .await
    .context("running the Parquet sink")
}

/// Runs the ClickHouse sink until `shutdown` resolves.
pub async fn run_clickhouse_sink(
    config: &Config,
    bus: Arc<dyn trellis_bus::Bus>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    trellis_sinks::clickhouse::run(
        bus,
        config.topics.names(),
        config.sinks.clickhouse.clone(),
        shutdown,
    )
    .await
    .context("running the ClickHouse sink")
}

/// Serves `metrics` on `GET /metrics` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<trellis_processors::ProcessorMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving processor metrics")
}

/// The one shutdown of a process: every stage it runs is handed a clone
/// (`shutdown.clone().cancelled_owned()` where a stage takes a future), and cancelling it once
/// stops them all.
pub type Shutdown = tokio_util::sync::CancellationToken;

/// A [`Shutdown`] cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> Shutdown {
    let shutdown = Shutdown::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    shutdown
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("Shutting down: finishing in-flight work.");
}
