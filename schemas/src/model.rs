//! The event model: one Rust type per event kind.
//!
//! These types are the single definition of what trellis carries. The Avro schema of each kind is
//! derived from them (`apache_avro::AvroSchema`), the Arrow schema is traced from their serde shape
//! (`serde_arrow`), and the ClickHouse DDL is generated from the Arrow schema. Tests in
//! `tests/agreement.rs` prove the three agree field by field.
//!
//! Conventions that keep the three formats lossless and in step:
//! - times are `i64` milliseconds since the Unix epoch (`*_ms`), span times microseconds (`*_us`);
//! - free-form JSON objects (analytics properties, SDK contexts, breadcrumb data) are carried as
//!   JSON text, as PostHog and Sentry store them, so no format needs a map type;
//! - "absent" lists are empty lists, never nulls (ClickHouse cannot make an array nullable);
//! - only `String`, `i64`, `f64`, `bool`, unit enums, `Option`, `Vec` and nested records are used.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// The kinds of event trellis accepts. Each kind has its own type, Avro schema and table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Product analytics: something the user did.
    Analytics,
    /// An error or crash, with its exception chain.
    Error,
    /// One performance measurement (app start, screen load, request, frames, memory, battery).
    Performance,
    /// A traced operation with its spans.
    Transaction,
    /// A session update in Sentry's semantics.
    Session,
    /// A step in a push notification's life.
    Notification,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 6] = [
        Kind::Analytics,
        Kind::Error,
        Kind::Performance,
        Kind::Transaction,
        Kind::Session,
        Kind::Notification,
    ];

    /// The kind's name as it appears in APIs and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Analytics => "analytics",
            Kind::Error => "error",
            Kind::Performance => "performance",
            Kind::Transaction => "transaction",
            Kind::Session => "session",
            Kind::Notification => "notification",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which build of the app sent an event. Release health, regressions and rollbacks are keyed by it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Release {
    /// `ios`, `android`, `web`, ...
    pub platform: String,
    /// The store version, for example `2.14.0`.
    pub app_version: String,
    /// The native build number, for example `1402`.
    pub build: Option<String>,
    /// The runtime version an OTA update targets (Expo `runtimeVersion`).
    pub runtime_version: Option<String>,
    /// The OTA update that was running (EAS Update id); none when the embedded bundle ran.
    pub update_id: Option<String>,
    /// The OTA update channel, for example `production` or `staging`.
    pub channel: Option<String>,
    /// The deployment environment, for example `production`.
    pub environment: Option<String>,
}

/// The device an event came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Device {
    /// Device model, for example `iPhone15,2`.
    pub model: Option<String>,
    /// Operating system name, for example `iOS`.
    pub os_name: Option<String>,
    /// Operating system version, for example `17.4.1`.
    pub os_version: Option<String>,
    /// BCP 47 locale, for example `de-DE`.
    pub locale: Option<String>,
    /// IANA time zone, for example `Europe/Berlin`.
    pub timezone: Option<String>,
}

/// The SDK that sent an event.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Sdk {
    /// SDK name, for example `sentry.javascript.react-native`.
    pub name: String,
    /// SDK version.
    pub version: String,
}

/// Fields every event carries, whatever its kind.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Common {
    /// Client-generated UUID; with `project`, the identity used for deduplication.
    pub event_id: String,
    /// The project the event belongs to (from the ingest key, never from the payload).
    pub project: String,
    /// Event time, corrected for clock drift, in ms since the epoch.
    pub timestamp_ms: i64,
    /// When the SDK sent the batch, by the device's clock, in ms since the epoch.
    pub sent_at_ms: Option<i64>,
    /// When ingest received the batch, by the server's clock, in ms since the epoch.
    pub received_at_ms: i64,
    /// Stable per-install device id.
    pub device_id: Option<String>,
    /// The app's user id (PostHog `distinct_id`, Sentry `user.id`).
    pub user_id: Option<String>,
    /// The SDK session the event happened in, if the SDK tracks sessions.
    pub session_id: Option<String>,
    /// The app build that sent the event.
    pub release: Release,
    /// The device that sent the event.
    pub device: Device,
    /// The SDK that sent the event.
    pub sdk: Sdk,
}

/// A key and a value, for tags and attributes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Tag {
    /// The tag's key.
    pub key: String,
    /// The tag's value.
    pub value: String,
}

/// Product analytics: something the user did (PostHog `capture`, the native batch API).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct AnalyticsEvent {
    /// Fields every event carries.
    pub common: Common,
    /// The event name, for example `plant_watered` or `$screen`.
    pub name: String,
    /// The screen the event happened on.
    pub screen: Option<String>,
    /// The event's properties as a JSON object.
    pub properties: String,
}

/// Severity of an error event (Sentry's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "snake_case")]
#[avro(namespace = "trellis", rename_all = "snake_case")]
pub enum Level {
    /// Debug information.
    Debug,
    /// Informational.
    Info,
    /// A warning.
    Warning,
    /// An error (the default).
    #[default]
    Error,
    /// A crash: the app could not go on.
    Fatal,
}

/// One stack frame, innermost last (Sentry's order).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Frame {
    /// Function name.
    pub function: Option<String>,
    /// Module or package.
    pub module: Option<String>,
    /// File name as the SDK reported it.
    pub filename: Option<String>,
    /// Absolute path or URL of the file.
    pub abs_path: Option<String>,
    /// Line number.
    pub lineno: Option<i64>,
    /// Column number.
    pub colno: Option<i64>,
    /// Whether the frame belongs to the app rather than a library.
    #[serde(default)]
    pub in_app: bool,
}

/// One exception of a chain.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Exception {
    /// The exception type, for example `TypeError`.
    pub exception_type: String,
    /// The exception message.
    pub value: Option<String>,
    /// The module the type is defined in.
    pub module: Option<String>,
    /// How it was caught, for example `onerror` or `generic`.
    pub mechanism: Option<String>,
    /// The stack, outermost frame first.
    pub frames: Vec<Frame>,
}

/// Something that happened before an error, as the SDK recorded it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Breadcrumb {
    /// When it happened, in ms since the epoch.
    pub timestamp_ms: i64,
    /// Breadcrumb type, for example `navigation` or `http`.
    pub breadcrumb_type: Option<String>,
    /// Category, for example `ui.click`.
    pub category: Option<String>,
    /// Human-readable message.
    pub message: Option<String>,
    /// Level as the SDK gave it.
    pub level: Option<String>,
    /// Extra data as a JSON object.
    pub data: String,
}

/// An error or crash.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct ErrorEvent {
    /// Fields every event carries.
    pub common: Common,
    /// Severity.
    pub level: Level,
    /// Whether the app handled the error; `false` for crashes and unhandled rejections.
    pub handled: bool,
    /// A log message, when the event is a message rather than (or besides) an exception.
    pub message: Option<String>,
    /// The exception chain, outermost (the one thrown last) first.
    pub exceptions: Vec<Exception>,
    /// What happened before the error.
    pub breadcrumbs: Vec<Breadcrumb>,
    /// Searchable tags.
    pub tags: Vec<Tag>,
    /// The SDK-provided fingerprint; empty when the SDK gave none.
    pub fingerprint: Vec<String>,
    /// The transaction or route the error happened in.
    pub transaction: Option<String>,
    /// Further SDK contexts as a JSON object (app, os, device, trace, ...).
    pub contexts: String,
    /// The issue the processors grouped the error into (from its fingerprint; an issue merged
    /// later keeps this id, and the issue record names the one it was merged into). Ingest leaves
    /// it empty.
    pub issue_id: Option<String>,
}

/// One performance measurement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct PerformanceSample {
    /// Fields every event carries.
    pub common: Common,
    /// What was measured: `app_start_cold`, `app_start_warm`, `screen_load`, `http_request`,
    /// `frames_slow`, `frames_frozen`, `memory`, `battery`, or an app's own metric.
    pub metric: String,
    /// The measured value.
    pub value: f64,
    /// Its unit, for example `millisecond`, `byte`, `percent`.
    pub unit: String,
    /// The screen it was measured on.
    pub screen: Option<String>,
    /// Further attributes, for example the HTTP method and status.
    pub attributes: Vec<Tag>,
}

/// One span of a transaction.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Span {
    /// Span id (16 hex digits).
    pub span_id: String,
    /// The enclosing span, if any.
    pub parent_span_id: Option<String>,
    /// Operation, for example `http.client`.
    pub op: String,
    /// What the span did.
    pub description: Option<String>,
    /// Outcome, for example `ok`.
    pub status: Option<String>,
    /// Start, in µs since the epoch.
    pub start_us: i64,
    /// End, in µs since the epoch.
    pub end_us: i64,
}

/// A named measurement attached to a transaction (Sentry `measurements`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Measurement {
    /// Measurement name, for example `app_start_cold`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: Option<String>,
}

/// A traced operation (Sentry transaction) with its spans.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Transaction {
    /// Fields every event carries.
    pub common: Common,
    /// Transaction name, for example a screen or route.
    pub name: String,
    /// Operation, for example `ui.load` or `navigation`.
    pub op: Option<String>,
    /// Trace id (32 hex digits).
    pub trace_id: String,
    /// The root span's id.
    pub span_id: String,
    /// Outcome, for example `ok`.
    pub status: Option<String>,
    /// Start, in µs since the epoch.
    pub start_us: i64,
    /// End, in µs since the epoch.
    pub end_us: i64,
    /// Child spans.
    pub spans: Vec<Span>,
    /// Measurements.
    pub measurements: Vec<Measurement>,
    /// Searchable tags.
    pub tags: Vec<Tag>,
}

/// Session status in Sentry's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "snake_case")]
#[avro(namespace = "trellis", rename_all = "snake_case")]
pub enum SessionStatus {
    /// The session is running.
    #[default]
    Ok,
    /// The session ended normally.
    Exited,
    /// The session ended in a crash.
    Crashed,
    /// The session ended without a clean exit (killed, power loss, watchdog).
    Abnormal,
    /// The session had errors (not a final status in Sentry; trellis keeps it as reported).
    Errored,
}

/// A session update (Sentry `session` item).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct SessionUpdate {
    /// Fields every event carries; `common.session_id` is the session's id.
    pub common: Common,
    /// Whether this is the session's first update.
    pub init: bool,
    /// The status at this update.
    pub status: SessionStatus,
    /// Errors seen in the session so far.
    pub errors: i64,
    /// When the session started, in ms since the epoch.
    pub started_ms: i64,
    /// How long it has lasted, in ms, when known.
    pub duration_ms: Option<i64>,
    /// The SDK's sequence number of this update, to order updates of one session.
    pub seq: i64,
}

/// Steps in a push notification's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "snake_case")]
#[avro(namespace = "trellis", rename_all = "snake_case")]
pub enum NotificationStage {
    /// The app or backend scheduled it.
    #[default]
    Scheduled,
    /// It was handed to the push provider.
    Sent,
    /// The device received it.
    Delivered,
    /// The user opened it.
    Opened,
    /// The provider refused or could not deliver it.
    Failed,
}

/// A push-notification lifecycle event.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Notification {
    /// Fields every event carries.
    pub common: Common,
    /// Which step this is.
    pub stage: NotificationStage,
    /// The notification's id, shared by all its steps.
    pub notification_id: String,
    /// The campaign it belongs to.
    pub campaign: Option<String>,
    /// Where opening it leads.
    pub deep_link: Option<String>,
    /// The push provider, for example `expo`, `apns`, `fcm`.
    pub provider: Option<String>,
    /// The provider's error code when `stage` is `failed`, for example `DeviceNotRegistered`.
    pub error_code: Option<String>,
}

/// An event of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Product analytics.
    Analytics(AnalyticsEvent),
    /// An error or crash.
    Error(ErrorEvent),
    /// A performance measurement.
    Performance(PerformanceSample),
    /// A transaction with spans.
    Transaction(Transaction),
    /// A session update.
    Session(SessionUpdate),
    /// A notification lifecycle step.
    Notification(Notification),
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Event::Analytics(_) => Kind::Analytics,
            Event::Error(_) => Kind::Error,
            Event::Performance(_) => Kind::Performance,
            Event::Transaction(_) => Kind::Transaction,
            Event::Session(_) => Kind::Session,
            Event::Notification(_) => Kind::Notification,
        }
    }

    /// The fields every event carries.
    pub fn common(&self) -> &Common {
        match self {
            Event::Analytics(e) => &e.common,
            Event::Error(e) => &e.common,
            Event::Performance(e) => &e.common,
            Event::Transaction(e) => &e.common,
            Event::Session(e) => &e.common,
            Event::Notification(e) => &e.common,
        }
    }

    /// The fields every event carries, for normalization.
    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            Event::Analytics(e) => &mut e.common,
            Event::Error(e) => &mut e.common,
            Event::Performance(e) => &mut e.common,
            Event::Transaction(e) => &mut e.common,
            Event::Session(e) => &mut e.common,
            Event::Notification(e) => &mut e.common,
        }
    }

    /// The bus key: events of one device of one project stay in order on one partition.
    pub fn partition_key(&self) -> Vec<u8> {
        let common = self.common();
        let device = common
            .device_id
            .as_deref()
            .or(common.user_id.as_deref())
            .unwrap_or(&common.event_id);
        let mut key = Vec::with_capacity(common.project.len() + 1 + device.len());
        key.extend_from_slice(common.project.as_bytes());
        key.push(0);
        key.extend_from_slice(device.as_bytes());
        key
    }
}
