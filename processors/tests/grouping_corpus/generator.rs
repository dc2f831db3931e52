//! A seeded generator of labelled error events: React Native (Hermes unsymbolicated, fully
//! minified, and source-mapped) across builds, platforms and OTA updates; Python backend errors
//! across deploys; Kotlin coroutine crashes; with hard negatives, SDK fingerprints and the rules of
//! `fixtures/grouping/project.json` at work.

use std::collections::HashSet;

use trellis_schemas::{Common, ErrorEvent, Exception, Frame, Release, Tag};

use super::Labelled;

#[path = "backend.rs"]
mod backend;
#[path = "react_native.rs"]
mod react_native;

use react_native::JS_RELEASES;

/// SplitMix64: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16)]))
            .collect()
    }
    fn uuid(&mut self) -> String {
        format!(
            "{}-{}-4{}-a{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            self.hex(12)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The world

struct World {
    rng: Rng,
    /// Two EAS updates per JS release.
    updates: Vec<Vec<String>>,
    /// The visible keys of every bug made so far.
    keys: HashSet<String>,
    /// Bugs made so far, to number them.
    bugs: usize,
    out: Vec<Labelled>,
}

/// The generated corpus for `seed`.
pub fn generated_corpus(seed: u64) -> Vec<Labelled> {
    let mut rng = Rng(seed);
    let updates = JS_RELEASES
        .iter()
        .map(|_| vec![rng.uuid(), rng.uuid()])
        .collect();
    let mut world = World {
        rng,
        updates,
        keys: HashSet::new(),
        bugs: 0,
        out: Vec::new(),
    };

    let js_bugs = world.js_bugs(34);
    for bug in &js_bugs {
        let fingerprint_default = world.rng.chance(0.3);
        for _ in 0..world.rng.range(3, 14) {
            let mut event = world.js_event(bug);
            if fingerprint_default && world.rng.chance(0.5) {
                // The SDK sent `{{ default }}` explicitly: the same as no fingerprint.
                event.fingerprint = vec![
                    world
                        .rng
                        .pick(&["{{ default }}", "{{default}}"])
                        .to_string(),
                ];
            }
            world.push(&bug.label, event);
        }
    }
    let py_bugs = world.py_bugs(22);
    for bug in &py_bugs {
        for _ in 0..world.rng.range(3, 14) {
            let event = world.py_event(bug);
            world.push(&bug.label, event);
        }
    }
    world.kotlin(4);
    world.specials();
    world.out
}

impl World {
    fn push(&mut self, label: &str, mut event: ErrorEvent) {
        let n = self.out.len() as i64;
        event.common.event_id = format!("generated-{n}");
        event.common.timestamp_ms = 1_730_000_000_000 + n * 60_000;
        event.common.user_id = Some(format!("user-{}", self.rng.below(300)));
        self.out.push(Labelled {
            label: label.to_owned(),
            source: "generated",
            event,
        });
    }

    /// Registers the keys of a family of bugs; `false` (and nothing registered) when two are
    /// alike or one is like an earlier bug.
    fn register(&mut self, family_keys: Vec<String>) -> bool {
        let distinct = family_keys.iter().collect::<HashSet<_>>().len() == family_keys.len();
        if !distinct || family_keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        self.bugs += family_keys.len();
        self.keys.extend(family_keys);
        true
    }

    /// Grouping decided by fingerprints: the SDK's and the project's rules.
    fn specials(&mut self) {
        // One SDK fingerprint over several stacks and messages.
        let hidden = self.js_bugs(3);
        for i in 0..9 {
            let mut event = self.js_event(&hidden[i % 3]);
            event.fingerprint = vec!["network-timeout".into()];
            self.push("sdk-fingerprint-network-timeout", event);
        }
        // `{{ default }}` with a constant splits one stack by tenant.
        let tenants = self.js_bugs(1).remove(0);
        for i in 0..8 {
            let tenant = ["eu", "us"][i % 2];
            let mut event = self.js_event(&tenants);
            event.fingerprint = vec!["{{ default }}".into(), format!("tenant-{tenant}")];
            self.push(&format!("{}@{tenant}", tenants.label), event);
        }
        // Project rule: the tag `feature=legacy-sync` splits its events off.
        let legacy = self.js_bugs(1).remove(0);
        for i in 0..10 {
            let mut event = self.js_event(&legacy);
            let feature = if i % 2 == 0 { "legacy-sync" } else { "sync" };
            event.tags.push(Tag {
                key: "feature".into(),
                value: feature.into(),
            });
            self.push(&format!("{}+{feature}", legacy.label), event);
        }
        // Project rule: every ChunkLoadError is one issue, whatever its stack.
        for _ in 0..8 {
            let bug = self.js_bugs(1).remove(0);
            let mut event = self.js_event(&bug);
            event.common.release.platform = "web".into();
            let message = render(
                "Loading chunk {n} failed.\n(error: https://app.plantapp.io/_expo/static/js/web/{n}.{hex}.js)",
                &mut self.rng,
            );
            event.exceptions[0].exception_type = "ChunkLoadError".into();
            event.exceptions[0].value = Some(message);
            self.push("rule-chunk-load", event);
        }
        // Project rule: Stripe unreachable from any call site is one issue; another host is not.
        let sites = [
            ("app.services.billing", "charge_card"),
            ("app.services.orders", "refund_order"),
            ("app.tasks.watering", "water_plants"),
        ];
        for i in 0..12 {
            let (module, function) = sites[i % 3];
            let ty = [
                "requests.exceptions.ConnectionError",
                "requests.exceptions.ReadTimeout",
            ][i % 2];
            let event = self.requests_event(module, function, ty, "api.stripe.com");
            self.push("rule-stripe-unreachable", event);
        }
        for _ in 0..6 {
            let event = self.requests_event(
                "app.services.weather",
                "get_forecast",
                "requests.exceptions.ConnectionError",
                "api.weather.io",
            );
            self.push("py-weather-unreachable", event);
        }
    }
}

/// Fills `{n}`, `{code}`, `{uuid}`, `{url}`, `{email}`, `{hex}`, `{date}` and `{word}` with
/// fresh values, each occurrence its own.
fn render(template: &str, rng: &mut Rng) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + len];
        let value = match name {
            "n" => rng.range(1, 99_999).to_string(),
            "code" => rng.pick(&["500", "502", "503", "504"]).to_string(),
            "uuid" => rng.uuid(),
            "hex" => rng.hex(12),
            "url" => format!(
                "https://api.plantapp.io/v2/{}/{}?session={}",
                rng.pick(&["plants", "gardens", "users", "photos"]),
                rng.range(1, 99_999),
                rng.hex(8)
            ),
            "email" => format!(
                "{}.{}@{}",
                rng.pick(&["jane", "omar", "li", "ada"]),
                rng.range(1, 999),
                rng.pick(&["example.com", "mail.io"])
            ),
            "date" => format!(
                "{}/{}/{}",
                rng.range(1, 29),
                rng.range(1, 13),
                rng.range(2020, 2026)
            ),
            "word" => rng.pick(&["abc", "N/A", "", "12a", "none"]).to_string(),
            other => format!("{{{other}}}"),
        };
        out.push_str(&value);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn frame(function: &str, file: &str, line: i64, column: i64, in_app: bool) -> Frame {
    Frame {
        function: Some(function.into()),
        filename: Some(file.into()),
        lineno: (line > 0).then_some(line),
        colno: (column > 0).then_some(column),
        in_app,
        ..Frame::default()
    }
}

fn exception(ty: &str, value: String, frames: Vec<Frame>) -> Exception {
    Exception {
        exception_type: ty.into(),
        value: Some(value),
        mechanism: Some("generic".into()),
        frames,
        ..Exception::default()
    }
}

fn event(project: &str, release: Release, exceptions: Vec<Exception>) -> ErrorEvent {
    ErrorEvent {
        common: Common {
            project: project.into(),
            release,
            ..Common::default()
        },
        exceptions,
        ..ErrorEvent::default()
    }
}
