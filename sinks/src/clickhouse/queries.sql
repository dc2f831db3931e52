-- Analyst queries over the ClickHouse sink's tables. Run them in the sink's database
-- (`sinks.clickhouse.database`, `trellis` by default). Each one runs on ClickHouse 18.16 and on
-- current releases; sinks/tests/clickhouse_queries.rs checks every answer against data it wrote.
-- Base tables are ReplacingMergeTree: read them with FINAL so replayed rows count once.
-- Rollups (events_daily, release_health, issues_by_release, screen_load, notification_funnel)
-- are read with the -Merge combinators and need no FINAL. Name results apart from columns
-- (`session_count`, not `sessions`): 18.16 resolves an alias before a column of the same name.

-- name: events_per_day_by_release
-- Events (distinct event ids) and users per day, release, OTA update and kind.
SELECT project, event_date, app_version, update_id, kind,
       uniqExactMerge(events) AS events, uniqExactMerge(users) AS users
FROM events_daily
GROUP BY project, event_date, app_version, update_id, kind
ORDER BY project, event_date, app_version, update_id, kind;

-- name: daily_active_users_by_release
-- Daily active users (user id, else device id) per release, over every kind of event.
SELECT event_date, app_version, uniqExactMerge(users) AS users
FROM events_daily
GROUP BY event_date, app_version
ORDER BY event_date, app_version;

-- name: top_issues_newest_release
-- The ten biggest issues of the newest app version (by version number), with affected users.
SELECT issue, level, uniqExactMerge(events) AS events, uniqExactMerge(users) AS users
FROM issues_by_release
WHERE app_version = (
    SELECT app_version FROM events_daily
    ORDER BY toUInt32OrZero(splitByChar('.', app_version)[1]) * 1000000
           + toUInt32OrZero(splitByChar('.', app_version)[2]) * 1000
           + toUInt32OrZero(splitByChar('.', app_version)[3]) DESC
    LIMIT 1)
GROUP BY issue, level
ORDER BY events DESC, issue
LIMIT 10;

-- name: crash_free_by_ota_update
-- Crash-free sessions and users (%) per app version and OTA update ('' = the embedded bundle).
SELECT app_version, update_id,
       uniqExactMerge(sessions) AS session_count,
       uniqExactMerge(users) AS user_count,
       round(100 * (1 - uniqExactIfMerge(crashed_sessions) / uniqExactMerge(sessions)), 2) AS crash_free_sessions_pct,
       round(100 * (1 - uniqExactIfMerge(crashed_users) / uniqExactMerge(users)), 2) AS crash_free_users_pct
FROM release_health
GROUP BY app_version, update_id
ORDER BY app_version, update_id;

-- name: crash_free_from_health_partials
-- The same figures from the processors' release-health partials: counts add, user hashes unite.
SELECT release_app_version AS app_version, ifNull(release_update_id, '') AS update_id,
       sum(sessions) AS session_count, uniqExactArray(users) AS user_count,
       round(100 * (1 - sum(crashed_sessions) / sum(sessions)), 2) AS crash_free_sessions_pct,
       round(100 * (1 - uniqExactArray(crashed_users) / uniqExactArray(users)), 2) AS crash_free_users_pct
FROM health_partials FINAL
GROUP BY app_version, update_id
ORDER BY app_version, update_id;

-- name: onboarding_funnel
-- Onboarding funnel per device: Home screen, then PlantDetail, then the first plant_watered,
-- each within an hour of the first step. `level` is how far a device got (0 = not started).
SELECT level, count() AS devices
FROM (
    SELECT device_id,
           windowFunnel(3600)(toDateTime(intDiv(timestamp_ms, 1000)),
                              name = '$screen' AND screen = 'Home',
                              name = '$screen' AND screen = 'PlantDetail',
                              name = 'plant_watered') AS level
    FROM events FINAL
    GROUP BY device_id)
GROUP BY level
ORDER BY level;

-- name: p95_app_start_by_device_model
-- Cold app start p95 (ms) per device model.
SELECT device_model, count() AS samples, quantileExact(0.95)(value) AS p95_ms
FROM perf FINAL
WHERE metric = 'app_start_cold'
GROUP BY device_model
ORDER BY device_model;

-- name: p95_screen_load_by_screen_and_release
-- Screen load p95 (ms) per app version and screen, from the screen_load rollup.
SELECT app_version, screen, uniqExactMerge(samples) AS samples,
       quantileExactMerge(0.95)(load_ms) AS p95_ms
FROM screen_load
GROUP BY app_version, screen
ORDER BY app_version, screen;

-- name: notification_open_rate_by_campaign
-- Push open rate per campaign: notifications opened over notifications delivered.
SELECT campaign,
       sumIf(n, stage = 'delivered') AS delivered,
       sumIf(n, stage = 'opened') AS opened,
       round(100 * opened / delivered, 1) AS open_rate_pct
FROM (
    SELECT campaign, stage, uniqExactMerge(notifications) AS n
    FROM notification_funnel
    GROUP BY campaign, stage)
GROUP BY campaign
HAVING delivered > 0
ORDER BY campaign;

-- name: crashes_by_os_and_model
-- Unhandled errors (crashes) and affected users per operating system and device model.
SELECT device_os_name, device_model, count() AS crashes,
       uniqExact(ifNull(user_id, device_id)) AS users
FROM errors FINAL
WHERE handled = 0
GROUP BY device_os_name, device_model
ORDER BY crashes DESC, device_model;

-- name: session_length_by_release
-- Sessions, median session length (ms) and screens per session per app version.
SELECT release_app_version, count() AS sessions,
       quantileExact(0.5)(duration_ms) AS median_ms,
       round(avg(screen_views), 2) AS screens_per_session
FROM sessions FINAL
GROUP BY release_app_version
ORDER BY release_app_version;

-- name: top_screens
-- The most viewed screens, with the devices that viewed them.
SELECT screen, count() AS views, uniqExact(device_id) AS devices
FROM events FINAL
WHERE name = '$screen'
GROUP BY screen
ORDER BY views DESC, screen
LIMIT 10;

-- name: open_issues_by_users
-- Issues still open (new, ongoing or regressed), the most users affected first, with their
-- current state: `issues FINAL` keeps each issue's newest version.
SELECT issue_id, title, status, users_affected, event_count, first_release
FROM issues FINAL
WHERE status IN ('new', 'ongoing', 'regressed')
ORDER BY users_affected DESC, event_count DESC, issue_id
LIMIT 10;

-- name: crash_free_around_deploys
-- For each deploy marker (a build or OTA update published, promoted or rolled back), the
-- project's sessions and crash-free sessions (%) that started in the 24 hours before it and in
-- the 24 hours after it.
SELECT deploy_id, action, deploy_app_version, deploy_update_id, deployed_ms,
       countIf(started_ms < deployed_ms) AS sessions_before,
       round(100 * (1 - countIf(started_ms < deployed_ms AND crashed = 1) / countIf(started_ms < deployed_ms)), 2) AS crash_free_before_pct,
       countIf(started_ms >= deployed_ms) AS sessions_after,
       round(100 * (1 - countIf(started_ms >= deployed_ms AND crashed = 1) / countIf(started_ms >= deployed_ms)), 2) AS crash_free_after_pct
FROM (
    SELECT project, deploy_id, action, release_app_version AS deploy_app_version,
           ifNull(release_update_id, '') AS deploy_update_id, deployed_ms
    FROM deploys FINAL) AS d
ALL INNER JOIN (SELECT project, started_ms, crashed FROM sessions FINAL) AS s USING project
WHERE started_ms >= deployed_ms - 86400000 AND started_ms < deployed_ms + 86400000
GROUP BY deploy_id, action, deploy_app_version, deploy_update_id, deployed_ms
ORDER BY deployed_ms, deploy_id;

-- name: push_delivery_by_campaign
-- Expo push per campaign, from the tickets and receipts app servers forward and the app's own
-- notification events: recipients sent to, accepted by Expo (ticket ok), delivered to APNs or
-- FCM (receipt ok), failed (ticket or receipt error), devices that opened, the delivery and
-- open rates (%), and the mean seconds from a send to its notification's first open.
SELECT project, campaign,
       sum(n_recipients) AS sent,
       sum(n_accepted) AS accepted,
       sum(n_delivered) AS delivered,
       sum(n_failed) AS failed,
       sum(n_opened) AS opened,
       round(100 * delivered / sent, 2) AS delivery_pct,
       if(delivered = 0, 0, round(100 * opened / delivered, 2)) AS open_pct,
       if(countIf(n_opened > 0) = 0, 0,
          round(avgIf((first_open_ms - sent_ms) / 1000, n_opened > 0), 2)) AS seconds_to_open
FROM (
    SELECT project, campaign, notification_id, min(sent_ms) AS sent_ms,
           count() AS n_recipients,
           countIf(ticket_status = 'ok') AS n_accepted,
           countIf(receipt_status = 'ok') AS n_delivered,
           countIf(ticket_status = 'error' OR receipt_status = 'error') AS n_failed
    FROM (
        SELECT project, ifNull(ticket_id, outcome_id) AS ticket_id,
               ifNull(notification_id, '') AS notification_id, ifNull(campaign, '') AS campaign,
               status AS ticket_status, at_ms AS sent_ms
        FROM push FINAL WHERE step = 'ticket') AS t
    ALL LEFT JOIN (
        SELECT project, ifNull(ticket_id, '') AS ticket_id, status AS receipt_status
        FROM push FINAL WHERE step = 'receipt') AS r USING (project, ticket_id)
    GROUP BY project, campaign, notification_id) AS n
ALL LEFT JOIN (
    SELECT project, notification_id, uniqExact(ifNull(device_id, event_id)) AS n_opened,
           min(timestamp_ms) AS first_open_ms
    FROM notifications FINAL WHERE stage = 'opened'
    GROUP BY project, notification_id) AS o USING (project, notification_id)
GROUP BY project, campaign
ORDER BY project, campaign;
