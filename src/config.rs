//! The trellis configuration: one TOML file, overridden by `TRELLIS_*` environment variables.
//!
//! Every section has defaults that run on one machine, so an empty file (or none) is a working
//! configuration. Environment variables name a key by its path with `__` between levels:
//! `TRELLIS_BUS__KIND=kafka`, `TRELLIS_BUS__BROKERS=kafka:9092`, `TRELLIS_INGEST__LISTEN=0.0.0.0:8080`.
//! A value of the wrong type, an unknown key or an invalid setting fails at start-up with a
//! message naming the key.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};
use trellis_alerts::AlertConfig;
use trellis_bus::BusConfig;
use trellis_ingest::IngestConfig;
use trellis_processors::ProcessorConfig;
use trellis_sinks::clickhouse::ClickHouseConfig;
use trellis_sinks::parquet::ParquetConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where trellis keeps its data on one machine: the embedded log and the Parquet files.
    /// Relative paths elsewhere in the configuration are resolved against it.
    pub data_dir: PathBuf,
    /// The bus between the stages.
    pub bus: BusConfig,
    /// Topic settings.
    pub topics: TopicsConfig,
    /// The HTTP ingest.
    pub ingest: IngestConfig,
    /// The processors: dedupe, sessions, release health.
    pub processors: ProcessorConfig,
    /// The sinks: Parquet files and ClickHouse tables.
    pub sinks: SinksConfig,
    /// Alerting and the rollout guard: rules over detections and where alerts go.
    pub alerts: AlertConfig,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax; `RUST_LOG` overrides it.
    pub log: String,
    /// How often `trellis run` logs its status line (rates, and each stage's lag) at `info`;
    /// `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub status_interval: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            bus: BusConfig::default(),
            topics: TopicsConfig::default(),
            ingest: IngestConfig::default(),
            processors: ProcessorConfig::default(),
            sinks: SinksConfig::default(),
            alerts: AlertConfig::default(),
            log: "info".into(),
            status_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// The sinks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Parquet files under the data directory, queried with `trellis query` (`trellis run`
    /// writes them; `trellis sink parquet` alone when scaled out).
    pub parquet: ParquetConfig,
    /// ClickHouse tables (`trellis sink clickhouse`).
    pub clickhouse: ClickHouseConfig,
}

/// Topic settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Partitions of each topic trellis creates: the most processor instances that can share
    /// the work. Changing it later moves keys between partitions, so pick it once.
    pub partitions: u32,
    /// Put before every topic name, for example `staging.`, so that several deployments can
    /// share one Kafka cluster. Letters, digits, `.`, `_` and `-`; empty by default.
    pub prefix: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            partitions: 8,
            prefix: String::new(),
        }
    }
}

impl TopicsConfig {
    /// The topic names, with the prefix.
    pub fn names(&self) -> trellis_schemas::topics::Names {
        trellis_schemas::topics::Names::new(&self.prefix)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or a value could not be parsed (figment's message names the
    /// key and where it came from; it is the whole story, so it is not also a `source`).
    #[error("configuration: {0}")]
    Parse(Box<figment::Error>),
    /// A sink's setting is not allowed.
    #[error("configuration: {0}")]
    Sink(#[from] trellis_sinks::ConfigError),
    /// A value parsed but is not allowed.
    #[error("configuration: {key}: {reason}")]
    Invalid {
        /// The key, as a dotted path.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Loads `file` (if given; a missing file given explicitly is an error), then applies the
    /// `TRELLIS_*` environment variables, then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: format!("{} does not exist", file.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only variables that name a section of the configuration (`TRELLIS_BUS__KIND`,
        // `TRELLIS_DATA_DIR`) are read, so an unrelated `TRELLIS_*` variable in the environment
        // (`TRELLIS_CONFIG`, the `--config` flag; `TRELLIS_ADMIN_TOKEN`, the token `trellis
        // issues` sends; a test harness's own) does not stop start-up. A misspelt key inside a
        // section still does.
        let sections = Self::sections();
        let env = Env::prefixed("TRELLIS_")
            .filter(move |key| {
                let section = key.as_str().split("__").next().unwrap_or_default();
                sections.iter().any(|s| s.eq_ignore_ascii_case(section))
            })
            .split("__");
        Self::from_figment(figment.merge(env))
    }

    /// The top-level keys of the configuration, from its shape (every section has a default,
    /// so the default configuration names them all).
    fn sections() -> Vec<String> {
        match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(table)) => table.keys().cloned().collect(),
            _ => unreachable!("the default configuration serializes to a TOML table"),
        }
    }

    /// The configuration as TOML with every credential replaced by `<redacted>`: admin tokens,
    /// webhook secrets, Expo access tokens, the ClickHouse password, and the librdkafka
    /// settings in `bus.extra` that hold credentials. What `trellis config` prints.
    pub fn redacted_toml(&self) -> Result<String, toml::ser::Error> {
        const REDACTED: &str = "<redacted>";
        let mut value = toml::Value::try_from(self)?;
        let hide = |v: &mut toml::Value| *v = toml::Value::String(REDACTED.into());
        if let Some(tokens) = value
            .get_mut("ingest")
            .and_then(|i| i.get_mut("admin_tokens"))
            .and_then(toml::Value::as_array_mut)
        {
            for token in tokens {
                match token.get_mut("token") {
                    Some(secret) => hide(secret),
                    None => hide(token),
                }
            }
        }
        if let Some(destinations) = value
            .get_mut("alerts")
            .and_then(|a| a.get_mut("destinations"))
            .and_then(toml::Value::as_table_mut)
        {
            for (_, destination) in destinations.iter_mut() {
                for key in ["secret", "access_token"] {
                    if let Some(secret) = destination.get_mut(key) {
                        hide(secret);
                    }
                }
            }
        }
        if let Some(extra) = value
            .get_mut("bus")
            .and_then(|b| b.get_mut("extra"))
            .and_then(toml::Value::as_table_mut)
        {
            for (key, v) in extra.iter_mut() {
                if trellis_bus::config::is_secret_setting(key) {
                    hide(v);
                }
            }
        }
        if let Some(password) = value
            .get_mut("sinks")
            .and_then(|s| s.get_mut("clickhouse"))
            .and_then(|c| c.get_mut("password"))
        {
            hide(password);
        }
        toml::to_string_pretty(&value)
    }

    /// A configuration from TOML text alone (no environment), validated.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        config.resolve_paths();
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.topics.partitions == 0 || self.topics.partitions > 10_000 {
            return Err(ConfigError::Invalid {
                key: "topics.partitions",
                reason: format!("{} is not between 1 and 10000", self.topics.partitions),
            });
        }
        if !self
            .topics
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || self.topics.prefix.len() > 100
        {
            return Err(ConfigError::Invalid {
                key: "topics.prefix",
                reason: format!(
                    "{:?} may hold only letters, digits, '.', '_' and '-' (at most 100)",
                    self.topics.prefix
                ),
            });
        }
        if let BusConfig::Kafka(k) = &self.bus {
            if k.brokers.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: "bus.brokers",
                    reason: "is empty; name at least one host:port".into(),
                });
            }
            if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&k.compression.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "bus.compression",
                    reason: format!(
                        "{:?} is not one of none, gzip, snappy, lz4, zstd",
                        k.compression
                    ),
                });
            }
            if k.replication < 1 {
                return Err(ConfigError::Invalid {
                    key: "bus.replication",
                    reason: format!("{} must be at least 1", k.replication),
                });
            }
        }
        if let Err(reason) = self.ingest.validate() {
            let key = "ingest";
            return Err(ConfigError::Invalid { key, reason });
        }
        if let Err(reason) = self.processors.validate() {
            let key = "processors";
            return Err(ConfigError::Invalid { key, reason });
        }
        if let Err(reason) = self.alerts.validate() {
            let key = "alerts";
            return Err(ConfigError::Invalid { key, reason });
        }
        self.sinks.parquet.validate()?;
        self.sinks.clickhouse.validate()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError::Invalid {
                key: "log",
                reason: e.to_string(),
            });
        }
        Ok(())
    }

    fn resolve_paths(&mut self) {
        if let BusConfig::Embedded(e) = &mut self.bus
            && e.path.is_relative()
        {
            e.path = self.data_dir.join(&e.path);
        }
        if self.sinks.parquet.root.is_relative() {
            self.sinks.parquet.root = self.data_dir.join(&self.sinks.parquet.root);
        }
        if self.processors.checkpoint_dir.is_relative() {
            self.processors.checkpoint_dir = self.data_dir.join(&self.processors.checkpoint_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut figment = Figment::new().merge(Toml::string(toml));
        for (k, v) in env {
            figment = figment.merge(Serialized::global(k, v));
        }
        Config::from_figment(figment)
    }

    #[test]
    fn an_empty_file_is_a_working_one_machine_config() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.topics.partitions, 8);
        let BusConfig::Embedded(e) = &config.bus else {
            panic!("default bus is embedded")
        };
        assert_eq!(e.path, PathBuf::from("data/bus.redb"));
        assert_eq!(
            config.processors.checkpoint_dir,
            PathBuf::from("data/checkpoints")
        );
        assert_eq!(config.sinks.parquet.root, PathBuf::from("data/parquet"));
    }

    #[test]
    fn the_bus_can_be_switched_to_kafka() {
        let config = load(
            "[bus]\nkind = \"kafka\"\nbrokers = \"k1:9092,k2:9092\"\n",
            &[],
        )
        .unwrap();
        let BusConfig::Kafka(k) = &config.bus else {
            panic!("kafka expected")
        };
        assert_eq!(k.brokers, "k1:9092,k2:9092");
        assert_eq!(k.compression, "lz4");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let err = load("[topics]\npartitions = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("topics.partitions"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load("[ingest]\nlisten = \"127.0.0.1:1\"\nlsiten = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lsiten"), "{err}");
    }

    #[test]
    fn an_invalid_value_names_the_key() {
        let err = load("[topics]\npartitions = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("topics.partitions") && err.contains("between 1 and 10000"),
            "{err}"
        );
        let err = load("[bus]\nkind = \"kafka\"\ncompression = \"rar\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bus.compression"), "{err}");
        let err = load("[sinks.parquet]\nmax_rows = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.parquet.max_rows"), "{err}");
        let err = load("[processors]\nsession_gap = \"0s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("processors.session_gap"), "{err}");
        let err = load("[ingest]\nlisten = \"not an address\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.listen"), "{err}");
    }

    #[test]
    fn admin_tokens_are_bare_or_scoped_to_named_projects() {
        let config = load(
            "[ingest]\nadmin_tokens = [\"every-project-token-1\", \
             { token = \"pipeline-token-000001\", name = \"eas\", projects = [\"default\"] }]\n",
            &[],
        )
        .unwrap();
        let tokens = &config.ingest.admin_tokens;
        assert_eq!((tokens[0].name(), tokens[0].allows("any")), ("admin", true));
        assert_eq!(tokens[1].name(), "eas");
        assert!(tokens[1].allows("default") && !tokens[1].allows("other"));
        let err = load(
            "[ingest]\nadmin_tokens = [{ token = \"pipeline-token-000001\", name = \"eas\", \
             projects = [\"shop\"] }]\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ingest.admin_tokens[0].projects: no project \"shop\""),
            "{err}"
        );
    }

    #[test]
    fn the_printed_configuration_hides_every_credential() {
        let config = load(
            "[bus]\nkind = \"kafka\"\n[bus.extra]\n\"sasl.password\" = \"kafka-pass\"\n\
             \"security.protocol\" = \"SASL_SSL\"\n\
             [ingest]\nadmin_tokens = [\"every-project-token-1\", \
             { token = \"pipeline-token-000001\", name = \"eas\", projects = [\"default\"] }]\n\
             [sinks.clickhouse]\nuser = \"u\"\npassword = \"ch-pass\"\n\
             [alerts.destinations.hook]\nkind = \"webhook\"\nurl = \"http://h\"\n\
             secret = \"webhook-secret-0001\"\n",
            &[],
        )
        .unwrap();
        let text = config.redacted_toml().unwrap();
        for secret in [
            "kafka-pass",
            "every-project-token-1",
            "pipeline-token-000001",
            "ch-pass",
            "webhook-secret-0001",
        ] {
            assert!(!text.contains(secret), "{secret} in:\n{text}");
        }
        assert!(
            text.contains("SASL_SSL") && text.contains("name = \"eas\""),
            "{text}"
        );
        assert_eq!(text.matches("<redacted>").count(), 5, "{text}");
        let logged = format!("{:?}", config.bus);
        assert!(
            !logged.contains("kafka-pass") && logged.contains("SASL_SSL"),
            "{logged}"
        );
    }

    #[test]
    fn the_environment_overrides_the_file() {
        // SAFETY: this test is the only one in the process touching these variables.
        unsafe {
            std::env::set_var("TRELLIS_TOPICS__PARTITIONS", "3");
            std::env::set_var("TRELLIS_INGEST__LISTEN", "127.0.0.2:9999");
            std::env::set_var("TRELLIS_DATA_DIR", "/srv/trellis");
            // Not keys of the configuration: another tool's variables are left alone.
            std::env::set_var("TRELLIS_KAFKA_HOME", "/opt/kafka");
            std::env::set_var("TRELLIS_PROFILE", "1");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trellis.toml");
        std::fs::write(&file, "[topics]\npartitions = 5\n").unwrap();
        unsafe { std::env::set_var("TRELLIS_CONFIG", &file) };
        let config = Config::load(Some(&file));
        // A misspelt key inside a section is still an error that names it.
        unsafe { std::env::set_var("TRELLIS_INGEST__LISTN", "127.0.0.2:9999") };
        let misspelt = Config::load(Some(&file));
        unsafe {
            for key in [
                "TRELLIS_CONFIG",
                "TRELLIS_TOPICS__PARTITIONS",
                "TRELLIS_INGEST__LISTEN",
                "TRELLIS_INGEST__LISTN",
                "TRELLIS_DATA_DIR",
                "TRELLIS_KAFKA_HOME",
                "TRELLIS_PROFILE",
            ] {
                std::env::remove_var(key);
            }
        }
        let config = config.unwrap();
        assert_eq!(config.topics.partitions, 3);
        assert_eq!(config.ingest.listen.port(), 9999);
        assert_eq!(config.data_dir, Path::new("/srv/trellis"));
        let error = misspelt.unwrap_err().to_string();
        assert!(error.contains("listn"), "{error}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/trellis.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
