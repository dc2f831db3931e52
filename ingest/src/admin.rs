//! The admin API: authenticated commands on issues.
//!
//! `POST /v1/projects/{project}/issues/{id}/{action}` with `Authorization: Bearer <admin token>`
//! (`ingest.admin_tokens`) and an optional JSON body. Actions: `resolve`,
//! `resolve_in_next_release`, `resolve_in_release` (`{"app_version": "2.15.0", "build": "1410"}`),
//! `ignore` (`{"until_count": N}`, `{"until_users": N}`, `{"until_ms": T}` or nothing for
//! forever), `reopen`, `merge` (`{"into": "<issue id>"}`). The command is published on the
//! grouped-errors topic, keyed by project, to the issues stage that owns the project's issues;
//! the answer is `202 {"command_id"}` once the bus has it. The issue's next record on `issues`
//! shows the result; a command the stage refuses (no such issue, reopening an open issue) goes to
//! `dlq` with the reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use trellis_bus::Message;
use trellis_schemas::Release;
use trellis_schemas::records::{self, IssueCommand};

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

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": reason.into() })),
    )
        .into_response()
}

fn is_issue_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `POST /v1/projects/{project}/issues/{id}/{action}`.
pub async fn issue_command(
    State(state): State<AppState>,
    Path((project, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let tokens = &state.config.admin_tokens;
    if tokens.is_empty() {
        return refuse(
            StatusCode::FORBIDDEN,
            "the admin API is off: set ingest.admin_tokens",
        );
    }
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no admin token (Authorization: Bearer ...)",
        );
    };
    if !tokens.iter().any(|t| t == token) {
        return refuse(StatusCode::FORBIDDEN, "not an admin token");
    }
    if !state.config.projects.iter().any(|p| p.name == project) {
        return refuse(StatusCode::NOT_FOUND, format!("no project {project:?}"));
    }
    if !is_issue_id(&id) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an issue id (32 hex digits)"),
        );
    }
    if !ACTIONS.contains(&action.as_str()) {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}; one of {}", ACTIONS.join(", ")),
        );
    }
    let body: CommandBody = if body.is_empty() {
        CommandBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
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
            return refuse(
                StatusCode::BAD_REQUEST,
                "resolve_in_release needs app_version",
            );
        }
        _ => None,
    };
    let ignore_conditions = [
        body.until_count.is_some(),
        body.until_users.is_some(),
        body.until_ms.is_some(),
    ];
    if action == "ignore" && ignore_conditions.iter().filter(|c| **c).count() > 1 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "ignore takes at most one of until_count, until_users, until_ms",
        );
    }
    if action == "ignore"
        && (body.until_count.is_some_and(|n| n < 1) || body.until_users.is_some_and(|n| n < 1))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "until_count and until_users must be at least 1",
        );
    }
    if action == "merge" && !body.into.as_deref().is_some_and(is_issue_id) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "merge needs into: the issue id to merge into",
        );
    }
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let command_id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!(
            "{at_ms}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    )
    .to_string();
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
    let payload = match records::encode(&command) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let message = Message::new(
        state.topics.grouped.as_str(),
        project.as_bytes().to_vec(),
        payload,
    );
    let publish = state.producer.publish(vec![message]);
    match tokio::time::timeout(state.config.publish_timeout, publish).await {
        Ok(Ok(_)) => {
            tracing::info!(%project, issue = %id, %action, %command_id, "Issue command accepted.");
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "command_id": command_id })),
            )
                .into_response()
        }
        Ok(Err(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, format!("bus: {e}")),
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the bus did not acknowledge in time",
        ),
    }
}
