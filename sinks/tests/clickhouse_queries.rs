//! Every documented analyst query (`sinks/src/clickhouse/queries.sql`) against data the sink
//! wrote into the real ClickHouse 18.16 server, each answer checked row by row against the same
//! figure computed here from the data; then the schema (migrations for a current server,
//! rollups included), the rows and every query on chDB (ClickHouse 26.x in-process), whose
//! answers must equal 18.16's.

mod clickhouse_support;

/// Per release: sessions, crashed sessions, users, crashed users.
type Health<N, U> = BTreeMap<(String, String), (N, N, BTreeSet<U>, BTreeSet<U>)>;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use clickhouse_support::*;
use trellis_bus::Bus;
use trellis_schemas::records::{IssueRecord, SessionRecord};
use trellis_schemas::tables;
use trellis_schemas::{Event, topics};
use trellis_sinks::clickhouse::migrations::{ServerVersion, migrations};
use trellis_sinks::clickhouse::{self, migrate, queries};

type Table = Vec<Vec<String>>;

fn parse(tsv: &str) -> Table {
    tsv.lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Equal cell by cell; numbers within the rounding of the queries (two decimals).
fn same(actual: &Table, expected: &Table) -> bool {
    actual.len() == expected.len()
        && actual.iter().zip(expected).all(|(a, e)| {
            a.len() == e.len()
                && a.iter()
                    .zip(e)
                    .all(|(x, y)| match (x.parse::<f64>(), y.parse::<f64>()) {
                        (Ok(x), Ok(y)) => (x - y).abs() <= 0.011,
                        _ => x == y,
                    })
        })
}

fn row(cells: &[&dyn ToString]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn user(e: &Event) -> String {
    let c = e.common();
    c.user_id
        .clone()
        .or(c.device_id.clone())
        .unwrap_or_default()
}

fn update(r: &trellis_schemas::Release) -> String {
    r.update_id.clone().unwrap_or_default()
}

/// `quantileExact(level)`: the element at `floor(level * n)` of the sorted samples.
fn quantile_exact(mut values: Vec<f64>, level: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((level * values.len() as f64) as usize).min(values.len() - 1)]
}

fn pct(part: usize, whole: usize) -> f64 {
    100.0 * (1.0 - part as f64 / whole as f64)
}

/// `windowFunnel(window)` as ClickHouse computes it over (second, step) pairs.
fn window_funnel(mut steps: Vec<(i64, usize)>, window: i64, levels: usize) -> usize {
    steps.sort();
    let mut first = vec![-1i64; levels];
    for (t, step) in steps {
        if step == 0 {
            first[0] = t;
        } else if first[step - 1] >= 0 && t <= first[step - 1] + window {
            first[step] = first[step - 1];
            if step + 1 == levels {
                return levels;
            }
        }
    }
    (1..=levels).rev().find(|&l| first[l - 1] >= 0).unwrap_or(0)
}

/// What each query must answer, computed from the data the sink was given.
fn oracle(data: &Data) -> BTreeMap<&'static str, Table> {
    let events = &data.events;
    let mut latest: BTreeMap<&str, &SessionRecord> = BTreeMap::new();
    for s in &data.sessions {
        let e = latest.entry(&s.session_id).or_insert(s);
        if s.version > e.version {
            *e = s;
        }
    }
    let sessions: Vec<&SessionRecord> = latest.into_values().collect();
    let mut out = BTreeMap::new();

    type Sets = (BTreeSet<String>, BTreeSet<String>);
    let mut daily: BTreeMap<(String, String, String, String, &str), Sets> = BTreeMap::new();
    let mut dau: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for e in events {
        let c = e.common();
        let date = date(c.timestamp_ms);
        let key = (
            c.project.clone(),
            date.clone(),
            c.release.app_version.clone(),
            update(&c.release),
            e.kind().as_str(),
        );
        let sets = daily.entry(key).or_default();
        sets.0.insert(c.event_id.clone());
        sets.1.insert(user(e));
        dau.entry((date, c.release.app_version.clone()))
            .or_default()
            .insert(user(e));
    }
    out.insert(
        "events_per_day_by_release",
        daily
            .into_iter()
            .map(|((p, d, v, u, k), (ev, us))| row(&[&p, &d, &v, &u, &k, &ev.len(), &us.len()]))
            .collect(),
    );
    out.insert(
        "daily_active_users_by_release",
        dau.into_iter()
            .map(|((d, v), us)| row(&[&d, &v, &us.len()]))
            .collect(),
    );

    let version = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let newest = events
        .iter()
        .map(|e| &e.common().release.app_version)
        .max_by_key(|v| version(v))
        .unwrap()
        .clone();
    let mut issues: BTreeMap<(String, String), Sets> = BTreeMap::new();
    for e in events {
        let Event::Error(err) = e else { continue };
        if err.common.release.app_version != newest {
            continue;
        }
        let issue = if !err.fingerprint.is_empty() {
            err.fingerprint.join(" ")
        } else if let Some(x) = err.exceptions.first() {
            x.exception_type.clone()
        } else {
            err.message.clone().unwrap_or_default()
        };
        let level = serde_json::to_value(err.level)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        let sets = issues.entry((issue, level)).or_default();
        sets.0.insert(err.common.event_id.clone());
        sets.1.insert(user(e));
    }
    let mut issues: Vec<_> = issues.into_iter().collect();
    issues.sort_by(|a, b| b.1.0.len().cmp(&a.1.0.len()).then(a.0.0.cmp(&b.0.0)));
    out.insert(
        "top_issues_newest_release",
        issues
            .into_iter()
            .take(10)
            .map(|((i, l), (ev, us))| row(&[&i, &l, &ev.len(), &us.len()]))
            .collect(),
    );

    let mut health: Health<usize, String> = BTreeMap::new();
    for s in &sessions {
        let h = health
            .entry((s.release.app_version.clone(), update(&s.release)))
            .or_default();
        let u = s.user_id.clone().unwrap_or(s.device_id.clone());
        h.0 += 1;
        h.2.insert(u.clone());
        if s.crashed {
            h.1 += 1;
            h.3.insert(u);
        }
    }
    out.insert(
        "crash_free_by_ota_update",
        health
            .iter()
            .map(|((v, u), (n, c, us, cu))| {
                row(&[v, u, n, &us.len(), &pct(*c, *n), &pct(cu.len(), us.len())])
            })
            .collect(),
    );
    let mut partials: Health<i64, i64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for p in &data.partials {
        if !seen.insert(&p.partial_id) {
            continue;
        }
        let h = partials
            .entry((p.release.app_version.clone(), update(&p.release)))
            .or_default();
        h.0 += p.sessions;
        h.1 += p.crashed_sessions;
        h.2.extend(&p.users);
        h.3.extend(&p.crashed_users);
    }
    out.insert(
        "crash_free_from_health_partials",
        partials
            .iter()
            .map(|((v, u), (n, c, us, cu))| {
                row(&[
                    v,
                    u,
                    n,
                    &us.len(),
                    &pct(*c as usize, *n as usize),
                    &pct(cu.len(), us.len()),
                ])
            })
            .collect(),
    );

    let mut funnels: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    for e in events {
        let Event::Analytics(a) = e else { continue };
        let steps = funnels
            .entry(a.common.device_id.clone().unwrap_or_default())
            .or_default();
        let t = a.common.timestamp_ms.div_euclid(1000);
        match (a.name.as_str(), a.screen.as_deref()) {
            ("$screen", Some("Home")) => steps.push((t, 0)),
            ("$screen", Some("PlantDetail")) => steps.push((t, 1)),
            ("plant_watered", _) => steps.push((t, 2)),
            _ => {}
        }
    }
    let mut levels: BTreeMap<usize, usize> = BTreeMap::new();
    for steps in funnels.into_values() {
        *levels.entry(window_funnel(steps, 3600, 3)).or_default() += 1;
    }
    out.insert(
        "onboarding_funnel",
        levels.into_iter().map(|(l, n)| row(&[&l, &n])).collect(),
    );

    let mut starts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut loads: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for e in events {
        let Event::Performance(p) = e else { continue };
        if p.metric == "app_start_cold" {
            starts
                .entry(p.common.device.model.clone().unwrap_or_default())
                .or_default()
                .push(p.value);
        } else if p.metric == "screen_load" {
            loads
                .entry((
                    p.common.release.app_version.clone(),
                    p.screen.clone().unwrap_or_default(),
                ))
                .or_default()
                .push(p.value);
        }
    }
    out.insert(
        "p95_app_start_by_device_model",
        starts
            .into_iter()
            .map(|(m, v)| row(&[&m, &v.len(), &quantile_exact(v, 0.95)]))
            .collect(),
    );
    out.insert(
        "p95_screen_load_by_screen_and_release",
        loads
            .into_iter()
            .map(|((a, s), v)| row(&[&a, &s, &v.len(), &quantile_exact(v, 0.95)]))
            .collect(),
    );

    let mut stages: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for e in events {
        let Event::Notification(n) = e else { continue };
        let s = stages
            .entry(n.campaign.clone().unwrap_or_default())
            .or_default();
        match serde_json::to_value(n.stage).unwrap().as_str().unwrap() {
            "delivered" => s.0.insert(n.notification_id.clone()),
            "opened" => s.1.insert(n.notification_id.clone()),
            _ => false,
        };
    }
    out.insert(
        "notification_open_rate_by_campaign",
        stages
            .into_iter()
            .filter(|(_, (d, _))| !d.is_empty())
            .map(|(c, (d, o))| {
                row(&[
                    &c,
                    &d.len(),
                    &o.len(),
                    &(100.0 * o.len() as f64 / d.len() as f64),
                ])
            })
            .collect(),
    );

    let mut crashes: BTreeMap<(String, String), (usize, BTreeSet<String>)> = BTreeMap::new();
    for e in events {
        let Event::Error(err) = e else { continue };
        if err.handled {
            continue;
        }
        let d = &err.common.device;
        let c = crashes
            .entry((
                d.os_name.clone().unwrap_or_default(),
                d.model.clone().unwrap_or_default(),
            ))
            .or_default();
        c.0 += 1;
        c.1.insert(user(e));
    }
    let mut crashes: Vec<_> = crashes.into_iter().collect();
    crashes.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.1.cmp(&b.0.1)));
    out.insert(
        "crashes_by_os_and_model",
        crashes
            .into_iter()
            .map(|((os, m), (n, us))| row(&[&os, &m, &n, &us.len()]))
            .collect(),
    );

    let mut lengths: BTreeMap<String, (Vec<f64>, i64)> = BTreeMap::new();
    for s in &sessions {
        let l = lengths.entry(s.release.app_version.clone()).or_default();
        l.0.push(s.duration_ms as f64);
        l.1 += s.screen_views;
    }
    out.insert(
        "session_length_by_release",
        lengths
            .into_iter()
            .map(|(v, (d, views))| {
                let n = d.len();
                row(&[
                    &v,
                    &n,
                    &quantile_exact(d, 0.5),
                    &((views as f64 / n as f64 * 100.0).round() / 100.0),
                ])
            })
            .collect(),
    );

    let mut screens: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    for e in events {
        let Event::Analytics(a) = e else { continue };
        if a.name == "$screen" {
            let s = screens
                .entry(a.screen.clone().unwrap_or_default())
                .or_default();
            s.0 += 1;
            s.1.insert(a.common.device_id.clone().unwrap_or_default());
        }
    }
    let mut screens: Vec<_> = screens.into_iter().collect();
    screens.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    out.insert(
        "top_screens",
        screens
            .into_iter()
            .take(10)
            .map(|(s, (n, d))| row(&[&s, &n, &d.len()]))
            .collect(),
    );

    let mut issues: BTreeMap<&str, &IssueRecord> = BTreeMap::new();
    for i in &data.issues {
        let e = issues.entry(&i.issue_id).or_insert(i);
        if i.version > e.version {
            *e = i;
        }
    }
    let mut open: Vec<&IssueRecord> = issues
        .into_values()
        .filter(|i| ["new", "ongoing", "regressed"].contains(&i.status.as_str()))
        .collect();
    open.sort_by(|a, b| {
        (b.users_affected, b.event_count)
            .cmp(&(a.users_affected, a.event_count))
            .then(a.issue_id.cmp(&b.issue_id))
    });
    out.insert(
        "open_issues_by_users",
        open.into_iter()
            .take(10)
            .map(|i| {
                row(&[
                    &i.issue_id,
                    &i.title,
                    &i.status,
                    &i.users_affected,
                    &i.event_count,
                    &i.first_release,
                ])
            })
            .collect(),
    );
    // One row per deploy (a resent one counts once): the sessions of its project that started in
    // the 24 hours around it, before and after.
    let mut deploys: BTreeMap<(i64, &str), &trellis_schemas::records::Deploy> = BTreeMap::new();
    for d in &data.deploys {
        deploys.insert((d.deployed_ms, &d.deploy_id), d);
    }
    let day = 86_400_000;
    out.insert(
        "crash_free_around_deploys",
        deploys
            .into_values()
            .map(|d| {
                let near = |before: bool| {
                    sessions
                        .iter()
                        .filter(|s| s.project == d.project)
                        .filter(|s| s.started_ms >= d.deployed_ms - day)
                        .filter(|s| s.started_ms < d.deployed_ms + day)
                        .filter(|s| (s.started_ms < d.deployed_ms) == before)
                        .map(|s| s.crashed)
                        .collect::<Vec<bool>>()
                };
                let (before, after) = (near(true), near(false));
                let crashed = |v: &[bool]| v.iter().filter(|c| **c).count();
                row(&[
                    &d.deploy_id,
                    &d.action,
                    &d.release.app_version,
                    &update(&d.release),
                    &d.deployed_ms,
                    &before.len(),
                    &pct(crashed(&before), before.len()),
                    &after.len(),
                    &pct(crashed(&after), after.len()),
                ])
            })
            .collect(),
    );

    // Push: one outcome per id; per notification its tickets, their receipts and the devices
    // that opened it; per campaign the sums.
    let mut outcomes: BTreeMap<&str, &trellis_schemas::records::PushOutcome> = BTreeMap::new();
    for o in &data.push {
        outcomes.insert(&o.outcome_id, o);
    }
    let receipts: BTreeMap<(&str, &str), &str> = outcomes
        .values()
        .filter(|o| o.step == "receipt")
        .map(|o| {
            (
                (o.project.as_str(), o.ticket_id.as_deref().unwrap()),
                o.status.as_str(),
            )
        })
        .collect();
    #[derive(Default)]
    struct Sent {
        sent_ms: Option<i64>,
        recipients: usize,
        accepted: usize,
        delivered: usize,
        failed: usize,
    }
    let mut notifications: BTreeMap<(String, String, String), Sent> = BTreeMap::new();
    for t in outcomes.values().filter(|o| o.step == "ticket") {
        let n = notifications
            .entry((
                t.project.clone(),
                t.campaign.clone().unwrap_or_default(),
                t.notification_id.clone().unwrap_or_default(),
            ))
            .or_default();
        n.sent_ms = Some(n.sent_ms.map_or(t.at_ms, |s| s.min(t.at_ms)));
        let receipt = t
            .ticket_id
            .as_deref()
            .and_then(|id| receipts.get(&(t.project.as_str(), id)))
            .copied()
            .unwrap_or("");
        n.recipients += 1;
        n.accepted += usize::from(t.status == "ok");
        n.delivered += usize::from(receipt == "ok");
        n.failed += usize::from(t.status == "error" || receipt == "error");
    }
    let mut opens: BTreeMap<(String, String), (BTreeSet<String>, i64)> = BTreeMap::new();
    for e in events {
        let Event::Notification(n) = e else { continue };
        if n.stage != trellis_schemas::NotificationStage::Opened {
            continue;
        }
        let o = opens
            .entry((n.common.project.clone(), n.notification_id.clone()))
            .or_insert((BTreeSet::new(), i64::MAX));
        o.0.insert(
            n.common
                .device_id
                .clone()
                .unwrap_or(n.common.event_id.clone()),
        );
        o.1 = o.1.min(n.common.timestamp_ms);
    }
    type Campaign = (usize, usize, usize, usize, usize, Vec<f64>);
    let mut campaigns: BTreeMap<(String, String), Campaign> = BTreeMap::new();
    for ((project, campaign, id), n) in &notifications {
        let c = campaigns
            .entry((project.clone(), campaign.clone()))
            .or_default();
        c.0 += n.recipients;
        c.1 += n.accepted;
        c.2 += n.delivered;
        c.3 += n.failed;
        if let Some((devices, first)) = opens.get(&(project.clone(), id.clone())) {
            c.4 += devices.len();
            c.5.push((first - n.sent_ms.unwrap()) as f64 / 1000.0);
        }
    }
    out.insert(
        "push_delivery_by_campaign",
        campaigns
            .into_iter()
            .map(
                |((project, campaign), (sent, accepted, delivered, failed, opened, waits))| {
                    let open_pct = if delivered == 0 {
                        0.0
                    } else {
                        100.0 * opened as f64 / delivered as f64
                    };
                    let wait = if waits.is_empty() {
                        0.0
                    } else {
                        waits.iter().sum::<f64>() / waits.len() as f64
                    };
                    row(&[
                        &project,
                        &campaign,
                        &sent,
                        &accepted,
                        &delivered,
                        &failed,
                        &opened,
                        &(100.0 * delivered as f64 / sent as f64),
                        &open_pct,
                        &wait,
                    ])
                },
            )
            .collect(),
    );
    out
}

/// Exports a table's rows as JSONEachRow (64-bit integers unquoted, as current servers read them).
fn export(db: &str, table: &str) -> String {
    let mut response = ureq::post(format!(
        "{}/?database={db}&output_format_json_quote_64bit_integers=0",
        url()
    ))
    .send(format!("SELECT * FROM {table} FINAL FORMAT JSONEachRow"))
    .unwrap();
    response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap()
}

const CHDB_SCRIPT: &str = r#"
import json, sys
from chdb import session
spec = json.load(open(sys.argv[1]))
s = session.Session(spec["path"])
s.query("CREATE DATABASE IF NOT EXISTS " + spec["db"])
for sql in spec["migrations"]:
    s.query(sql)
for table, path in spec["tables"].items():
    rows = open(path).read()
    if rows.strip():
        s.query("INSERT INTO %s.%s FORMAT JSONEachRow\n%s" % (spec["db"], table, rows))
s.query("USE " + spec["db"])
out = {"version": str(s.query("SELECT version()", "TSV")).strip(), "answers": {}}
for name, sql in spec["queries"]:
    out["answers"][name] = str(s.query(sql, "TSV"))
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_analyst_query_answers_exactly_on_18_16_and_the_same_on_chdb() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::embedded::EmbeddedBus::open(&trellis_bus::config::EmbeddedConfig {
            path: dir.path().join("bus.redb"),
            ..Default::default()
        })
        .unwrap(),
    );
    let names = topics::Names::new(&format!("{}.", unique("queries")));
    create_topics(&bus, &names).await;
    let data = fleet_data(400, 21);
    let expected = data.expected();
    publish(&bus, &data.messages(&names)).await;
    let db = unique("ch_queries");
    let config = config(&db);
    migrate(&config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(clickhouse::run(
        bus.clone(),
        names.clone(),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    wait_for(&db, &expected, Duration::from_secs(120)).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let oracle = oracle(&data);
    let queries = queries();
    assert!(queries.len() >= 10, "{} queries documented", queries.len());
    let mut answers = BTreeMap::new();
    for (name, sql) in &queries {
        let answer = query(&db, sql);
        let want = oracle
            .get(name)
            .unwrap_or_else(|| panic!("no expected answer for {name}"));
        assert!(
            !want.is_empty(),
            "{name}: the data gives this query something to find"
        );
        assert!(
            same(&parse(&answer), want),
            "{name} on 18.16:\n{answer}\nexpected:\n{want:?}"
        );
        println!("{name}: {} rows", want.len());
        answers.insert(name.to_string(), answer);
    }

    // The same schema, rows and queries on ClickHouse 26.x (chDB).
    let mut tables = serde_json::Map::new();
    for table in tables::Table::all().map(tables::Table::name) {
        let path = dir.path().join(format!("{table}.jsonl"));
        std::fs::write(&path, export(&db, table)).unwrap();
        tables.insert(table.into(), path.display().to_string().into());
    }
    let modern = ServerVersion {
        major: 26,
        minor: 9,
    };
    let spec = serde_json::json!({
        "path": dir.path().join("chdb").display().to_string(),
        "db": db,
        "migrations": migrations(&db, modern).into_iter().flat_map(|m| m.statements).collect::<Vec<_>>(),
        "tables": tables,
        "queries": queries,
    });
    let result = run_chdb(dir.path(), CHDB_SCRIPT, &spec);
    for (name, answer) in &answers {
        let modern = result["answers"][name].as_str().unwrap();
        assert!(
            same(&parse(modern), &parse(answer)),
            "{name} differs on chDB {}:\n{modern}\n18.16:\n{answer}",
            result["version"]
        );
    }
    execute(&format!("DROP DATABASE {db}"));
}
