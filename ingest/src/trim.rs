//! Per-field caps on an event, applied before scrubbing and encoding: how many frames,
//! breadcrumbs, spans, tags and fingerprint parts one event keeps, and how long its strings may
//! be. An SDK that sends a 10,000-frame stack or a megabyte tag value gets its event stored, cut
//! the way Sentry's Relay cuts it, and the cut counted on `/metrics`; what the processors build
//! from events (issue titles, session screens, health partials) stays small by construction.

use trellis_schemas::{Breadcrumb, Common, Event, Exception, Frame, Span, Tag};

/// Exceptions of one chain (the outermost are kept).
pub const MAX_EXCEPTIONS: usize = 25;
/// Frames of one stack: the outermost and innermost halves are kept, the middle cut (as Relay
/// does), since the crash site and the entry point both say most.
pub const MAX_FRAMES: usize = 250;
/// Breadcrumbs of one error (the newest are kept, as SDKs do by default).
pub const MAX_BREADCRUMBS: usize = 100;
/// Spans of one transaction (Sentry's own limit).
pub const MAX_SPANS: usize = 1_000;
/// Measurements of one transaction.
pub const MAX_MEASUREMENTS: usize = 100;
/// Tags or attributes of one event.
pub const MAX_TAGS: usize = 200;
/// Parts of an SDK-given fingerprint.
pub const MAX_FINGERPRINT_PARTS: usize = 32;
/// Names, identifiers, versions, tag keys and values, frame fields.
pub const MAX_SHORT_CHARS: usize = 256;
/// Messages, exception values, breadcrumb messages, span descriptions, URLs.
pub const MAX_TEXT_CHARS: usize = 8_192;
/// A breadcrumb's `data` JSON; larger data is replaced by `{}` (cutting JSON would break it).
pub const MAX_BREADCRUMB_DATA_BYTES: usize = 8_192;

/// What was cut from one event, by field group; each is a `field` label of
/// `trellis_ingest_fields_trimmed_total`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Exceptions dropped from chains.
    pub exceptions: u64,
    /// Frames dropped from stacks.
    pub frames: u64,
    /// Breadcrumbs dropped (oldest first), or breadcrumb data replaced.
    pub breadcrumbs: u64,
    /// Spans and measurements dropped.
    pub spans: u64,
    /// Tags, attributes and fingerprint parts dropped.
    pub tags: u64,
    /// Strings cut to their cap.
    pub strings: u64,
}

impl Trimmed {
    /// Each field group and its count, for the metric.
    pub fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("exceptions", self.exceptions),
            ("frames", self.frames),
            ("breadcrumbs", self.breadcrumbs),
            ("spans", self.spans),
            ("tags", self.tags),
            ("strings", self.strings),
        ]
    }

    fn cut(&mut self, s: &mut String, max: usize) {
        if cut(s, max) {
            self.strings += 1;
        }
    }

    fn cut_opt(&mut self, s: &mut Option<String>, max: usize) {
        if let Some(s) = s {
            self.cut(s, max);
        }
    }

    fn tags(&mut self, tags: &mut Vec<Tag>) {
        self.tags += keep_first(tags, MAX_TAGS);
        for t in tags {
            self.cut(&mut t.key, MAX_SHORT_CHARS);
            self.cut(&mut t.value, MAX_SHORT_CHARS);
        }
    }

    fn common(&mut self, c: &mut Common) {
        for s in [
            &mut c.release.platform,
            &mut c.release.app_version,
            &mut c.sdk.name,
            &mut c.sdk.version,
        ] {
            self.cut(s, MAX_SHORT_CHARS);
        }
        for s in [
            &mut c.device_id,
            &mut c.user_id,
            &mut c.session_id,
            &mut c.release.build,
            &mut c.release.runtime_version,
            &mut c.release.update_id,
            &mut c.release.channel,
            &mut c.release.environment,
            &mut c.device.model,
            &mut c.device.os_name,
            &mut c.device.os_version,
            &mut c.device.locale,
            &mut c.device.timezone,
        ] {
            self.cut_opt(s, MAX_SHORT_CHARS);
        }
    }

    fn exception(&mut self, e: &mut Exception) {
        self.cut(&mut e.exception_type, MAX_SHORT_CHARS);
        self.cut_opt(&mut e.value, MAX_TEXT_CHARS);
        self.cut_opt(&mut e.module, MAX_SHORT_CHARS);
        self.cut_opt(&mut e.mechanism, MAX_SHORT_CHARS);
        self.frames += keep_ends(&mut e.frames, MAX_FRAMES);
        for f in &mut e.frames {
            self.frame(f);
        }
    }

    fn frame(&mut self, f: &mut Frame) {
        self.cut_opt(&mut f.function, MAX_SHORT_CHARS);
        self.cut_opt(&mut f.module, MAX_SHORT_CHARS);
        self.cut_opt(&mut f.filename, MAX_SHORT_CHARS);
        self.cut_opt(&mut f.abs_path, MAX_TEXT_CHARS);
    }

    fn breadcrumb(&mut self, b: &mut Breadcrumb) {
        self.cut_opt(&mut b.breadcrumb_type, MAX_SHORT_CHARS);
        self.cut_opt(&mut b.category, MAX_SHORT_CHARS);
        self.cut_opt(&mut b.level, MAX_SHORT_CHARS);
        self.cut_opt(&mut b.message, MAX_TEXT_CHARS);
        if b.data.len() > MAX_BREADCRUMB_DATA_BYTES {
            b.data = "{}".into();
            self.breadcrumbs += 1;
        }
    }

    fn span(&mut self, s: &mut Span) {
        self.cut(&mut s.span_id, MAX_SHORT_CHARS);
        self.cut_opt(&mut s.parent_span_id, MAX_SHORT_CHARS);
        self.cut(&mut s.op, MAX_SHORT_CHARS);
        self.cut_opt(&mut s.description, MAX_TEXT_CHARS);
        self.cut_opt(&mut s.status, MAX_SHORT_CHARS);
    }
}

/// Cuts `event`'s lists and strings to their caps and says what was cut.
pub fn trim(event: &mut Event) -> Trimmed {
    let mut t = Trimmed::default();
    t.common(event.common_mut());
    match event {
        Event::Analytics(a) => {
            t.cut(&mut a.name, MAX_SHORT_CHARS);
            t.cut_opt(&mut a.screen, MAX_SHORT_CHARS);
        }
        Event::Error(e) => {
            t.cut_opt(&mut e.message, MAX_TEXT_CHARS);
            t.cut_opt(&mut e.transaction, MAX_SHORT_CHARS);
            t.exceptions += keep_first(&mut e.exceptions, MAX_EXCEPTIONS);
            for x in &mut e.exceptions {
                t.exception(x);
            }
            t.breadcrumbs += keep_last(&mut e.breadcrumbs, MAX_BREADCRUMBS);
            for b in &mut e.breadcrumbs {
                t.breadcrumb(b);
            }
            t.tags(&mut e.tags);
            t.tags += keep_first(&mut e.fingerprint, MAX_FINGERPRINT_PARTS);
            for part in &mut e.fingerprint {
                t.cut(part, MAX_SHORT_CHARS);
            }
        }
        Event::Performance(p) => {
            t.cut(&mut p.metric, MAX_SHORT_CHARS);
            t.cut(&mut p.unit, MAX_SHORT_CHARS);
            t.cut_opt(&mut p.screen, MAX_SHORT_CHARS);
            t.tags(&mut p.attributes);
        }
        Event::Transaction(x) => {
            t.cut(&mut x.name, MAX_SHORT_CHARS);
            t.cut_opt(&mut x.op, MAX_SHORT_CHARS);
            t.cut(&mut x.trace_id, MAX_SHORT_CHARS);
            t.cut(&mut x.span_id, MAX_SHORT_CHARS);
            t.cut_opt(&mut x.status, MAX_SHORT_CHARS);
            t.spans += keep_first(&mut x.spans, MAX_SPANS);
            for s in &mut x.spans {
                t.span(s);
            }
            t.spans += keep_first(&mut x.measurements, MAX_MEASUREMENTS);
            for m in &mut x.measurements {
                t.cut(&mut m.name, MAX_SHORT_CHARS);
                t.cut_opt(&mut m.unit, MAX_SHORT_CHARS);
            }
            t.tags(&mut x.tags);
        }
        Event::Session(_) => {}
        Event::Notification(n) => {
            t.cut(&mut n.notification_id, MAX_SHORT_CHARS);
            t.cut_opt(&mut n.campaign, MAX_SHORT_CHARS);
            t.cut_opt(&mut n.deep_link, MAX_TEXT_CHARS);
            t.cut_opt(&mut n.provider, MAX_SHORT_CHARS);
            t.cut_opt(&mut n.error_code, MAX_SHORT_CHARS);
        }
    }
    t
}

/// Cuts `s` to at most `max` characters, the last of them `…`; whether it was cut.
fn cut(s: &mut String, max: usize) -> bool {
    // At most `max` bytes is at most `max` characters: the common case costs one comparison.
    if s.len() <= max {
        return false;
    }
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if s[at..].chars().nth(1).is_some() => {
            s.truncate(at);
            s.push('…');
            true
        }
        _ => false,
    }
}

/// Keeps the first `max` elements; how many were dropped.
fn keep_first<T>(list: &mut Vec<T>, max: usize) -> u64 {
    let dropped = list.len().saturating_sub(max);
    list.truncate(max);
    dropped as u64
}

/// Keeps the last `max` elements; how many were dropped.
fn keep_last<T>(list: &mut Vec<T>, max: usize) -> u64 {
    let dropped = list.len().saturating_sub(max);
    list.drain(..dropped);
    dropped as u64
}

/// Keeps the first and last `max / 2` elements, dropping the middle; how many were dropped.
fn keep_ends<T>(list: &mut Vec<T>, max: usize) -> u64 {
    let dropped = list.len().saturating_sub(max);
    if dropped > 0 {
        let head = max / 2;
        list.drain(head..head + dropped);
    }
    dropped as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_schemas::{ErrorEvent, Transaction};

    #[test]
    fn strings_are_cut_on_character_boundaries_and_marked() {
        let mut s = "ü".repeat(300);
        assert!(cut(&mut s, 256));
        assert_eq!(s.chars().count(), 256);
        assert!(s.ends_with("ü…"));
        // 256 two-byte characters are over 256 bytes but within the cap.
        let mut s = "ü".repeat(256);
        assert!(!cut(&mut s, 256));
        assert_eq!(s, "ü".repeat(256));
    }

    #[test]
    fn a_huge_error_keeps_both_ends_of_its_stack_and_its_newest_breadcrumbs() {
        let frames: Vec<Frame> = (0..10_000)
            .map(|i| Frame {
                function: Some(format!("f{i}")),
                ..Frame::default()
            })
            .collect();
        let breadcrumbs: Vec<Breadcrumb> = (0..1_000)
            .map(|i| Breadcrumb {
                timestamp_ms: i,
                data: if i == 999 {
                    format!("{{\"k\":\"{}\"}}", "x".repeat(10_000))
                } else {
                    "{}".into()
                },
                ..Breadcrumb::default()
            })
            .collect();
        let mut event = Event::Error(ErrorEvent {
            message: Some("m".repeat(20_000)),
            exceptions: vec![
                Exception {
                    exception_type: "TypeError".into(),
                    frames,
                    ..Exception::default()
                };
                30
            ],
            breadcrumbs,
            tags: (0..500)
                .map(|i| Tag {
                    key: format!("k{i}"),
                    value: "v".repeat(1_000),
                })
                .collect(),
            fingerprint: vec!["part".into(); 100],
            ..ErrorEvent::default()
        });
        let t = trim(&mut event);
        let Event::Error(e) = &event else {
            unreachable!()
        };
        assert_eq!(e.exceptions.len(), MAX_EXCEPTIONS);
        let stack = &e.exceptions[0].frames;
        assert_eq!(stack.len(), MAX_FRAMES);
        assert_eq!(stack[0].function.as_deref(), Some("f0"));
        assert_eq!(stack[124].function.as_deref(), Some("f124"));
        assert_eq!(stack[125].function.as_deref(), Some("f9875"));
        assert_eq!(stack[249].function.as_deref(), Some("f9999"));
        assert_eq!(e.breadcrumbs.len(), MAX_BREADCRUMBS);
        assert_eq!(e.breadcrumbs[0].timestamp_ms, 900);
        assert_eq!(e.breadcrumbs[99].data, "{}");
        assert_eq!(e.tags.len(), MAX_TAGS);
        assert_eq!(e.fingerprint.len(), MAX_FINGERPRINT_PARTS);
        assert_eq!(e.message.as_ref().unwrap().chars().count(), MAX_TEXT_CHARS);
        assert_eq!(
            t,
            Trimmed {
                exceptions: 5,
                frames: 25 * 9_750,
                breadcrumbs: 900 + 1,
                spans: 0,
                tags: 300 + 68,
                strings: 1 + 200,
            }
        );
        // Trimming again cuts nothing: a replayed event is stored the same.
        assert_eq!(trim(&mut event), Trimmed::default());
    }

    #[test]
    fn a_transaction_keeps_its_first_spans() {
        let mut event = Event::Transaction(Transaction {
            spans: (0..5_000)
                .map(|i| Span {
                    span_id: format!("{i:016x}"),
                    ..Span::default()
                })
                .collect(),
            ..Transaction::default()
        });
        let t = trim(&mut event);
        let Event::Transaction(x) = &event else {
            unreachable!()
        };
        assert_eq!(x.spans.len(), MAX_SPANS);
        assert_eq!(x.spans[999].span_id, format!("{:016x}", 999));
        assert_eq!(t.spans, 4_000);
    }
}
