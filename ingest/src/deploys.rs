//! Deploy markers: `POST /v1/projects/{project}/deploys` marks a build or OTA update published,
//! promoted or rolled back (see [`DeployBody`]), with an admin token like the rest of the admin
//! API. The marker goes to the `deploys` topic, and from there to the `deploys` table of both
//! stores. The answer is `202 {"deploy_id"}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use trellis_schemas::Release;
use trellis_schemas::records;

use crate::admin::{
    Peer, Refusal, actor, authorize, now_ms, parse_body, publish_as, reason_of, refuse,
};
use crate::server::AppState;

/// What a deploy can be.
pub const DEPLOY_ACTIONS: [&str; 4] = [
    "build_published",
    "update_published",
    "promoted",
    "rolled_back",
];

/// Longest `link` a deploy may carry.
pub const MAX_LINK_CHARS: usize = 2048;

/// The body of `POST /v1/projects/{project}/deploys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// One of [`DEPLOY_ACTIONS`].
    pub action: Option<String>,
    /// The caller's id for the deploy (an EAS build or update id, a CI run): a deploy sent again
    /// with the same one is the same deploy.
    pub deploy_id: Option<String>,
    /// When it happened: RFC 3339 text or ms since the epoch; now when absent.
    pub at: Option<serde_json::Value>,
    /// The platform, if the deploy is for one.
    pub platform: Option<String>,
    /// The app version; this or `update_id` is required.
    pub app_version: Option<String>,
    /// The build.
    pub build: Option<String>,
    /// The runtime version an OTA update runs on.
    pub runtime_version: Option<String>,
    /// The OTA update id.
    pub update_id: Option<String>,
    /// The channel (`production`).
    pub channel: Option<String>,
    /// The environment.
    pub environment: Option<String>,
    /// Who deployed (a person or a pipeline); the token's holder when absent.
    pub who: Option<String>,
    /// A link to the build, update or pipeline run (http or https).
    pub link: Option<String>,
    /// What the pipeline says of it.
    pub message: Option<String>,
}

/// A release field of a deploy: trimmed, empty as absent, at most 128 bytes without control
/// characters.
fn release_field(name: &str, value: Option<String>) -> Result<Option<String>, Refusal> {
    let value = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if value
        .as_ref()
        .is_some_and(|v| v.len() > 128 || v.chars().any(char::is_control))
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("{name} must be at most 128 bytes without control characters"),
        ));
    }
    Ok(value)
}

/// `POST /v1/projects/{project}/deploys`: a release pipeline marks a deploy.
pub async fn deploy(
    State(state): State<AppState>,
    peer: Peer,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let holder = authorize(&state, &peer, &headers, &project)?;
    let body: DeployBody = parse_body(&body)?;
    let action = body.action.unwrap_or_default();
    if !DEPLOY_ACTIONS.contains(&action.as_str()) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("action must be one of {}", DEPLOY_ACTIONS.join(", ")),
        ));
    }
    let release = Release {
        platform: release_field("platform", body.platform)?.unwrap_or_default(),
        app_version: release_field("app_version", body.app_version)?.unwrap_or_default(),
        build: release_field("build", body.build)?,
        runtime_version: release_field("runtime_version", body.runtime_version)?,
        update_id: release_field("update_id", body.update_id)?,
        channel: release_field("channel", body.channel)?,
        environment: release_field("environment", body.environment)?,
    };
    if release.app_version.is_empty() && release.update_id.is_none() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "a deploy names its app_version, its update_id or both",
        ));
    }
    let deployed_ms = match &body.at {
        None => now_ms(),
        Some(at) => crate::time::native_ms(at).ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "at must be RFC 3339 text or ms since the epoch",
            )
        })?,
    };
    let link = body
        .link
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty());
    if let Some(link) = &link
        && (link.chars().count() > MAX_LINK_CHARS
            || !(link.starts_with("https://") || link.starts_with("http://"))
            || link.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("link must be an http(s) URL of at most {MAX_LINK_CHARS} characters"),
        ));
    }
    let given = release_field("deploy_id", body.deploy_id)?;
    let identity = match &given {
        Some(id) => format!("{project}/{id}"),
        None => format!("{project}/{action}/{release:?}/{deployed_ms}"),
    };
    let deploy_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, identity.as_bytes())
        .simple()
        .to_string();
    let record = records::Deploy {
        deploy_id: deploy_id.clone(),
        project: project.clone(),
        action,
        release,
        deployed_ms,
        actor: Some(actor(holder, body.who)?),
        link,
        message: Some(reason_of(body.message)?).filter(|m| !m.is_empty()),
    };
    tracing::info!(%project, action = %record.action, %deploy_id, "Deploy marked.");
    let topic = state.topics.deploys.clone();
    publish_as(
        &state,
        &topic,
        &project,
        ("deploy_id", deploy_id),
        records::encode(&record),
    )
    .await
}
