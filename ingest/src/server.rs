//! The HTTP server: routes and the serve loop.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use trellis_bus::Producer;

use crate::IngestConfig;

/// What request handlers share.
#[derive(Clone)]
pub struct State {
    /// Where accepted events go.
    pub producer: Arc<dyn Producer>,
    /// Settings.
    pub config: Arc<IngestConfig>,
}

/// The ingest routes.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Ready only while the bus answers: a load balancer stops sending to an ingest that cannot
/// store what it would accept.
async fn readyz(
    axum::extract::State(state): axum::extract::State<State>,
) -> (StatusCode, &'static str) {
    if state.producer.is_ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "bus unreachable")
    }
}

/// Serves on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "Ingest listening.");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
