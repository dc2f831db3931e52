//! The table registry: every table trellis stores, declared once with the topic its rows come
//! from, the Avro type they travel as, the columns that identify a row, the column that
//! versions it and the time that places it in a date and hour.
//!
//! A table has one name, the same for its Parquet directory, its `trellis query` table and its
//! ClickHouse table. The Parquet sink, the ClickHouse sink and its DDL, `trellis query` and the
//! schema export all read this registry, and reach a table's Rust type only through
//! [`Table::with_row_type`]. Storing a new record type is the type (with its `.avsc` and its
//! `records!` entry), one entry here (which implements [`Stored`]), its topic in
//! [`crate::topics::Names`], its ClickHouse sort key (`clickhouse::layout`) and a ClickHouse
//! migration that creates its table: no sink code changes.

use std::sync::Arc;

use arrow_schema::Schema;

use crate::Kind;
use crate::records::{
    Alert, AuditEntry, Deploy, Detection, HealthPartial, IssueRecord, PushOutcome, Record,
    SessionRecord,
};
use crate::topics::Names;

/// What the registry says of one table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The table's name: its Parquet directory, its `trellis query` table, its ClickHouse table.
    pub name: &'static str,
    /// The topic its rows come from, in a deployment's topic names.
    pub topic: fn(&Names) -> &str,
    /// The Avro type its rows travel as (the `.avsc` file under `schemas/avro/`).
    pub avro: &'static str,
    /// The columns that identify a row: a stage that replays its input writes the same values
    /// again, so rows equal in them (within a project) are one row written twice.
    pub identity: &'static [&'static str],
    /// The column whose greatest value is a row's current state, for tables that keep every
    /// version of a thing.
    pub version: Option<&'static str>,
    /// The column (ms since the epoch) that places a row in a date and hour: event time, a
    /// session's start, a window's start, an issue's first event (so every version of an issue
    /// lands in the same partition), the time a detection opened or an alert fired, a deploy's time.
    pub time: &'static str,
}

/// A derived record type stored in a table of its own.
pub trait Stored: Record + std::fmt::Debug + Send + Sync + 'static {
    /// Its table.
    const TABLE: Table;
    /// The project the record belongs to.
    fn project(&self) -> &str;
    /// The value of its table's [`Spec::time`] column.
    fn time_ms(&self) -> i64;
}

/// What is done with a table's row type, by [`Table::with_row_type`].
pub trait RowType {
    /// What it gives.
    type Out;
    /// For the table of an event kind (rows are [`crate::Event`]s of that kind).
    fn event(self, kind: Kind) -> Self::Out;
    /// For a derived table, whose rows are `T`.
    fn record<T: Stored>(self) -> Self::Out;
}

/// Declares the tables of derived records: the [`Table`] variants, their [`Spec`]s, their
/// Arrow schemas and the [`Stored`] implementations of their types, from one entry each.
macro_rules! derived_tables {
    ($(
        $(#[$doc:meta])*
        $variant:ident => $ty:ty {
            name: $name:literal,
            topic: $topic:ident,
            identity: [$($identity:literal),+],
            version: $version:expr,
            time: $time:ident $(,)?
        }
    ),+ $(,)?) => {
        /// A table: one per event kind, and one per derived record type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Table {
            /// The table of one event kind, from the `events` topic.
            Event(Kind),
            $($(#[$doc])* $variant,)+
        }

        /// The derived records' tables, in order.
        const DERIVED: &[Table] = &[$(Table::$variant),+];

        impl Table {
            /// Calls `f` with the table's row type: [`crate::Event`] for the event tables, the
            /// record type for a derived one. The one place a table becomes its Rust type, so
            /// code that handles every table (decoding, buffering, encoding) is generic over
            /// [`Stored`] instead of matching each table.
            pub fn with_row_type<F: RowType>(self, f: F) -> F::Out {
                match self {
                    Table::Event(kind) => f.event(kind),
                    $(Table::$variant => f.record::<$ty>(),)+
                }
            }

            fn derived_spec(self) -> Option<Spec> {
                match self {
                    $(Table::$variant => Some(Spec {
                        name: $name,
                        topic: |n| &n.$topic,
                        avro: <$ty as Record>::NAME,
                        identity: &[$($identity),+],
                        version: $version,
                        time: stringify!($time),
                    }),)+
                    Table::Event(_) => None,
                }
            }

            fn derived_schema(self) -> Option<Arc<Schema>> {
                match self {
                    $(Table::$variant => Some(crate::arrow::record_schema::<$ty>()),)+
                    Table::Event(_) => None,
                }
            }
        }

        $(impl Stored for $ty {
            const TABLE: Table = Table::$variant;
            fn project(&self) -> &str {
                &self.project
            }
            fn time_ms(&self) -> i64 {
                self.$time
            }
        })+
    };
}

derived_tables! {
    /// [`SessionRecord`]s, from the `sessions` topic: every version of every session.
    Sessions => SessionRecord {
        name: "sessions",
        topic: sessions,
        identity: ["session_id", "version"],
        version: Some("version"),
        time: started_ms,
    },
    /// [`HealthPartial`]s, from the `aggregates` topic: a release-health window's answer is the
    /// merge of its partials.
    HealthPartials => HealthPartial {
        name: "health_partials",
        topic: aggregates,
        identity: ["partial_id"],
        version: None,
        time: window_start_ms,
    },
    /// [`IssueRecord`]s, from the `issues` topic: every version of every issue (the newest
    /// `version` of an `issue_id` is its current state).
    Issues => IssueRecord {
        name: "issues",
        topic: issues,
        identity: ["issue_id", "version"],
        version: Some("version"),
        time: first_seen_ms,
    },
    /// [`Detection`]s, from the `detections` topic: every version of every finding.
    Detections => Detection {
        name: "detections",
        topic: detections,
        identity: ["detection_id", "version"],
        version: Some("version"),
        time: opened_ms,
    },
    /// [`Alert`]s, from the `alerts` topic: every version of every alert.
    Alerts => Alert {
        name: "alerts",
        topic: alerts,
        identity: ["alert_id", "version"],
        version: Some("version"),
        time: fired_ms,
    },
    /// [`AuditEntry`]s, from the `audit` topic.
    Audit => AuditEntry {
        name: "audit",
        topic: audit,
        identity: ["audit_id"],
        version: None,
        time: at_ms,
    },
    /// [`Deploy`]s, from the `deploys` topic: the deploy markers ingest took.
    Deploys => Deploy {
        name: "deploys",
        topic: deploys,
        identity: ["deploy_id"],
        version: None,
        time: deployed_ms,
    },
    /// [`PushOutcome`]s, from the `push` topic: Expo's tickets and receipts.
    Push => PushOutcome {
        name: "push",
        topic: push,
        identity: ["outcome_id"],
        version: None,
        time: at_ms,
    },
}

impl Table {
    /// Every table, in a fixed order: the event kinds', then the derived records'.
    pub fn all() -> impl Iterator<Item = Table> {
        Kind::ALL
            .into_iter()
            .map(Table::Event)
            .chain(DERIVED.iter().copied())
    }

    /// The registry entry: the one place a table is described.
    pub fn spec(self) -> Spec {
        let Table::Event(kind) = self else {
            return self.derived_spec().expect("every derived table has a spec");
        };
        let name = match kind {
            Kind::Analytics => "events",
            Kind::Error => "errors",
            Kind::Performance => "perf",
            Kind::Transaction => "transactions",
            Kind::Session => "session_updates",
            Kind::Notification => "notifications",
        };
        Spec {
            name,
            topic: |n| &n.events,
            avro: kind.as_str(),
            identity: &["common.event_id"],
            version: None,
            time: "common.timestamp_ms",
        }
    }

    /// The table's name.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The columns that identify a row ([`Spec::identity`]).
    pub fn identity(self) -> &'static [&'static str] {
        self.spec().identity
    }

    /// The table named `name`.
    pub fn named(name: &str) -> Option<Table> {
        Table::all().find(|t| t.name() == name)
    }

    /// The table whose rows come from `topic` (of the deployment's `names`); the event tables
    /// share one topic, where an event's kind picks its table.
    pub fn of_topic(names: &Names, topic: &str) -> Option<Table> {
        Table::all().find(|t| (t.spec().topic)(names) == topic)
    }

    /// The topics the tables' rows come from, each once, in table order: what a sink that
    /// stores every table reads.
    pub fn topics(names: &Names) -> Vec<&str> {
        let mut topics: Vec<&str> = Vec::new();
        for table in Table::all() {
            let topic = (table.spec().topic)(names);
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        topics
    }

    /// The Arrow schema of the table's rows (Parquet files, `trellis query`).
    pub fn schema(self) -> Arc<Schema> {
        match self {
            Table::Event(kind) => crate::arrow::schema(kind),
            derived => derived
                .derived_schema()
                .expect("every derived table has a schema"),
        }
    }
}

impl Kind {
    /// The table that stores this kind.
    pub fn table(self) -> Table {
        Table::Event(self)
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_its_own_name_topic_type_and_time_column() {
        let names = Names::new("staging.");
        let mut seen = std::collections::HashSet::new();
        for table in Table::all() {
            let spec = table.spec();
            assert!(seen.insert(spec.name), "{} twice", spec.name);
            assert_eq!(Table::named(spec.name), Some(table));
            assert!((spec.topic)(&names).starts_with("staging."), "{table}");
            let schema = table.schema();
            for column in spec.identity.iter().chain([&spec.time]) {
                let top = column.split('.').next().unwrap();
                assert!(
                    schema.field_with_name(top).is_ok(),
                    "{table} has no {column}"
                );
            }
            if let Some(version) = spec.version {
                assert!(spec.identity.contains(&version), "{table}");
            }
            assert!(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("avro/{}.avsc", spec.avro))
                    .exists(),
                "{table}: no schemas/avro/{}.avsc",
                spec.avro
            );
        }
    }

    #[test]
    fn a_stored_record_names_its_table_and_time() {
        let partial = HealthPartial {
            project: "p".into(),
            window_start_ms: 7,
            ..Default::default()
        };
        assert_eq!(HealthPartial::TABLE.name(), "health_partials");
        assert_eq!((partial.project(), partial.time_ms()), ("p", 7));
        assert_eq!(HealthPartial::TABLE.spec().time, "window_start_ms");
    }
}
