//! The Parquet sink's settings (`[sinks.parquet]`), with defaults that run on one machine.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Settings of the Parquet sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// The directory that holds one sub-directory per table; created if missing. Relative to
    /// the data directory under the `trellis` command.
    pub root: PathBuf,
    /// The consumer group the sink's instances share on the bus.
    pub group: String,
    /// A segment (the files cut from one input partition's consecutive offsets) ends after this
    /// many input records. Deterministic: a replay ends it at the same offset.
    pub max_rows: u64,
    /// ... or once its input payloads reach this many bytes (also deterministic).
    pub max_bytes: u64,
    /// ... or once it has been open this long, so quiet partitions still reach the files.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// ... or before a row that would open one more file than this (files are per table,
    /// project and hour): input hours apart cannot exhaust file handles or buffer memory. Each
    /// input partition's segment holds its own files, so the sink holds at most this many per
    /// partition it reads (a rebuilt segment excepted: it keeps the files it had).
    pub max_open_files: usize,
    /// The zstd level of the files, 1 (fastest) to 22 (smallest).
    pub zstd_level: i32,
    /// Most records read per poll.
    pub poll_max: usize,
    /// Longest wait for a poll; also how often `max_age` is checked when the input is quiet.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// How long each table keeps its files.
    pub retention: super::retention::Retention,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            root: PathBuf::from("parquet"),
            group: "trellis-sink-parquet".into(),
            max_rows: 500_000,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(60),
            max_open_files: 32,
            zstd_level: 3,
            poll_max: 5_000,
            poll_timeout: Duration::from_millis(250),
            retention: super::retention::Retention::default(),
        }
    }
}

impl ParquetConfig {
    /// Checks every setting; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key, reason: &str| {
            Err(ConfigError {
                sink: "parquet",
                key,
                reason: reason.to_string(),
            })
        };
        if self.root.as_os_str().is_empty() {
            return fail("root", "must name a directory");
        }
        if self.group.is_empty() {
            return fail("group", "must not be empty");
        }
        if self.max_rows == 0 {
            return fail("max_rows", "must be at least 1");
        }
        if self.max_bytes == 0 {
            return fail("max_bytes", "must be at least 1");
        }
        if self.max_age < Duration::from_millis(10) {
            return fail("max_age", "must be at least 10ms");
        }
        if self.max_open_files == 0 {
            return fail("max_open_files", "must be at least 1");
        }
        if !(1..=22).contains(&self.zstd_level) {
            return fail("zstd_level", "must be between 1 and 22");
        }
        if self.poll_max == 0 {
            return fail("poll_max", "must be at least 1");
        }
        if let Err(reason) = self.retention.validate() {
            return fail("retention", &reason);
        }
        if self.poll_timeout.is_zero()
            || self.poll_timeout > self.max_age.max(Duration::from_secs(1))
        {
            return fail(
                "poll_timeout",
                "must be above zero and at most max_age (or 1s)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        assert_eq!(ParquetConfig::default().validate(), Ok(()));
        let bad = ParquetConfig {
            max_age: Duration::ZERO,
            ..ParquetConfig::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.key, "max_age");
        assert!(
            err.to_string().starts_with("sinks.parquet.max_age: "),
            "{err}"
        );
        let bad = ParquetConfig {
            zstd_level: 0,
            ..ParquetConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "zstd_level");
    }

    #[test]
    fn unknown_keys_are_refused_and_durations_are_human() {
        let parsed: ParquetConfig =
            serde_json::from_str(r#"{"max_age": "5s", "max_rows": 10}"#).unwrap();
        assert_eq!(parsed.max_age, Duration::from_secs(5));
        assert_eq!(parsed.max_rows, 10);
        assert_eq!(parsed.group, ParquetConfig::default().group);
        let err = serde_json::from_str::<ParquetConfig>(r#"{"max_files": 3}"#).unwrap_err();
        assert!(err.to_string().contains("max_files"), "{err}");
    }
}
