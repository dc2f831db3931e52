//! Ingest settings: where to listen, which projects and keys exist, limits and privacy rules.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default project's key: for trying trellis on loopback only (refused on any other
/// listen address).
pub const DEV_KEY: &str = "trellis_dev_key";

/// Ingest settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// The projects events can be sent to, each with its keys.
    pub projects: Vec<ProjectConfig>,
    /// Size limits.
    pub limits: LimitsConfig,
    /// Rate limits.
    pub rate_limit: RateLimitConfig,
    /// How long a request may wait for the bus to acknowledge its events before ingest answers
    /// 503 (the SDK retries later).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// The `Retry-After` ingest sends with 503 and 429 answers.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Event timestamps are corrected by the difference between the server's and the device's
    /// clock when it exceeds this (Sentry's clock-drift correction).
    #[serde(with = "humantime_serde")]
    pub clock_drift_threshold: Duration,
    /// Events whose time (after clock-drift correction) is further back than this are refused
    /// and dead-lettered (`too_old`): a device with a clock in 1970 cannot spread a project's
    /// rows over decades of partitions. Times in the future are set to the arrival time.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
    /// Bearer tokens of the admin API (issue commands, rollouts and their overrides, alert
    /// acknowledgements and silences). A bare string holds for every project and is named
    /// `admin` in the audit trail; `{ token, name, projects }` is named `name` and holds for
    /// `projects` only. Empty turns the admin API off. At least 16 characters each.
    pub admin_tokens: Vec<AdminToken>,
}

/// An admin API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdminToken {
    /// Every project, as `admin`.
    Any(String),
    /// Some projects, under a name.
    Scoped(ScopedToken),
}

/// An admin token for some projects, with the name the audit trail gives its holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    /// The bearer token.
    pub token: String,
    /// Who holds it (`release-pipeline`, `ana`): the actor of what it does.
    pub name: String,
    /// The projects it may change.
    pub projects: Vec<String>,
}

impl AdminToken {
    /// The bearer token.
    pub fn secret(&self) -> &str {
        match self {
            AdminToken::Any(t) => t,
            AdminToken::Scoped(s) => &s.token,
        }
    }

    /// Who holds it.
    pub fn name(&self) -> &str {
        match self {
            AdminToken::Any(_) => "admin",
            AdminToken::Scoped(s) => &s.name,
        }
    }

    /// Whether it may change `project`.
    pub fn allows(&self, project: &str) -> bool {
        match self {
            AdminToken::Any(_) => true,
            AdminToken::Scoped(s) => s.projects.iter().any(|p| p == project),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            // A development project on loopback: key `trellis_dev_key`, Sentry DSN
            // `http://trellis_dev_key@127.0.0.1:8080/1`.
            projects: vec![ProjectConfig {
                sentry_id: Some(1),
                ..ProjectConfig::default()
            }],
            limits: LimitsConfig::default(),
            rate_limit: RateLimitConfig::default(),
            publish_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
            clock_drift_threshold: Duration::from_secs(60),
            max_event_age: Duration::from_secs(365 * 86_400),
            admin_tokens: Vec::new(),
        }
    }
}

/// One project: its name, its keys and its privacy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectConfig {
    /// The project's name; events are stored under it. Also the `{project}` in Sentry DSN paths.
    pub name: String,
    /// Keys that write to this project: the bearer token of the native API, the Sentry DSN's
    /// public key, PostHog's `api_key`.
    pub keys: Vec<String>,
    /// The numeric project id for Sentry DSNs (`http://KEY@host/SENTRY_ID`): Sentry SDKs refuse
    /// a DSN whose project is not a number. The project's name works in the path too.
    pub sentry_id: Option<u64>,
    /// What happens to client IP addresses in payloads (`$ip`, Sentry `user.ip_address`).
    pub client_ip: IpPolicy,
    /// Whether events need explicit consent (`consent: true`, PostHog `$consent`, Sentry tag
    /// `consent`); events without it are dropped and counted.
    pub require_consent: bool,
    /// Mask emails, card numbers, IBANs, phone numbers, IPv4 addresses and URL query strings in
    /// free text, and user names in home-directory paths of stack frames.
    pub scrub_pii: bool,
    /// What happens to user ids (and device ids) that could name a person.
    pub user_ids: UserIds,
}

/// What to do with user and device ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserIds {
    /// Keep them as sent.
    Keep,
    /// Replace a user or device id that is an email by a stable pseudonym (`sha256:...`).
    HashEmails,
    /// Replace every user id (and email device ids) by a stable pseudonym.
    Hash,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        ProjectConfig {
            name: "default".into(),
            keys: vec![DEV_KEY.into()],
            sentry_id: None,
            client_ip: IpPolicy::Drop,
            require_consent: false,
            scrub_pii: true,
            user_ids: UserIds::HashEmails,
        }
    }
}

/// What to do with client IP addresses found in payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpPolicy {
    /// Remove them.
    Drop,
    /// Keep the network part: /24 for IPv4, /48 for IPv6.
    Truncate,
    /// Keep them as sent.
    Keep,
}

/// Size limits. Defaults are near Sentry's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body on the wire (compressed), in bytes.
    pub max_wire_bytes: usize,
    /// Largest request body after decompression, in bytes: the guard against decompression bombs.
    pub max_decompressed_bytes: usize,
    /// Largest single event, in bytes of JSON.
    pub max_event_bytes: usize,
    /// Largest single event as stored on the bus (Avro). The default leaves 4 KiB under
    /// Kafka's default message limit (1,000,000 bytes) for what the processors add (issue and
    /// session ids); raise both together.
    pub max_encoded_event_bytes: usize,
    /// Largest Sentry attachment, in bytes.
    pub max_attachment_bytes: usize,
    /// Most events in one request.
    pub max_events_per_request: usize,
    /// Most requests read at once, over every route together; more wait their turn. With
    /// `max_decompressed_bytes`, this bounds the memory bodies can take: at most their product.
    pub max_concurrent_requests: usize,
    /// Most connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, and how long a kept-alive connection
    /// may sit idle: then it is closed (a stalled client cannot hold a connection).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long one request may take from its headers to its answer, body upload included;
    /// then it is answered 408. Longer than `publish_timeout`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_wire_bytes: 20 * 1024 * 1024,
            max_decompressed_bytes: 100 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            max_encoded_event_bytes: 1_000_000 - 4096,
            max_attachment_bytes: 20 * 1024 * 1024,
            max_events_per_request: 10_000,
            max_concurrent_requests: 256,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Rate limits, in events per second with a burst allowance. Zero disables a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Events per second one key may send.
    pub per_key_per_second: u32,
    /// Events one key may send at once above its rate.
    pub per_key_burst: u32,
    /// Events per second all keys together may send.
    pub global_per_second: u32,
    /// Events all keys together may send at once above the rate.
    pub global_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_key_per_second: 50_000,
            per_key_burst: 100_000,
            global_per_second: 0,
            global_burst: 0,
        }
    }
}

impl IngestConfig {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, t) in self.admin_tokens.iter().enumerate() {
            if t.secret().trim().len() < 16 {
                return Err(format!(
                    "ingest.admin_tokens[{i}]: must be at least 16 characters"
                ));
            }
            if let AdminToken::Scoped(s) = t {
                if s.name.trim().is_empty() {
                    return Err(format!("ingest.admin_tokens[{i}].name: must not be empty"));
                }
                if s.projects.is_empty() {
                    return Err(format!(
                        "ingest.admin_tokens[{i}].projects: name at least one project"
                    ));
                }
                if let Some(p) = s
                    .projects
                    .iter()
                    .find(|p| !self.projects.iter().any(|c| &c.name == *p))
                {
                    return Err(format!(
                        "ingest.admin_tokens[{i}].projects: no project {p:?} in ingest.projects"
                    ));
                }
            }
        }
        if !self.listen.ip().is_loopback()
            && let Some(i) = self
                .projects
                .iter()
                .position(|p| p.keys.iter().any(|k| k == DEV_KEY))
        {
            return Err(format!(
                "ingest.projects[{i}].keys: the development key {DEV_KEY} is refused when \
                 ingest.listen ({}) is reachable from other machines; set a key of your own",
                self.listen
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut sentry_ids = std::collections::HashSet::new();
        for (i, p) in self.projects.iter().enumerate() {
            if let Some(id) = p.sentry_id
                && !sentry_ids.insert(id)
            {
                return Err(format!(
                    "ingest.projects[{i}].sentry_id {id} is used by two projects"
                ));
            }
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "ingest.projects[{i}].name {:?} must be non-empty letters, digits, - or _",
                    p.name
                ));
            }
            if p.keys.is_empty() {
                return Err(format!(
                    "ingest.projects[{i}].keys is empty: project {:?} could not receive events",
                    p.name
                ));
            }
            for key in &p.keys {
                if key.len() < 8 {
                    return Err(format!(
                        "ingest.projects[{i}].keys: {key:?} is shorter than 8 characters"
                    ));
                }
                if !seen.insert(key.clone()) {
                    return Err(format!(
                        "ingest.projects[{i}].keys: {key:?} is used by two projects"
                    ));
                }
            }
        }
        let l = &self.limits;
        for (name, value) in [
            ("max_wire_bytes", l.max_wire_bytes),
            ("max_decompressed_bytes", l.max_decompressed_bytes),
            ("max_event_bytes", l.max_event_bytes),
            ("max_encoded_event_bytes", l.max_encoded_event_bytes),
            ("max_events_per_request", l.max_events_per_request),
            ("max_concurrent_requests", l.max_concurrent_requests),
            ("max_connections", l.max_connections),
        ] {
            if value == 0 {
                return Err(format!("ingest.limits.{name} must be greater than 0"));
            }
        }
        if self.max_event_age < Duration::from_secs(3_600) {
            return Err("ingest.max_event_age must be at least 1h".into());
        }
        if l.header_timeout.is_zero() {
            return Err("ingest.limits.header_timeout must be greater than 0".into());
        }
        if l.request_timeout <= self.publish_timeout {
            return Err(format!(
                "ingest.limits.request_timeout ({:?}) must be longer than ingest.publish_timeout ({:?})",
                l.request_timeout, self.publish_timeout
            ));
        }
        if l.max_decompressed_bytes < l.max_wire_bytes {
            return Err(
                "ingest.limits.max_decompressed_bytes must be at least max_wire_bytes".into(),
            );
        }
        let r = &self.rate_limit;
        for (name, rate, burst) in [
            ("per_key", r.per_key_per_second, r.per_key_burst),
            ("global", r.global_per_second, r.global_burst),
        ] {
            if rate > 0 && (burst as usize) < l.max_events_per_request {
                return Err(format!(
                    "ingest.rate_limit.{name}_burst {burst} is below ingest.limits.max_events_per_request {}: a full request could never pass",
                    l.max_events_per_request
                ));
            }
        }
        Ok(())
    }
}
