//! Bus configuration: which implementation, and its settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which bus to use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BusConfig {
    /// The embedded log: one process, no services.
    Embedded(EmbeddedConfig),
    /// Apache Kafka or a Kafka-protocol broker.
    Kafka(KafkaConfig),
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig::Embedded(EmbeddedConfig::default())
    }
}

/// Settings of the embedded log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// The database file (created if missing); relative to the data directory. One process
    /// opens it at a time.
    pub path: PathBuf,
    /// How long a record is kept once every consumer group that reads its topic has committed
    /// past it (records of a topic no group has committed on are kept this long after their
    /// append). `0s` keeps every record forever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the writer deletes what retention lets go.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: PathBuf::from("bus.redb"),
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_interval: Duration::from_secs(60),
        }
    }
}

/// Settings of the Kafka bus.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub brokers: String,
    /// How long a publish may wait for acknowledgement (and for room in a full queue).
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Producer compression: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// How long the producer waits to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long a consumer's fetch may wait at the broker for records (`fetch.wait.max.ms`,
    /// unless `extra` sets it). Some brokers (tansu) answer a fetch only when this is up, so it
    /// is added to every hop between stages; librdkafka's own default is 500 ms.
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// Consumer group session timeout: a member silent this long loses its partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Replication factor of topics trellis creates.
    pub replication: i32,
    /// Further librdkafka settings, passed as they are (for example `security.protocol`).
    pub extra: BTreeMap<String, String>,
}

/// Whether a librdkafka setting holds a credential (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, ...): its value is never logged.
pub fn is_secret_setting(key: &str) -> bool {
    ["password", "secret", "token", "ssl.key.pem", "credentials"]
        .iter()
        .any(|word| key.contains(word))
}

/// Logged at start-up: the credentials in `extra` read `<redacted>`.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: BTreeMap<&str, &str> = self
            .extra
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_setting(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("ack_timeout", &self.ack_timeout)
            .field("compression", &self.compression)
            .field("linger", &self.linger)
            .field("fetch_wait", &self.fetch_wait)
            .field("session_timeout", &self.session_timeout)
            .field("replication", &self.replication)
            .field("extra", &extra)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            ack_timeout: Duration::from_secs(10),
            compression: "lz4".into(),
            linger: Duration::from_millis(5),
            fetch_wait: Duration::from_millis(100),
            session_timeout: Duration::from_secs(10),
            replication: 1,
            extra: BTreeMap::new(),
        }
    }
}
