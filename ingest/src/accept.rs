//! The path every request takes once its format is parsed: consent, normalization, limits,
//! then one publish of everything the request produced, answered only after the bus acked it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use trellis_bus::{Message, Producer, Refusal};
use trellis_schemas::{Event, avro, topics};

use crate::config::{IngestConfig, ProjectConfig};
use crate::metrics::IngestMetrics;
use crate::time::now_ms;
use crate::{normalize, trim};

/// One event as a format parser produced it, or why it could not.
#[derive(Debug)]
pub enum Item {
    /// A parsed event, with the consent the SDK stated for it (if any).
    Event {
        /// The event; `common.project` is set by ingest.
        event: Box<Event>,
        /// `Some(true)` granted, `Some(false)` refused, `None` not stated.
        consent: Option<bool>,
    },
    /// Not an event ingest can store.
    Invalid {
        /// Why.
        reason: String,
        /// The event's bytes as sent, for the dead-letter topic.
        raw: Vec<u8>,
        /// Whether it was refused for its size.
        too_large: bool,
    },
}

impl Item {
    /// An event refused for its size: what it was, how big, and the limit. Its dead letter keeps
    /// only the first bytes.
    pub fn too_large(raw: &[u8], what: &str, limit: usize) -> Item {
        Item::Invalid {
            reason: format!(
                "{what} of {} bytes is over the {limit}-byte limit",
                raw.len()
            ),
            raw: raw[..raw.len().min(4096)].to_vec(),
            too_large: true,
        }
    }
}

/// One refused event of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    /// Its position in the request.
    pub index: usize,
    /// Why it was refused.
    pub reason: String,
}

/// What happened to a request's events.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// Events stored on the bus.
    pub accepted: usize,
    /// Events refused, with reasons.
    pub rejected: Vec<Rejection>,
}

/// Why a request as a whole was refused. Each maps to one HTTP status and a JSON body with the
/// reason.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No key, or a key no project has.
    #[error("{0}")]
    Unauthorized(String),
    /// The key belongs to another project than the URL names.
    #[error("{0}")]
    Forbidden(String),
    /// The body cannot be understood at all.
    #[error("{0}")]
    BadRequest(String),
    /// The body or an item is over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// A rate limit was reached; retry after the given time.
    #[error("rate limit reached for {scope}")]
    RateLimited {
        /// `key` or `global`.
        scope: &'static str,
        /// When to retry.
        retry_after: Duration,
    },
    /// The bus did not take the events in time; retry after the given time.
    #[error("events could not be stored: {reason}")]
    Unavailable {
        /// What the bus said.
        reason: String,
        /// When to retry.
        retry_after: Duration,
    },
}

impl IngestError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::Forbidden(_) => StatusCode::FORBIDDEN,
            IngestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngestError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::RateLimited { retry_after, .. }
            | IngestError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": status.canonical_reason().unwrap_or("error"),
            "reason": self.to_string(),
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// A project as ingest uses it.
#[derive(Debug)]
pub struct Project {
    /// Its settings.
    pub config: ProjectConfig,
}

/// Ingest's shared state: projects by key, limiters, metrics and the producer.
pub struct Ingest {
    /// Settings.
    pub config: IngestConfig,
    /// Where events go.
    pub producer: Arc<dyn Producer>,
    /// IngestMetrics.
    pub metrics: IngestMetrics,
    /// The topics events and dead letters go to.
    pub topics: topics::Names,
    /// What `/metrics` serves: ingest's metrics, and those of the other stages in this process.
    pub exported: prometheus_client::registry::Registry,
    /// Failed admin attempts per client address.
    pub admin_guard: crate::admin::AdminGuard,
    by_key: HashMap<String, (String, Arc<Project>)>,
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    global: Option<DefaultDirectRateLimiter>,
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    Some(Quota::per_second(NonZeroU32::new(per_second)?).allow_burst(NonZeroU32::new(burst)?))
}

impl Ingest {
    /// Builds the state from validated settings.
    pub fn new(config: IngestConfig, producer: Arc<dyn Producer>) -> Self {
        let mut by_key = HashMap::new();
        for p in &config.projects {
            let project = Arc::new(Project { config: p.clone() });
            for key in &p.keys {
                by_key.insert(key.clone(), (key.clone(), project.clone()));
            }
        }
        let r = &config.rate_limit;
        let metrics = IngestMetrics::default();
        let mut exported = prometheus_client::registry::Registry::default();
        metrics.register(&mut exported);
        Ingest {
            per_key: quota(r.per_key_per_second, r.per_key_burst).map(RateLimiter::keyed),
            global: quota(r.global_per_second, r.global_burst).map(RateLimiter::direct),
            by_key,
            metrics,
            exported,
            topics: topics::Names::default(),
            admin_guard: crate::admin::AdminGuard::default(),
            producer,
            config,
        }
    }

    /// The project a key writes to.
    pub fn project(&self, key: Option<&str>) -> Result<(&str, Arc<Project>), IngestError> {
        let key =
            key.ok_or_else(|| IngestError::Unauthorized("no project key in the request".into()))?;
        self.by_key
            .get(key)
            .map(|(k, p)| (k.as_str(), p.clone()))
            .ok_or_else(|| IngestError::Unauthorized("unknown project key".into()))
    }

    fn check_rate(&self, key: &str, n: usize) -> Result<(), IngestError> {
        let Some(n) = NonZeroU32::new(n.min(u32::MAX as usize) as u32) else {
            return Ok(());
        };
        let retry_after = self.config.retry_after;
        // A request larger than the burst could never pass: that is a size problem (413), not a
        // reason to retry (429).
        let too_big = |scope: &str| {
            IngestError::TooLarge(format!(
                "{n} events are more than the {scope} rate limit's burst"
            ))
        };
        if let Some(limiter) = &self.per_key {
            match limiter.check_key_n(&key.to_string(), n) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(IngestError::RateLimited {
                        scope: "key",
                        retry_after,
                    });
                }
                Err(_) => return Err(too_big("per-key")),
            }
        }
        if let Some(limiter) = &self.global {
            match limiter.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(IngestError::RateLimited {
                        scope: "global",
                        retry_after,
                    });
                }
                Err(_) => return Err(too_big("global")),
            }
        }
        Ok(())
    }

    /// Normalizes, checks and publishes a request's items; answers once the bus has them all.
    pub async fn accept(
        &self,
        key: &str,
        project: &Project,
        sent_at_ms: Option<i64>,
        items: Vec<Item>,
    ) -> Result<Outcome, IngestError> {
        let name = project.config.name.as_str();
        if items.len() > self.config.limits.max_events_per_request {
            self.metrics.dropped(name, "too_large", items.len() as u64);
            return Err(IngestError::TooLarge(format!(
                "{} events in one request; the limit is {}",
                items.len(),
                self.config.limits.max_events_per_request
            )));
        }
        // Charged before the work on each item (scrubbing, encoding, the dead letters): every
        // item costs, refused ones included.
        if let Err(e) = self.check_rate(key, items.len()) {
            if matches!(e, IngestError::RateLimited { .. }) {
                self.metrics
                    .dropped(name, "rate_limited", items.len() as u64);
            }
            return Err(e);
        }
        let received_at_ms = now_ms();
        let threshold = self.config.clock_drift_threshold.as_millis() as i64;
        let mut outcome = Outcome::default();
        let mut events = Vec::with_capacity(items.len());
        let mut letters = Vec::new();
        let mut accepted_kinds: HashMap<&'static str, u64> = HashMap::new();
        let (mut invalid, mut too_large, mut no_consent, mut refused) = (0, 0, 0, 0);
        let mut too_old = 0;
        let max_age_ms = i64::try_from(self.config.max_event_age.as_millis()).unwrap_or(i64::MAX);
        // Each event message's position in the request and kind.
        let mut origins = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Item::Invalid {
                    reason,
                    raw,
                    too_large: big,
                } => {
                    if big {
                        too_large += 1
                    } else {
                        invalid += 1
                    }
                    letters.push(dead_letter(name, &raw, &reason, project.config.client_ip));
                    outcome.rejected.push(Rejection { index, reason });
                }
                Item::Event { mut event, consent } => {
                    let refused = consent == Some(false)
                        || (project.config.require_consent && consent != Some(true));
                    if refused {
                        no_consent += 1;
                        outcome.rejected.push(Rejection {
                            index,
                            reason: "no_consent".into(),
                        });
                        continue;
                    }
                    event.common_mut().project = name.to_string();
                    normalize::correct_clock(&mut event, sent_at_ms, received_at_ms, threshold);
                    let age_ms = received_at_ms.saturating_sub(event.common().timestamp_ms);
                    if age_ms > max_age_ms {
                        too_old += 1;
                        let reason = format!(
                            "timestamp {} ms is more than {} days before the server's time",
                            event.common().timestamp_ms,
                            max_age_ms / 86_400_000
                        );
                        letters.push(dead_letter(
                            name,
                            format!("{event:?}").as_bytes(),
                            &reason,
                            project.config.client_ip,
                        ));
                        outcome.rejected.push(Rejection { index, reason });
                        continue;
                    }
                    let trimmed = trim::trim(&mut event);
                    for (field, n) in trimmed.fields() {
                        self.metrics.trimmed(name, field, n);
                    }
                    normalize::scrub_event(
                        &mut event,
                        project.config.scrub_pii,
                        project.config.client_ip,
                    );
                    normalize::pseudonymize_ids(event.common_mut(), project.config.user_ids);
                    match avro::encode(&event) {
                        Ok(payload)
                            if payload.len() > self.config.limits.max_encoded_event_bytes =>
                        {
                            too_large += 1;
                            let reason = format!(
                                "event of {} bytes encoded is over the {}-byte limit (room is kept for what the processors add)",
                                payload.len(),
                                self.config.limits.max_encoded_event_bytes
                            );
                            letters.push(dead_letter(
                                name,
                                &payload[..payload.len().min(DEAD_LETTER_BYTES)],
                                &reason,
                                project.config.client_ip,
                            ));
                            outcome.rejected.push(Rejection { index, reason });
                        }
                        Ok(payload) => {
                            *accepted_kinds.entry(event.kind().as_str()).or_default() += 1;
                            origins.push((index, event.kind().as_str()));
                            events.push(Message::new(
                                self.topics.raw.as_str(),
                                event.partition_key(),
                                payload,
                            ));
                        }
                        Err(e) => {
                            invalid += 1;
                            let reason = format!("cannot encode: {e}");
                            letters.push(dead_letter(
                                name,
                                format!("{event:?}").as_bytes(),
                                &reason,
                                project.config.client_ip,
                            ));
                            outcome.rejected.push(Rejection { index, reason });
                        }
                    }
                }
            }
        }
        outcome.accepted = events.len();
        let stored_events = events.len();
        let mut messages = events;
        messages.extend(letters.into_iter().map(|mut letter| {
            letter.topic.clone_from(&self.topics.dlq);
            letter
        }));
        // An event the bus refuses for good (too large for the broker) is dead-lettered and
        // refused on its own: answering 503 would make the SDK resend it, and the whole batch
        // with it, forever.
        let mut refusals = Vec::new();
        let unavailable = |e: IngestError| {
            self.metrics
                .dropped(name, "unavailable", stored_events as u64);
            e
        };
        let settled = self.publish(name, messages).await.map_err(unavailable)?;
        for (position, refusal) in settled {
            if position >= stored_events {
                tracing::warn!(project = name, error = %refusal.error, "The bus refused a dead letter.");
                self.metrics.dropped(name, "refused_by_bus", 1);
                continue;
            }
            let (index, kind) = origins[position];
            let reason = format!("the bus refused the event: {}", refusal.error);
            let described = avro::decode(&refusal.message.payload)
                .map(|event| format!("{event:?}"))
                .unwrap_or_default();
            refusals.push(dead_letter(
                name,
                described.as_bytes(),
                &reason,
                project.config.client_ip,
            ));
            outcome.rejected.push(Rejection { index, reason });
            outcome.accepted -= 1;
            refused += 1;
            if let Some(n) = accepted_kinds.get_mut(kind) {
                *n -= 1;
            }
        }
        if !refusals.is_empty() {
            outcome.rejected.sort_by_key(|r| r.index);
            for letter in &mut refusals {
                letter.topic.clone_from(&self.topics.dlq);
            }
            let settled = self.publish(name, refusals).await.map_err(unavailable)?;
            for (_, refusal) in settled {
                tracing::warn!(project = name, error = %refusal.error, "The bus refused a dead letter.");
                self.metrics.dropped(name, "refused_by_bus", 1);
            }
        }
        // Counted once the request's fate is known: a refused request is retried, and its
        // drops would otherwise be counted at every try.
        self.metrics.dropped(name, "invalid", invalid);
        self.metrics.dropped(name, "too_large", too_large);
        self.metrics.dropped(name, "no_consent", no_consent);
        self.metrics.dropped(name, "refused_by_bus", refused);
        self.metrics.dropped(name, "too_old", too_old);
        for (kind, n) in accepted_kinds {
            self.metrics.accepted(name, kind, n);
        }
        Ok(outcome)
    }
}

impl Ingest {
    /// Publishes a request's messages within the publish timeout. Answers which of them the bus
    /// refused for good (by position); any other failure refuses the request with 503.
    async fn publish(
        &self,
        project: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<(usize, Refusal)>, IngestError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let count = messages.len();
        let started = Instant::now();
        let publish = self.producer.publish_settled(messages);
        let reason = match tokio::time::timeout(self.config.publish_timeout, publish).await {
            Ok(Ok(settled)) => {
                return Ok(settled
                    .into_iter()
                    .enumerate()
                    .filter_map(|(position, s)| s.err().map(|refusal| (position, refusal)))
                    .collect());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no acknowledgement within {:?}",
                self.config.publish_timeout
            ),
        };
        tracing::warn!(project, %reason, messages = count, waited_ms = started.elapsed().as_millis() as u64, "Bus refused a request's events.");
        Err(IngestError::Unavailable {
            reason,
            retry_after: self.config.retry_after,
        })
    }
}

/// Bytes of a refused payload kept in its dead letter: enough to see what was wrong.
const DEAD_LETTER_BYTES: usize = 4096;

/// A dead letter for something a request sent that ingest could not use: always scrubbed of PII
/// and of IPs the project's policy removes, and cut to [`DEAD_LETTER_BYTES`].
fn dead_letter(project: &str, raw: &[u8], reason: &str, ip: crate::config::IpPolicy) -> Message {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    normalize::scrub_json_text(&mut text, true, ip);
    if text.len() > DEAD_LETTER_BYTES {
        let mut end = DEAD_LETTER_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    trellis_bus::dead_letter_from(project.as_bytes(), text.into_bytes(), "ingest", reason)
}
