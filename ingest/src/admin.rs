//! The admin API: authenticated commands on issues, rollouts and alerts.
//!
//! Every route takes `Authorization: Bearer <admin token>` (`ingest.admin_tokens`; a scoped
//! token only for its projects) and answers `202 {"command_id"}` once the bus has the command.
//! Tokens are compared in constant time; an address with more than
//! [`ADMIN_FAILURES_PER_MINUTE`] failed attempts (no token, or a wrong one) is answered 429 with
//! `Retry-After` until its quota refills, whatever token it sends.
//!
//! Issues: `POST /v1/projects/{project}/issues/{id}/{action}` with `Authorization: Bearer <admin token>`
//! (`ingest.admin_tokens`) and an optional JSON body. Actions: `resolve`,
//! `resolve_in_next_release`, `resolve_in_release` (`{"app_version": "2.15.0", "build": "1410"}`),
//! `ignore` (`{"until_count": N}`, `{"until_users": N}`, `{"until_ms": T}` or nothing for
//! forever), `reopen`, `merge` (`{"into": "<issue id>"}`). The command is published on the
//! grouped-errors topic, keyed by project, to the issues stage that owns the project's issues;
//! the answer is `202 {"command_id"}` once the bus has it. The issue's next record on `issues`
//! shows the result; a command the stage refuses (no such issue, reopening an open issue) goes to
//! `dlq` with the reason.
//!
//! Rollouts and alerts (the alert stage applies them, in order with the findings it decides on;
//! each becomes an entry on `audit`, and what it refuses goes to `dlq` with the reason):
//! - `POST /v1/projects/{project}/rollouts` registers a rollout: `{"update_id", "channel",
//!   "runtime_version", "percentage", "who"}` (and optionally `platform`, `app_version`,
//!   `build`, `environment`, `reason`);
//! - `PATCH /v1/projects/{project}/rollouts/{update_id}` changes its `percentage`;
//! - `POST /v1/projects/{project}/rollouts/{update_id}/{halt|resume|ignore}` overrides the guard
//!   (`{"who", "reason"}`): `halt` sends `rollout.halt` now, `resume` sends `rollout.resume` and
//!   lets the guard halt the update again, `ignore` keeps the guard from ever halting it;
//! - `POST /v1/projects/{project}/alerts/{alert_id}/{ack|silence}`: `ack` keeps a firing alert's
//!   escalations quiet, `silence` (`{"for": "2h"}` or `{"until_ms": T}`) every notification of it
//!   but a halt.
//!
//! Deploy markers, which take the same tokens, are in [`crate::deploys`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::extract::ConnectInfo;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use trellis_bus::Message;
use trellis_schemas::Release;
use trellis_schemas::records::{self, GuardCommand, IssueCommand};

use crate::server::AppState;

const ACTIONS: [&str; 6] = [
    "resolve",
    "resolve_in_next_release",
    "resolve_in_release",
    "ignore",
    "reopen",
    "merge",
];

/// The optional body of an admin command.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// `resolve_in_release`: the app version with the fix.
    pub app_version: Option<String>,
    /// `resolve_in_release`: its build, if it matters.
    pub build: Option<String>,
    /// `resolve_in_release`: its platform, if it matters.
    pub platform: Option<String>,
    /// `ignore`: until this many more events.
    pub until_count: Option<i64>,
    /// `ignore`: until this many more users.
    pub until_users: Option<i64>,
    /// `ignore`: until this time, ms since the epoch.
    pub until_ms: Option<i64>,
    /// `merge`: the issue to merge into.
    pub into: Option<String>,
}

/// A refused admin request: its status and the reason, answered as `{"error": reason}`.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    reason: String,
    retry_after: Option<Duration>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.reason }));
        match self.retry_after {
            Some(wait) => (
                self.status,
                [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
                body,
            )
                .into_response(),
            None => (self.status, body).into_response(),
        }
    }
}

pub(crate) fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        retry_after: None,
    }
}

/// Failed admin attempts allowed per client address and minute: past them, the address is
/// refused with 429 until its quota refills, whatever token it sends.
pub const ADMIN_FAILURES_PER_MINUTE: u32 = 10;

/// Addresses locked out of the admin API at most (the oldest lockouts go first past it).
const MAX_LOCKED: usize = 10_000;

/// Counts failed admin attempts per client address, and locks out the addresses past
/// [`ADMIN_FAILURES_PER_MINUTE`].
pub struct AdminGuard {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    locked: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for AdminGuard {
    fn default() -> Self {
        let per_minute = NonZeroU32::new(ADMIN_FAILURES_PER_MINUTE).expect("not zero");
        AdminGuard {
            failures: RateLimiter::keyed(Quota::per_minute(per_minute)),
            locked: Mutex::new(HashMap::new()),
        }
    }
}

impl AdminGuard {
    /// How long `ip` stays locked out, if it is.
    fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let locked = self.locked.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *locked.get(&ip)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failed attempt from `ip`; locks it out once it is past its quota, and then
    /// says for how long.
    fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let Err(not_until) = self.failures.check_key(&ip) else {
            return None;
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut locked = self.locked.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if locked.len() >= MAX_LOCKED {
            locked.retain(|_, until| *until > now);
        }
        if locked.len() < MAX_LOCKED {
            locked.insert(ip, now + wait);
        }
        self.failures.retain_recent();
        Some(wait)
    }
}

fn is_issue_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The client's address, when the server was started with it (`trellis_ingest::run`).
pub type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// Who an admin request comes from: its token's holder, or the refusal to answer with.
pub(crate) fn authorize(
    state: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
    project: &str,
) -> Result<String, Refusal> {
    let tokens = &state.config.admin_tokens;
    if tokens.is_empty() {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the admin API is off: set ingest.admin_tokens",
        ));
    }
    let ip = peer.as_ref().map(|Extension(ConnectInfo(addr))| addr.ip());
    let guard = &state.admin_guard;
    let locked_out = |wait: Duration| Refusal {
        retry_after: Some(wait),
        ..refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed admin attempts from this address",
        )
    };
    if let Some(wait) = ip.and_then(|ip| guard.locked(ip)) {
        return Err(locked_out(wait));
    }
    let failed = |refusal: Refusal| match ip.and_then(|ip| guard.failed(ip)) {
        Some(wait) => locked_out(wait),
        None => refusal,
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return Err(failed(refuse(
            StatusCode::UNAUTHORIZED,
            "no admin token (Authorization: Bearer ...)",
        )));
    };
    let Some(token) = tokens
        .iter()
        .find(|t| constant_time_eq(t.secret().trim().as_bytes(), given.as_bytes()))
    else {
        return Err(failed(refuse(StatusCode::FORBIDDEN, "not an admin token")));
    };
    if !state.config.projects.iter().any(|p| p.name == project) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no project {project:?}"),
        ));
    }
    if !token.allows(project) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("this token may not change project {project:?}"),
        ));
    }
    Ok(token.name().to_string())
}

/// Compares a presented token with a configured one in time that depends on the length only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A command id no other command has.
fn new_command_id(at_ms: i64) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!(
            "{at_ms}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    )
    .to_string()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Publishes a command keyed by `project`; answers `202 {"command_id"}` once the bus has it.
async fn publish(
    state: &AppState,
    topic: &str,
    project: &str,
    command_id: String,
    payload: Result<Vec<u8>, trellis_schemas::avro::CodecError>,
) -> Result<Response, Refusal> {
    publish_as(state, topic, project, ("command_id", command_id), payload).await
}

/// Publishes a record keyed by `project`; answers `202 {name: id}` once the bus has it.
pub(crate) async fn publish_as(
    state: &AppState,
    topic: &str,
    project: &str,
    (name, id): (&str, String),
    payload: Result<Vec<u8>, trellis_schemas::avro::CodecError>,
) -> Result<Response, Refusal> {
    let payload = match payload {
        Ok(p) => p,
        Err(e) => return Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let message = Message::new(topic, project.as_bytes().to_vec(), payload);
    publish_all(state, vec![message]).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ name: id })),
    )
        .into_response())
}

/// Publishes `messages` within the publish timeout, or the 503 that says why not.
pub(crate) async fn publish_all(state: &AppState, messages: Vec<Message>) -> Result<(), Refusal> {
    let publish = state.producer.publish(messages);
    match tokio::time::timeout(state.config.publish_timeout, publish).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, format!("bus: {e}"))),
        Err(_) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the bus did not acknowledge in time",
        )),
    }
}

/// A JSON body, or the 400 that names what is wrong with it; an empty body is the default.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, Refusal> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

/// `POST /v1/projects/{project}/issues/{id}/{action}`.
pub async fn issue_command(
    State(state): State<AppState>,
    peer: Peer,
    Path((project, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    authorize(&state, &peer, &headers, &project)?;
    if !is_issue_id(&id) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an issue id (32 hex digits)"),
        ));
    }
    if !ACTIONS.contains(&action.as_str()) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}; one of {}", ACTIONS.join(", ")),
        ));
    }
    let body: CommandBody = parse_body(&body)?;
    let release = match (action.as_str(), body.app_version) {
        ("resolve_in_release", Some(app_version)) if !app_version.trim().is_empty() => {
            Some(Release {
                platform: body.platform.unwrap_or_default(),
                app_version,
                build: body.build,
                ..Release::default()
            })
        }
        ("resolve_in_release", _) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "resolve_in_release needs app_version",
            ));
        }
        _ => None,
    };
    let ignore_conditions = [
        body.until_count.is_some(),
        body.until_users.is_some(),
        body.until_ms.is_some(),
    ];
    if action == "ignore" && ignore_conditions.iter().filter(|c| **c).count() > 1 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "ignore takes at most one of until_count, until_users, until_ms",
        ));
    }
    if action == "ignore"
        && (body.until_count.is_some_and(|n| n < 1) || body.until_users.is_some_and(|n| n < 1))
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "until_count and until_users must be at least 1",
        ));
    }
    if action == "merge" && !body.into.as_deref().is_some_and(is_issue_id) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "merge needs into: the issue id to merge into",
        ));
    }
    let at_ms = now_ms();
    let command_id = new_command_id(at_ms);
    let command = IssueCommand {
        command_id: command_id.clone(),
        project: project.clone(),
        issue_id: id.clone(),
        action: action.clone(),
        release,
        until_count: body.until_count,
        until_users: body.until_users,
        until_ms: body.until_ms,
        into: body.into,
        issue: None,
        at_ms,
    };
    tracing::info!(%project, issue = %id, %action, %command_id, "Issue command given.");
    let topic = state.topics.grouped.clone();
    publish(
        &state,
        &topic,
        &project,
        command_id,
        records::encode(&command),
    )
    .await
}

/// The body of a rollout registration, change or override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// Registration: the OTA update id.
    pub update_id: Option<String>,
    /// Registration: the channel (`production`).
    pub channel: Option<String>,
    /// Registration: the runtime version the update runs on.
    pub runtime_version: Option<String>,
    /// Registration: the platform, if the update is for one.
    pub platform: Option<String>,
    /// Registration: the app version, if known.
    pub app_version: Option<String>,
    /// Registration: the build, if known.
    pub build: Option<String>,
    /// Registration: the environment, if known.
    pub environment: Option<String>,
    /// Registration and change: the share of the fleet offered the update, 0 to 100.
    pub percentage: Option<f64>,
    /// Who asks (a person or a pipeline); the token's holder when absent.
    pub who: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// The body of an alert command.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertBody {
    /// `silence`: for how long (`30m`, `2h`).
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub duration: Option<std::time::Duration>,
    /// `silence`: until when, ms since the epoch.
    pub until_ms: Option<i64>,
    /// Who asks; the token's holder when absent.
    pub who: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// The actor of a command: the token's holder, and who they said they act for.
pub(crate) fn actor(holder: String, who: Option<String>) -> Result<String, Refusal> {
    let who = who.map(|w| w.trim().to_string()).filter(|w| !w.is_empty());
    if who
        .as_ref()
        .is_some_and(|w| w.chars().count() > MAX_WHO_CHARS || w.chars().any(char::is_control))
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("who must be at most {MAX_WHO_CHARS} characters, without control characters"),
        ));
    }
    Ok(match who {
        Some(who) if who != holder => format!("{who} ({holder})"),
        _ => holder,
    })
}

/// Longest `who` a command may name.
pub const MAX_WHO_CHARS: usize = 100;

/// Longest `reason` a command may give (it goes into audit entries and Slack summaries).
pub const MAX_REASON_CHARS: usize = 1000;

/// Longest silence: a longer one is an alert rule to change, not an alert to silence.
pub const MAX_SILENCE: Duration = Duration::from_secs(30 * 24 * 3600);

pub(crate) fn reason_of(reason: Option<String>) -> Result<String, Refusal> {
    let reason = reason.unwrap_or_default();
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("reason must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason)
}

/// Refuses an id that is empty, longer than 128 bytes or holds control characters.
fn check_update_id(update_id: &str) -> Result<(), Refusal> {
    if update_id.trim().is_empty()
        || update_id.len() > 128
        || update_id.chars().any(char::is_control)
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "update_id must be 1 to 128 bytes without control characters",
        ));
    }
    Ok(())
}

fn check_percentage(percentage: Option<f64>, needed: bool) -> Result<(), Refusal> {
    match percentage {
        Some(p) if !(0.0..=100.0).contains(&p) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "percentage must be between 0 and 100",
        )),
        None if needed => Err(refuse(StatusCode::BAD_REQUEST, "percentage is required")),
        _ => Ok(()),
    }
}

/// Publishes a guard command on `detections`, where the alert stage reads it in order with the
/// findings of the same project.
async fn guard(state: &AppState, mut command: GuardCommand) -> Result<Response, Refusal> {
    command.at_ms = now_ms();
    command.command_id = new_command_id(command.at_ms);
    tracing::info!(project = %command.project, action = %command.action,
        actor = %command.actor, command_id = %command.command_id, "Guard command given.");
    let topic = state.topics.detections.clone();
    let project = command.project.clone();
    let id = command.command_id.clone();
    publish(state, &topic, &project, id, records::encode(&command)).await
}

/// `POST /v1/projects/{project}/rollouts`: a deployment pipeline registers a rollout.
pub async fn register_rollout(
    State(state): State<AppState>,
    peer: Peer,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let holder = authorize(&state, &peer, &headers, &project)?;
    let body: RolloutBody = parse_body(&body)?;
    let Some(update_id) = body.update_id.clone() else {
        return Err(refuse(StatusCode::BAD_REQUEST, "update_id is required"));
    };
    check_update_id(&update_id).and_then(|()| check_percentage(body.percentage, true))?;
    if body.channel.as_deref().is_none_or(|c| c.trim().is_empty())
        || body
            .runtime_version
            .as_deref()
            .is_none_or(|r| r.trim().is_empty())
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "channel and runtime_version are required",
        ));
    }
    let release = Release {
        platform: body.platform.unwrap_or_default(),
        app_version: body.app_version.unwrap_or_default(),
        build: body.build,
        runtime_version: body.runtime_version,
        update_id: Some(update_id.clone()),
        channel: body.channel,
        environment: body.environment,
    };
    let command = GuardCommand {
        project,
        action: "register".into(),
        update_id: Some(update_id),
        release: Some(release),
        percentage: body.percentage,
        actor: actor(holder, body.who)?,
        reason: reason_of(body.reason)?,
        ..GuardCommand::default()
    };
    guard(&state, command).await
}

/// `PATCH /v1/projects/{project}/rollouts/{update_id}`: the rollout's new percentage.
pub async fn update_rollout(
    State(state): State<AppState>,
    peer: Peer,
    Path((project, update_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let holder = authorize(&state, &peer, &headers, &project)?;
    let body: RolloutBody = parse_body(&body)?;
    check_update_id(&update_id).and_then(|()| check_percentage(body.percentage, true))?;
    let command = GuardCommand {
        project,
        action: "update".into(),
        update_id: Some(update_id),
        percentage: body.percentage,
        actor: actor(holder, body.who)?,
        reason: reason_of(body.reason)?,
        ..GuardCommand::default()
    };
    guard(&state, command).await
}

/// `POST /v1/projects/{project}/rollouts/{update_id}/{halt|resume|ignore}`.
pub async fn rollout_override(
    State(state): State<AppState>,
    peer: Peer,
    Path((project, update_id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let holder = authorize(&state, &peer, &headers, &project)?;
    if !["halt", "resume", "ignore"].contains(&action.as_str()) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}; one of halt, resume, ignore"),
        ));
    }
    let body: RolloutBody = parse_body(&body)?;
    check_update_id(&update_id)?;
    let command = GuardCommand {
        project,
        action,
        update_id: Some(update_id),
        actor: actor(holder, body.who)?,
        reason: reason_of(body.reason)?,
        ..GuardCommand::default()
    };
    guard(&state, command).await
}

/// `POST /v1/projects/{project}/alerts/{alert_id}/{ack|silence}`.
pub async fn alert_command(
    State(state): State<AppState>,
    peer: Peer,
    Path((project, alert_id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let holder = authorize(&state, &peer, &headers, &project)?;
    if !is_issue_id(&alert_id) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("{alert_id:?} is not an alert id (32 hex digits)"),
        ));
    }
    if !["ack", "silence"].contains(&action.as_str()) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}; one of ack, silence"),
        ));
    }
    let body: AlertBody = parse_body(&body)?;
    let now = now_ms();
    let longest = now.saturating_add(MAX_SILENCE.as_millis() as i64);
    let until_ms = match (action.as_str(), body.duration, body.until_ms) {
        ("silence", Some(d), None) if d <= MAX_SILENCE => Some(now + d.as_millis() as i64),
        ("silence", None, Some(t)) if t > now && t <= longest => Some(t),
        ("silence", None, Some(t)) if t <= now => {
            return Err(refuse(StatusCode::BAD_REQUEST, "until_ms is in the past"));
        }
        ("silence", Some(_), None) | ("silence", None, Some(_)) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "a silence lasts at most 30 days",
            ));
        }
        ("silence", _, _) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "silence takes one of for (\"2h\") and until_ms",
            ));
        }
        (_, None, None) => None,
        _ => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "ack takes no for or until_ms",
            ));
        }
    };
    let command = GuardCommand {
        project,
        action,
        alert_id: Some(alert_id.to_ascii_lowercase()),
        until_ms,
        actor: actor(holder, body.who)?,
        reason: reason_of(body.reason)?,
        ..GuardCommand::default()
    };
    guard(&state, command).await
}
