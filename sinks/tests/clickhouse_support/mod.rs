//! Shared by the ClickHouse sink tests: realistic data from a simulated fleet run through the
//! processors' pure pipeline, publishing it, the real server's HTTP interface, exact-count
//! checks, and a TCP proxy that can cut the sink off from ClickHouse.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use trellis_bus::{Bus, Message};
use trellis_processors::ProcessorConfig;
use trellis_processors::pipeline::{Handled, Pipeline, Rules};
use trellis_processors::sim::{Fleet, FleetSpec};
use trellis_schemas::records::{self, Detection, HealthPartial, IssueRecord, SessionRecord};
use trellis_schemas::{Common, Event, Notification, NotificationStage, avro, topics};
use trellis_sinks::clickhouse::ClickHouseConfig;

pub const PARTITIONS: u32 = 4;

pub fn url() -> String {
    std::env::var("TEST_TRELLIS_CLICKHOUSE_URL").expect(
        "TEST_TRELLIS_CLICKHOUSE_URL is not set: run the suite with scripts/test.sh, which starts ClickHouse",
    )
}

pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000
    )
}

/// The Python that has `chdb` (ClickHouse 26.x in-process), installed by `scripts/services.sh`.
pub fn python() -> String {
    std::env::var("TEST_TRELLIS_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/../target/sdk-venv/bin/python",
            env!("CARGO_MANIFEST_DIR")
        )
    })
}

/// Runs the Python `script` (which has `chdb`, ClickHouse 26.x in-process) on `spec`, written
/// as JSON beside it in `dir`, checks that it ran on a 26.x server and returns what it printed
/// (a JSON object with the server's `version`).
pub fn run_chdb(
    dir: &std::path::Path,
    script: &str,
    spec: &serde_json::Value,
) -> serde_json::Value {
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script_path = dir.join("chdb_script.py");
    std::fs::write(&script_path, script).unwrap();
    let output = std::process::Command::new(python())
        .arg(&script_path)
        .arg(&spec_path)
        .output()
        .expect("the SDK venv's python runs (scripts/services.sh ensure_sdks installs chdb-core)");
    assert!(
        output.status.success(),
        "chdb failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        result["version"].as_str().unwrap().starts_with("26."),
        "{result}"
    );
    result
}

/// Runs `sql` in `database` over HTTP and returns the TabSeparated answer.
pub fn query(database: &str, sql: &str) -> String {
    let mut response = ureq::post(format!("{}/?database={database}", url()))
        .config()
        .http_status_as_error(false)
        .build()
        .send(format!("{sql} FORMAT TabSeparated"))
        .unwrap();
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap();
    assert!(status.is_success(), "ClickHouse refused:\n{sql}\n{body}");
    body
}

/// Runs a statement (no FORMAT clause).
pub fn execute(sql: &str) {
    let mut response = ureq::post(url())
        .config()
        .http_status_as_error(false)
        .build()
        .send(sql)
        .unwrap();
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap();
    assert!(status.is_success(), "ClickHouse refused:\n{sql}\n{body}");
}

pub fn count(database: &str, sql: &str) -> u64 {
    query(database, sql).trim().parse().unwrap()
}

pub fn config(database: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url(),
        database: database.to_string(),
        group: unique("chsink"),
        batch_rows: 700,
        batch_age: Duration::from_millis(200),
        retry_initial_backoff: Duration::from_millis(50),
        retry_max_backoff: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        // The fixtures carry fixed times, some decades old: retention is tested on its own.
        retention: trellis_sinks::retention::Retention::off(),
        ..Default::default()
    }
}

/// What the processors emit for a fleet: deduplicated events, sessions, partials and every
/// version of every issue, plus notification lifecycles the fleet does not simulate (sent,
/// delivered for two campaigns).
pub struct Data {
    pub events: Vec<Event>,
    pub sessions: Vec<SessionRecord>,
    pub partials: Vec<HealthPartial>,
    pub issues: Vec<IssueRecord>,
    pub detections: Vec<Detection>,
    pub alerts: Vec<trellis_schemas::records::Alert>,
    pub audit: Vec<trellis_schemas::records::AuditEntry>,
    pub deploys: Vec<trellis_schemas::records::Deploy>,
    pub push: Vec<trellis_schemas::records::PushOutcome>,
}

pub fn fleet_data(devices: usize, seed: u64) -> Data {
    let fleet = Fleet::simulate(&FleetSpec {
        devices,
        seed,
        ..Default::default()
    });
    let rules = Rules::from(&ProcessorConfig::default());
    let mut parts = vec![Vec::new(); PARTITIONS as usize];
    for e in fleet.wire() {
        parts[trellis_bus::partition_for(&e.partition_key(), PARTITIONS) as usize].push(e);
    }
    let mut data = Data {
        events: Vec::new(),
        sessions: Vec::new(),
        partials: Vec::new(),
        issues: Vec::new(),
        detections: trellis_processors::detect::sim::sample_detections(),
        alerts: Vec::new(),
        audit: Vec::new(),
        deploys: Vec::new(),
        push: Vec::new(),
    };
    (data.alerts, data.audit) = trellis_alerts::sample_alerts();
    for (partition, events) in parts.into_iter().enumerate() {
        let mut p = Pipeline::new(rules, partition as u32);
        for (offset, e) in events.into_iter().enumerate() {
            if let Handled::Passed(e) = p.handle(e.clone(), offset as u64) {
                data.events.push(*e);
            }
        }
        p.idle(i64::MAX / 4);
        let (sessions, partials) = p.take_closed();
        data.sessions.extend(sessions);
        data.partials.extend(partials);
    }
    data.issues = trellis_processors::issues::replay(data.events.iter().filter_map(|e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    }));
    // Two deploys amid the sessions (at the starts of the sessions a third and two thirds of the
    // way through), each with sessions before and after it; the first marked twice, as a
    // pipeline that resends does.
    let mut starts: Vec<&SessionRecord> = data.sessions.iter().collect();
    starts.sort_by_key(|s| (s.started_ms, &s.session_id));
    for (n, at) in [starts.len() / 3, 2 * starts.len() / 3]
        .into_iter()
        .enumerate()
    {
        let s = starts[at];
        let deploy = trellis_schemas::records::Deploy {
            deploy_id: format!("{:032x}", n + 1),
            project: s.project.clone(),
            action: ["update_published", "rolled_back"][n].into(),
            release: s.release.clone(),
            deployed_ms: s.started_ms,
            actor: Some("eas-workflow".into()),
            link: None,
            message: None,
        };
        if n == 0 {
            data.deploys.push(deploy.clone());
        }
        data.deploys.push(deploy);
    }
    // Notification lifecycles: every simulated opened notification was delivered, plus a
    // second campaign with a known open rate (40 sent, 32 delivered, 8 opened).
    let base = data.events[0].common().clone();
    let step = |id: &str, campaign: &str, stage, n: usize| {
        Event::Notification(Notification {
            common: Common {
                event_id: format!("notif-{campaign}-{id}-{stage:?}-{n}"),
                timestamp_ms: base.timestamp_ms + n as i64,
                ..base.clone()
            },
            stage,
            notification_id: id.to_string(),
            campaign: Some(campaign.to_string()),
            deep_link: None,
            provider: Some("expo".into()),
            error_code: None,
        })
    };
    for n in 0..1000 {
        let id = format!("n-{n}");
        data.events.push(step(
            &id,
            "watering-reminder",
            NotificationStage::Delivered,
            n,
        ));
    }
    for n in 0..40 {
        let id = format!("sale-{n}");
        data.events
            .push(step(&id, "spring-sale", NotificationStage::Sent, n));
        if n < 32 {
            data.events
                .push(step(&id, "spring-sale", NotificationStage::Delivered, n));
        }
        if n < 8 {
            data.events
                .push(step(&id, "spring-sale", NotificationStage::Opened, n));
        }
    }
    // What Expo answered for the spring sale, a minute before the opens: it took 36 of the 40
    // sends (4 tokens were gone), and its receipts said 32 were delivered, 2 devices gone and 2
    // rate-limited (one receipt forwarded twice). A second campaign's 2 sends were delivered
    // and never opened.
    let sent_ms = base.timestamp_ms - 60_000;
    let outcome =
        |step: &str, id: String, ticket: Option<String>, status: &str, error: Option<&str>| {
            trellis_schemas::records::PushOutcome {
                outcome_id: format!("{step}-{id}"),
                project: base.project.clone(),
                step: step.into(),
                ticket_id: ticket,
                notification_id: (step == "ticket").then(|| id.clone()),
                campaign: (step == "ticket").then(|| {
                    if id.starts_with("sale-") {
                        "spring-sale"
                    } else {
                        "guides"
                    }
                    .into()
                }),
                token: (step == "ticket").then(|| format!("ExponentPushToken[{id}]")),
                status: status.into(),
                error: error.map(String::from),
                message: None,
                at_ms: if step == "ticket" {
                    sent_ms
                } else {
                    sent_ms + 900_000
                },
            }
        };
    for n in 0..40 {
        let id = format!("sale-{n}");
        let ticket = format!("ticket-{n}");
        if n >= 36 {
            data.push.push(outcome(
                "ticket",
                id,
                None,
                "error",
                Some("DeviceNotRegistered"),
            ));
            continue;
        }
        data.push.push(outcome(
            "ticket",
            id.clone(),
            Some(ticket.clone()),
            "ok",
            None,
        ));
        let (status, error) = match n {
            0..32 => ("ok", None),
            32 | 33 => ("error", Some("DeviceNotRegistered")),
            _ => ("error", Some("MessageRateExceeded")),
        };
        let receipt = outcome("receipt", id, Some(ticket), status, error);
        if n == 5 {
            data.push.push(receipt.clone());
        }
        data.push.push(receipt);
    }
    for n in 0..2 {
        let id = format!("guide-{n}");
        let ticket = format!("guide-ticket-{n}");
        data.push.push(outcome(
            "ticket",
            id.clone(),
            Some(ticket.clone()),
            "ok",
            None,
        ));
        data.push
            .push(outcome("receipt", id, Some(ticket), "ok", None));
    }
    data
}

impl Data {
    /// Rows each table must hold after deduplication.
    pub fn expected(&self) -> BTreeMap<&'static str, u64> {
        let mut out: BTreeMap<&'static str, BTreeSet<&str>> = BTreeMap::new();
        for e in &self.events {
            out.entry(e.kind().table().name())
                .or_default()
                .insert(&e.common().event_id);
        }
        for s in &self.sessions {
            out.entry("sessions").or_default().insert(&s.session_id);
        }
        for p in &self.partials {
            out.entry("health_partials")
                .or_default()
                .insert(&p.partial_id);
        }
        for i in &self.issues {
            out.entry("issues").or_default().insert(&i.issue_id);
        }
        for d in &self.detections {
            out.entry("detections").or_default().insert(&d.detection_id);
        }
        for a in &self.alerts {
            out.entry("alerts").or_default().insert(&a.alert_id);
        }
        for a in &self.audit {
            out.entry("audit").or_default().insert(&a.audit_id);
        }
        for d in &self.deploys {
            out.entry("deploys").or_default().insert(&d.deploy_id);
        }
        for o in &self.push {
            out.entry("push").or_default().insert(&o.outcome_id);
        }
        out.into_iter()
            .map(|(t, ids)| (t, ids.len() as u64))
            .collect()
    }

    /// The messages for the bus, in the order the processors would publish them.
    pub fn messages(&self, names: &topics::Names) -> Vec<Message> {
        let mut out: Vec<Message> = self
            .events
            .iter()
            .map(|e| {
                Message::new(
                    names.events.as_str(),
                    e.partition_key(),
                    avro::encode(e).unwrap(),
                )
            })
            .collect();
        out.extend(self.sessions.iter().map(|s| {
            Message::new(
                names.sessions.as_str(),
                s.device_id.clone().into_bytes(),
                records::encode(s).unwrap(),
            )
        }));
        out.extend(self.partials.iter().map(|p| {
            Message::new(
                names.aggregates.as_str(),
                p.project.clone().into_bytes(),
                records::encode(p).unwrap(),
            )
        }));
        out.extend(self.issues.iter().map(|i| {
            Message::new(
                names.issues.as_str(),
                format!("{}\0{}", i.project, i.issue_id).into_bytes(),
                records::encode(i).unwrap(),
            )
        }));
        out.extend(self.detections.iter().map(|d| {
            Message::new(
                names.detections.as_str(),
                d.project.clone().into_bytes(),
                records::encode(d).unwrap(),
            )
        }));
        out.extend(self.alerts.iter().map(|a| {
            Message::new(
                names.alerts.as_str(),
                a.project.clone().into_bytes(),
                records::encode(a).unwrap(),
            )
        }));
        out.extend(self.audit.iter().map(|a| {
            Message::new(
                names.audit.as_str(),
                a.project.clone().into_bytes(),
                records::encode(a).unwrap(),
            )
        }));
        out.extend(self.deploys.iter().map(|d| {
            Message::new(
                names.deploys.as_str(),
                d.project.clone().into_bytes(),
                records::encode(d).unwrap(),
            )
        }));
        out.extend(self.push.iter().map(|o| {
            Message::new(
                names.push.as_str(),
                o.project.clone().into_bytes(),
                records::encode(o).unwrap(),
            )
        }));
        out
    }
}

pub async fn create_topics(bus: &Arc<dyn Bus>, names: &topics::Names) {
    for name in names.all() {
        bus.create_topic(name, PARTITIONS).await.unwrap();
    }
}

pub async fn publish(bus: &Arc<dyn Bus>, messages: &[Message]) {
    let producer = bus.producer().unwrap();
    for chunk in messages.chunks(2000) {
        producer.publish(chunk.to_vec()).await.unwrap();
    }
}

/// Rows per table after deduplication (`FINAL`).
pub fn final_counts(database: &str) -> BTreeMap<&'static str, u64> {
    let tables = [
        "events",
        "errors",
        "perf",
        "transactions",
        "session_updates",
        "notifications",
        "sessions",
        "health_partials",
        "issues",
        "detections",
        "alerts",
        "audit",
        "deploys",
        "push",
    ];
    tables
        .into_iter()
        .map(|t| {
            (
                t,
                count(database, &format!("SELECT count() FROM {t} FINAL")),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Waits until every table holds the expected rows (after deduplication).
pub async fn wait_for(database: &str, expected: &BTreeMap<&'static str, u64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let counts = final_counts(database);
        if &counts == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {limit:?}: {counts:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// No row lost, none duplicated: counts after deduplication, distinct keys, and the physical
/// row count once ClickHouse merged the replayed rows away.
pub fn assert_exact(database: &str, expected: &BTreeMap<&'static str, u64>) {
    assert_eq!(&final_counts(database), expected);
    for (table, n) in expected {
        let key = match *table {
            "sessions" => "session_id",
            "health_partials" => "partial_id",
            "issues" => "issue_id",
            "detections" => "detection_id",
            "alerts" => "alert_id",
            "audit" => "audit_id",
            "deploys" => "deploy_id",
            "push" => "outcome_id",
            _ => "event_id",
        };
        assert_eq!(
            count(
                database,
                &format!("SELECT count(DISTINCT {key}) FROM {table}")
            ),
            *n,
            "{table}: distinct keys"
        );
        execute(&format!("OPTIMIZE TABLE {database}.{table} FINAL"));
        assert_eq!(
            count(database, &format!("SELECT count() FROM {table}")),
            *n,
            "{table}: rows after merging"
        );
    }
}

/// A TCP proxy in front of ClickHouse that a test can cut (every connection dropped and new
/// ones closed at once) and restore.
pub struct Proxy {
    pub url: String,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let upstream = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                if flag.load(Ordering::SeqCst) {
                                    return; // both sockets dropped: the connection is cut
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy { url, cut }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// `YYYY-MM-DD` of a time in ms since the epoch (UTC, the test server's time zone).
pub fn date(ms: i64) -> String {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
