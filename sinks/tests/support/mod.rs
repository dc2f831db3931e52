//! Shared by the Parquet sink's integration tests: a simulated fleet run through the processors'
//! pipeline, published to the sink's input topics, and exact counts read back with `query`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use trellis_bus::{Bus, Message};
use trellis_processors::pipeline::{Handled, Rules};
use trellis_processors::sim::{Fleet, FleetSpec};
use trellis_processors::{Pipeline, ProcessorConfig};
use trellis_schemas::records::{
    self, Detection, GuardCommand, HealthPartial, IssueRecord, SessionRecord,
};
use trellis_schemas::tables::Table;
use trellis_schemas::{Event, Kind, avro, topics};
use trellis_sinks::parquet::layout;
use trellis_sinks::query::{OutputFormat, query};

pub const PARTITIONS: u32 = 4;

/// What the processors emit for a fleet: deduplicated events, sessions, health partials, and
/// every version of every issue.
pub struct Outputs {
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

impl Outputs {
    /// Drives the pure pipeline over a fleet of `devices`, partitioned like the bus would.
    pub fn of_fleet(devices: usize, seed: u64) -> Outputs {
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
        let mut out = Outputs {
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
        (out.alerts, out.audit) = trellis_alerts::sample_alerts();
        for (partition, events) in parts.into_iter().enumerate() {
            let mut p = Pipeline::new(rules, partition as u32);
            for (offset, e) in events.into_iter().enumerate() {
                if let Handled::Passed(e) = p.handle(e.clone(), offset as u64) {
                    out.events.push(*e);
                }
            }
            p.idle(i64::MAX / 4);
            let (sessions, partials) = p.take_closed();
            out.sessions.extend(sessions);
            out.partials.extend(partials);
        }
        // The fleet sends no transactions: add some, so every table gets rows.
        let project = out.events[0].common().project.clone();
        out.events.extend(
            (0..50)
                .map(|n| trellis_schemas::sample::event(&project, n, n * 6 + 3))
                .filter(|e| e.kind() == Kind::Transaction),
        );
        // Deploy markers, one per release the fleet runs.
        let mut releases: Vec<&trellis_schemas::Release> =
            out.sessions.iter().map(|s| &s.release).collect();
        releases.sort_by_key(|r| format!("{r:?}"));
        releases.dedup();
        out.deploys = releases
            .into_iter()
            .enumerate()
            .map(|(n, release)| trellis_schemas::records::Deploy {
                deploy_id: format!("{:032x}", n + 1),
                project: project.clone(),
                action: "update_published".into(),
                release: release.clone(),
                deployed_ms: out.sessions[0].started_ms + n as i64 * 60_000,
                ..Default::default()
            })
            .collect();
        // Push outcomes: three Expo tickets and the receipts of two of them.
        out.push = (0..5)
            .map(|n| trellis_schemas::records::PushOutcome {
                outcome_id: format!("{:032x}", n + 1),
                project: project.clone(),
                step: if n < 3 { "ticket" } else { "receipt" }.into(),
                ticket_id: Some(format!("ticket-{}", n % 3)),
                status: "ok".into(),
                at_ms: out.sessions[0].started_ms + n as i64 * 1000,
                ..Default::default()
            })
            .collect();
        out.issues =
            trellis_processors::issues::replay(out.events.iter().filter_map(|e| match e {
                Event::Error(e) => Some(e),
                _ => None,
            }));
        out
    }

    /// Rows each table must hold, exactly.
    pub fn expected(&self) -> BTreeMap<&'static str, u64> {
        let mut counts: BTreeMap<&'static str, u64> =
            Kind::ALL.iter().map(|k| (k.table().name(), 0)).collect();
        for e in &self.events {
            *counts.entry(e.kind().table().name()).or_default() += 1;
        }
        counts.insert("sessions", self.sessions.len() as u64);
        counts.insert("health_partials", self.partials.len() as u64);
        counts.insert("issues", self.issues.len() as u64);
        counts.insert("detections", self.detections.len() as u64);
        counts.insert("alerts", self.alerts.len() as u64);
        counts.insert("audit", self.audit.len() as u64);
        counts.insert("deploys", self.deploys.len() as u64);
        counts.insert("push", self.push.len() as u64);
        counts
    }

    /// Every message for the sink's input topics, plus `garbage` undecodable ones on each of
    /// `events` and `sessions`.
    pub fn messages(&self, names: &topics::Names, garbage: usize) -> Vec<Message> {
        let mut messages = Vec::new();
        for e in &self.events {
            messages.push(Message::new(
                names.events.as_str(),
                e.partition_key(),
                avro::encode(e).unwrap(),
            ));
        }
        for s in &self.sessions {
            let key = format!("{}\0{}", s.project, s.device_id);
            messages.push(Message::new(
                names.sessions.as_str(),
                key,
                records::encode(s).unwrap(),
            ));
        }
        for h in &self.partials {
            messages.push(Message::new(
                names.aggregates.as_str(),
                h.partial_id.clone(),
                records::encode(h).unwrap(),
            ));
        }
        for i in &self.issues {
            messages.push(Message::new(
                names.issues.as_str(),
                format!("{}\0{}", i.project, i.issue_id),
                records::encode(i).unwrap(),
            ));
        }
        for d in &self.detections {
            messages.push(Message::new(
                names.detections.as_str(),
                d.project.clone(),
                records::encode(d).unwrap(),
            ));
        }
        // An admin's command to the alert stage travels on `detections` too: it is no row and
        // no dead letter.
        messages.push(Message::new(
            names.detections.as_str(),
            "plants",
            records::encode(&GuardCommand {
                command_id: "c-1".into(),
                project: "plants".into(),
                action: "ignore".into(),
                update_id: Some("u-1".into()),
                ..GuardCommand::default()
            })
            .unwrap(),
        ));
        for a in &self.alerts {
            messages.push(Message::new(
                names.alerts.as_str(),
                a.project.clone(),
                records::encode(a).unwrap(),
            ));
        }
        for a in &self.audit {
            messages.push(Message::new(
                names.audit.as_str(),
                a.project.clone(),
                records::encode(a).unwrap(),
            ));
        }
        for d in &self.deploys {
            messages.push(Message::new(
                names.deploys.as_str(),
                d.project.clone(),
                records::encode(d).unwrap(),
            ));
        }
        for o in &self.push {
            messages.push(Message::new(
                names.push.as_str(),
                o.project.clone(),
                records::encode(o).unwrap(),
            ));
        }
        for n in 0..garbage {
            for topic in [&names.events, &names.sessions] {
                messages.push(Message::new(
                    topic.as_str(),
                    format!("junk-{n}"),
                    b"\xC3\x01not a payload".to_vec(),
                ));
            }
        }
        messages
    }
}

/// Creates every topic of `names` and publishes `messages`.
pub async fn publish(bus: &Arc<dyn Bus>, names: &topics::Names, messages: Vec<Message>) {
    for name in names.all() {
        bus.create_topic(name, PARTITIONS).await.unwrap();
    }
    let producer = bus.producer().unwrap();
    for chunk in messages.chunks(5000) {
        producer.publish(chunk.to_vec()).await.unwrap();
    }
}

/// A unique name for topics and groups.
pub fn unique(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// One number answered by `sql` (its first column, first row).
pub async fn number(root: &Path, sql: &str) -> u64 {
    let csv = query(root, sql, OutputFormat::Csv).await.unwrap();
    let mut lines = csv.lines();
    lines.next().expect("a header line");
    lines
        .next()
        .unwrap_or_else(|| panic!("no row for {sql}: {csv:?}"))
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}: {csv:?}"))
}

/// The rows every table holds as stored, replayed duplicates included (`stored_<table>`).
pub async fn stored_counts(root: &Path) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for table in counts(root).await.into_keys() {
        out.insert(
            table,
            number(root, &format!("SELECT count(*) FROM stored_{table}")).await,
        );
    }
    out
}

/// The rows of every table, by `query`.
pub async fn counts(root: &Path) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for table in Table::all().map(Table::name) {
        out.insert(
            table,
            number(root, &format!("SELECT count(*) FROM {table}")).await,
        );
    }
    out
}

/// Finished files and temporary files under `root`: for each input (topic, partition), the
/// distinct offset ranges of the finished files; checks that ranges of one partition never
/// overlap (a replay that wrote a different range would).
pub struct Files {
    pub ranges: BTreeMap<(String, u32), BTreeSet<(u64, u64)>>,
    pub files: usize,
    pub temps: usize,
}

pub fn files(root: &Path, names: &topics::Names) -> Files {
    let mut out = Files {
        ranges: BTreeMap::new(),
        files: 0,
        temps: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(entry.path());
            } else if name.ends_with(layout::TEMP_SUFFIX) {
                out.temps += 1;
            } else {
                out.files += 1;
                let found = [
                    &names.events,
                    &names.sessions,
                    &names.aggregates,
                    &names.issues,
                    &names.detections,
                    &names.alerts,
                    &names.audit,
                    &names.deploys,
                    &names.push,
                ]
                .into_iter()
                .flat_map(|t| (0..PARTITIONS).map(move |p| (t, p)))
                .find_map(|(t, p)| {
                    layout::parse_file_name(&name, t, p).map(|r| ((t.clone(), p), r))
                });
                let (key, range) = found.unwrap_or_else(|| panic!("unexpected file {name}"));
                out.ranges.entry(key).or_default().insert(range);
            }
        }
    }
    for (key, ranges) in &out.ranges {
        let ranges: Vec<_> = ranges.iter().collect();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "overlapping files of {key:?}: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    out
}

/// The seed of a test's random fault points: `TRELLIS_FAULT_SEED` repeats a run, otherwise each
/// run draws a new one. Printed, so a failure names the seed that reproduces it.
pub fn fault_seed() -> u64 {
    let seed = std::env::var("TRELLIS_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("fault seed {seed} (TRELLIS_FAULT_SEED={seed} repeats this run)");
    seed
}
