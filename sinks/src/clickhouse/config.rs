//! The ClickHouse sink's settings (`[sinks.clickhouse]`), with defaults that run on one machine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::retention::Retention;

/// Settings of the ClickHouse sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// Whether `trellis run` also runs this sink in its process, beside the Parquet sink (off
    /// by default: a server is needed). `trellis sink clickhouse` runs it either way.
    pub enabled: bool,
    /// The server's HTTP interface, for example `http://127.0.0.1:8123`. Plain HTTP only.
    pub url: String,
    /// The database trellis owns: created if missing, tables created and migrated at start-up.
    pub database: String,
    /// The user to authenticate as; none means the server's `default` user.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// The consumer group the sink's instances share on the bus.
    pub group: String,
    /// A batch is written once it holds this many records (over all tables).
    pub batch_rows: usize,
    /// ... or once its encoded rows reach this many bytes.
    pub batch_bytes: usize,
    /// ... or once its oldest record waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_age: Duration,
    /// Compress inserts with ClickHouse's LZ4 framing (`true`) or send them plain.
    pub compression: bool,
    /// How long one insert may take before it counts as failed (and is retried).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The first wait before retrying a retryable failure; it doubles up to `retry_max_backoff`,
    /// with full jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// The longest wait between retries. Retryable failures are retried until they succeed or
    /// the sink is shut down (offsets stay uncommitted, so nothing is lost).
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How long each table keeps its rows, per table and per project
    /// (`[sinks.clickhouse.retention]`): a `TTL` on servers that have it, a scheduled
    /// `DROP PARTITION` and `DELETE` on older ones ([`super::retention`]).
    pub retention: Retention,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            enabled: false,
            url: "http://127.0.0.1:8123".into(),
            database: "trellis".into(),
            user: None,
            password: None,
            group: "trellis-sink-clickhouse".into(),
            batch_rows: 20_000,
            batch_bytes: 16 << 20,
            batch_age: Duration::from_secs(1),
            compression: true,
            request_timeout: Duration::from_secs(30),
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(10),
            retention: Retention::default(),
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        sink: "clickhouse",
        key,
        reason: reason.into(),
    })
}

/// Whether `name` is a plain ClickHouse identifier (used unquoted in DDL).
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

impl ClickHouseConfig {
    /// Checks every setting; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.url.split_once("://") {
            Some(("http", rest)) if !rest.is_empty() => {}
            Some(("https", _)) => invalid(
                "url",
                "https is not built in; put a TLS-terminating proxy in front or use http",
            )?,
            _ => invalid("url", format!("{:?} is not an http:// URL", self.url))?,
        }
        if !is_identifier(&self.database) {
            invalid(
                "database",
                format!(
                    "{:?} must be letters, digits and underscores, not starting with a digit",
                    self.database
                ),
            )?;
        }
        if self.group.trim().is_empty() {
            invalid("group", "must not be empty")?;
        }
        if self.batch_rows == 0 || self.batch_rows > 1_000_000 {
            invalid(
                "batch_rows",
                format!("{} is not in 1..=1000000", self.batch_rows),
            )?;
        }
        if self.batch_bytes < 1024 {
            invalid("batch_bytes", format!("{} is below 1024", self.batch_bytes))?;
        }
        if self.batch_age.is_zero() {
            invalid("batch_age", "must be longer than zero")?;
        }
        if self.request_timeout < Duration::from_millis(100) {
            invalid("request_timeout", "must be at least 100ms")?;
        }
        if self.retry_initial_backoff.is_zero() {
            invalid("retry_initial_backoff", "must be longer than zero")?;
        }
        if self.retry_max_backoff < self.retry_initial_backoff {
            invalid(
                "retry_max_backoff",
                "must not be shorter than retry_initial_backoff",
            )?;
        }
        if self.password.is_some() && self.user.is_none() {
            invalid("password", "is set but user is not")?;
        }
        if let Err(reason) = self.retention.validate() {
            invalid("retention", reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        ClickHouseConfig::default().validate().unwrap();
        let bad = |f: fn(&mut ClickHouseConfig)| {
            let mut c = ClickHouseConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.batch_rows = 0).starts_with("sinks.clickhouse.batch_rows: "));
        assert!(bad(|c| c.url = "127.0.0.1:8123".into()).starts_with("sinks.clickhouse.url: "));
        assert!(bad(|c| c.url = "https://x".into()).contains("https"));
        assert!(bad(|c| c.database = "x-y".into()).starts_with("sinks.clickhouse.database: "));
        assert!(
            bad(|c| c.retry_max_backoff = Duration::from_millis(1))
                .starts_with("sinks.clickhouse.retry_max_backoff: ")
        );
        assert!(bad(|c| c.batch_age = Duration::ZERO).contains("batch_age"));
        assert_eq!(
            bad(|c| {
                c.retention
                    .tables
                    .insert("eventz".into(), Duration::from_secs(60));
            }),
            "sinks.clickhouse.retention: no table \"eventz\""
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_durations_are_human() {
        let c: ClickHouseConfig =
            serde_json::from_str(r#"{"batch_age": "250ms", "database": "t1"}"#).unwrap();
        assert_eq!(c.batch_age, Duration::from_millis(250));
        assert_eq!(c.url, "http://127.0.0.1:8123");
        let e = serde_json::from_str::<ClickHouseConfig>(r#"{"batch_size": 3}"#).unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
    }
}
