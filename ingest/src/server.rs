//! The HTTP server: routes, body limits, authentication, and the serve loop.
//!
//! Bodies pass three guards: a `Content-Length` over `max_wire_bytes` is refused before reading;
//! the wire bytes of a streamed body are counted as they arrive (`RequestBodyLimitLayer`); and
//! the body is decompressed as it streams (`RequestDecompressionLayer`: gzip, deflate, br, zstd)
//! into a buffer that stops at `max_decompressed_bytes`. Memory per request is bounded by that
//! limit, whatever the compression ratio, and at most `max_concurrent_requests` bodies are read
//! at once, across every route. A request has `request_timeout` from its headers to its answer
//! (then 408); a connection has `header_timeout` to send headers (idle kept-alive ones included),
//! and at most `max_connections` are open ([`run`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::timeout::TimeoutLayer;
use trellis_bus::Producer;

use crate::IngestConfig;
use crate::accept::{Ingest, IngestError};
use crate::{native, posthog, sentry};

/// What request handlers share.
pub type AppState = Arc<Ingest>;

/// The OpenAPI document of the native API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Builds the shared state.
pub fn state(config: IngestConfig, producer: Arc<dyn Producer>) -> AppState {
    Arc::new(Ingest::new(config, producer))
}

/// Registers another component's metrics in the registry ingest serves on `/metrics`.
pub type MetricsSource = Box<dyn FnOnce(&mut prometheus_client::registry::Registry) + Send>;

/// The state of an ingest that writes to `topics` (a deployment with a topic prefix) and also
/// serves the metrics of the stages running beside it (`trellis run`).
pub fn state_with(
    config: IngestConfig,
    producer: Arc<dyn Producer>,
    topics: trellis_schemas::topics::Names,
    other_metrics: Vec<MetricsSource>,
) -> AppState {
    let mut ingest = Ingest::new(config, producer);
    ingest.topics = topics;
    for register in other_metrics {
        register(&mut ingest.exported);
    }
    Arc::new(ingest)
}

/// The ingest routes.
pub fn router(state: AppState) -> Router {
    let ingest_routes = Router::new()
        .route("/v1/batch", post(native_batch))
        .route("/api/{project}/envelope/", post(sentry_envelope))
        .route("/api/{project}/envelope", post(sentry_envelope))
        .route("/api/{project}/store/", post(sentry_store))
        .route("/api/{project}/store", post(sentry_store))
        .route("/batch/", post(posthog_capture))
        .route("/batch", post(posthog_capture))
        .route("/e/", post(posthog_capture))
        .route("/e", post(posthog_capture))
        .route("/capture/", post(posthog_capture))
        .route("/capture", post(posthog_capture))
        .route("/i/v0/e/", post(posthog_capture))
        .route("/i/v0/e", post(posthog_capture))
        .route("/i/v1/analytics/events", post(posthog_capture_v1))
        .layer(RequestDecompressionLayer::new())
        // Inside the permit: a request waiting for its turn is not timed out yet.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.limits.request_timeout,
        ))
        // One pool of permits for every route (a `ConcurrencyLimitLayer` would give each route
        // its own).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            state.config.limits.max_concurrent_requests,
        ))
        .layer(axum::middleware::map_request_with_state(
            state.clone(),
            wire_limit,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/projects/{project}/issues/{id}/{action}",
            post(crate::admin::issue_command),
        )
        .route(
            "/v1/projects/{project}/rollouts",
            post(crate::admin::register_rollout),
        )
        .route(
            "/v1/projects/{project}/rollouts/{update_id}",
            axum::routing::patch(crate::admin::update_rollout),
        )
        .route(
            "/v1/projects/{project}/rollouts/{update_id}/{action}",
            post(crate::admin::rollout_override),
        )
        .route(
            "/v1/projects/{project}/alerts/{alert_id}/{action}",
            post(crate::admin::alert_command),
        )
        .route(
            "/v1/projects/{project}/deploys",
            post(crate::deploys::deploy),
        )
        .route(
            "/v1/projects/{project}/push/tickets",
            post(crate::push::post_tickets),
        )
        .route(
            "/v1/projects/{project}/push/receipts",
            post(crate::push::post_receipts),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(ingest_routes)
        .with_state(state)
}

/// Ready only while the bus answers: a load balancer stops sending to an ingest that cannot
/// store what it would accept.
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.producer.is_ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "bus unreachable")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &state.exported);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Runs before decompression: refuses a declared `Content-Length` over the wire limit, and
/// counts the wire bytes of a streamed (chunked) body as they arrive.
async fn wire_limit(State(state): State<AppState>, request: Request) -> Result<Request, Response> {
    let limit = state.config.limits.max_wire_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > limit) {
        let error = IngestError::TooLarge(format!(
            "body of {len} bytes is over the {limit}-byte limit"
        ));
        return Err(error.into_response());
    }
    Ok(request.map(|body| Body::new(http_body_util::Limited::new(body, limit))))
}

/// Reads the (decompressed) body within the limits.
async fn read_body(state: &Ingest, body: Body) -> Result<axum::body::Bytes, IngestError> {
    let limits = &state.config.limits;
    axum::body::to_bytes(body, limits.max_decompressed_bytes)
        .await
        .map_err(|e| {
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(err) = source {
                if err.is::<http_body_util::LengthLimitError>() {
                    return IngestError::TooLarge(format!(
                        "body is over the limit: {} bytes on the wire, {} bytes decompressed",
                        limits.max_wire_bytes, limits.max_decompressed_bytes
                    ));
                }
                source = err.source();
            }
            IngestError::BadRequest(format!("body could not be read or decompressed: {e}"))
        })
}

fn finish(
    state: &Ingest,
    endpoint: &'static str,
    started: Instant,
    result: Result<Response, IngestError>,
) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state.metrics.request(
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn native_batch(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let result = async {
        let (parts, body) = request.into_parts();
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let (key, project) = state.project(key)?;
        let body = read_body(&state, body).await?;
        let (sent_at, items) = native::parse(
            &body,
            state.config.limits.max_event_bytes,
            state.config.limits.max_events_per_request,
        )?;
        let outcome = state.accept(key, &project, sent_at, items).await?;
        Ok(axum::Json(outcome).into_response())
    }
    .await;
    finish(&state, "native", started, result)
}

fn sentry_key<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> Option<&'a str> {
    headers
        .get("x-sentry-auth")
        .or_else(|| headers.get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(sentry::auth_key)
        .or_else(|| query.get("sentry_key").map(String::as_str))
}

/// Sentry SDKs read `X-Sentry-Rate-Limits` to back off per category; an empty category list
/// means all of them.
fn sentry_response(result: Result<Response, IngestError>) -> Result<Response, IngestError> {
    match result {
        Err(IngestError::RateLimited { scope, retry_after }) => {
            let mut response = IngestError::RateLimited { scope, retry_after }.into_response();
            let value = format!("{}::organization", retry_after.as_secs().max(1));
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert("x-sentry-rate-limits", v);
            }
            Ok(response)
        }
        other => other,
    }
}

async fn sentry_endpoint(
    state: &AppState,
    project_path: &str,
    query: &HashMap<String, String>,
    request: Request,
    envelope: bool,
) -> Result<Response, IngestError> {
    let (parts, body) = request.into_parts();
    let (key, project) = state.project(sentry_key(&parts.headers, query))?;
    let by_id = project
        .config
        .sentry_id
        .is_some_and(|id| id.to_string() == project_path);
    if project.config.name != project_path && !by_id {
        return Err(IngestError::Forbidden(format!(
            "this key does not write to project {project_path:?}"
        )));
    }
    let body = read_body(state, body).await?;
    let parsed = if envelope {
        sentry::parse_envelope(
            &body,
            &state.config.limits,
            &state.metrics,
            &project.config.name,
        )?
    } else {
        sentry::parse_store(&body, &state.config.limits, &state.metrics)?
    };
    state
        .accept(key, &project, parsed.sent_at_ms, parsed.items)
        .await?;
    // Sentry SDKs (Android's among them) treat anything but 200 as failure.
    let body = match parsed.id {
        Some(id) => json!({ "id": id }),
        None => json!({}),
    };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

async fn sentry_envelope(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let result = sentry_response(sentry_endpoint(&state, &project, &query, request, true).await);
    finish(&state, "sentry_envelope", started, result)
}

async fn sentry_store(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let result = sentry_response(sentry_endpoint(&state, &project, &query, request, false).await);
    finish(&state, "sentry_store", started, result)
}

async fn posthog_capture(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut body = read_body(&state, request.into_body()).await?;
        // posthog-js marks gzip in the query instead of Content-Encoding.
        if query.get("compression").map(String::as_str) == Some("gzip-js") {
            use std::io::Read;
            let mut out = Vec::new();
            let limit = state.config.limits.max_decompressed_bytes as u64;
            flate2::read::GzDecoder::new(&body[..])
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(|e| IngestError::BadRequest(format!("body is not gzip: {e}")))?;
            if out.len() as u64 > limit {
                return Err(IngestError::TooLarge(format!(
                    "body is over {limit} bytes decompressed"
                )));
            }
            body = out.into();
        }
        // The key first: an unknown one costs the reading of the body's shape, nothing more.
        let limits = &state.config.limits;
        let read = posthog::read(&body, limits.max_events_per_request)?;
        let (key, project) = state.project(read.api_key.as_deref())?;
        let items = read.items(limits.max_event_bytes);
        state
            .accept(key, &project, read.sent_at_ms(), items)
            .await?;
        Ok((StatusCode::OK, axum::Json(json!({ "status": 1 }))).into_response())
    }
    .await;
    finish(&state, "posthog", started, result)
}

/// PostHog's v1 capture API: bearer key, SDK and send time in headers, and an answer per event.
async fn posthog_capture_v1(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let result = async {
        let (parts, body) = request.into_parts();
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let key = header(header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // The key before the body: an unknown one costs nothing more.
        let (key, project) = state.project(key)?;
        let body = read_body(&state, body).await?;
        let limits = &state.config.limits;
        let read = posthog::read_v1(
            &body,
            limits.max_events_per_request,
            Some(key),
            header("posthog-sdk-info"),
            header("posthog-request-timestamp"),
        )?;
        let uuids = read.uuids();
        let items = read.items(limits.max_event_bytes);
        let outcome = state
            .accept(key, &project, read.sent_at_ms(), items)
            .await?;
        let results = posthog::V1Results::new(uuids, &outcome.rejected);
        Ok((StatusCode::OK, axum::Json(results)).into_response())
    }
    .await;
    finish(&state, "posthog_v1", started, result)
}

/// How long in-flight requests have to finish once shutdown began.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves on `listener` until `shutdown` resolves, then finishes in-flight requests.
///
/// At most `limits.max_connections` connections are open at once (more wait in the listen
/// backlog); a connection that does not send a request's headers within `limits.header_timeout`,
/// idle between requests included, is closed.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, "Ingest listening.");
    let limits = state.config.limits.clone();
    let app = router(state.clone());
    let room = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = room.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file handles or a connection reset before accept: wait, go on.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service =
            app.clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request.map(Body::new)
                });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
        let connection = graceful.watch(connection);
        let open = state.metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "Connection ended with an error.");
            }
            drop((open, permit));
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(after = ?DRAIN, "Requests still in flight at shutdown were dropped.");
    }
    Ok(())
}
