//! Similarity, candidates, merging and aliases.

use trellis_schemas::{Common, ErrorEvent, Exception, Frame, Level, Release};

use super::*;
use crate::grouping::{Command, Grouper, IgnoreUntil, ReleaseClock};

fn components(frames: &[&str]) -> Vec<String> {
    let mut out = vec!["type:TypeError".to_owned()];
    out.extend(frames.iter().map(|f| format!("frame:{f}")));
    out
}

fn exact_jaccard(a: &[String], b: &[String]) -> f64 {
    let (a, b) = (tokens(a), tokens(b));
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

#[test]
fn signatures_estimate_jaccard() {
    let frames: Vec<String> = (0..40).map(|i| format!("f{i}@screens/S{i}")).collect();
    let refs: Vec<&str> = frames.iter().map(String::as_str).collect();
    let a = components(&refs[..30]);
    let b = components(&refs[10..40]);
    let exact = exact_jaccard(&a, &b);
    let estimate = Signature::of_components(&a)
        .unwrap()
        .similarity(&Signature::of_components(&b).unwrap());
    assert!(
        (exact - estimate).abs() < 0.15,
        "exact {exact}, estimate {estimate}"
    );
    let same = Signature::of_components(&a).unwrap();
    assert_eq!(same.similarity(&same), 1.0);
    assert_eq!(Signature::of_components(&[]), None);
}

#[test]
fn frame_tokens_include_function_and_location_alone() {
    let tokens = tokens(&components(&["handlePress@screens/Cart"]));
    assert!(tokens.contains("fn:handlePress"));
    assert!(tokens.contains("loc:screens/Cart"));
    assert!(tokens.contains("frame:handlePress@screens/Cart"));
}

#[test]
fn candidates_are_the_most_similar_above_the_threshold() {
    let id = |n: u128| IssueId::derive("plants", crate::grouping::FingerprintHash(n));
    let base = [
        "CartScreen@screens/Cart",
        "handlePress@screens/Cart",
        "addItem@store/cart",
        "save@api/cart",
    ];
    let mut index = SimilarityIndex::default();
    // 1: the same frames with one caller more; 2: half shared; 3: unrelated.
    let near = components(&[base[0], base[1], base[2], base[3], "onPress@ui/Button"]);
    let half = components(&[base[0], base[1], "load@screens/Home", "fetch@api/home"]);
    let far = components(&["render@screens/Settings", "toggle@store/settings"]);
    for (n, c) in [(1, &near), (2, &half), (3, &far)] {
        index.insert(id(n), Signature::of_components(c).unwrap());
    }
    assert_eq!(index.len(), 3);
    let new = Signature::of_components(&components(&base)).unwrap();
    let found = index.candidates(&new, None, 0.5, 5);
    assert_eq!(found.first().map(|c| &c.issue), Some(&id(1)), "{found:?}");
    assert!(
        found
            .iter()
            .all(|c| c.issue != id(3) && c.similarity >= 0.5),
        "{found:?}"
    );
    assert!(
        index
            .candidates(&new, Some(&id(1)), 0.5, 5)
            .iter()
            .all(|c| c.issue != id(1))
    );
    assert_eq!(index.candidates(&new, None, 0.0, 1).len(), 1);

    index.remove(&id(1));
    assert!(
        index
            .candidates(&new, None, 0.5, 5)
            .iter()
            .all(|c| c.issue != id(1))
    );
    assert_eq!(index.len(), 2);
}

fn event(id: &str, at: i64, user: &str, function: &str, version: &str) -> ErrorEvent {
    ErrorEvent {
        common: Common {
            event_id: id.into(),
            project: "plants".into(),
            timestamp_ms: at,
            user_id: Some(user.into()),
            release: Release {
                platform: "ios".into(),
                app_version: version.into(),
                ..Release::default()
            },
            ..Common::default()
        },
        level: Level::Error,
        exceptions: vec![Exception {
            exception_type: "TypeError".into(),
            value: Some("x".into()),
            frames: vec![Frame {
                function: Some(function.into()),
                filename: Some("app:///src/screens/Cart.tsx".into()),
                in_app: true,
                ..Frame::default()
            }],
            ..Exception::default()
        }],
        ..ErrorEvent::default()
    }
}

fn issue(events: &[ErrorEvent], clock: &mut ReleaseClock) -> Issue {
    let grouper = Grouper::default();
    let (mut issue, _) = Issue::open(
        &grouper,
        &grouper.fingerprint(&events[0]),
        &events[0],
        clock,
    );
    for event in &events[1..] {
        issue.observe(&grouper, event, clock);
    }
    issue
}

#[test]
fn merging_adds_counts_unites_users_and_aliases_the_merged_issue() {
    let mut clock = ReleaseClock::default();
    let mut a = issue(
        &[
            event("a1", 2_000, "u1", "handlePress", "1.0.0"),
            event("a2", 3_000, "u2", "handlePress", "1.1.0"),
        ],
        &mut clock,
    );
    let b = issue(
        &[
            event("b1", 1_000, "u2", "handleTap", "0.9.0"),
            event("b2", 4_000, "u3", "handleTap", "1.1.0"),
        ],
        &mut clock,
    );
    let (a_id, b_id, b_print) = (a.id.clone(), b.id.clone(), b.fingerprint);
    assert_ne!(a_id, b_id);

    let aliases = merge_issues(&mut a, b).unwrap();
    assert_eq!(
        aliases,
        [Alias {
            from: b_id.clone(),
            to: a_id.clone()
        }]
    );
    assert_eq!(a.event_count, 4);
    assert_eq!(a.users_affected(), 3);
    assert_eq!((a.first_seen_ms, a.last_seen_ms), (1_000, 4_000));
    assert_eq!(a.first_release.app_version, "0.9.0");
    assert_eq!(a.releases["ios 1.1.0"].events, 2);
    assert_eq!(a.releases.len(), 3);
    assert_eq!(a.aliases, std::slice::from_ref(&b_id));
    assert_eq!(a.merged_fingerprints, [b_print]);
    assert_eq!(a.sample_event_id, "a1");

    // A merged issue's own aliases follow it.
    let mut c = issue(
        &[event("c1", 5_000, "u9", "handleSwipe", "1.1.0")],
        &mut clock,
    );
    let c_id = c.id.clone();
    let aliases = merge_issues(&mut c, a).unwrap();
    assert_eq!(aliases.len(), 2);
    assert_eq!(c.aliases, [a_id.clone(), b_id.clone()]);
    assert_eq!(c.event_count, 5);

    let mut table = AliasTable::default();
    table.insert(Alias {
        from: b_id.clone(),
        to: a_id.clone(),
    });
    table.insert(Alias {
        from: a_id.clone(),
        to: c_id.clone(),
    });
    assert_eq!(table.resolve(&b_id), &c_id);
    assert_eq!(table.resolve(&c_id), &c_id);
}

#[test]
fn merging_refuses_other_projects_and_itself() {
    let mut clock = ReleaseClock::default();
    let mut a = issue(&[event("a1", 1, "u1", "handlePress", "1.0.0")], &mut clock);
    let mut other = a.clone();
    other.project = "garden".into();
    assert!(matches!(
        merge_issues(&mut a, other),
        Err(MergeError::OtherProject { .. })
    ));
    let same = a.clone();
    assert_eq!(
        merge_issues(&mut a, same),
        Err(MergeError::SameIssue(a.id.clone()))
    );
}

#[test]
fn merging_into_an_ignored_issue_does_not_count_as_new_events() {
    let mut clock = ReleaseClock::default();
    let mut a = issue(&[event("a1", 1, "u1", "handlePress", "1.0.0")], &mut clock);
    a.apply(&Command::Ignore(IgnoreUntil::Count(2)), 10, &clock)
        .unwrap();
    let b = issue(
        &[
            event("b1", 2, "u2", "handleTap", "1.0.0"),
            event("b2", 3, "u3", "handleTap", "1.0.0"),
        ],
        &mut clock,
    );
    merge_issues(&mut a, b).unwrap();
    let outcome = a.observe(
        &Grouper::default(),
        &event("a2", 20, "u1", "handlePress", "1.0.0"),
        &mut clock,
    );
    assert_eq!(outcome, crate::grouping::Outcome::StillIgnored);
}

#[test]
fn a_new_issue_finds_the_issue_of_the_same_code_under_another_type() {
    let grouper = Grouper::default();
    let mut clock = ReleaseClock::default();
    let mut index = SimilarityIndex::default();
    let frames = |function: &str| {
        ["CartScreen", "handlePress", function]
            .iter()
            .map(|f| Frame {
                function: Some((*f).into()),
                filename: Some("app:///src/screens/Cart.tsx".into()),
                in_app: true,
                ..Frame::default()
            })
            .collect::<Vec<_>>()
    };
    let existing = [
        ("TypeError", "addItem"),
        ("TypeError", "openSettings"),
        ("RangeError", "formatDate"),
    ];
    let mut ids = Vec::new();
    for (i, (ty, function)) in existing.iter().enumerate() {
        let mut e = event(&format!("e{i}"), 1, "u1", "x", "1.0.0");
        e.exceptions[0].exception_type = (*ty).into();
        e.exceptions[0].frames = frames(function);
        let issue = issue(&[e], &mut clock);
        index.insert(
            issue.id.clone(),
            Signature::of_components(&issue.components).unwrap(),
        );
        ids.push(issue.id);
    }
    // The same frames as the first, thrown as another type: a new issue, and a merge candidate.
    let mut new = event("new", 2, "u2", "x", "1.0.0");
    new.exceptions[0].exception_type = "ReferenceError".into();
    new.exceptions[0].frames = frames("addItem");
    let new = issue(&[new], &mut clock);
    assert!(!ids.contains(&new.id));
    let found = index.candidates_for(&grouper, &new);
    assert_eq!(found.first().map(|c| &c.issue), Some(&ids[0]), "{found:?}");
    assert!(found.len() <= grouper.merge_settings().1);
}
