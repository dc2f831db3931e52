//! Versioned, idempotent migrations, applied at start-up.
//!
//! `{database}.schema_migrations` records each applied version. [`migrate`] creates the
//! database, reads what is applied, and runs the missing migrations in order, recording each
//! after all its statements succeeded. Every statement is itself idempotent (`IF NOT EXISTS`),
//! so two sinks starting at once, or a crash between a statement and its record, only repeat
//! harmless work; running [`migrate`] twice is a no-op.
//!
//! Statements depend on the server: from 22.x on, base tables get
//! `non_replicated_deduplication_window`, which makes the sink's per-batch
//! `insert_deduplication_token` effective on plain `MergeTree` tables.

use clickhouse::{Client, Compression};
use trellis_schemas::Kind;
use trellis_schemas::clickhouse::create_table;
use trellis_schemas::tables::Table;

use super::config::ClickHouseConfig;
use super::error::Error;
use super::rollups;

/// A server version, from `SELECT version()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major version (18, 24, ...).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `18.16.1` or `24.8.1.2684`.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        Some(ServerVersion {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
        })
    }

    /// Whether the server honours `insert_deduplication_token` (22.2 and later) and
    /// `non_replicated_deduplication_window`.
    pub fn has_dedup_tokens(self) -> bool {
        (self.major, self.minor) >= (22, 2)
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One migration: a version, a name and its statements for a database and server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Version; applied in increasing order.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// Its statements.
    pub statements: Vec<String>,
}

fn dedup_window(db: &str, table: &str, server: ServerVersion) -> Option<String> {
    server.has_dedup_tokens().then(|| {
        format!(
            "ALTER TABLE {db}.{table} MODIFY SETTING non_replicated_deduplication_window = 1000"
        )
    })
}

/// Every migration, in order, for `db` on `server`.
pub fn migrations(db: &str, server: ServerVersion) -> Vec<Migration> {
    // Each migration creates its tables (and sets their insert deduplication window where the
    // server has one); the grouping is history: applied versions are never changed.
    let tables = |tables: &[Table]| -> Vec<String> {
        let mut statements = Vec::new();
        for &table in tables {
            statements.push(create_table(db, table));
            statements.extend(dedup_window(db, table.name(), server));
        }
        statements
    };
    let events = tables(&Kind::ALL.map(Table::Event));
    let records = tables(&[Table::Sessions, Table::HealthPartials]);
    let issues = tables(&[Table::Issues]);
    let detections = tables(&[Table::Detections]);
    let alerts = tables(&[Table::Alerts, Table::Audit]);
    let deploys = tables(&[Table::Deploys]);
    let push = tables(&[Table::Push]);
    vec![
        Migration {
            version: 1,
            name: "event tables",
            statements: events,
        },
        Migration {
            version: 2,
            name: "session and health partial tables",
            statements: records,
        },
        Migration {
            version: 3,
            name: "rollups",
            statements: rollups::statements(db),
        },
        Migration {
            version: 4,
            name: "issues table",
            statements: issues,
        },
        Migration {
            version: 5,
            name: "detections table",
            statements: detections,
        },
        Migration {
            version: 6,
            name: "alerts and audit tables",
            statements: alerts,
        },
        Migration {
            version: 7,
            name: "deploys table",
            statements: deploys,
        },
        Migration {
            version: 8,
            name: "push outcomes table",
            statements: push,
        },
    ]
}

/// The client for a configuration: plain `RowBinary`, no schema validation (18.16 cannot answer
/// the validation queries), no default database (it may not exist yet; names are qualified).
pub fn client(config: &ClickHouseConfig) -> Client {
    let mut client = Client::default()
        .with_url(&config.url)
        .with_validation(false)
        .with_compression(if config.compression {
            Compression::Lz4
        } else {
            Compression::None
        });
    if let Some(user) = &config.user {
        client = client.with_user(user);
    }
    if let Some(password) = &config.password {
        client = client.with_password(password);
    }
    client
}

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The server's version.
    pub server: ServerVersion,
    /// The versions this call applied (empty when all were applied before).
    pub applied: Vec<u32>,
}

/// Creates the database and applies every missing migration.
pub async fn migrate(config: &ClickHouseConfig) -> Result<Migrated, Error> {
    config.validate()?;
    let db = &config.database;
    // 18.16 answers reads with a compression the client does not understand: read plain.
    let client = client(config).with_compression(Compression::None);
    let fail = |what: &str| {
        let what = what.to_string();
        move |source| Error::ClickHouse { what, source }
    };
    let version: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(fail("SELECT version()"))?;
    let server = ServerVersion::parse(&version).ok_or_else(|| Error::ClickHouse {
        what: "SELECT version()".into(),
        source: clickhouse::error::Error::BadResponse(format!("unreadable version {version:?}")),
    })?;
    for sql in [
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
             (version UInt32, name String, applied_at DateTime DEFAULT now()) \
             ENGINE = ReplacingMergeTree() ORDER BY version"
        ),
    ] {
        client.query(&sql).execute().await.map_err(fail(&sql))?;
    }
    let done: Vec<u32> = client
        .query(&format!("SELECT version FROM {db}.schema_migrations FINAL"))
        .fetch_all()
        .await
        .map_err(fail("reading schema_migrations"))?;
    let mut applied = Vec::new();
    for m in migrations(db, server) {
        if done.contains(&m.version) {
            continue;
        }
        for sql in &m.statements {
            client
                .query(sql)
                .execute()
                .await
                .map_err(|source| Error::Migration {
                    version: m.version,
                    name: m.name,
                    source,
                })?;
        }
        let record = format!(
            "INSERT INTO {db}.schema_migrations (version, name) VALUES ({}, '{}')",
            m.version, m.name
        );
        client
            .query(&record)
            .execute()
            .await
            .map_err(fail(&record))?;
        tracing::info!(database = %db, version = m.version, name = m.name, "Migration applied.");
        applied.push(m.version);
    }
    Ok(Migrated { server, applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_gate_dedup_settings() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("26.9.2.1").unwrap();
        assert!(!old.has_dedup_tokens() && new.has_dedup_tokens());
        assert_eq!(ServerVersion::parse("x"), None);
        let count = |v| {
            migrations("db", v)
                .iter()
                .flat_map(|m| &m.statements)
                .filter(|s| s.contains("non_replicated_deduplication_window"))
                .count()
        };
        assert_eq!(count(old), 0);
        assert_eq!(count(new), 14);
        let versions: Vec<u32> = migrations("db", old).iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
