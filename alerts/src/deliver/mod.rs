//! Delivering decisions: the outbox (`alerts`) read in its own consumer group, each notifying
//! version sent to each of its destinations, the offset committed once every destination has
//! answered.
//!
//! A decision is on the bus before anything is sent, so a crash before delivery delivers after
//! restart. Each settled key (delivered, held for quiet hours, or given up) is appended and
//! synced to a per-partition log under `<checkpoint_dir>/alert-deliver/` before the offset is
//! committed, so neither a replayed offset nor the decider writing the same version again after
//! its own restart sends it twice. Only a crash between a receiver's answer and that append
//! sends a version again, with the same idempotency key (`id` in the body,
//! `X-Trellis-Delivery`), which is how a receiver tells a retry from a new decision. A
//! destination that keeps failing is given up after `alerts.delivery.attempts`: the version goes
//! to `dlq` with the reason and counts as `undelivered` on `/metrics`.
//!
//! A destination's quiet hours hold notifications (never a halt) in a file beside the logs; the
//! first check after the window ends sends them as one digest.

mod expo;
mod log;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::json;
use trellis_bus::retry::{Backoff, until_done};
use trellis_bus::{Bus, BusError, Message, Offsets, Producer, Record, dead_letter};
use trellis_processors::ProcessorMetrics;
use trellis_schemas::records::{self, Alert, AuditEntry};
use trellis_schemas::topics;
use xxhash_rust::xxh3::xxh3_128;

use crate::config::{AlertConfig, Destination};
use crate::decide::NO_EVENT;
use crate::message;
use log::DeliveredLog;

/// The deliverer's stage name, in metrics and dead letters.
pub const STAGE: &str = "alert-deliver";

/// How often held notifications are checked for a quiet window's end.
const DIGEST_CHECK: Duration = Duration::from_secs(10);

/// Why the deliverer stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The bus failed in a way retrying does not fix.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// A file of the deliverer's could not be read or written.
    #[error("{path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another attempt (a timeout, a refused connection, 408, 429, 5xx), after at least
    /// the receiver's `Retry-After` if it gave one.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Another attempt would get the same answer (another 4xx).
    Permanent(String),
}

/// What goes to a destination: one alert version, or the digest of those held in quiet hours.
enum Notice<'a> {
    Alert {
        alert: &'a Alert,
        detected_at_ms: i64,
    },
    Digest {
        id: String,
        alerts: &'a [Alert],
    },
}

impl Notice<'_> {
    fn id(&self) -> &str {
        match self {
            Notice::Alert { alert, .. } => &alert.delivery_id,
            Notice::Digest { id, .. } => id,
        }
    }

    fn project(&self) -> &str {
        match self {
            Notice::Alert { alert, .. } => &alert.project,
            Notice::Digest { alerts, .. } => alerts.first().map_or("", |a| a.project.as_str()),
        }
    }

    fn slack(&self, link_base: &str) -> serde_json::Value {
        match self {
            Notice::Alert { alert, .. } => message::slack_message(alert, link_base),
            Notice::Digest { alerts, .. } => message::slack_digest(alerts),
        }
    }

    fn webhook(&self) -> serde_json::Value {
        match self {
            Notice::Alert {
                alert,
                detected_at_ms,
            } => message::webhook_body(alert, *detected_at_ms),
            Notice::Digest { id, alerts } => message::webhook_digest(id, alerts),
        }
    }

    /// Title, body and data of a push notification.
    fn push(&self) -> (String, String, serde_json::Value) {
        match self {
            Notice::Alert { alert, .. } => (
                message::title(alert),
                alert.summary.clone(),
                json!({"alertId": alert.alert_id, "deliveryId": alert.delivery_id, "type": alert.event}),
            ),
            Notice::Digest { id, alerts } => (
                format!("{} alerts during quiet hours", alerts.len()),
                alerts
                    .iter()
                    .map(message::title)
                    .collect::<Vec<_>>()
                    .join("\n"),
                json!({"deliveryId": id, "type": "alert.digest"}),
            ),
        }
    }
}

/// Sends alert versions to their destinations.
pub struct Deliverer {
    config: Arc<AlertConfig>,
    client: reqwest::Client,
    metrics: Arc<ProcessorMetrics>,
    producer: Arc<dyn Producer>,
    topics: topics::Names,
    state_dir: PathBuf,
    removed: expo::Removed,
    /// Guards the files of held notifications.
    held: Mutex<()>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Deliverer {
    /// A deliverer for `config`'s destinations, publishing dead letters and audit entries with
    /// `producer`, keeping its files in `state_dir`.
    pub fn new(
        config: AlertConfig,
        metrics: Arc<ProcessorMetrics>,
        producer: Arc<dyn Producer>,
        topics: topics::Names,
        state_dir: &Path,
    ) -> Result<Self, DeliverError> {
        let client = reqwest::Client::builder()
            .timeout(config.delivery.timeout)
            .connect_timeout(config.delivery.timeout)
            .user_agent(concat!("trellis/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            config: Arc::new(config),
            client,
            metrics,
            producer,
            topics,
            state_dir: state_dir.to_path_buf(),
            removed: expo::Removed::new(state_dir),
            held: Mutex::new(()),
        })
    }

    /// Delivers `notice` to `name`, retrying with backoff and jitter; `Err` is the reason it was
    /// given up. `None` when `shutdown` came first.
    async fn deliver(
        self: &Arc<Self>,
        name: &str,
        notice: &Notice<'_>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<Result<u32, String>> {
        let Some(destination) = self.config.destinations.get(name) else {
            return Some(Err(format!(
                "no destination {name:?} in alerts.destinations"
            )));
        };
        let d = &self.config.delivery;
        let mut backoff = Backoff::new(d.backoff_min, d.backoff_max);
        let mut attempt = 1;
        // Expo batches already accepted, so a retry sends only the rest.
        let mut sent = 0;
        loop {
            let failure = match self.attempt(name, destination, notice, &mut sent).await {
                Ok(()) => return Some(Ok(attempt)),
                Err(f) => f,
            };
            let (reason, after) = match failure {
                Failure::Permanent(reason) => {
                    return Some(Err(format!("{name}: {reason} (not retried)")));
                }
                Failure::Retry { reason, after } => (reason, after),
            };
            if attempt as usize >= d.attempts {
                return Some(Err(format!(
                    "{name}: {reason} (gave up after {attempt} attempts)"
                )));
            }
            let delay = backoff.next_wait();
            // A receiver may ask for more time than the backoff gives; not for more than ten
            // minutes.
            let delay = delay.max(after.unwrap_or_default().min(Duration::from_secs(600)));
            tracing::warn!(destination = name, key = notice.id(), %reason, retry_in = ?delay, "Delivery failed; retrying.");
            self.metrics.record(STAGE, "retried", 1);
            tokio::select! {
                _ = &mut *shutdown => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        name: &str,
        destination: &Destination,
        notice: &Notice<'_>,
        sent: &mut usize,
    ) -> Result<(), Failure> {
        match destination {
            Destination::Slack { url, .. } => {
                let request = self
                    .client
                    .post(url)
                    .json(&notice.slack(&self.config.link_base));
                answer(request).await.map(drop)
            }
            Destination::Webhook { url, secret, .. } => {
                let body = serde_json::to_vec(&notice.webhook()).expect("JSON serializes");
                let timestamp = now_ms() / 1000;
                let request = self
                    .client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(message::TIMESTAMP_HEADER, timestamp.to_string())
                    .header(
                        message::SIGNATURE_HEADER,
                        message::signature(secret, timestamp, &body),
                    )
                    .header(message::DELIVERY_HEADER, notice.id())
                    .body(body);
                answer(request).await.map(drop)
            }
            Destination::Expo {
                url,
                access_token,
                tokens,
                receipt_delay,
                ..
            } => {
                let tokens = self.removed.active(name, tokens);
                let (title, body, data) = notice.push();
                for batch in tokens.chunks(expo::BATCH).skip(*sent) {
                    let messages: Vec<_> = batch
                        .iter()
                        .map(|to| expo::message(to, &title, &body, data.clone()))
                        .collect();
                    let mut request = self
                        .client
                        .post(format!("{}/send", url.trim_end_matches('/')))
                        .header(reqwest::header::ACCEPT, "application/json")
                        .json(&messages);
                    if let Some(token) = access_token {
                        request = request.bearer_auth(token);
                    }
                    let tickets = expo::tickets(&answer(request).await?, batch)?;
                    *sent += 1;
                    for token in &tickets.unregistered {
                        self.remove_token(notice.project(), name, token, "the push ticket")
                            .await;
                    }
                    for error in &tickets.errors {
                        tracing::warn!(destination = name, %error, "Expo refused a message.");
                    }
                    if !tickets.accepted.is_empty() {
                        self.check_receipts(
                            (notice.project(), name),
                            url,
                            access_token,
                            tickets.accepted,
                            *receipt_delay,
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Fetches the receipts of `accepted` after `delay`, in the background, and removes the
    /// tokens Expo no longer knows. Receipts still pending at a restart are not fetched: the
    /// next notification's tickets report the same tokens.
    fn check_receipts(
        self: &Arc<Self>,
        (project, name): (&str, &str),
        url: &str,
        access_token: &Option<String>,
        accepted: Vec<(String, String)>,
        delay: Duration,
    ) {
        let (this, project, name, url, access_token) = (
            self.clone(),
            project.to_string(),
            name.to_string(),
            format!("{}/getReceipts", url.trim_end_matches('/')),
            access_token.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let ids: Vec<&str> = accepted.iter().map(|(id, _)| id.as_str()).collect();
            let mut request = this.client.post(&url).json(&json!({ "ids": ids }));
            if let Some(token) = &access_token {
                request = request.bearer_auth(token);
            }
            match answer(request).await {
                Ok(receipts) => {
                    for id in expo::unregistered_receipts(&receipts) {
                        if let Some((_, token)) = accepted.iter().find(|(i, _)| *i == id) {
                            this.remove_token(&project, &name, token, "a push receipt")
                                .await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(destination = %name, error = ?e, "Expo receipts unavailable.")
                }
            }
        });
    }

    /// Takes `token` off `name`'s on-call list for good, with an entry on `audit`.
    async fn remove_token(&self, project: &str, name: &str, token: &str, source: &str) {
        match self.removed.remove(name, token) {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(
                    destination = name,
                    token,
                    "Removed a push token Expo does not know."
                );
                self.metrics.record(STAGE, "push_tokens_removed", 1);
                let entry = AuditEntry {
                    audit_id: format!(
                        "{:032x}",
                        xxh3_128(format!("push_token.removed\0{name}\0{token}").as_bytes())
                    ),
                    project: project.to_string(),
                    at_ms: now_ms(),
                    actor: "trellis deliverer".into(),
                    action: "push_token.removed".into(),
                    subject: format!("{name}: {token}"),
                    reason: format!("Expo answered DeviceNotRegistered in {source}"),
                    evidence:
                        json!({"destination": name, "token": token, "error": "DeviceNotRegistered"})
                            .to_string(),
                };
                let message = records::encode(&entry).map(|payload| {
                    Message::new(
                        self.topics.audit.as_str(),
                        project.as_bytes().to_vec(),
                        payload,
                    )
                });
                match message {
                    Ok(m) => {
                        if let Err(e) = publish(self.producer.as_ref(), vec![m]).await {
                            tracing::error!(error = %e, "The audit entry of a removed token was not stored.");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "An audit entry does not encode."),
                }
            }
            Err(e) => tracing::error!(error = %e, "A removed push token was not saved."),
        }
    }

    fn held_path(&self, destination: &str) -> PathBuf {
        self.state_dir.join(format!("held-{destination}.jsonl"))
    }

    /// Keeps `alert` for `destination`'s digest.
    fn hold(&self, destination: &str, alert: &Alert) -> Result<(), DeliverError> {
        use std::io::Write;
        let _guard = self.held.lock().expect("not poisoned");
        let path = self.held_path(destination);
        let io = |source| DeliverError::Log {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.state_dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut line = serde_json::to_vec(alert).expect("an alert serializes");
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(io)
    }

    /// Sends the digest of every destination whose quiet hours are over and that holds
    /// notifications. `false` when `shutdown` came first.
    async fn send_digests(
        self: &Arc<Self>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<bool, DeliverError> {
        let now = now_ms();
        for (name, destination) in self.config.destinations.iter() {
            if destination.quiet_hours().is_none_or(|q| q.contains(now)) {
                continue;
            }
            let path = self.held_path(name);
            let text = {
                let _guard = self.held.lock().expect("not poisoned");
                std::fs::read_to_string(&path).unwrap_or_default()
            };
            let mut alerts: Vec<Alert> = Vec::new();
            for line in text.lines() {
                // A torn last line (a crash mid-append) was never settled: it is held again.
                if let Ok(alert) = serde_json::from_str::<Alert>(line)
                    && !alerts.iter().any(|a| a.delivery_id == alert.delivery_id)
                {
                    alerts.push(alert);
                }
            }
            if alerts.is_empty() {
                continue;
            }
            let keys: Vec<&str> = alerts.iter().map(|a| a.delivery_id.as_str()).collect();
            let id = format!("{:032x}", xxh3_128(keys.join("\0").as_bytes()));
            let notice = Notice::Digest {
                id,
                alerts: &alerts,
            };
            let Some(outcome) = self.deliver(name, &notice, shutdown).await else {
                return Ok(false);
            };
            match outcome {
                Ok(_) => {
                    tracing::info!(destination = %name, held = alerts.len(), "Digest delivered.");
                    self.metrics.record(STAGE, "digests", 1);
                }
                Err(reason) => {
                    tracing::error!(destination = %name, %reason, "Digest undelivered.");
                    self.metrics.record(STAGE, "undelivered", 1);
                }
            }
            let _guard = self.held.lock().expect("not poisoned");
            std::fs::remove_file(&path).map_err(|source| DeliverError::Log {
                path: path.clone(),
                source,
            })?;
        }
        Ok(true)
    }

    /// Delivers one outbox record to every destination it names; returns the dead letters of
    /// what could not be delivered, or `None` if `shutdown` came first.
    async fn handle(
        self: &Arc<Self>,
        record: &Record,
        log: &mut DeliveredLog,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<Vec<Message>>, DeliverError> {
        let letter = |reason: &str| {
            let mut letter = dead_letter(record, STAGE, reason);
            letter.topic.clone_from(&self.topics.dlq);
            letter
        };
        let alert = match records::decode::<Alert>(&record.payload) {
            Ok(alert) => alert,
            Err(e) => {
                self.metrics.record(STAGE, "invalid", 1);
                return Ok(Some(vec![letter(&e.to_string())]));
            }
        };
        if alert.event == NO_EVENT {
            self.metrics.record(STAGE, "silent", 1);
            return Ok(Some(Vec::new()));
        }
        let mut letters = Vec::new();
        for name in &alert.destinations {
            // The key of this version at this destination.
            let key = format!("{}\t{name}", alert.delivery_id);
            if log.contains(&key) {
                self.metrics.record(STAGE, "already_delivered", 1);
                continue;
            }
            let quiet = self
                .config
                .destinations
                .get(name)
                .and_then(|d| d.quiet_hours())
                .is_some_and(|q| q.contains(now_ms()));
            // A halt or resume is for the rollout service and never waits.
            if quiet && !alert.event.starts_with("rollout.") {
                self.hold(name, &alert)?;
                log.append(&key)?;
                self.metrics.record(STAGE, "held", 1);
                continue;
            }
            let notice = Notice::Alert {
                alert: &alert,
                detected_at_ms: record.timestamp_ms,
            };
            let Some(outcome) = self.deliver(name, &notice, shutdown).await else {
                return Ok(None);
            };
            log.append(&key)?;
            match outcome {
                Ok(attempts) => {
                    tracing::info!(destination = %name, key = %alert.delivery_id, event = %alert.event, attempts, "Alert delivered.");
                    self.metrics.record(STAGE, "delivered", 1);
                }
                Err(reason) => {
                    tracing::error!(destination = %name, key = %alert.delivery_id, %reason, "Alert undelivered.");
                    self.metrics.record(STAGE, "undelivered", 1);
                    letters.push(letter(&reason));
                }
            }
        }
        Ok(Some(letters))
    }
}

/// Sends `request`; a 2xx answer's JSON body (null when it is not JSON), or why not.
async fn answer(request: reqwest::RequestBuilder) -> Result<serde_json::Value, Failure> {
    let response = request.send().await.map_err(|e| Failure::Retry {
        reason: error_chain(&e),
        after: None,
    })?;
    let status = response.status();
    let after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(serde_json::from_str(&text).unwrap_or_default());
    }
    let reason = format!(
        "HTTP {status}: {}",
        text.chars().take(200).collect::<String>()
    );
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Err(Failure::Retry { reason, after })
    } else {
        Err(Failure::Permanent(reason))
    }
}

/// An error and its sources, for a dead letter's reason.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs the deliverer on `bus` until `shutdown` resolves, keeping its files in `state_dir`.
pub async fn run(
    bus: Arc<dyn Bus>,
    config: AlertConfig,
    topics: topics::Names,
    metrics: Arc<ProcessorMetrics>,
    state_dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DeliverError> {
    let group = config.deliver_group.clone();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Backoff::bus();
    let mut consumer = loop {
        match bus.consumer(&group, &[topics.alerts.as_str()]).await {
            Ok(consumer) => break consumer,
            Err(e) if e.is_retryable() => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "Joining the consumer group failed; retrying.");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let producer = bus.producer()?;
    let deliverer = Arc::new(Deliverer::new(
        config,
        metrics,
        producer.clone(),
        topics.clone(),
        state_dir,
    )?);
    tracing::info!(group = %group, "Alert deliverer started.");
    let mut logs: HashMap<u32, DeliveredLog> = HashMap::new();
    let digests = deliverer.config.has_quiet_hours();
    let mut last_digest_check = Instant::now();
    loop {
        if digests && last_digest_check.elapsed() >= DIGEST_CHECK {
            last_digest_check = Instant::now();
            if !deliverer.send_digests(&mut shutdown).await? {
                break;
            }
        }
        let polled = tokio::select! {
            _ = &mut shutdown => break,
            polled = consumer.poll(100, Duration::from_millis(200)) => polled,
        };
        let records = match polled {
            Ok(records) => records,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "Poll failed; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for record in &records {
            let log = match logs.entry(record.partition) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(DeliveredLog::open(
                    state_dir,
                    &record.topic,
                    record.partition,
                )?),
            };
            let Some(letters) = deliverer.handle(record, log, &mut shutdown).await? else {
                tracing::info!("Alert deliverer stopped before finishing a delivery.");
                return Ok(());
            };
            publish(producer.as_ref(), letters).await?;
            let mut offsets = Offsets::default();
            offsets.set(&record.topic, record.partition, record.offset + 1);
            trellis_bus::commit_until_done(consumer.as_mut(), &offsets).await?;
        }
    }
    tracing::info!("Alert deliverer stopped.");
    Ok(())
}

/// Publishes until the bus acknowledges.
async fn publish(producer: &dyn Producer, messages: Vec<Message>) -> Result<(), BusError> {
    if messages.is_empty() {
        return Ok(());
    }
    until_done("Publishing", || producer.publish(messages.clone()))
        .await
        .map(drop)
}
