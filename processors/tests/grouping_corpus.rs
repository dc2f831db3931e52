//! The grouping corpus: labelled error events, grouped by `trellis_processors::grouping` and
//! scored by pairwise precision and recall against the labels (each label is one bug).
//!
//! Sources: the Sentry Python SDK captures (envelopes copied from `shared/fixtures/sdk-captures`,
//! parsed here) with redeployed variants; hand-written React Native payloads
//! (`fixtures/grouping/handwritten.json`); and a seeded generator of React Native (Hermes,
//! unsymbolicated and source-mapped, across builds, platforms and OTA updates), Python backend and
//! Kotlin errors, with hard negatives (same exception type and message, another function; same
//! frames, another type). A bug whose app frames are all minified is told apart only by its
//! type, message template and the React Native internals it passed through, so the generator
//! never makes two such bugs alike in all three: no grouper could separate them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use trellis_processors::grouping::{Grouper, GroupingConfig, Issue, IssueId, ReleaseClock};
use trellis_schemas::{Common, ErrorEvent, Exception, Frame, Level, Release, Tag};

#[path = "grouping_corpus/generator.rs"]
mod generator;

use generator::generated_corpus;

const SEED: u64 = 0x7731_5eed;
const MIN_SCORE: f64 = 0.95;

/// One event and the bug it is an occurrence of.
pub struct Labelled {
    /// The bug.
    pub label: String,
    /// Where the event comes from: `sentry`, `handwritten` or `generated`.
    pub source: &'static str,
    /// The event.
    pub event: ErrorEvent,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grouping")
}

fn grouper() -> Grouper {
    let text = std::fs::read_to_string(fixtures().join("project.json")).unwrap();
    let config: GroupingConfig = serde_json::from_str(&text).unwrap();
    Grouper::new(&config).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Scoring

/// Pairwise precision and recall of `predicted` groups against `labels`.
fn score<K: std::hash::Hash + Eq>(labels: &[&str], predicted: &[K]) -> (f64, f64) {
    let pairs = |n: usize| (n * n.saturating_sub(1) / 2) as f64;
    let mut cells: HashMap<(&K, &str), usize> = HashMap::new();
    let mut by_group: HashMap<&K, usize> = HashMap::new();
    let mut by_label: HashMap<&str, usize> = HashMap::new();
    for (label, group) in labels.iter().zip(predicted) {
        *cells.entry((group, label)).or_default() += 1;
        *by_group.entry(group).or_default() += 1;
        *by_label.entry(label).or_default() += 1;
    }
    let together: f64 = cells.values().map(|n| pairs(*n)).sum();
    let grouped: f64 = by_group.values().map(|n| pairs(*n)).sum();
    let same_bug: f64 = by_label.values().map(|n| pairs(*n)).sum();
    let ratio = |a: f64, b: f64| if b == 0.0 { 1.0 } else { a / b };
    (ratio(together, grouped), ratio(together, same_bug))
}

#[test]
fn the_corpus_groups_by_bug() {
    let corpus = corpus();
    let grouper = grouper();
    let started = std::time::Instant::now();
    let prints: Vec<_> = corpus
        .iter()
        .map(|l| grouper.fingerprint(&l.event))
        .collect();
    let elapsed = started.elapsed();
    let groups: Vec<IssueId> = corpus
        .iter()
        .zip(&prints)
        .map(|(l, print)| IssueId::derive(&l.event.common.project, print.hash))
        .collect();
    let labels: Vec<&str> = corpus.iter().map(|l| l.label.as_str()).collect();

    for source in ["sentry", "handwritten", "generated"] {
        let (l, g): (Vec<&str>, Vec<&IssueId>) = corpus
            .iter()
            .zip(&groups)
            .filter(|(c, _)| c.source == source)
            .map(|(c, g)| (c.label.as_str(), g))
            .unzip();
        let bugs = l.iter().collect::<HashSet<_>>().len();
        let (precision, recall) = score(&l, &g);
        println!(
            "{source}: {} events, {bugs} bugs, precision {precision:.4}, recall {recall:.4}",
            l.len()
        );
    }
    let (precision, recall) = score(&labels, &groups);
    let bugs = labels.iter().collect::<HashSet<_>>().len();
    let issues = groups.iter().collect::<HashSet<_>>().len();
    println!(
        "all: {} events, {bugs} bugs, {issues} issues, precision {precision:.4}, recall {recall:.4} \
         ({:.1} µs per fingerprint, unoptimized test build)",
        corpus.len(),
        elapsed.as_secs_f64() * 1e6 / corpus.len() as f64
    );

    if precision < MIN_SCORE || recall < MIN_SCORE {
        explain(&corpus, &groups, &prints);
    }
    assert!(
        precision >= MIN_SCORE,
        "precision {precision:.4} < {MIN_SCORE}"
    );
    assert!(recall >= MIN_SCORE, "recall {recall:.4} < {MIN_SCORE}");
}

/// The corpus must be able to fail a grouper: grouping by exception type alone merges the hard
/// negatives, grouping by raw frames (with lines and bundle paths) splits every bug by build.
#[test]
fn naive_groupings_fail_the_corpus() {
    let corpus = corpus();
    let labels: Vec<&str> = corpus.iter().map(|l| l.label.as_str()).collect();
    let by_type: Vec<String> = corpus
        .iter()
        .map(|l| match l.event.exceptions.first() {
            Some(e) => e.exception_type.clone(),
            None => l.event.message.clone().unwrap_or_default(),
        })
        .collect();
    let (precision, _) = score(&labels, &by_type);
    println!("by type only: precision {precision:.4}");
    assert!(
        precision < MIN_SCORE,
        "by type only: precision {precision:.4}"
    );

    let raw: Vec<String> = corpus
        .iter()
        .map(|l| {
            let mut key = String::new();
            for e in &l.event.exceptions {
                key.push_str(&e.exception_type);
                for f in &e.frames {
                    key.push_str(&format!(
                        "|{:?}{:?}{:?}{:?}",
                        f.function, f.filename, f.lineno, f.colno
                    ));
                }
            }
            key
        })
        .collect();
    let (_, recall) = score(&labels, &raw);
    println!("by raw frames: recall {recall:.4}");
    assert!(recall < MIN_SCORE, "by raw frames: recall {recall:.4}");
}

/// Folds the corpus into issues, one release clock per project.
fn issues<'a>(
    grouper: &Grouper,
    events: impl Iterator<Item = &'a Labelled>,
) -> BTreeMap<IssueId, Issue> {
    let mut clocks: HashMap<String, ReleaseClock> = HashMap::new();
    let mut issues = BTreeMap::new();
    for labelled in events {
        let event = &labelled.event;
        let print = grouper.fingerprint(event);
        let clock = clocks.entry(event.common.project.clone()).or_default();
        let id = IssueId::derive(&event.common.project, print.hash);
        match issues.get_mut(&id) {
            Some(issue) => {
                let _ = Issue::observe(issue, grouper, event, clock);
            }
            None => {
                let (issue, _) = Issue::open(grouper, &print, event, clock);
                issues.insert(id, issue);
            }
        }
    }
    issues
}

/// An issue is a function of its events: the same record whatever order they arrive in (as
/// when two processor instances see them differently), with exact event and user counts.
#[test]
fn issues_do_not_depend_on_arrival_order() {
    let corpus = corpus();
    let grouper = grouper();
    let forward = issues(&grouper, corpus.iter());
    let backward = issues(&grouper, corpus.iter().rev());
    assert_eq!(forward.len(), backward.len());
    for (id, issue) in &forward {
        assert_eq!(
            Some(issue),
            backward.get(id),
            "issue {id} differs by arrival order"
        );
    }

    let total: u64 = forward.values().map(|issue| issue.event_count).sum();
    assert_eq!(total, corpus.len() as u64);
    let mut users: HashMap<IssueId, HashSet<&str>> = HashMap::new();
    for labelled in &corpus {
        let common = &labelled.event.common;
        let id = IssueId::derive(&common.project, grouper.fingerprint(&labelled.event).hash);
        let user = common.user_id.as_deref().or(common.device_id.as_deref());
        users.entry(id).or_default().extend(user);
    }
    for (id, issue) in &forward {
        assert_eq!(issue.users_affected(), users[id].len() as u64, "issue {id}");
    }
}

/// Prints the bugs split over several issues and the issues holding several bugs.
fn explain(
    corpus: &[Labelled],
    groups: &[IssueId],
    prints: &[trellis_processors::grouping::Fingerprint],
) {
    let mut by_label: BTreeMap<&str, BTreeMap<&IssueId, usize>> = BTreeMap::new();
    let mut by_group: BTreeMap<&IssueId, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut components: HashMap<&IssueId, &Vec<String>> = HashMap::new();
    for ((l, g), p) in corpus.iter().zip(groups).zip(prints) {
        *by_label.entry(&l.label).or_default().entry(g).or_default() += 1;
        *by_group.entry(g).or_default().entry(&l.label).or_default() += 1;
        components.insert(g, &p.components);
    }
    for (label, split) in by_label.iter().filter(|(_, s)| s.len() > 1).take(8) {
        println!("SPLIT {label}:");
        for (group, n) in split {
            println!("  {n} × {:?}", components[group]);
        }
    }
    for (group, mixed) in by_group.iter().filter(|(_, m)| m.len() > 1).take(8) {
        println!("MIXED {mixed:?}: {:?}", components[group]);
    }
}

fn corpus() -> Vec<Labelled> {
    let mut corpus = sentry_corpus();
    corpus.extend(handwritten_corpus());
    // `GROUPING_CORPUS_SEED=n` explores other corpora; the default keeps runs reproducible.
    let seed = std::env::var("GROUPING_CORPUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    corpus.extend(generated_corpus(seed));
    corpus
}

// ---------------------------------------------------------------------------------------------
// Sentry SDK captures

/// The items of a Sentry envelope: each item header with its payload.
fn envelope_items(bytes: &[u8]) -> Vec<(Value, &[u8])> {
    let line_end = |b: &[u8]| b.iter().position(|c| *c == b'\n').unwrap_or(b.len());
    let mut rest = &bytes[(line_end(bytes) + 1).min(bytes.len())..];
    let mut items = Vec::new();
    while !rest.is_empty() {
        let end = line_end(rest);
        let (line, after) = (&rest[..end], &rest[(end + 1).min(rest.len())..]);
        if line.iter().all(u8::is_ascii_whitespace) {
            rest = after;
            continue;
        }
        let header: Value = serde_json::from_slice(line).unwrap();
        let (payload, next) = match header["length"].as_u64() {
            Some(len) => {
                let (payload, next) = after.split_at(len as usize);
                (payload, next.strip_prefix(b"\n").unwrap_or(next))
            }
            None => {
                let end = line_end(after);
                (&after[..end], &after[(end + 1).min(after.len())..])
            }
        };
        items.push((header, payload));
        rest = next;
    }
    items
}

/// A Sentry event payload as the model's `ErrorEvent`.
fn sentry_event(v: &Value) -> ErrorEvent {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let release = v["release"].as_str().unwrap_or("");
    let version = release.split_once('@').map_or(release, |(_, v)| v);
    let (app_version, build) = match version.split_once('+') {
        Some((v, b)) => (v.to_owned(), Some(b.to_owned())),
        None => (version.to_owned(), text(&v["dist"])),
    };
    let level = match v["level"].as_str() {
        Some("fatal") => Level::Fatal,
        Some("warning") => Level::Warning,
        Some("info") => Level::Info,
        Some("debug") => Level::Debug,
        _ => Level::Error,
    };
    let message = text(&v["message"])
        .or_else(|| text(&v["message"]["formatted"]))
        .or_else(|| text(&v["logentry"]["formatted"]))
        .or_else(|| text(&v["logentry"]["message"]));
    let values = v["exception"]["values"]
        .as_array()
        .or(v["exception"].as_array());
    // Sentry lists the chain innermost cause first; the model wants the last thrown first.
    let exceptions = values
        .into_iter()
        .flatten()
        .rev()
        .map(|e| Exception {
            exception_type: e["type"].as_str().unwrap_or("").to_owned(),
            value: text(&e["value"]),
            module: text(&e["module"]),
            mechanism: text(&e["mechanism"]["type"]),
            frames: e["stacktrace"]["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| Frame {
                    function: text(&f["function"]),
                    module: text(&f["module"]),
                    filename: text(&f["filename"]),
                    abs_path: text(&f["abs_path"]),
                    lineno: f["lineno"].as_i64(),
                    colno: f["colno"].as_i64(),
                    in_app: f["in_app"].as_bool().unwrap_or(false),
                })
                .collect(),
        })
        .collect();
    let tags = match &v["tags"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| tag(k, v.as_str().unwrap_or("")))
            .collect(),
        Value::Array(pairs) => pairs
            .iter()
            .map(|p| tag(p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")))
            .collect(),
        _ => Vec::new(),
    };
    ErrorEvent {
        common: Common {
            event_id: v["event_id"].as_str().unwrap_or("").to_owned(),
            project: "myapp".into(),
            user_id: text(&v["user"]["id"]),
            release: Release {
                platform: v["platform"].as_str().unwrap_or("").to_owned(),
                app_version,
                build,
                environment: text(&v["environment"]),
                ..Release::default()
            },
            ..Common::default()
        },
        level,
        handled: v["exception"]["values"][0]["mechanism"]["handled"]
            .as_bool()
            .unwrap_or(true),
        message,
        exceptions,
        tags,
        fingerprint: v["fingerprint"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect(),
        transaction: text(&v["transaction"]),
        ..ErrorEvent::default()
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.into(),
        value: value.into(),
    }
}

/// The captured events, each also redeployed: lines moved, another install path, a new release.
fn sentry_corpus() -> Vec<Labelled> {
    let dir = fixtures().join("sentry");
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("labels.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (file, label) in &labels {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let events: Vec<ErrorEvent> = envelope_items(&bytes)
            .into_iter()
            .filter(|(header, _)| header["type"] == "event")
            .map(|(_, payload)| sentry_event(&serde_json::from_slice(payload).unwrap()))
            .collect();
        assert_eq!(events.len(), 1, "{file}: one event per envelope");
        let original = events.into_iter().next().unwrap();
        for deploy in 0..4i64 {
            let mut event = original.clone();
            event.common.event_id = format!("{}-{deploy}", original.common.event_id);
            event.common.release.app_version = format!("1.2.{}", 3 + deploy);
            event.common.user_id = Some(format!("user-{deploy}"));
            for frame in event.exceptions.iter_mut().flat_map(|e| &mut e.frames) {
                frame.lineno = frame.lineno.map(|l| l + deploy * 7);
                if deploy % 2 == 1 {
                    frame.abs_path = frame.abs_path.as_ref().map(|p| {
                        p.replace(
                            "/srv/app/",
                            &format!("/home/deploy/releases/2026112{deploy}/"),
                        )
                    });
                }
            }
            out.push(Labelled {
                label: label.clone(),
                source: "sentry",
                event,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Hand-written React Native payloads

#[derive(Deserialize)]
struct Case {
    label: String,
    release: Release,
    exceptions: Vec<Exception>,
    #[serde(default)]
    message: Option<String>,
}

fn handwritten_corpus() -> Vec<Labelled> {
    let text = std::fs::read_to_string(fixtures().join("handwritten.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    cases
        .into_iter()
        .enumerate()
        .map(|(i, case)| Labelled {
            label: case.label,
            source: "handwritten",
            event: ErrorEvent {
                common: Common {
                    event_id: format!("handwritten-{i}"),
                    project: "plantapp".into(),
                    release: case.release,
                    ..Common::default()
                },
                message: case.message,
                exceptions: case.exceptions,
                ..ErrorEvent::default()
            },
        })
        .collect()
}
