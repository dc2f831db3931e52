//! Records the processors derive from events: sessions, release-health partials, issues and
//! detections.
//!
//! They travel on the `sessions` and `aggregates` topics in the same Avro single-object encoding
//! as events ([`crate::avro`]), with their schemas committed under `schemas/avro/` beside the
//! event kinds'. Every record carries a deterministic id, so a processor that replays its input
//! after a crash writes records equal to the ones it wrote before, and sinks collapse them.

use std::sync::OnceLock;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::{AvroSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::avro::CodecError;
use crate::model::{Release, SessionStatus};

/// One app session, as the processors closed it.
///
/// Explicit sessions come from an SDK's session updates (Sentry `sid`) or from the session id
/// events carry (PostHog `$session_id`); implicit sessions are cut from a device's events that
/// carry none, by a 30-minute inactivity gap and a 24-hour maximum.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct SessionRecord {
    /// The session id: the SDK's, or for an implicit session one derived from the project, the
    /// device and the id of the event that opened it.
    pub session_id: String,
    /// The project.
    pub project: String,
    /// The device the session ran on.
    pub device_id: String,
    /// The user, if any event of the session named one.
    pub user_id: Option<String>,
    /// The release the session ran (from its first event).
    pub release: Release,
    /// Whether the SDK tracked the session itself.
    pub explicit: bool,
    /// Start, in ms since the epoch.
    pub started_ms: i64,
    /// End (the last event or update), in ms since the epoch.
    pub ended_ms: i64,
    /// Duration in ms: the SDK's when it reported one, else end minus start.
    pub duration_ms: i64,
    /// Final status: `exited`, `crashed`, `abnormal`, `errored` (ended with errors), or `ok`
    /// (closed by inactivity without a final update).
    pub status: SessionStatus,
    /// Events counted into the session (session updates excluded).
    pub events: i64,
    /// Screen views.
    pub screen_views: i64,
    /// The distinct screens viewed, in first-view order (at most 64).
    pub screens: Vec<String>,
    /// Errors: the larger of the SDK's count and the error events seen.
    pub errors: i64,
    /// Whether the session crashed.
    pub crashed: bool,
    /// Whether the session was built from events behind the watermark.
    pub late: bool,
    /// Version of this record: a later version of the same session id replaces an earlier one.
    pub version: i64,
}

/// Performance samples of one metric, release, device class and screen, in a mergeable sketch.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct PerfSketch {
    /// The metric, for example `app_start_cold`.
    pub metric: String,
    /// The device class (operating system and model family, for example `iOS/iPhone`).
    pub device_class: String,
    /// The screen, or empty.
    pub screen: String,
    /// Samples.
    pub count: i64,
    /// The DDSketch (relative accuracy 1%) as JSON; merge sketches of one key to combine partials.
    pub sketch: String,
}

/// How many events of one kind a window saw.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct KindCount {
    /// The kind (`analytics`, `error`, ...).
    pub kind: String,
    /// Events of that kind.
    pub count: i64,
}

/// One input partition's share of one release's one-minute window of release health.
///
/// A window's answer is the merge of all partials with the same (project, release,
/// `window_start_ms`): counts add, user sets unite, sketches merge. Partials from different
/// partitions, and corrections built from late events, are merged the same way.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct HealthPartial {
    /// Deterministic id: project, release, window, input partition and the offset that opened it.
    pub partial_id: String,
    /// The project.
    pub project: String,
    /// The release.
    pub release: Release,
    /// Window start, in ms since the epoch.
    pub window_start_ms: i64,
    /// Window length in ms.
    pub window_ms: i64,
    /// The input partition this partial comes from.
    pub partition: i32,
    /// Whether this is a correction built from events that arrived after the window closed.
    pub correction: bool,
    /// Sessions that ended in the window.
    pub sessions: i64,
    /// Of those, crashed.
    pub crashed_sessions: i64,
    /// Of those, ended abnormally.
    pub abnormal_sessions: i64,
    /// Of those, with errors but not crashed or abnormal.
    pub errored_sessions: i64,
    /// Hashes (xxh3-64 of the user id, or the device id) of the users whose sessions ended here.
    pub users: Vec<i64>,
    /// Hashes of the users with a crashed session among them.
    pub crashed_users: Vec<i64>,
    /// Events in the window by kind.
    pub events: Vec<KindCount>,
    /// Performance percentiles, per metric, device class and screen.
    pub perf: Vec<PerfSketch>,
}

/// An issue: a group of error events with one fingerprint, as the issues stage keeps it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct IssueRecord {
    /// The issue id: 32 hex digits derived from the project and the fingerprint.
    pub issue_id: String,
    /// The project.
    pub project: String,
    /// `ExceptionType: message` of the earliest event, or its message.
    pub title: String,
    /// The innermost in-app frame of the earliest event, as `function @ module`.
    pub culprit: Option<String>,
    /// The most severe level seen.
    pub level: String,
    /// `new`, `ongoing`, `resolved`, `regressed`, `ignored` or `merged`.
    pub status: String,
    /// The status in detail (JSON): the resolution, the ignore condition, the regressing release.
    pub status_detail: String,
    /// The earliest event time, in ms since the epoch.
    pub first_seen_ms: i64,
    /// The latest event time, in ms since the epoch.
    pub last_seen_ms: i64,
    /// The release of the earliest event, printed (`ios 2.14.0 (1402) update …`).
    pub first_release: String,
    /// Events counted.
    pub event_count: i64,
    /// Distinct users affected.
    pub users_affected: i64,
    /// Every release it was seen in, printed.
    pub releases: Vec<String>,
    /// The earliest event's id.
    pub sample_event_id: String,
    /// The rule that grouped it (`stacktrace`, `sdk_fingerprint`, ...).
    pub grouping: String,
    /// The fingerprint's components.
    pub fingerprint: Vec<String>,
    /// The issue it was merged into, if any.
    pub merged_into: Option<String>,
    /// Issues proposed for merging into this one, most similar first.
    pub merge_candidates: Vec<String>,
    /// Version: a later version of the same issue replaces an earlier one.
    pub version: i64,
}

/// An admin's command on an issue, carried on the grouped-errors topic to the issue's owner.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct IssueCommand {
    /// A unique id for the command, echoed to the caller.
    pub command_id: String,
    /// The project.
    pub project: String,
    /// The issue.
    pub issue_id: String,
    /// `resolve`, `resolve_in_next_release`, `resolve_in_release`, `ignore`, `reopen`,
    /// `merge` (this issue into `into`) or `merge_in` (internal: `issue` joins this one).
    pub action: String,
    /// For `resolve_in_release`: the app version (and optionally build) with the fix.
    pub release: Option<Release>,
    /// For `ignore`: until this many more events.
    pub until_count: Option<i64>,
    /// For `ignore`: until this many more users.
    pub until_users: Option<i64>,
    /// For `ignore`: until this time, ms since the epoch.
    pub until_ms: Option<i64>,
    /// For `merge`: the issue to merge into.
    pub into: Option<String>,
    /// For `merge_in`: the merged issue's state (JSON).
    pub issue: Option<String>,
    /// When the command was given, ms since the epoch.
    pub at_ms: i64,
}

/// A session that just opened, as the `process` stage announces it to the `issues` stage (on
/// `errors.grouped`, keyed by project, beside the errors): who uses which release now, the
/// denominator of new-issue velocity. Not stored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct SessionStart {
    /// The project.
    pub project: String,
    /// The session: the SDK's id, or the implicit session's.
    pub session_id: String,
    /// The device.
    pub device_id: String,
    /// The user, if the opening event named one.
    pub user_id: Option<String>,
    /// The release the session runs.
    pub release: Release,
    /// Start, in ms since the epoch (event time).
    pub started_ms: i64,
}

/// An admin's command to the rollout guard, carried on `detections` (keyed by project) to the
/// alert stage, in order with the findings it decides on. The sinks recognise it by its schema
/// and skip it: the command's effect is stored, as `audit` entries and `alerts` versions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct GuardCommand {
    /// A unique id for the command, echoed to the caller; the id of its audit entry.
    pub command_id: String,
    /// The project.
    pub project: String,
    /// `register` or `update` (a rollout and its percentage), `halt`, `resume` or `ignore` (a
    /// rollout), `ack` or `silence` (an alert).
    pub action: String,
    /// For rollout actions: the OTA update id the rollout ships.
    pub update_id: Option<String>,
    /// For `register` (and optionally `halt`): what the update is, as far as the caller said.
    pub release: Option<Release>,
    /// For `register` and `update`: the share of the fleet offered the update, 0 to 100.
    pub percentage: Option<f64>,
    /// For `ack` and `silence`: the alert.
    pub alert_id: Option<String>,
    /// For `silence`: until when, ms since the epoch.
    pub until_ms: Option<i64>,
    /// Who gave it: the caller's `who`, else the admin token's name.
    pub actor: String,
    /// Why, as the caller said.
    pub reason: String,
    /// When the command was given, ms since the epoch.
    pub at_ms: i64,
}

/// A finding of the `detect` stage: a release worse than its baseline, an issue spiking, a
/// performance regression. One record per version; the newest `version` of a `detection_id` is
/// the finding's current state.
///
/// `kind` is `release_regression` or `perf_regression` (and, as those detectors land,
/// `issue_spike`, `issue_velocity`); `status` is `open` (provisional evidence crossed the
/// threshold), `confirmed` (it still held once the windows behind it were complete), `retracted`
/// (it did not) or `resolved` (the release went quiet).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Detection {
    /// 32 hex digits derived from the project, kind, subject, metric and episode, so a replay
    /// emits the same id.
    pub detection_id: String,
    /// The project.
    pub project: String,
    /// What was detected: `release_regression`, `perf_regression`, ...
    pub kind: String,
    /// The release judged (for release and performance regressions).
    pub release: Release,
    /// The issue judged (for issue spikes and velocity).
    pub issue_id: Option<String>,
    /// The screen judged (for performance regressions of per-screen metrics).
    pub screen: Option<String>,
    /// The metric: `crash_rate`, `abnormal_rate`, `errored_rate`, `screen_load_p75`, ...
    pub metric: String,
    /// What the candidate was compared with: `fleet` (the rest of the fleet on the same
    /// platform, channel and runtime version over the same windows) or `previous <release>`.
    pub baseline: String,
    /// The baseline's value of the metric.
    pub baseline_value: f64,
    /// The baseline's sample count (sessions, performance samples, ...).
    pub baseline_count: i64,
    /// The candidate's value of the metric.
    pub candidate_value: f64,
    /// The candidate's sample count.
    pub candidate_count: i64,
    /// The test statistic that decided (`ln Λ` of the mSPRT).
    pub statistic: f64,
    /// The threshold it was compared with (`ln(1/alpha)`).
    pub threshold: f64,
    /// Event time the evidence starts at (the candidate's first session), ms since the epoch.
    pub window_start_ms: i64,
    /// Event time the evidence ends at, ms since the epoch.
    pub window_end_ms: i64,
    /// Event time the finding opened at, ms since the epoch.
    pub opened_ms: i64,
    /// `open`, `confirmed`, `retracted` or `resolved`.
    pub status: String,
    /// One sentence for people.
    pub summary: String,
    /// Version: a later version of the same detection replaces an earlier one.
    pub version: i64,
}

/// A decision of the `alert` stage: one version of one alert, written to `alerts` (the outbox)
/// before anything is delivered. The newest `version` of an `alert_id` is the alert's state; a
/// version whose `event` is not `none` is a notification the deliverer sends, to each of
/// `destinations`, with `delivery_id` as its idempotency key.
///
/// An alert is one rule's view of one subject (a release, an issue) over one episode: `firing`
/// from the first detection that matches the rule until every matching detection of the subject
/// is resolved or retracted (`resolved`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Alert {
    /// 32 hex digits derived from the rule, project, subject and episode.
    pub alert_id: String,
    /// The project.
    pub project: String,
    /// The rule that decided.
    pub rule: String,
    /// What the rule does: `notify` or `halt` (stop the rollout of a bad release).
    pub action: String,
    /// The detection kind: `release_regression`, `perf_regression`, `issue_spike`, ...
    pub kind: String,
    /// What the alert is about, for people: a release (`ios 2.14.0 (1402) update u-7 on
    /// production`) or an issue id.
    pub subject: String,
    /// The release judged, for release and performance regressions.
    pub release: Release,
    /// The issue, for issue spikes and velocity.
    pub issue_id: Option<String>,
    /// The screen, for per-screen performance regressions.
    pub screen: Option<String>,
    /// The metric of the detection behind this version.
    pub metric: String,
    /// `warning` or `critical` (the candidate at least twice its baseline).
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// What this version announces: `alert.firing`, `alert.resolved`, `rollout.halt`, or
    /// `none` (a change kept on record that notifies nobody: a cooldown, a lower severity).
    pub event: String,
    /// The idempotency key of this version's deliveries: stable across retries and replays.
    pub delivery_id: String,
    /// The detection behind this version.
    pub detection_id: String,
    /// What the candidate was compared with (`fleet`, `previous <release>`, ...).
    pub baseline: String,
    /// The baseline's value of the metric.
    pub baseline_value: f64,
    /// The baseline's sample count.
    pub baseline_count: i64,
    /// The candidate's value of the metric.
    pub candidate_value: f64,
    /// The candidate's sample count.
    pub candidate_count: i64,
    /// The test statistic that decided.
    pub statistic: f64,
    /// Its threshold.
    pub threshold: f64,
    /// Event time the evidence ends at, ms since the epoch.
    pub window_end_ms: i64,
    /// Event time the alert started firing, ms since the epoch.
    pub fired_ms: i64,
    /// The destinations this version goes to (names from `[alerts.destinations]`).
    pub destinations: Vec<String>,
    /// One sentence for people.
    pub summary: String,
    /// Version: a later version of the same alert replaces an earlier one.
    pub version: i64,
}

/// One entry of the audit trail: who did what to which subject, when, why, on what evidence.
/// Written for every guard decision (`rollout.halt`), every override given through the admin
/// API, and every on-call change (a push token Expo no longer knows).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct AuditEntry {
    /// Unique per entry, derived from what caused it, so a replay writes the same id.
    pub audit_id: String,
    /// The project.
    pub project: String,
    /// When, ms since the epoch: event time for decisions from detections, the wall clock for
    /// people's overrides and deliveries.
    pub at_ms: i64,
    /// Who: a person (as the admin API was told), `trellis guard`, `trellis deliverer`.
    pub actor: String,
    /// What: `rollout.halt`, `rollout.resume`, `push_token.removed`, ...
    pub action: String,
    /// To what: an update id, an alert id, a destination and token.
    pub subject: String,
    /// Why, for people.
    pub reason: String,
    /// The evidence, as JSON (baseline and candidate with their counts, an Expo answer, ...).
    pub evidence: String,
}

/// A deploy marker: a build or OTA update published, promoted or rolled back, as the release
/// pipeline (EAS, CI) reported it to `POST /v1/projects/{project}/deploys`. Analysts compare
/// release health before and after each one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct Deploy {
    /// 32 hex digits: derived from the project and the caller's `deploy_id` when it gave one,
    /// else from the project, action, release and time, so a resent request is one deploy.
    pub deploy_id: String,
    /// The project.
    pub project: String,
    /// `build_published`, `update_published`, `promoted` or `rolled_back`.
    pub action: String,
    /// The release deployed (or rolled back): app version, build, runtime version, OTA update id,
    /// channel, environment.
    pub release: Release,
    /// When it happened, ms since the epoch (the time ingest received it, when not given).
    pub deployed_ms: i64,
    /// Who did it.
    pub actor: Option<String>,
    /// A link to the build, update or pipeline run.
    pub link: Option<String>,
    /// What the pipeline said of it.
    pub message: Option<String>,
}

/// What Expo's push service answered for one push message to one device, as the app server
/// forwarded it: a *ticket* (the answer to the send) or a *receipt* (the answer to
/// `getReceipts` for that ticket, once Expo handed it to APNs or FCM). With the app's own
/// notification events (delivered, opened), they make each notification's lifecycle.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "trellis")]
pub struct PushOutcome {
    /// 32 hex digits, from the project, the step and the ticket id (or, for a send Expo
    /// refused, the notification, token and time), so an outcome forwarded twice is one row.
    pub outcome_id: String,
    /// The project.
    pub project: String,
    /// `ticket` or `receipt`.
    pub step: String,
    /// Expo's ticket id; none for a message Expo refused at once.
    pub ticket_id: Option<String>,
    /// The notification the message carried (its `data.notification_id`), shared with the app's
    /// notification events. Tickets only: a receipt names its ticket.
    pub notification_id: Option<String>,
    /// The campaign the app server sent it for. Tickets only.
    pub campaign: Option<String>,
    /// The device's push token (`ExponentPushToken[...]`).
    pub token: Option<String>,
    /// `ok` or `error`.
    pub status: String,
    /// Expo's error code when `status` is `error`: `DeviceNotRegistered`, `MessageTooBig`,
    /// `MessageRateExceeded`, `MismatchSenderId`, `InvalidCredentials`, ...
    pub error: Option<String>,
    /// Expo's message with the error.
    pub message: Option<String>,
    /// When the app server sent the message (tickets) or read the receipt, ms since the epoch.
    pub at_ms: i64,
}

/// A record type with a committed Avro schema.
pub trait Record: AvroSchema + Serialize + DeserializeOwned {
    /// Its name, as used for its `.avsc` file.
    const NAME: &'static str;
    /// Its committed `.avsc` text.
    const AVSC: &'static str;
    /// Its codec, built once.
    fn codec() -> &'static RecordCodec;
}

/// A record type's parsed schema, single-object header and reader.
pub struct RecordCodec {
    schema: Schema,
    header: [u8; 10],
    reader: apache_avro_decode::GenericSingleObjectReader,
}

impl RecordCodec {
    fn new(name: &str, avsc: &str) -> Self {
        let schema = Schema::parse_str(avsc)
            .unwrap_or_else(|e| panic!("schemas/avro/{name}.avsc is not valid Avro: {e}"));
        let header: [u8; 10] = RabinFingerprintHeader::from_schema(&schema)
            .build_header()
            .try_into()
            .expect("a Rabin single-object header is 10 bytes");
        let reader = crate::avro::decoder(name, avsc);
        RecordCodec {
            schema,
            header,
            reader,
        }
    }
}

/// Declares the record types with a committed Avro schema: their [`Record`] implementations,
/// and [`every_avsc`], from one entry each.
macro_rules! records {
    ($($ty:ty => $name:literal),+ $(,)?) => {
        $(impl Record for $ty {
            const NAME: &'static str = $name;
            const AVSC: &'static str = include_str!(concat!("../avro/", $name, ".avsc"));
            fn codec() -> &'static RecordCodec {
                static CODEC: OnceLock<RecordCodec> = OnceLock::new();
                CODEC.get_or_init(|| RecordCodec::new($name, Self::AVSC))
            }
        })+

        /// Every record type's name and the `.avsc` text its Rust type implies, as `trellis
        /// schema export` writes them.
        pub fn every_avsc() -> Vec<(&'static str, String)> {
            vec![$(($name, derived_avsc::<$ty>())),+]
        }
    };
}

records! {
    SessionRecord => "session_record",
    HealthPartial => "health_partial",
    IssueRecord => "issue_record",
    IssueCommand => "issue_command",
    GuardCommand => "guard_command",
    SessionStart => "session_start",
    Detection => "detection",
    Alert => "alert",
    AuditEntry => "audit_entry",
    Deploy => "deploy",
    PushOutcome => "push_outcome",
}

/// The `.avsc` text a record type implies, as `trellis schema export` writes it.
pub fn derived_avsc<T: Record>() -> String {
    let mut text =
        serde_json::to_string_pretty(&T::get_schema()).expect("a schema always serializes");
    text.push('\n');
    text
}

/// Encodes a record as an Avro single-object payload.
pub fn encode<T: Record>(record: &T) -> Result<Vec<u8>, CodecError> {
    let codec = T::codec();
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&codec.header);
    apache_avro::write_avro_datum_ref(&codec.schema, record, &mut buf).map_err(|e| {
        CodecError::Record {
            record: T::NAME,
            source: Box::new(e),
        }
    })?;
    Ok(buf)
}

/// Whether `payload` was written by [`encode`] for `T` (its schema fingerprint), without
/// decoding it.
pub fn is<T: Record>(payload: &[u8]) -> bool {
    payload.get(..10) == Some(&T::codec().header[..])
}

/// Decodes an Avro single-object payload written by [`encode`] for the same type.
pub fn decode<T: Record>(payload: &[u8]) -> Result<T, CodecError> {
    let codec = T::codec();
    if payload.len() < 10 {
        return Err(CodecError::Truncated { len: payload.len() });
    }
    if payload[..10] != codec.header {
        return Err(CodecError::UnknownSchema(u64::from_le_bytes(
            payload[2..10].try_into().expect("8 bytes"),
        )));
    }
    let datum = |source| CodecError::Record {
        record: T::NAME,
        source: Box::new(source),
    };
    let mut reader = payload;
    let value = codec
        .reader
        .read_deser(&mut reader)
        .map_err(|e| datum(crate::avro::decode_error(e)))?;
    if !reader.is_empty() {
        return Err(CodecError::RecordTrailingBytes {
            record: T::NAME,
            left: reader.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_committed<T: Record>() {
        let path = format!("{}/avro/{}.avsc", env!("CARGO_MANIFEST_DIR"), T::NAME);
        let derived = derived_avsc::<T>();
        if std::env::var_os("UPDATE_AVSC").is_some() {
            std::fs::write(&path, &derived).unwrap();
            return;
        }
        let committed = Schema::parse_str(T::AVSC).unwrap();
        assert_eq!(
            committed.canonical_form(),
            T::get_schema().canonical_form(),
            "{path} is out of date; run `UPDATE_AVSC=1 cargo test -p trellis-schemas --lib records`"
        );
    }

    #[test]
    fn committed_avsc_files_match_the_record_types() {
        check_committed::<SessionRecord>();
        check_committed::<HealthPartial>();
        check_committed::<IssueRecord>();
        check_committed::<IssueCommand>();
        check_committed::<GuardCommand>();
        check_committed::<SessionStart>();
        check_committed::<Detection>();
        check_committed::<Alert>();
        check_committed::<AuditEntry>();
        check_committed::<Deploy>();
        check_committed::<PushOutcome>();
    }

    #[test]
    fn records_round_trip_and_refuse_other_payloads() {
        let session = SessionRecord {
            session_id: "s1".into(),
            project: "p".into(),
            device_id: "d".into(),
            user_id: Some("u".into()),
            status: SessionStatus::Crashed,
            screens: vec!["Home".into(), "Plant".into()],
            events: 3,
            crashed: true,
            version: 2,
            ..Default::default()
        };
        let bytes = encode(&session).unwrap();
        assert_eq!(decode::<SessionRecord>(&bytes).unwrap(), session);
        assert!(matches!(
            decode::<HealthPartial>(&bytes),
            Err(CodecError::UnknownSchema(_))
        ));
        let partial = HealthPartial {
            partial_id: "x".into(),
            users: vec![-1, 7],
            events: vec![KindCount {
                kind: "error".into(),
                count: 2,
            }],
            perf: vec![PerfSketch {
                metric: "app_start_cold".into(),
                count: 1,
                sketch: "{}".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = encode(&partial).unwrap();
        assert_eq!(decode::<HealthPartial>(&bytes).unwrap(), partial);
        let mut cut = bytes.clone();
        cut.push(0);
        assert!(matches!(
            decode::<HealthPartial>(&cut),
            Err(CodecError::RecordTrailingBytes { .. })
        ));
    }
}
