//! Retention in ClickHouse: rows older than their table's and project's retention
//! ([`Retention`]) are removed, whole days at a time, and nothing newer is.
//!
//! A row's day is its table's date column ([`date_column`]), in the server's time zone. A row
//! expires once the end of its day is at least the retention before now, as in Parquet; the
//! cutoffs are computed by the server, in its time zone, so a server west or east of UTC
//! removes nothing newer either.
//!
//! - **Servers with TTL that they apply to existing parts and can remove** (20.10 and later):
//!   each table gets a `TTL` expression that gives each row its expiry (per project:
//!   `multiIf(project = 'a', ..., default)`; a project kept for ever, or for longer than
//!   `DateTime` reaches, expires in 2105), and the server drops expired rows as it merges. The
//!   expression is set at start-up, and only when it differs from the one recorded in
//!   `{database}.retention_applied` (a changed `TTL` rewrites the table's parts); retention
//!   turned off removes the `TTL`s trellis set.
//! - **Older servers** (18.16): a pass every `interval` drops the monthly partitions wholly
//!   older than the longest retention any project of the table has, with a day's margin for
//!   the server's time zone (`ALTER TABLE … DROP PARTITION`, instant), then, when rows past
//!   their retention remain (shorter project retentions, tables without monthly partitions,
//!   the part of a month that is expired), deletes them with one `ALTER TABLE … DELETE`
//!   mutation, unless one is still running (logged with its age). A table that fails is
//!   logged and the others go on.

use clickhouse::Client;
use trellis_schemas::clickhouse::{date_column, monthly};
use trellis_schemas::tables::Table;

use super::error::Error;
use super::migrations::ServerVersion;
use crate::retention::Retention;

const DAY_MS: i64 = 86_400_000;

/// The expiry given to the rows of a project kept for ever: the last year `DateTime` holds.
const NEVER: &str = "toDateTime('2105-12-31 00:00:00')";

/// Longer retentions are kept for ever: a row's day plus this still fits in `DateTime` (which
/// ends in 2106) for rows of this century.
const LONGEST_KEEP: std::time::Duration = std::time::Duration::from_secs(80 * 365 * 86_400);

impl ServerVersion {
    /// Whether the server applies a table's `TTL` to its existing parts and can remove it
    /// (`materialize_ttl_after_modify` from 20.5, `REMOVE TTL` from 20.10).
    pub fn has_ttl(self) -> bool {
        (self.major, self.minor) >= (20, 10)
    }
}

/// `value` as a ClickHouse string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The project branches of a table's rule and its default: `(project, keep)` for each project
/// with a section of its own (in name order), then the keep of every other project. `None`
/// keeps for ever.
fn rule(
    retention: &Retention,
    table: Table,
) -> (
    Vec<(&str, Option<std::time::Duration>)>,
    Option<std::time::Duration>,
) {
    let projects = retention
        .projects
        .keys()
        .map(|p| (p.as_str(), retention.of(table, p)))
        .collect();
    (projects, retention.default_of(table))
}

/// `multiIf(project = 'a', A, ..., D)` from the branch values, or `D` alone.
fn by_project(branches: Vec<(&str, String)>, default: String) -> String {
    if branches.is_empty() {
        return default;
    }
    let mut sql = String::from("multiIf(");
    for (project, value) in branches {
        sql.push_str(&format!("project = {}, {value}, ", literal(project)));
    }
    sql.push_str(&default);
    sql.push(')');
    sql
}

/// The `TTL` expression of `table`: when each row expires (the end of its day plus its
/// retention). `None` when every project keeps the table for ever.
pub fn ttl_expression(table: Table, retention: &Retention) -> Option<String> {
    let (projects, default) = rule(retention, table);
    if default.is_none() && projects.iter().all(|(_, keep)| keep.is_none()) {
        return None;
    }
    let date = date_column(table);
    // The end of the row's day is the next day's start (a day of a clock change is not 24 h).
    let expiry = |keep: Option<std::time::Duration>| match keep {
        Some(keep) if keep <= LONGEST_KEEP => {
            format!("addSeconds(toDateTime({date} + 1), {})", keep.as_secs())
        }
        _ => NEVER.to_string(),
    };
    let branches = projects.into_iter().map(|(p, k)| (p, expiry(k))).collect();
    Some(by_project(branches, expiry(default)))
}

/// The statement that gives `table` its `TTL` (or removes it when the table is kept for ever).
pub fn ttl_statement(database: &str, table: Table, retention: &Retention) -> String {
    match ttl_expression(table, retention) {
        Some(ttl) => format!("ALTER TABLE {database}.{table} MODIFY TTL {ttl}"),
        None => format!("ALTER TABLE {database}.{table} REMOVE TTL"),
    }
}

/// The time (s since the epoch) before which a row's day must end for it to be expired, for
/// rows kept `keep` at `now_ms`; `None` when that is before 1970 plus a day (nothing is).
fn cutoff_secs(now_ms: i64, keep: std::time::Duration) -> Option<i64> {
    let cutoff_ms = now_ms.saturating_sub(keep.as_millis().min(i64::MAX as u128) as i64);
    (cutoff_ms > 2 * DAY_MS).then_some(cutoff_ms / 1000)
}

/// The first day (UTC) a row kept `keep` at `now_ms` may still be on; `None` for none.
fn first_kept_day(now_ms: i64, keep: std::time::Duration) -> Option<chrono::NaiveDate> {
    let secs = cutoff_secs(now_ms, keep)?;
    chrono::DateTime::from_timestamp(secs.div_euclid(86_400) * 86_400, 0).map(|d| d.date_naive())
}

/// The condition of the rows of `table` that are past their retention at `now_ms`, or `None`
/// when every project keeps the table for ever.
pub fn expired_condition(table: Table, retention: &Retention, now_ms: i64) -> Option<String> {
    let (projects, default) = rule(retention, table);
    let cutoff = |keep: Option<std::time::Duration>| keep.and_then(|k| cutoff_secs(now_ms, k));
    let default = cutoff(default);
    let projects: Vec<(&str, Option<i64>)> =
        projects.into_iter().map(|(p, k)| (p, cutoff(k))).collect();
    if default.is_none() && projects.iter().all(|(_, c)| c.is_none()) {
        return None;
    }
    // The day the cutoff falls in, in the server's time zone: its rows are partly newer.
    let first_kept = |cutoff: Option<i64>| match cutoff {
        Some(secs) => format!("toDate(toDateTime({secs}))"),
        // No row's day is before the first `Date`.
        None => "toDate('1970-01-01')".to_string(),
    };
    let branches = projects
        .into_iter()
        .map(|(p, c)| (p, first_kept(c)))
        .collect();
    Some(format!(
        "{} < {}",
        date_column(table),
        by_project(branches, first_kept(default))
    ))
}

/// The monthly partitions (`YYYYMM`) of `table` before this one hold only expired rows, for
/// every project: `None` when the table has no monthly partitions or a project keeps it for
/// ever.
pub fn droppable_before(table: Table, retention: &Retention, now_ms: i64) -> Option<u32> {
    if !monthly(table) {
        return None;
    }
    let (projects, default) = rule(retention, table);
    let longest = projects
        .into_iter()
        .map(|(_, keep)| keep)
        .chain([default])
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()?;
    // A day's margin: the server's days are in its time zone, these in UTC.
    let day = first_kept_day(now_ms, longest)?.pred_opt()?;
    use chrono::Datelike;
    Some(day.year() as u32 * 100 + day.month())
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Monthly partitions dropped.
    pub partitions: u64,
    /// `DELETE` mutations started.
    pub deletes: u64,
}

fn refused(what: String) -> impl FnOnce(clickhouse::error::Error) -> Error {
    move |source| Error::ClickHouse { what, source }
}

/// One pass on a server without TTL: drops the partitions and deletes the rows of every table
/// of `database` that are past their retention at `now_ms`. A table that fails is logged and
/// the others go on; the next pass tries it again.
pub async fn expire(
    client: &Client,
    database: &str,
    retention: &Retention,
    now_ms: i64,
) -> Expired {
    let mut expired = Expired::default();
    for table in Table::all() {
        if let Err(e) = expire_table(client, database, table, retention, now_ms, &mut expired).await
        {
            tracing::warn!(table = table.name(), error = %e, "Removing expired ClickHouse rows failed; the next pass tries again.");
        }
    }
    expired
}

async fn expire_table(
    client: &Client,
    database: &str,
    table: Table,
    retention: &Retention,
    now_ms: i64,
    expired: &mut Expired,
) -> Result<(), Error> {
    let name = table.name();
    if let Some(before) = droppable_before(table, retention, now_ms) {
        let sql = format!(
            "SELECT DISTINCT partition FROM system.parts \
             WHERE database = {} AND table = {} AND active",
            literal(database),
            literal(name)
        );
        let partitions: Vec<String> = client.query(&sql).fetch_all().await.map_err(refused(sql))?;
        for partition in partitions {
            if partition.parse::<u32>().is_ok_and(|month| month < before) {
                let sql = format!("ALTER TABLE {database}.{name} DROP PARTITION {partition}");
                client.query(&sql).execute().await.map_err(refused(sql))?;
                tracing::info!(
                    table = name,
                    partition,
                    "ClickHouse partition past its retention dropped."
                );
                expired.partitions += 1;
            }
        }
    }
    let Some(condition) = expired_condition(table, retention, now_ms) else {
        return Ok(());
    };
    let sql = format!(
        "SELECT count(), toUInt64(now() - min(create_time)) FROM system.mutations \
         WHERE database = {} AND table = {} AND NOT is_done",
        literal(database),
        literal(name)
    );
    let (running, age_s): (u64, u64) =
        client.query(&sql).fetch_one().await.map_err(refused(sql))?;
    if running > 0 {
        tracing::info!(
            table = name,
            running,
            age_s,
            "A ClickHouse mutation is still running; retention waits for it."
        );
        return Ok(());
    }
    let sql = format!("SELECT count() FROM {database}.{name} WHERE {condition}");
    let rows: u64 = client.query(&sql).fetch_one().await.map_err(refused(sql))?;
    if rows > 0 {
        let sql = format!("ALTER TABLE {database}.{name} DELETE WHERE {condition}");
        client.query(&sql).execute().await.map_err(refused(sql))?;
        tracing::info!(
            table = name,
            rows,
            "ClickHouse rows past their retention being deleted."
        );
        expired.deletes += 1;
    }
    Ok(())
}

/// On a server with TTL, gives every table of `database` the `TTL` of `retention` (none when
/// `retention` is off), changing only the tables whose expression differs from the one last
/// applied. Returns the tables changed; a table that fails is logged and the others go on.
pub async fn apply_ttl(
    client: &Client,
    database: &str,
    retention: &Retention,
) -> Result<Vec<&'static str>, Error> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {database}.retention_applied \
         (table String, ttl String, applied_at DateTime DEFAULT now()) \
         ENGINE = ReplacingMergeTree(applied_at) ORDER BY table"
    );
    client.query(&sql).execute().await.map_err(refused(sql))?;
    let sql = format!("SELECT table, ttl FROM {database}.retention_applied FINAL");
    let applied: Vec<(String, String)> =
        client.query(&sql).fetch_all().await.map_err(refused(sql))?;
    let off = retention.interval.is_zero();
    let mut changed = Vec::new();
    for table in Table::all() {
        let ttl = if off {
            String::new()
        } else {
            ttl_expression(table, retention).unwrap_or_default()
        };
        let before = applied.iter().find(|(t, _)| t == table.name());
        // A table never given a TTL has none: nothing to remove.
        if before.map_or(ttl.is_empty(), |(_, b)| *b == ttl) {
            continue;
        }
        let statement = if ttl.is_empty() {
            format!("ALTER TABLE {database}.{table} REMOVE TTL")
        } else {
            format!("ALTER TABLE {database}.{table} MODIFY TTL {ttl}")
        };
        let record = format!(
            "INSERT INTO {database}.retention_applied (table, ttl) VALUES ({}, {})",
            literal(table.name()),
            literal(&ttl)
        );
        let mut result = Ok(());
        for sql in [statement, record] {
            result = client.query(&sql).execute().await.map_err(refused(sql));
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => {
                tracing::info!(table = table.name(), ttl, "ClickHouse table TTL set.");
                changed.push(table.name());
            }
            Err(e) => {
                tracing::warn!(table = table.name(), error = %e, "Setting a ClickHouse table's TTL failed; the next start tries again.");
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::retention::ProjectRetention;
    use trellis_schemas::Kind;

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    /// 2026-12-06 12:00 UTC.
    const NOW: i64 = 1_796_558_400_000;

    fn rules() -> Retention {
        Retention {
            events: days(90),
            projects: BTreeMap::from([
                (
                    "forever".to_string(),
                    ProjectRetention {
                        events: Some(Duration::ZERO),
                        ..Default::default()
                    },
                ),
                (
                    "o'brien".to_string(),
                    ProjectRetention {
                        events: Some(days(30)),
                        ..Default::default()
                    },
                ),
            ]),
            ..Retention::default()
        }
    }

    #[test]
    fn the_ttl_gives_each_project_the_end_of_the_day_plus_its_retention() {
        let events = Table::Event(Kind::Analytics);
        assert_eq!(
            ttl_expression(events, &rules()).unwrap(),
            "multiIf(project = 'forever', toDateTime('2105-12-31 00:00:00'), \
             project = 'o\\'brien', addSeconds(toDateTime(event_date + 1), 2592000), \
             addSeconds(toDateTime(event_date + 1), 7776000))"
        );
        // Sessions keep the records' 400 days in every project.
        assert_eq!(
            ttl_expression(Table::Sessions, &Retention::default()).unwrap(),
            "addSeconds(toDateTime(started_date + 1), 34560000)"
        );
        let forever = Retention {
            events: Duration::ZERO,
            ..Retention::default()
        };
        assert_eq!(ttl_expression(events, &forever), None);
        assert_eq!(
            ttl_statement("db", events, &forever),
            "ALTER TABLE db.events REMOVE TTL"
        );
        // A retention past what `DateTime` holds keeps for ever rather than wrapping round.
        let century = Retention {
            events: days(36_500),
            ..Retention::default()
        };
        assert_eq!(
            ttl_expression(events, &century).unwrap(),
            "toDateTime('2105-12-31 00:00:00')"
        );
        assert_eq!(expired_condition(events, &century, NOW), None);
    }

    #[test]
    fn expired_rows_are_those_on_days_before_the_first_kept_one() {
        let events = Table::Event(Kind::Analytics);
        // 90 days before 2026-12-06 12:00 is 2026-09-07 12:00: the day that holds it (in the
        // server's time zone) has rows newer than the retention, so it is the first kept.
        assert_eq!(
            expired_condition(events, &rules(), NOW).unwrap(),
            "event_date < multiIf(project = 'forever', toDate('1970-01-01'), \
             project = 'o\\'brien', toDate(toDateTime(1793966400)), \
             toDate(toDateTime(1788782400)))"
        );
        // The longest retention (for ever) keeps every partition; without that project, the
        // months before September go whole.
        assert_eq!(droppable_before(events, &rules(), NOW), None);
        let mut mortal = rules();
        mortal.projects.remove("forever");
        assert_eq!(droppable_before(events, &mortal, NOW), Some(202609));
        // Sessions have no monthly partitions.
        assert_eq!(
            droppable_before(Table::Sessions, &Retention::default(), NOW),
            None
        );
    }
}
