//! The `process` stage: dedupe, sessionize and aggregate release health, per input partition.
//!
//! For each record of `events.raw` (keyed by project and device, so a device's events share a
//! partition), [`Pipeline::process`]:
//! 1. decodes the Avro event (a payload that does not decode is dead-lettered with the reason);
//! 2. drops it if its (project, event id) was seen within the dedupe window ([`dedupe`]);
//! 3. advances the partition's watermark: the newest event time seen (capped at the time ingest
//!    received it) minus the allowed lateness;
//! 4. counts it into its session ([`sessions`]), writing an implicit session's id into it;
//! 5. counts it into its release-health window ([`health`]);
//! 6. emits it, deduplicated and enriched, on `events`; then emits the sessions and the windows
//!    the watermark has closed, on `sessions` and `aggregates`.
//!
//! Everything is a function of the partition's records in order: no clock is read (the idle hook
//! gets the time passed in), and ids come from content and offsets, so a replay after a crash
//! emits the same messages.

pub mod config;
pub mod dedupe;
pub mod health;
pub mod sessions;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trellis_bus::{Message, Record, dead_letter};
use trellis_schemas::records::{self, HealthPartial, SessionRecord};
use trellis_schemas::{Event, avro, topics};

pub use config::ProcessorConfig;
use dedupe::{Dedupe, DedupeState, Verdict, event_key};
use health::{Health, HealthState, WindowRules};
use sessions::{SessionRules, Sessions, SessionsState};

use crate::runtime::{Factory, Output, Processor, StateError};

/// The stage name: consumer group suffix, checkpoint directory, metric label.
pub const STAGE: &str = "process";

/// The rules in milliseconds, as the pure logic uses them.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Watermark lag.
    pub lateness_ms: i64,
    /// Dedupe window.
    pub dedupe_window_ms: i64,
    /// Dedupe id limit.
    pub dedupe_max_ids: usize,
    /// Session rules.
    pub sessions: SessionRules,
    /// Window rules.
    pub windows: WindowRules,
}

impl From<&ProcessorConfig> for Rules {
    fn from(c: &ProcessorConfig) -> Self {
        let ms = |d: std::time::Duration| d.as_millis().min(i64::MAX as u128) as i64;
        Rules {
            lateness_ms: ms(c.allowed_lateness),
            dedupe_window_ms: ms(c.dedupe_window),
            dedupe_max_ids: c.dedupe_max_ids,
            sessions: SessionRules {
                gap_ms: ms(c.session_gap),
                max_ms: ms(c.session_max),
                announce_starts: c.detect.enabled && c.detect.velocity,
                max_open: c.max_open_sessions,
            },
            windows: WindowRules {
                window_ms: ms(c.window),
                close_delay_ms: ms(c.session_gap),
                horizon_ms: ms(c.correction_horizon),
            },
        }
    }
}

/// Counters since the last drain.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    invalid: u64,
    duplicate: u64,
    beyond_window: u64,
    late: u64,
}

/// One partition's processor.
pub struct Pipeline {
    rules: Rules,
    topics: Arc<topics::Names>,
    groupers: Arc<crate::issues::Groupers>,
    /// Newest event time seen (capped at receipt), or `i64::MIN`.
    max_event_ms: i64,
    /// The offset after the last record handled.
    next_offset: u64,
    dedupe: Dedupe,
    sessions: Sessions,
    health: Health,
    counters: Counters,
    /// Sessions closed by the current event, not yet counted into windows.
    fresh: Vec<SessionRecord>,
    closed: Vec<SessionRecord>,
    partials: Vec<HealthPartial>,
}

#[derive(Serialize, Deserialize)]
struct State {
    max_event_ms: i64,
    next_offset: u64,
    dedupe: DedupeState,
    sessions: SessionsState,
    health: HealthState,
}

/// What [`Pipeline::handle`] did with one event, for callers that drive it without a bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// The event was new; here it is, enriched.
    Passed(Box<Event>),
    /// The event was a duplicate and was dropped.
    Duplicate,
}

impl Pipeline {
    /// An empty processor for `partition`, writing to the default topics.
    pub fn new(rules: Rules, partition: u32) -> Self {
        Pipeline::with_topics(rules, partition, Arc::new(topics::Names::default()))
    }

    /// An empty processor for `partition`, writing to `topics`.
    pub fn with_topics(rules: Rules, partition: u32, topics: Arc<topics::Names>) -> Self {
        Pipeline {
            rules,
            topics,
            groupers: default_groupers(),
            max_event_ms: i64::MIN,
            next_offset: 0,
            dedupe: Dedupe::new(rules.dedupe_window_ms, rules.dedupe_max_ids),
            sessions: Sessions::new(rules.sessions),
            health: Health::new(rules.windows, partition),
            counters: Counters::default(),
            fresh: Vec::new(),
            closed: Vec::new(),
            partials: Vec::new(),
        }
    }

    /// The same processor, grouping errors with `groupers` instead of the default rules.
    pub fn with_groupers(mut self, groupers: Arc<crate::issues::Groupers>) -> Self {
        self.groupers = groupers;
        self
    }

    /// Restores a processor from [`Processor::snapshot`]'s bytes.
    pub fn restore(rules: Rules, partition: u32, bytes: &[u8]) -> Result<Self, StateError> {
        Pipeline::restore_with_topics(rules, partition, bytes, Arc::new(topics::Names::default()))
    }

    /// Restores a processor that writes to `topics`.
    pub fn restore_with_topics(
        rules: Rules,
        partition: u32,
        bytes: &[u8],
        topics: Arc<topics::Names>,
    ) -> Result<Self, StateError> {
        let state: State = postcard::from_bytes(bytes)?;
        let mut p = Pipeline::with_topics(rules, partition, topics);
        p.max_event_ms = state.max_event_ms;
        p.next_offset = state.next_offset;
        p.dedupe = Dedupe::restore(rules.dedupe_window_ms, rules.dedupe_max_ids, state.dedupe);
        p.sessions = Sessions::restore(rules.sessions, state.sessions);
        p.health = Health::restore(rules.windows, partition, state.health);
        Ok(p)
    }

    /// The partition's watermark.
    pub fn watermark(&self) -> i64 {
        self.max_event_ms.saturating_sub(self.rules.lateness_ms)
    }

    /// Event ids remembered, open sessions and open partials (for sizing and the benchmark).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.dedupe.len(), self.sessions.open(), self.health.open())
    }

    /// Heap bytes per remembered event id.
    pub fn dedupe_bytes_per_id(&self) -> f64 {
        self.dedupe.bytes_per_id()
    }

    /// The pure step: dedupes, sessionizes and aggregates one decoded event that sits at
    /// `offset`. Closed sessions and windows accumulate; take them with [`Pipeline::take_closed`].
    pub fn handle(&mut self, mut event: Event, offset: u64) -> Handled {
        self.next_offset = offset + 1;
        let common = event.common();
        let t = common.timestamp_ms;
        let wm_before = self.watermark();
        match self
            .dedupe
            .check(event_key(&common.project, &common.event_id), t, wm_before)
        {
            Verdict::Duplicate => {
                self.counters.duplicate += 1;
                return Handled::Duplicate;
            }
            Verdict::BeyondWindow => self.counters.beyond_window += 1,
            Verdict::New => {}
        }
        if t < wm_before {
            self.counters.late += 1;
        }
        // A device clock far ahead must not drag the watermark into the future: ingest's receipt
        // time caps it.
        if let Event::Error(error) = &mut event {
            let grouper = self.groupers.for_project(&error.common.project);
            let fingerprint = grouper.fingerprint(error);
            let id = crate::grouping::IssueId::derive(&error.common.project, fingerprint.hash);
            error.issue_id = Some(id.to_string());
        }
        let common = event.common();
        let capped = if common.received_at_ms > 0 {
            t.min(common.received_at_ms)
        } else {
            t
        };
        self.max_event_ms = self.max_event_ms.max(capped);
        let wm = self.watermark();
        self.sessions.on_event(&mut event, t, wm);
        self.sessions.take_evicted(&mut self.fresh, wm);
        if !self.fresh.is_empty() {
            self.count_closed(offset, wm_before);
        }
        self.health.add_event(&event, t, offset, wm);
        if wm > wm_before {
            self.advance(wm_before, wm, offset);
        }
        Handled::Passed(Box::new(event))
    }

    /// Counts the sessions just closed into their windows and queues them for emission.
    fn count_closed(&mut self, offset: u64, wm: i64) {
        for s in self.fresh.drain(..) {
            self.health.add_session(&s, offset, wm);
            self.closed.push(s);
        }
    }

    /// Moves the watermark from `wm_before` to `wm`. Sessions it closes are counted as of
    /// `wm_before`: a session is only known to have ended now, and its window is still open
    /// (a window waits a session gap past its end) unless the session itself was late.
    fn advance(&mut self, wm_before: i64, wm: i64, offset: u64) {
        self.sessions.close_due(wm, &mut self.fresh);
        self.count_closed(offset, wm_before);
        self.health.close_due(wm, &mut self.partials);
        self.dedupe.expire(wm);
    }

    /// Moves the watermark to `now_ms` minus the allowed lateness, if that is ahead: the
    /// partition went quiet, so what waited for more events closes.
    pub fn idle(&mut self, now_ms: i64) {
        let wm_before = self.watermark();
        self.max_event_ms = self.max_event_ms.max(now_ms);
        let wm = self.watermark();
        if wm > wm_before {
            self.advance(wm_before, wm, self.next_offset);
        }
    }

    /// Sessions and release-health partials closed since the last call.
    pub fn take_closed(&mut self) -> (Vec<SessionRecord>, Vec<HealthPartial>) {
        // Session starts are announcements for the issues stage over the bus; callers that
        // drive the pipeline without one have no use for them.
        self.sessions.take_started();
        (
            std::mem::take(&mut self.closed),
            std::mem::take(&mut self.partials),
        )
    }

    fn dead_letter(&self, record: &Record, reason: &str) -> Message {
        let mut letter = dead_letter(record, STAGE, reason);
        letter.topic.clone_from(&self.topics.dlq);
        letter
    }

    fn emit_closed(&mut self, out: &mut Output) {
        // To the issues stage, beside the project's errors, for new-issue velocity.
        for start in self.sessions.take_started() {
            match records::encode(&start) {
                Ok(payload) => out.emit(Message::new(
                    self.topics.grouped.as_str(),
                    crate::issues::grouped_key(&start.project),
                    payload,
                )),
                Err(e) => tracing::error!(error = %e, "A session start does not encode."),
            }
        }
        for s in self.closed.drain(..) {
            match records::encode(&s) {
                Ok(payload) => out.emit(Message::new(
                    self.topics.sessions.as_str(),
                    crate::detect::project_key(&s.project),
                    payload,
                )),
                Err(e) => tracing::error!(error = %e, "A session record does not encode."),
            }
        }
        for p in self.partials.drain(..) {
            match records::encode(&p) {
                Ok(payload) => out.emit(Message::new(
                    self.topics.aggregates.as_str(),
                    crate::detect::project_key(&p.project),
                    payload,
                )),
                Err(e) => tracing::error!(error = %e, "A health partial does not encode."),
            }
        }
    }
}

impl Processor for Pipeline {
    fn process(&mut self, record: &Record, out: &mut Output) {
        let event = match avro::decode(&record.payload) {
            Ok(event) => event,
            Err(e) => {
                self.counters.invalid += 1;
                out.emit(self.dead_letter(record, &e.to_string()));
                return;
            }
        };
        if let Handled::Passed(event) = self.handle(event, record.offset) {
            match avro::encode(&event) {
                Ok(payload) => {
                    if let Event::Error(error) = event.as_ref() {
                        // To the issues stage, keyed so one instance owns a project's issues,
                        // with its source so the stage counts a replayed error once.
                        let mut grouped = Message::new(
                            self.topics.grouped.as_str(),
                            crate::issues::grouped_key(&error.common.project),
                            payload.clone(),
                        );
                        grouped.headers.push(crate::issues::source_header(
                            record.partition,
                            record.offset,
                        ));
                        out.emit(grouped);
                    }
                    out.emit(Message::new(
                        self.topics.events.as_str(),
                        record.key.clone(),
                        payload,
                    ))
                }
                Err(e) => {
                    self.counters.invalid += 1;
                    out.emit(self.dead_letter(record, &e.to_string()));
                }
            }
        }
        self.emit_closed(out);
    }

    fn on_idle(&mut self, now_ms: i64, out: &mut Output) {
        self.idle(now_ms);
        self.emit_closed(out);
    }

    fn drain_counters(&mut self, into: &mut dyn FnMut(&'static str, u64)) {
        let c = std::mem::take(&mut self.counters);
        let s = std::mem::take(&mut self.sessions.counters);
        let h = std::mem::take(&mut self.health.counters);
        let evicted = std::mem::take(&mut self.dedupe.evicted_early);
        for (name, n) in [
            ("invalid", c.invalid),
            ("duplicate", c.duplicate),
            ("dedupe_beyond_window", c.beyond_window),
            ("dedupe_evicted_early", evicted),
            ("late_event", c.late),
            ("aggregate_correction", h.corrections),
            ("aggregate_too_late", h.too_late),
            ("session_update_stale", s.stale_updates),
            ("session_event_after_end", s.events_after_end),
            ("sessions_closed", s.closed),
            ("session_evicted", s.evicted),
            ("partials_emitted", h.emitted),
            ("partial_parts_split", h.split),
            ("perf_series_dropped", h.perf_dropped),
        ] {
            if n > 0 {
                into(name, n);
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(postcard::to_allocvec(&State {
            max_event_ms: self.max_event_ms,
            next_offset: self.next_offset,
            dedupe: self.dedupe.state(),
            sessions: self.sessions.state(),
            health: self.health.state(),
        })?)
    }
}

fn default_groupers() -> Arc<crate::issues::Groupers> {
    static DEFAULT: std::sync::OnceLock<Arc<crate::issues::Groupers>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| Arc::new(crate::issues::Groupers::default_rules()))
        .clone()
}

/// Makes [`Pipeline`]s.
pub struct PipelineFactory {
    rules: Rules,
    topics: Arc<topics::Names>,
    groupers: Arc<crate::issues::Groupers>,
}

impl PipelineFactory {
    /// Pipelines with the rules of `config`, writing to `topics`; the error names a grouping
    /// rule that does not compile.
    pub fn new(config: &ProcessorConfig, topics: topics::Names) -> Result<Self, String> {
        Ok(PipelineFactory {
            rules: Rules::from(config),
            topics: Arc::new(topics),
            groupers: Arc::new(crate::issues::Groupers::new(
                &config.grouping,
                &config.project_grouping,
            )?),
        })
    }
}

impl Factory for PipelineFactory {
    type Processor = Pipeline;

    fn stage(&self) -> &'static str {
        STAGE
    }

    fn create(&self, partition: u32, state: Option<&[u8]>) -> Result<Pipeline, StateError> {
        match state {
            Some(bytes) => {
                Pipeline::restore_with_topics(self.rules, partition, bytes, self.topics.clone())
                    .map(|p| p.with_groupers(self.groupers.clone()))
            }
            None => Ok(
                Pipeline::with_topics(self.rules, partition, self.topics.clone())
                    .with_groupers(self.groupers.clone()),
            ),
        }
    }
}
