//! How long each table keeps its rows: one setting shape for both sinks
//! (`[sinks.parquet.retention]`, `[sinks.clickhouse.retention]`), per table and per project.
//!
//! Raw event tables keep 90 days by default, derived records (sessions, health partials,
//! issues, detections, alerts, audit, deploys, push) 400; a zero duration keeps a table for ever. A
//! row goes only once the whole day of its time is older than its retention, so nothing newer
//! than the retention is ever removed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_schemas::tables::Table;

/// How long each table keeps its rows (`[sinks.parquet.retention]`, `[sinks.clickhouse.retention]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// How often the sink removes what expired; zero turns retention off in that sink. (A
    /// ClickHouse server with TTL, 20.10 and later, removes rows itself as it merges; the
    /// interval then only says whether retention is on.)
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The event tables (`events`, `errors`, `perf`, `transactions`, `session_updates`,
    /// `notifications`).
    #[serde(with = "days")]
    pub events: Duration,
    /// The derived tables (`sessions`, `health_partials`, `issues`, `detections`, `alerts`,
    /// `audit`, `deploys`, `push`).
    #[serde(with = "days")]
    pub records: Duration,
    /// One table's retention, by table name, over `events` and `records`.
    #[serde(with = "humantime_map")]
    pub tables: BTreeMap<String, Duration>,
    /// One project's retention, by project name, over the above: `events`, `records` and
    /// `tables` as above (what it leaves out is the default's).
    pub projects: BTreeMap<String, ProjectRetention>,
}

/// One project's retention.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectRetention {
    /// The project's event tables.
    #[serde(with = "days::option")]
    pub events: Option<Duration>,
    /// The project's derived tables.
    #[serde(with = "days::option")]
    pub records: Option<Duration>,
    /// One of the project's tables, by name.
    #[serde(with = "humantime_map")]
    pub tables: BTreeMap<String, Duration>,
}

/// A retention as people write it: `"90days"` is printed as such, not as humantime's
/// `"2months 29days 2h 52m 48s"` (its month is 30.44 days); read with humantime.
mod days {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(d: Duration) -> String {
        match d.as_secs() {
            0 => "0s".to_string(),
            secs if secs % 86_400 == 0 && d.subsec_nanos() == 0 => format!("{}days", secs / 86_400),
            _ => humantime::format_duration(d).to_string(),
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|v| humantime::parse_duration(&v).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// `BTreeMap<String, Duration>` with humantime values (`"30d"`).
mod humantime_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<&String, String> = map
            .iter()
            .map(|(k, v)| (k, super::days::format(*v)))
            .collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k, d))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            interval: Duration::from_secs(3600),
            events: Duration::from_secs(90 * 86_400),
            records: Duration::from_secs(400 * 86_400),
            tables: BTreeMap::new(),
            projects: BTreeMap::new(),
        }
    }
}

impl Retention {
    /// Never removes anything: for data whose times are fixed in the past (tests, benchmarks),
    /// which the defaults would expire once the wall clock passes them by the retention.
    pub fn off() -> Self {
        Retention {
            interval: Duration::ZERO,
            ..Retention::default()
        }
    }

    /// Checks that every named table exists; the error names the first that does not.
    pub fn validate(&self) -> Result<(), String> {
        let tables = self
            .tables
            .keys()
            .chain(self.projects.values().flat_map(|p| p.tables.keys()));
        for name in tables {
            if Table::named(name).is_none() {
                return Err(format!("no table {name:?}"));
            }
        }
        Ok(())
    }

    /// How long `table` keeps the rows of `project`; `None` for ever.
    pub fn of(&self, table: Table, project: &str) -> Option<Duration> {
        self.resolve(table, self.projects.get(project))
    }

    /// How long `table` keeps the rows of a project with no section of its own; `None` for
    /// ever.
    pub fn default_of(&self, table: Table) -> Option<Duration> {
        self.resolve(table, None)
    }

    fn resolve(&self, table: Table, project: Option<&ProjectRetention>) -> Option<Duration> {
        let kind_default = |p: Option<&ProjectRetention>| match table {
            Table::Event(_) => p.and_then(|p| p.events),
            _ => p.and_then(|p| p.records),
        };
        let keep = project
            .and_then(|p| p.tables.get(table.name()).copied())
            .or_else(|| kind_default(project))
            .or_else(|| self.tables.get(table.name()).copied())
            .unwrap_or(match table {
                Table::Event(_) => self.events,
                _ => self.records,
            });
        (!keep.is_zero()).then_some(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_print_in_days_and_read_back() {
        let text = serde_json::to_string(&Retention::default()).unwrap();
        assert!(
            text.contains(r#""events":"90days""#) && text.contains(r#""records":"400days""#),
            "{text}"
        );
        let back: Retention = serde_json::from_str(&text).unwrap();
        assert_eq!(back, Retention::default());
        let odd: Retention =
            serde_json::from_str(r#"{"events": "36h", "tables": {"perf": "0s"}}"#).unwrap();
        let text = serde_json::to_string(&odd).unwrap();
        assert!(text.contains(r#""events":"1day 12h""#), "{text}");
        assert!(text.contains(r#""perf":"0s""#), "{text}");
    }
}
