//! The `issues` stage: error events become issues, and admins move issues through their
//! lifecycle.
//!
//! The `process` stage fingerprints every error event it passes on (naming its issue in
//! `issue_id`, which this stage reuses rather than fingerprinting again) and also publishes it on
//! `errors.grouped`, keyed by project, so one instance owns all of a project's issues: their
//! release clock (the order of OTA updates by first sight), their merges and their merge
//! candidates are then local. The admin API publishes [`IssueCommand`]s on the same topic with the
//! same key, so commands and events reach an issue in one order, and a replay after a crash
//! applies them alike.
//!
//! For each error event [`IssueProcessor`] opens or updates the issue of its fingerprint (or of
//! the issue that fingerprint was merged into), and for each command changes the issue's status;
//! both emit the issue's new [`IssueRecord`] on `issues`, versioned by input offset. State
//! (issues, release clocks, aliases) is checkpointed with the input offset like every stage's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trellis_bus::{Message, Record, dead_letter};
use trellis_schemas::records::{self, Detection, IssueCommand, IssueRecord, SessionStart};
use trellis_schemas::{ErrorEvent, Event, avro, topics};

use crate::detect::DetectConfig;
use crate::detect::spike::{SpikeDetector, SpikeState};
use crate::detect::velocity::{VelocityDetector, VelocityState};
use crate::grouping::{
    AliasTable, Command, IgnoreUntil, Issue, IssueId, Outcome, ReleaseClock, ReleaseKey, Signature,
    SimilarityIndex, Status, merge_issues,
};
use crate::pipeline::health::user_hash;
use crate::runtime::{Factory, Output, Processor, StateError};

pub use crate::grouping::Groupers;
use wire::parse_source;
pub use wire::{SOURCE_HEADER, grouped_key, source_header};

mod wire;

/// The stage name.
pub const STAGE: &str = "issues";

#[derive(Default, Serialize, Deserialize)]
struct State {
    issues: BTreeMap<String, Issue>,
    clocks: BTreeMap<String, ReleaseClock>,
    aliases: AliasTable,
    next_offset: u64,
    /// For each `events.raw` partition, the newest source offset counted. The process stage
    /// emits a partition's errors in offset order, and after a crash or a rebalance it replays
    /// from its checkpoint and emits some of them again; an error from at or below this mark is
    /// such a replay and is not counted twice.
    #[serde(default)]
    sources: BTreeMap<u32, u64>,
    /// Per-issue event rates for spike detection.
    #[serde(default)]
    spikes: SpikeState,
    /// Releases' users and issues' spread over them, for new-issue velocity.
    #[serde(default)]
    velocity: VelocityState,
}

/// Most issues one partition of `errors.grouped` keeps by default (`processors.max_issues`).
pub const DEFAULT_MAX_ISSUES: usize = 100_000;

/// The most bytes of fingerprint components an issue record carries (the issue keeps them all).
const MAX_RECORD_COMPONENT_BYTES: usize = 64 * 1024;

/// Counters since the last drain.
#[derive(Debug, Default)]
struct Counters {
    issues_forgotten: u64,
    releases_forgotten: u64,
    new_issues: u64,
    regressions: u64,
    commands: u64,
    commands_rejected: u64,
    invalid: u64,
    replayed: u64,
}

/// One partition's issues.
pub struct IssueProcessor {
    groupers: Arc<Groupers>,
    topics: Arc<topics::Names>,
    state: State,
    /// Similarity indexes per project, rebuilt from the issues on restore.
    similar: HashMap<String, SimilarityIndex>,
    /// Issue spikes, when enabled.
    spikes: Option<SpikeDetector>,
    /// New-issue velocity, when enabled.
    velocity: Option<VelocityDetector>,
    max_issues: usize,
    counters: Counters,
}

fn id_of(text: &str) -> IssueId {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .expect("an issue id is any string")
}

impl IssueProcessor {
    fn new(
        groupers: Arc<Groupers>,
        topics: Arc<topics::Names>,
        state: State,
        spikes: Option<SpikeDetector>,
        velocity: Option<VelocityDetector>,
        max_issues: usize,
    ) -> Self {
        let mut similar: HashMap<String, SimilarityIndex> = HashMap::new();
        for issue in state.issues.values() {
            if let Some(signature) = Signature::of_components(&issue.components) {
                similar
                    .entry(issue.project.clone())
                    .or_default()
                    .insert(issue.id.clone(), signature);
            }
        }
        IssueProcessor {
            groupers,
            topics,
            state,
            similar,
            spikes,
            velocity,
            max_issues,
            counters: Counters::default(),
        }
    }

    /// Keeps the partition within `max_issues`: past it, forgets the tenth of its issues seen
    /// least recently (at once, so the sort is paid once per tenth), with their aliases and
    /// similarity entries. An event of a forgotten issue opens it again as new.
    fn forget_stalest(&mut self) {
        if self.state.issues.len() <= self.max_issues {
            return;
        }
        let keep = self.max_issues - self.max_issues / 10;
        let mut by_age: Vec<(i64, String)> = self
            .state
            .issues
            .iter()
            .map(|(id, issue)| (issue.last_seen_ms, id.clone()))
            .collect();
        by_age.sort_unstable();
        let forget = by_age.len() - keep;
        for (_, id) in by_age.into_iter().take(forget) {
            if let Some(issue) = self.state.issues.remove(&id) {
                self.state.aliases.forget_target(&issue.id);
                if let Some(index) = self.similar.get_mut(&issue.project) {
                    index.remove(&issue.id);
                }
                self.counters.issues_forgotten += 1;
            }
        }
    }

    /// The issue with this id, if this partition holds it.
    pub fn issue(&self, id: &str) -> Option<&Issue> {
        self.state.issues.get(id)
    }

    fn emit(&self, id: &str, version: u64, out: &mut Output) {
        let Some(issue) = self.state.issues.get(id) else {
            return;
        };
        let merged_into = self
            .state
            .aliases
            .resolve(&issue.id)
            .as_str()
            .ne(issue.id.as_str())
            .then(|| self.state.aliases.resolve(&issue.id).to_string());
        let grouper = self.groupers.for_project(&issue.project);
        let candidates = match (&issue.status, self.similar.get(&issue.project)) {
            (Status::New, Some(index)) if merged_into.is_none() => index
                .candidates_for(grouper, issue)
                .into_iter()
                .map(|c| c.issue.to_string())
                .collect(),
            _ => Vec::new(),
        };
        let record = IssueRecord {
            issue_id: issue.id.to_string(),
            project: issue.project.clone(),
            title: issue.title.clone(),
            culprit: issue.culprit.clone(),
            level: format!("{:?}", issue.level).to_ascii_lowercase(),
            status: if merged_into.is_some() {
                "merged".into()
            } else {
                issue.status.name().into()
            },
            status_detail: serde_json::to_string(&issue.status).unwrap_or_default(),
            first_seen_ms: issue.first_seen_ms,
            last_seen_ms: issue.last_seen_ms,
            first_release: issue.first_release.to_string(),
            event_count: issue.event_count as i64,
            users_affected: issue.users_affected() as i64,
            releases: issue.releases.keys().cloned().collect(),
            sample_event_id: issue.sample_event_id.clone(),
            grouping: serde_json::to_value(&issue.grouping)
                .ok()
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Object(m) => m.keys().next().cloned(),
                    _ => None,
                })
                .unwrap_or_default(),
            fingerprint: {
                let mut bytes = 0;
                issue
                    .components
                    .iter()
                    .take_while(|c| {
                        bytes += c.len();
                        bytes <= MAX_RECORD_COMPONENT_BYTES
                    })
                    .cloned()
                    .collect()
            },
            merged_into,
            merge_candidates: candidates,
            version: version as i64,
        };
        match records::encode(&record) {
            Ok(payload) => out.emit(Message::new(
                self.topics.issues.as_str(),
                format!("{}\0{}", record.project, record.issue_id).into_bytes(),
                payload,
            )),
            Err(e) => tracing::error!(error = %e, "An issue record does not encode."),
        }
    }

    fn on_error(&mut self, event: &trellis_schemas::ErrorEvent, offset: u64, out: &mut Output) {
        let project = event.common.project.clone();
        let grouper = self.groupers.for_project(&project);
        // The process stage fingerprinted the event with the same rules and named its issue
        // (`issue_id`); an issue this stage already holds is found by that name. Only opening
        // an issue fingerprints again, for the components it keeps.
        let known = (event.issue_id.as_deref())
            .and_then(IssueId::parse)
            .map(|named| self.state.aliases.resolve(&named).clone())
            .filter(|id| self.state.issues.contains_key(id.as_str()));
        let (id, fingerprint) = match known {
            Some(id) => (id, None),
            None => {
                let fingerprint = grouper.fingerprint(event);
                let derived = IssueId::derive(&project, fingerprint.hash);
                (
                    self.state.aliases.resolve(&derived).clone(),
                    Some(fingerprint),
                )
            }
        };
        let clock = self.state.clocks.entry(project.clone()).or_default();
        match self.state.issues.get_mut(id.as_str()) {
            Some(issue) => {
                let forgotten = issue.releases_forgotten;
                if matches!(
                    issue.observe(grouper, event, clock),
                    Outcome::Regressed { .. }
                ) {
                    self.counters.regressions += 1;
                }
                self.counters.releases_forgotten += issue.releases_forgotten - forgotten;
            }
            None => {
                let fingerprint = fingerprint.unwrap_or_else(|| grouper.fingerprint(event));
                let (issue, _) = Issue::open(grouper, &fingerprint, event, clock);
                if let Some(signature) = Signature::of_components(&issue.components) {
                    self.similar
                        .entry(project.clone())
                        .or_default()
                        .insert(issue.id.clone(), signature);
                }
                self.state.issues.insert(id.to_string(), issue);
                self.counters.new_issues += 1;
                self.forget_stalest();
            }
        }
        self.emit(id.as_str(), offset, out);
        let mut found = Vec::new();
        if let Some(spikes) = self.spikes.as_mut() {
            spikes.observe(
                &mut self.state.spikes,
                &project,
                id.as_str(),
                event.common.timestamp_ms,
                &mut found,
            );
        }
        if let Some(velocity) = self.velocity.as_mut() {
            let common = &event.common;
            let device = common.device_id.as_deref().unwrap_or_default();
            velocity.observe_error(
                &mut self.state.velocity,
                &project,
                id.as_str(),
                &common.release,
                user_hash(common.user_id.as_deref(), device),
                common.timestamp_ms,
                &mut found,
            );
        }
        self.emit_detections(found, out);
    }

    /// A session started: its device runs its release now, and its user uses it.
    fn on_session_start(&mut self, start: &SessionStart, out: &mut Output) {
        let policy = self.groupers.for_project(&start.project).policy();
        let device = crate::grouping::user_hash(&trellis_schemas::Common {
            user_id: start.user_id.clone(),
            device_id: Some(start.device_id.clone()),
            ..Default::default()
        });
        self.state
            .clocks
            .entry(start.project.clone())
            .or_default()
            .observe_from(
                &ReleaseKey::of(&start.release),
                start.started_ms,
                device,
                policy.release_min_devices,
            );
        let Some(velocity) = self.velocity.as_mut() else {
            return;
        };
        let mut found = Vec::new();
        velocity.observe_start(
            &mut self.state.velocity,
            &start.project,
            &start.release,
            user_hash(start.user_id.as_deref(), &start.device_id),
            start.started_ms,
            &mut found,
        );
        self.emit_detections(found, out);
    }

    fn emit_detections(&self, found: Vec<Detection>, out: &mut Output) {
        for d in found {
            match records::encode(&d) {
                Ok(payload) => out.emit(Message::new(
                    self.topics.detections.as_str(),
                    crate::detect::project_key(&d.project),
                    payload,
                )),
                Err(e) => tracing::error!(error = %e, "A detection does not encode."),
            }
        }
    }

    fn on_command(&mut self, command: &IssueCommand, offset: u64) -> Result<Vec<String>, String> {
        let id = self
            .state
            .aliases
            .resolve(&id_of(&command.issue_id))
            .to_string();
        let clock = self
            .state
            .clocks
            .get(&command.project)
            .cloned()
            .unwrap_or_default();
        let lifecycle = match command.action.as_str() {
            "resolve" => Some(Command::Resolve),
            "resolve_in_next_release" => Some(Command::ResolveInNextRelease),
            "resolve_in_release" => {
                let release = command
                    .release
                    .as_ref()
                    .ok_or("resolve_in_release needs a release")?;
                Some(Command::ResolveInRelease(ReleaseKey::of(release)))
            }
            "ignore" => Some(Command::Ignore(
                match (command.until_count, command.until_users, command.until_ms) {
                    (Some(n), None, None) => IgnoreUntil::Count(n.max(0) as u64),
                    (None, Some(n), None) => IgnoreUntil::Users(n.max(0) as u64),
                    (None, None, Some(t)) => IgnoreUntil::UntilMs(t),
                    (None, None, None) => IgnoreUntil::Forever,
                    _ => {
                        return Err(
                            "ignore takes at most one of until_count, until_users, until_ms".into(),
                        );
                    }
                },
            )),
            "reopen" => Some(Command::Reopen),
            "merge" => None,
            other => return Err(format!("unknown action {other:?}")),
        };
        let issue = self
            .state
            .issues
            .get_mut(&id)
            .filter(|i| i.project == command.project)
            .ok_or_else(|| {
                format!(
                    "no issue {} in project {}",
                    command.issue_id, command.project
                )
            })?;
        if let Some(lifecycle) = lifecycle {
            issue
                .apply(&lifecycle, command.at_ms, &clock)
                .map_err(|e| e.to_string())?;
            let _ = offset;
            return Ok(vec![id]);
        }
        // Merge this issue into `into` (both are this partition's: one project, one owner).
        let into = command.into.as_deref().ok_or("merge needs `into`")?;
        let into = self.state.aliases.resolve(&id_of(into)).to_string();
        if into == id {
            return Err("an issue cannot be merged into itself".into());
        }
        let from = self
            .state
            .issues
            .get(&id)
            .cloned()
            .ok_or("no issue to merge")?;
        let target = self
            .state
            .issues
            .get_mut(&into)
            .filter(|i| i.project == command.project)
            .ok_or_else(|| format!("no issue {into} in project {}", command.project))?;
        let aliases = merge_issues(target, from).map_err(|e| e.to_string())?;
        for alias in aliases {
            self.state.aliases.insert(alias);
        }
        if let Some(index) = self.similar.get_mut(&command.project) {
            index.remove(&id_of(&id));
        }
        Ok(vec![id, into])
    }
}

impl Processor for IssueProcessor {
    fn process(&mut self, record: &Record, out: &mut Output) {
        self.state.next_offset = record.offset + 1;
        if let Ok(command) = records::decode::<IssueCommand>(&record.payload) {
            self.counters.commands += 1;
            match self.on_command(&command, record.offset) {
                Ok(changed) => {
                    for id in changed {
                        self.emit(&id, record.offset, out);
                    }
                }
                Err(reason) => {
                    self.counters.commands_rejected += 1;
                    tracing::warn!(issue = %command.issue_id, action = %command.action, %reason,
                        "Issue command refused.");
                    let mut letter = dead_letter(record, STAGE, &reason);
                    letter.topic.clone_from(&self.topics.dlq);
                    out.emit(letter);
                }
            }
            return;
        }
        if records::is::<SessionStart>(&record.payload) {
            match records::decode::<SessionStart>(&record.payload) {
                Ok(start) => self.on_session_start(&start, out),
                Err(e) => {
                    self.counters.invalid += 1;
                    let mut letter = dead_letter(record, STAGE, &e.to_string());
                    letter.topic.clone_from(&self.topics.dlq);
                    out.emit(letter);
                }
            }
            return;
        }
        match avro::decode(&record.payload) {
            Ok(Event::Error(error)) => {
                if let Some((partition, offset)) =
                    record.header(SOURCE_HEADER).and_then(parse_source)
                {
                    if self.state.sources.get(&partition) >= Some(&offset) {
                        self.counters.replayed += 1;
                        return;
                    }
                    self.state.sources.insert(partition, offset);
                }
                self.on_error(&error, record.offset, out)
            }
            Ok(other) => {
                self.counters.invalid += 1;
                let reason = format!("a {} event on the grouped-errors topic", other.kind());
                let mut letter = dead_letter(record, STAGE, &reason);
                letter.topic.clone_from(&self.topics.dlq);
                out.emit(letter);
            }
            Err(e) => {
                self.counters.invalid += 1;
                let mut letter = dead_letter(record, STAGE, &e.to_string());
                letter.topic.clone_from(&self.topics.dlq);
                out.emit(letter);
            }
        }
    }

    fn on_idle(&mut self, now_ms: i64, out: &mut Output) {
        let mut changed = Vec::new();
        for (id, issue) in &mut self.state.issues {
            let policy = *self.groupers.for_project(&issue.project).policy();
            if issue.tick(now_ms, &policy).is_some() {
                changed.push(id.clone());
            }
        }
        for id in changed {
            self.emit(&id, self.state.next_offset, out);
        }
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let c = std::mem::take(&mut self.counters);
        let spikes = self
            .spikes
            .as_mut()
            .map(|s| std::mem::take(&mut s.counters))
            .unwrap_or_default();
        let velocity = self
            .velocity
            .as_mut()
            .map(|v| std::mem::take(&mut v.counters))
            .unwrap_or_default();
        for (name, n) in [
            ("issues_new", c.new_issues),
            ("issues_forgotten", c.issues_forgotten),
            ("issue_releases_forgotten", c.releases_forgotten),
            ("issues_regressed", c.regressions),
            ("issue_commands", c.commands),
            ("issue_commands_refused", c.commands_rejected),
            ("invalid", c.invalid),
            ("replayed", c.replayed),
            ("detections", spikes.emitted + velocity.emitted),
            ("spike_issues_evicted", spikes.evicted),
            ("session_starts", velocity.starts),
            ("velocity_issues_evicted", velocity.evicted),
        ] {
            if n > 0 {
                into(name, n);
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        // Issues hold enums postcard cannot skip through; JSON inside postcard keeps it simple.
        let json = serde_json::to_vec(&self.state)?;
        Ok(postcard::to_allocvec(&json)?)
    }
}

/// The issue records one issues-stage partition emits for `errors`, in order, with the default
/// grouping rules: a new version of an issue per error. For tests, benchmarks and backfills.
pub fn replay<'a>(errors: impl IntoIterator<Item = &'a ErrorEvent>) -> Vec<IssueRecord> {
    let factory = IssueFactory::new(
        Arc::new(Groupers::default_rules()),
        topics::Names::default(),
    );
    let mut processor = factory
        .create(0, None)
        .expect("a processor without state starts");
    let mut out = Output::default();
    for e in errors {
        processor.on_error(e, processor.state.next_offset, &mut out);
        processor.state.next_offset += 1;
    }
    out.messages
        .iter()
        .filter_map(|m| records::decode(&m.payload).ok())
        .collect()
}

/// Makes [`IssueProcessor`]s.
pub struct IssueFactory {
    groupers: Arc<Groupers>,
    topics: Arc<topics::Names>,
    detect: Option<DetectConfig>,
    max_issues: usize,
}

impl IssueFactory {
    /// Issue processors with these grouping rules, writing to `topics`.
    pub fn new(groupers: Arc<Groupers>, topics: topics::Names) -> Self {
        IssueFactory {
            groupers,
            topics: Arc::new(topics),
            detect: None,
            max_issues: DEFAULT_MAX_ISSUES,
        }
    }

    /// The same, keeping at most `max_issues` issues per partition (at least 10).
    pub fn with_max_issues(self, max_issues: usize) -> Self {
        IssueFactory {
            max_issues: max_issues.max(10),
            ..self
        }
    }

    /// The same, also reporting issue spikes (`config.spikes`) and new-issue velocity
    /// (`config.velocity`) on `detections`.
    pub fn with_detection(self, config: DetectConfig) -> Self {
        IssueFactory {
            detect: Some(config),
            ..self
        }
    }
}

impl Factory for IssueFactory {
    type Processor = IssueProcessor;

    fn stage(&self) -> &'static str {
        STAGE
    }

    fn create(&self, _partition: u32, state: Option<&[u8]>) -> Result<IssueProcessor, StateError> {
        let state = match state {
            Some(bytes) => {
                let json: Vec<u8> = postcard::from_bytes(bytes)?;
                serde_json::from_slice(&json)?
            }
            None => State::default(),
        };
        Ok(IssueProcessor::new(
            self.groupers.clone(),
            self.topics.clone(),
            state,
            self.detect
                .clone()
                .filter(|c| c.spikes)
                .map(SpikeDetector::new),
            self.detect
                .clone()
                .filter(|c| c.velocity)
                .map(VelocityDetector::new),
            self.max_issues,
        ))
    }
}

#[cfg(test)]
mod tests;
