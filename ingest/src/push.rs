//! Expo push outcomes: an app server that sends notifications through Expo's push API forwards
//! what Expo answered, with an admin token scoped to the project:
//!
//! - `POST /v1/projects/{project}/push/tickets`: the messages it sent (as it sent them to
//!   `/--/api/v2/push/send`) and Expo's tickets for them, one per recipient in order
//!   ([`TicketsBody`]);
//! - `POST /v1/projects/{project}/push/receipts`: Expo's receipts by ticket id (what
//!   `/--/api/v2/push/getReceipts` answered, [`ReceiptsBody`]).
//!
//! Each ticket and receipt becomes one [`PushOutcome`] on the `push` topic, and a row of the
//! `push` table in both stores; with the app's notification events (same `notification_id`,
//! taken from the message's `data.notification_id`) they give each notification's lifecycle.
//! Either list may be Expo's answer verbatim (`{"data": ...}`). The answer is
//! `202 {"outcomes": N}`. An outcome forwarded twice is the same row (its id is derived from the
//! ticket id).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use trellis_bus::Message;
use trellis_schemas::records::{self, PushOutcome};

use crate::admin::{Peer, Refusal, authorize, now_ms, parse_body, refuse};
use crate::server::AppState;

/// Most outcomes one request may carry (Expo takes 100 messages per send, 1000 ids per
/// receipts request).
pub const MAX_OUTCOMES: usize = 1000;

/// Longest Expo message kept with an outcome; longer ones are cut.
const MAX_MESSAGE_CHARS: usize = 1024;

/// Longest token, ticket id, notification id, campaign or error code.
const MAX_FIELD_BYTES: usize = 256;

/// A list Expo answered, as it answered it (`{"data": [...]}`) or as its `data` alone.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Answer<T> {
    /// Expo's response body.
    Wrapped {
        /// What it holds.
        data: T,
    },
    /// Its `data`.
    Bare(T),
}

impl<T> Answer<T> {
    fn into_inner(self) -> T {
        match self {
            Answer::Wrapped { data } | Answer::Bare(data) => data,
        }
    }
}

/// One push message, as sent to Expo: only what trellis reads of it.
#[derive(Debug, Deserialize)]
pub struct PushMessage {
    /// One token or several.
    pub to: Recipients,
    /// The message's data: `notification_id` (the id the app reports its notification events
    /// with) and `campaign` are read from it.
    #[serde(default)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A message's `to`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Recipients {
    /// One token.
    One(String),
    /// Several: one ticket each, in order.
    Many(Vec<String>),
}

/// What Expo answered for one recipient (a ticket) or one ticket id (a receipt).
#[derive(Debug, Deserialize)]
pub struct ExpoStatus {
    /// `ok` or `error`.
    pub status: String,
    /// The ticket id (tickets with `ok`).
    #[serde(default)]
    pub id: Option<String>,
    /// The error's text.
    #[serde(default)]
    pub message: Option<String>,
    /// The error's code (`details.error`) and, for a refused token, the token.
    #[serde(default)]
    pub details: Option<ExpoDetails>,
}

/// `details` of an Expo error.
#[derive(Debug, Default, Deserialize)]
pub struct ExpoDetails {
    /// `DeviceNotRegistered`, `MessageTooBig`, `MessageRateExceeded`, `InvalidCredentials`, ...
    #[serde(default)]
    pub error: Option<String>,
    /// The token Expo refused.
    #[serde(default, rename = "expoPushToken")]
    pub expo_push_token: Option<String>,
}

/// The body of `POST /v1/projects/{project}/push/tickets`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketsBody {
    /// The campaign of every message without a `data.campaign` of its own.
    pub campaign: Option<String>,
    /// When the messages were sent: RFC 3339 text or ms since the epoch; now when absent.
    pub sent_at: Option<serde_json::Value>,
    /// The messages, as sent.
    pub messages: Option<Vec<PushMessage>>,
    /// Expo's tickets: one per recipient of the messages, in order.
    pub tickets: Option<Answer<Vec<ExpoStatus>>>,
}

/// The body of `POST /v1/projects/{project}/push/receipts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsBody {
    /// When the receipts were read: RFC 3339 text or ms since the epoch; now when absent.
    pub read_at: Option<serde_json::Value>,
    /// Expo's receipts, by ticket id.
    pub receipts: Option<Answer<BTreeMap<String, ExpoStatus>>>,
}

fn bad(reason: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, reason)
}

/// A short text field: trimmed, empty as absent, at most [`MAX_FIELD_BYTES`] without control
/// characters.
fn field(name: &str, value: Option<&str>) -> Result<Option<String>, Refusal> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    if value.is_some_and(|v| v.len() > MAX_FIELD_BYTES || v.chars().any(char::is_control)) {
        return Err(bad(format!(
            "{name} must be at most {MAX_FIELD_BYTES} bytes without control characters"
        )));
    }
    Ok(value.map(str::to_string))
}

fn time(name: &str, at: Option<&serde_json::Value>) -> Result<i64, Refusal> {
    match at {
        None => Ok(now_ms()),
        Some(at) => crate::time::native_ms(at).ok_or_else(|| {
            bad(format!(
                "{name} must be RFC 3339 text or ms since the epoch"
            ))
        }),
    }
}

fn outcome_id(identity: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, identity.as_bytes())
        .simple()
        .to_string()
}

/// The status, code and message of an Expo answer, checked.
fn status(what: &str, s: &ExpoStatus) -> Result<(String, Option<String>, Option<String>), Refusal> {
    if s.status != "ok" && s.status != "error" {
        return Err(bad(format!("{what}: status must be \"ok\" or \"error\"")));
    }
    let details = s.details.as_ref();
    let error = field(
        &format!("{what}: details.error"),
        details.and_then(|d| d.error.as_deref()),
    )?;
    let message = s
        .message
        .as_deref()
        .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect::<String>())
        .filter(|m| !m.trim().is_empty());
    Ok((s.status.clone(), error, message))
}

/// The outcomes of a tickets request.
pub fn tickets(project: &str, body: TicketsBody) -> Result<Vec<PushOutcome>, Refusal> {
    let at_ms = time("sent_at", body.sent_at.as_ref())?;
    let messages = body
        .messages
        .ok_or_else(|| bad("messages: the messages sent, as sent to Expo"))?;
    let tickets = body
        .tickets
        .ok_or_else(|| bad("tickets: Expo's tickets for the messages"))?
        .into_inner();
    let default_campaign = field("campaign", body.campaign.as_deref())?;
    let too_many = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_OUTCOMES} tickets per request"),
        )
    };
    if tickets.len() > MAX_OUTCOMES {
        return Err(too_many());
    }
    let mut recipients = Vec::with_capacity(tickets.len());
    for (m, message) in messages.iter().enumerate() {
        let data = message.data.as_ref();
        // A number is an id too (`{"notification_id": 42}`).
        let text = |key: &str| {
            data.and_then(|d| d.get(key)).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let notification_id = field(
            &format!("messages[{m}].data.notification_id"),
            text("notification_id").as_deref(),
        )?;
        let campaign = field(
            &format!("messages[{m}].data.campaign"),
            text("campaign").as_deref(),
        )?
        .or_else(|| default_campaign.clone());
        let tokens = match &message.to {
            Recipients::One(t) => std::slice::from_ref(t),
            Recipients::Many(t) => t.as_slice(),
        };
        for token in tokens {
            if recipients.len() == MAX_OUTCOMES {
                return Err(too_many());
            }
            let token = field(&format!("messages[{m}].to"), Some(token))?;
            recipients.push((notification_id.clone(), campaign.clone(), token));
        }
    }
    if recipients.len() != tickets.len() {
        return Err(bad(format!(
            "the messages name {} recipients and tickets has {}: Expo answers one ticket per recipient, in order",
            recipients.len(),
            tickets.len()
        )));
    }
    let mut out = Vec::with_capacity(tickets.len());
    for (i, (ticket, (notification_id, campaign, token))) in
        tickets.iter().zip(recipients).enumerate()
    {
        let what = format!("tickets[{i}]");
        let (status, error, message) = status(&what, ticket)?;
        let ticket_id = field(&format!("{what}.id"), ticket.id.as_deref())?;
        if status == "ok" && ticket_id.is_none() {
            return Err(bad(format!("{what}: an ok ticket has an id")));
        }
        // A token Expo refused is named in the details; it is the recipient's.
        let token = token.or(field(
            &format!("{what}.details.expoPushToken"),
            ticket
                .details
                .as_ref()
                .and_then(|d| d.expo_push_token.as_deref()),
        )?);
        let identity = match &ticket_id {
            Some(id) => format!("{project}/ticket/{id}"),
            None => format!("{project}/ticket/{notification_id:?}/{token:?}/{at_ms}/{i}"),
        };
        out.push(PushOutcome {
            outcome_id: outcome_id(&identity),
            project: project.to_string(),
            step: "ticket".into(),
            ticket_id,
            notification_id,
            campaign,
            token,
            status,
            error,
            message,
            at_ms,
        });
    }
    Ok(out)
}

/// The outcomes of a receipts request.
pub fn receipts(project: &str, body: ReceiptsBody) -> Result<Vec<PushOutcome>, Refusal> {
    let at_ms = time("read_at", body.read_at.as_ref())?;
    let receipts = body
        .receipts
        .ok_or_else(|| bad("receipts: Expo's receipts, by ticket id"))?
        .into_inner();
    if receipts.len() > MAX_OUTCOMES {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_OUTCOMES} receipts per request"),
        ));
    }
    let mut out = Vec::with_capacity(receipts.len());
    for (id, receipt) in &receipts {
        let what = format!("receipts[{id:?}]");
        let ticket_id = field(&format!("{what} (the ticket id)"), Some(id))?
            .ok_or_else(|| bad("a receipt's ticket id is empty"))?;
        let (status, error, message) = status(&what, receipt)?;
        out.push(PushOutcome {
            outcome_id: outcome_id(&format!("{project}/receipt/{ticket_id}")),
            project: project.to_string(),
            step: "receipt".into(),
            ticket_id: Some(ticket_id),
            status,
            error,
            message,
            at_ms,
            ..PushOutcome::default()
        });
    }
    Ok(out)
}

async fn publish(
    state: &AppState,
    project: &str,
    outcomes: Vec<PushOutcome>,
) -> Result<Response, Refusal> {
    let topic = &state.topics.push;
    let mut messages = Vec::with_capacity(outcomes.len());
    for outcome in &outcomes {
        let payload = records::encode(outcome)
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        messages.push(Message::new(topic, project.as_bytes().to_vec(), payload));
    }
    let n = messages.len();
    crate::admin::publish_all(state, messages).await?;
    tracing::info!(%project, outcomes = n, "Push outcomes taken.");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "outcomes": n })),
    )
        .into_response())
}

/// `POST /v1/projects/{project}/push/tickets`.
pub async fn post_tickets(
    State(state): State<AppState>,
    peer: Peer,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    authorize(&state, &peer, &headers, &project)?;
    let outcomes = tickets(&project, parse_body(&body)?)?;
    publish(&state, &project, outcomes).await
}

/// `POST /v1/projects/{project}/push/receipts`.
pub async fn post_receipts(
    State(state): State<AppState>,
    peer: Peer,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    authorize(&state, &peer, &headers, &project)?;
    let outcomes = receipts(&project, parse_body(&body)?)?;
    publish(&state, &project, outcomes).await
}
