//! Rollups: `AggregatingMergeTree` tables fed by materialized views on the base tables.
//!
//! Counts are kept as `uniqExact` sets of ids (event ids, session ids, notification ids, user
//! keys), not as sums, so a row the sink writes twice (a batch replayed after a crash, before
//! `ReplacingMergeTree` collapses it) counts once in the rollup too: they stay exact under
//! at-least-once delivery. Percentiles are `quantileExact` states of the samples, which a replayed
//! batch can skew (servers with insert deduplication tokens, 22.x+, drop the replayed block
//! before the views see it); the exact figure is always available from `perf FINAL`.
//!
//! Everything here runs on ClickHouse 18.16 and on current releases (checked against chDB 26.x).
//! Read a rollup with the `-Merge` combinators, for example
//! `uniqExactMerge(events)` or `quantileExactMerge(0.95)(load_ms)`.
//!
//! Top issues are grouped over the `errors` table by the SDK fingerprint, else the outermost
//! exception type, else the message: the processors' `issues` topic is not written to
//! ClickHouse yet; when it is, this rollup can key on its issue id instead.

use trellis_schemas::Kind;

/// The user key of an event row: the user id, else the device id.
const EVENT_USER: &str = "ifNull(user_id, ifNull(device_id, ''))";

/// The statements that create every rollup table and view in `db`, idempotently.
pub fn statements(db: &str) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {db}.events_daily (\n\
         project String, event_date Date, app_version String, update_id String, kind String,\n\
         events AggregateFunction(uniqExact, String),\n\
         users AggregateFunction(uniqExact, String)\n\
         ) ENGINE = AggregatingMergeTree() PARTITION BY toYYYYMM(event_date)\n\
         ORDER BY (project, event_date, app_version, update_id, kind)"
    )];
    for kind in Kind::ALL {
        let table = kind.table().name();
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_daily_{table}_mv TO {db}.events_daily AS\n\
             SELECT project, toDate(toDateTime(intDiv(timestamp_ms, 1000))) AS event_date,\n\
             release_app_version AS app_version, ifNull(release_update_id, '') AS update_id,\n\
             '{kind}' AS kind, uniqExactState(event_id) AS events, uniqExactState({EVENT_USER}) AS users\n\
             FROM {db}.{table} GROUP BY project, event_date, app_version, update_id"
        ));
    }
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.release_health (\n\
         project String, started_date Date, app_version String, update_id String,\n\
         sessions AggregateFunction(uniqExact, String),\n\
         crashed_sessions AggregateFunction(uniqExactIf, String, UInt8),\n\
         users AggregateFunction(uniqExact, String),\n\
         crashed_users AggregateFunction(uniqExactIf, String, UInt8)\n\
         ) ENGINE = AggregatingMergeTree() PARTITION BY toYYYYMM(started_date)\n\
         ORDER BY (project, started_date, app_version, update_id)"
    ));
    out.push(format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.release_health_mv TO {db}.release_health AS\n\
         SELECT project, toDate(toDateTime(intDiv(started_ms, 1000))) AS started_date,\n\
         release_app_version AS app_version, ifNull(release_update_id, '') AS update_id,\n\
         uniqExactState(session_id) AS sessions,\n\
         uniqExactIfState(session_id, crashed) AS crashed_sessions,\n\
         uniqExactState(ifNull(user_id, device_id)) AS users,\n\
         uniqExactIfState(ifNull(user_id, device_id), crashed) AS crashed_users\n\
         FROM {db}.sessions GROUP BY project, started_date, app_version, update_id"
    ));
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.issues_by_release (\n\
         project String, app_version String, update_id String, issue String, level String,\n\
         handled UInt8,\n\
         events AggregateFunction(uniqExact, String),\n\
         users AggregateFunction(uniqExact, String),\n\
         first_seen_ms AggregateFunction(min, Int64),\n\
         last_seen_ms AggregateFunction(max, Int64)\n\
         ) ENGINE = AggregatingMergeTree()\n\
         ORDER BY (project, app_version, update_id, issue, level, handled)"
    ));
    out.push(format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issues_by_release_mv TO {db}.issues_by_release AS\n\
         SELECT project, release_app_version AS app_version,\n\
         ifNull(release_update_id, '') AS update_id,\n\
         multiIf(length(fingerprint) > 0, arrayStringConcat(fingerprint, ' '),\n\
                 exceptions != '[]', visitParamExtractString(exceptions, 'exception_type'),\n\
                 ifNull(message, '')) AS issue,\n\
         level, handled, uniqExactState(event_id) AS events, uniqExactState({EVENT_USER}) AS users,\n\
         minState(timestamp_ms) AS first_seen_ms, maxState(timestamp_ms) AS last_seen_ms\n\
         FROM {db}.errors GROUP BY project, app_version, update_id, issue, level, handled"
    ));
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.screen_load (\n\
         project String, app_version String, update_id String, screen String,\n\
         samples AggregateFunction(uniqExact, String),\n\
         load_ms AggregateFunction(quantileExact(0.95), Float64)\n\
         ) ENGINE = AggregatingMergeTree() ORDER BY (project, app_version, update_id, screen)"
    ));
    out.push(format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.screen_load_mv TO {db}.screen_load AS\n\
         SELECT project, release_app_version AS app_version,\n\
         ifNull(release_update_id, '') AS update_id, ifNull(screen, '') AS screen,\n\
         uniqExactState(event_id) AS samples, quantileExactState(0.95)(value) AS load_ms\n\
         FROM {db}.perf WHERE metric = 'screen_load'\n\
         GROUP BY project, app_version, update_id, screen"
    ));
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.notification_funnel (\n\
         project String, campaign String, stage String,\n\
         notifications AggregateFunction(uniqExact, String)\n\
         ) ENGINE = AggregatingMergeTree() ORDER BY (project, campaign, stage)"
    ));
    out.push(format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.notification_funnel_mv TO {db}.notification_funnel AS\n\
         SELECT project, ifNull(campaign, '') AS campaign, stage,\n\
         uniqExactState(notification_id) AS notifications\n\
         FROM {db}.notifications GROUP BY project, campaign, stage"
    ));
    out
}

/// The rollup tables, for tests and tools.
pub const TABLES: [&str; 5] = [
    "events_daily",
    "release_health",
    "issues_by_release",
    "screen_load",
    "notification_funnel",
];
