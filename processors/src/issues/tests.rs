//! The issues stage driven record by record: opening, commands, release-aware regression, merge,
//! and state that survives a checkpoint.

use trellis_schemas::{Common, ErrorEvent, Exception, Frame, Level, Release};

use super::*;
use crate::grouping::GroupingConfig;

fn error(id: &str, function: &str, version: &str, build: &str, t: i64) -> ErrorEvent {
    ErrorEvent {
        common: Common {
            event_id: id.into(),
            project: "plants".into(),
            timestamp_ms: t,
            received_at_ms: t,
            device_id: Some(format!("device-{id}")),
            release: Release {
                platform: "ios".into(),
                app_version: version.into(),
                build: Some(build.into()),
                ..Default::default()
            },
            ..Default::default()
        },
        level: Level::Error,
        handled: true,
        exceptions: vec![Exception {
            exception_type: "TypeError".into(),
            value: Some(format!("undefined is not an object ({id})")),
            frames: vec![Frame {
                function: Some(function.into()),
                module: Some("app/screens/PlantDetail".into()),
                lineno: Some(t % 1000),
                in_app: true,
                ..Default::default()
            }],
            ..Default::default()
        }],
        contexts: "{}".into(),
        ..Default::default()
    }
}

struct Harness {
    processor: IssueProcessor,
    factory: IssueFactory,
    offset: u64,
}

impl Harness {
    fn new() -> Self {
        let groupers = Groupers::new(&GroupingConfig::default(), &BTreeMap::new()).unwrap();
        let factory = IssueFactory::new(Arc::new(groupers), topics::Names::default());
        Harness {
            processor: factory.create(0, None).unwrap(),
            factory,
            offset: 0,
        }
    }

    fn feed(&mut self, payload: Vec<u8>) -> Vec<Message> {
        self.feed_with(payload, vec![])
    }

    fn feed_with(&mut self, payload: Vec<u8>, headers: Vec<trellis_bus::Header>) -> Vec<Message> {
        let record = Record {
            topic: topics::GROUPED.into(),
            partition: 0,
            offset: self.offset,
            key: b"plants".to_vec(),
            payload,
            headers,
            timestamp_ms: 0,
        };
        self.offset += 1;
        let mut out = Output::default();
        self.processor.process(&record, &mut out);
        out.messages
    }

    fn error(&mut self, e: ErrorEvent) -> IssueRecord {
        let out = self.feed(avro::encode(&Event::Error(e)).unwrap());
        assert_eq!(out.len(), 1);
        records::decode(&out[0].payload).unwrap()
    }

    fn command(&mut self, c: IssueCommand) -> Result<Vec<IssueRecord>, String> {
        let out = self.feed(records::encode(&c).unwrap());
        if out.iter().any(|m| m.topic == topics::DLQ) {
            return Err(String::from_utf8_lossy(
                out[0]
                    .headers
                    .iter()
                    .find(|h| h.name.ends_with("reason"))
                    .unwrap()
                    .value
                    .as_slice(),
            )
            .into_owned());
        }
        Ok(out
            .iter()
            .map(|m| records::decode(&m.payload).unwrap())
            .collect())
    }
}

fn command(issue: &str, action: &str) -> IssueCommand {
    IssueCommand {
        command_id: "c".into(),
        project: "plants".into(),
        issue_id: issue.into(),
        action: action.into(),
        at_ms: 2_000_000,
        ..Default::default()
    }
}

#[test]
fn the_same_bug_across_builds_is_one_issue_and_another_bug_is_another() {
    let mut h = Harness::new();
    let a = h.error(error("a", "waterPlant", "2.14.0", "1402", 1_000));
    let b = h.error(error("b", "waterPlant", "2.14.1", "1405", 2_017));
    let c = h.error(error("c", "postComment", "2.14.1", "1405", 3_000));
    assert_eq!(a.issue_id, b.issue_id);
    assert_ne!(a.issue_id, c.issue_id);
    assert_eq!(
        (b.event_count, b.users_affected, b.status.as_str()),
        (2, 2, "new")
    );
    assert_eq!(b.releases.len(), 2);
    assert!(b.version > a.version);
}

#[test]
fn resolved_in_next_release_an_old_build_does_not_reopen_it_and_a_newer_one_does() {
    let mut h = Harness::new();
    let issue = h
        .error(error("a", "waterPlant", "2.14.0", "1402", 1_000))
        .issue_id;
    let resolved = h
        .command(command(&issue, "resolve_in_next_release"))
        .unwrap();
    assert_eq!(resolved[0].status, "resolved");
    // The build in the field when it was resolved keeps sending the error: still resolved.
    let old = h.error(error("b", "waterPlant", "2.14.0", "1402", 2_500_000));
    assert_eq!(old.status, "resolved");
    // The next release has the bug again: regressed.
    let newer = h.error(error("c", "waterPlant", "2.15.0", "1410", 2_600_000));
    assert_eq!(newer.status, "regressed");
    // An older build after that changes nothing.
    let older = h.error(error("d", "waterPlant", "2.13.0", "1300", 2_700_000));
    assert_eq!(older.status, "regressed");
}

#[test]
fn ignore_until_n_events_and_bad_commands_are_refused_with_a_reason() {
    let mut h = Harness::new();
    let issue = h
        .error(error("a", "waterPlant", "2.14.0", "1402", 1_000))
        .issue_id;
    let mut ignore = command(&issue, "ignore");
    ignore.until_count = Some(2);
    assert_eq!(h.command(ignore).unwrap()[0].status, "ignored");
    assert_eq!(
        h.error(error("b", "waterPlant", "2.14.0", "1402", 2_000))
            .status,
        "ignored"
    );
    assert_eq!(
        h.error(error("c", "waterPlant", "2.14.0", "1402", 3_000))
            .status,
        "ongoing"
    );
    let err = h.command(command(&issue, "reopen")).unwrap_err();
    assert!(err.contains("not resolved or ignored"), "{err}");
    let err = h.command(command("0000", "resolve")).unwrap_err();
    assert!(err.contains("no issue 0000"), "{err}");
    let err = h.command(command(&issue, "explode")).unwrap_err();
    assert!(err.contains("unknown action"), "{err}");
}

#[test]
fn merged_issues_receive_each_others_events_and_survive_a_checkpoint() {
    let mut h = Harness::new();
    let a = h
        .error(error("a", "waterPlant", "2.14.0", "1402", 1_000))
        .issue_id;
    let b = h
        .error(error("b", "postComment", "2.14.0", "1402", 2_000))
        .issue_id;
    let mut merge = command(&b, "merge");
    merge.into = Some(a.clone());
    let merged = h.command(merge).unwrap();
    assert_eq!(merged.len(), 2);
    assert_eq!(merged[0].status, "merged");
    assert_eq!(merged[0].merged_into.as_deref(), Some(a.as_str()));
    assert_eq!(merged[1].event_count, 2);

    let bytes = h.processor.snapshot().unwrap();
    h.processor = h.factory.create(0, Some(&bytes)).unwrap();
    // An event of the merged issue's fingerprint now counts toward the target.
    let next = h.error(error("c", "postComment", "2.14.0", "1402", 3_000));
    assert_eq!(next.issue_id, a);
    assert_eq!(next.event_count, 3);
}

#[test]
fn an_error_replayed_by_the_process_stage_counts_once_also_after_a_checkpoint() {
    let mut h = Harness::new();
    let from = |h: &mut Harness, e: ErrorEvent, partition: u32, offset: u64| {
        h.feed_with(
            avro::encode(&Event::Error(e)).unwrap(),
            vec![source_header(partition, offset)],
        )
    };
    let a = error("a", "waterPlant", "2.14.0", "1402", 1_000);
    let b = error("b", "waterPlant", "2.14.0", "1402", 2_000);
    assert_eq!(from(&mut h, a.clone(), 0, 0).len(), 1);
    assert_eq!(from(&mut h, b.clone(), 3, 7).len(), 1);
    // The process stage restarted from a checkpoint and emits both again.
    let bytes = h.processor.snapshot().unwrap();
    h.processor = h.factory.create(0, Some(&bytes)).unwrap();
    assert!(from(&mut h, a, 0, 0).is_empty(), "a replay is not counted");
    assert!(from(&mut h, b, 3, 7).is_empty(), "a replay is not counted");
    let c = error("c", "waterPlant", "2.14.0", "1402", 3_000);
    let out = from(&mut h, c, 0, 1);
    let issue: IssueRecord = records::decode(&out[0].payload).unwrap();
    assert_eq!(issue.event_count, 3);
    let mut counted = BTreeMap::new();
    h.processor.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    assert_eq!(counted.get("replayed"), Some(&2));
}

#[test]
fn an_issue_counts_users_within_a_bound_and_keeps_its_hundred_latest_releases() {
    use crate::grouping::{MAX_ISSUE_RELEASES, MAX_ISSUE_USERS};
    let mut h = Harness::new();
    const USERS: u64 = 50_000;
    let mut last = None;
    for i in 0..USERS {
        // Each error from another device and one of 150 builds, the newest builds last.
        let build = (i * 150 / USERS).to_string();
        last = Some(h.error(error(
            &format!("e{i}"),
            "water",
            "1.0.0",
            &build,
            1_000 + i as i64,
        )));
    }
    let record = last.unwrap();
    let issue = h.processor.issue(&record.issue_id).unwrap();
    assert!(issue.users.len() <= MAX_ISSUE_USERS);
    let estimate = record.users_affected as f64;
    assert!(
        (estimate - USERS as f64).abs() < 0.06 * USERS as f64,
        "{estimate} users estimated for {USERS}"
    );
    assert_eq!(record.event_count, USERS as i64);
    assert_eq!(record.releases.len(), MAX_ISSUE_RELEASES);
    assert!(record.releases.contains(&"ios 1.0.0 (149)".to_string()));
    assert!(!record.releases.contains(&"ios 1.0.0 (49)".to_string()));
    let mut counted = BTreeMap::new();
    h.processor.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    assert_eq!(counted.get("issue_releases_forgotten"), Some(&50));
    // A restart from a checkpoint keeps the sampled set and its level.
    let snapshot = h.processor.snapshot().unwrap();
    let restored = h.factory.create(0, Some(&snapshot)).unwrap();
    assert_eq!(
        restored.issue(&record.issue_id).unwrap().users_affected(),
        record.users_affected as u64
    );
}

#[test]
fn a_partition_past_max_issues_forgets_the_issues_seen_least_recently() {
    let groupers = Groupers::new(&GroupingConfig::default(), &BTreeMap::new()).unwrap();
    let factory =
        IssueFactory::new(Arc::new(groupers), topics::Names::default()).with_max_issues(100);
    let mut h = Harness {
        processor: factory.create(0, None).unwrap(),
        factory,
        offset: 0,
    };
    // Function names without digits: grouping reads digits in names as variable.
    let name = |i: i64| {
        format!(
            "water{}{}",
            (b'a' + (i / 26) as u8) as char,
            (b'a' + (i % 26) as u8) as char
        )
    };
    let mut ids = Vec::new();
    for i in 0..101 {
        ids.push(
            h.error(error(&format!("e{i}"), &name(i), "1.0.0", "1", 1_000 + i))
                .issue_id,
        );
    }
    assert_eq!(
        h.processor.state.issues.len(),
        90,
        "the stalest tenth and one are forgotten"
    );
    assert!(h.processor.issue(&ids[10]).is_none());
    assert!(h.processor.issue(&ids[11]).is_some());
    assert!(h.processor.issue(&ids[100]).is_some());
    let mut counted = BTreeMap::new();
    h.processor.drain_counters(&mut |name, n| {
        counted.insert(name, n);
    });
    assert_eq!(counted.get("issues_forgotten"), Some(&11));
    // The first issue comes back as new, with a count from its return on.
    let back = h.error(error("again", &name(0), "1.0.0", "1", 5_000));
    assert_eq!(back.issue_id, ids[0]);
    assert_eq!((back.status.as_str(), back.event_count), ("new", 1));
}

#[test]
fn a_release_announced_by_one_device_does_not_move_the_release_clock() {
    let mut h = Harness::new();
    let start = |h: &mut Harness, device: &str, version: &str, build: &str| {
        let start = SessionStart {
            project: "plants".into(),
            session_id: format!("s-{device}-{version}"),
            device_id: device.into(),
            release: Release {
                platform: "ios".into(),
                app_version: version.into(),
                build: Some(build.into()),
                ..Default::default()
            },
            started_ms: 1_500,
            ..Default::default()
        };
        assert!(h.feed(records::encode(&start).unwrap()).is_empty());
    };
    // The fleet runs 2.14.0; a key holder announces 999999.0 from one device, many times.
    for d in 0..20 {
        start(&mut h, &format!("fleet-{d}"), "2.14.0", "1402");
    }
    for _ in 0..50 {
        start(&mut h, "attacker", "999999.0", "1");
    }
    let clock = &h.processor.state.clocks["plants"];
    let newest: Vec<String> = clock.newest().map(ToString::to_string).collect();
    assert_eq!(newest, ["ios 2.14.0 (1402)"]);
    assert_eq!(clock.candidates(), 1);
    let issue = h
        .error(error("a", "waterPlant", "2.14.0", "1402", 1_000))
        .issue_id;
    h.command(command(&issue, "resolve_in_next_release"))
        .unwrap();
    // The real next release, once five devices run it, has the bug again: regressed. Had the
    // announced release become the newest, no real release would ever reopen the issue.
    for d in 0..5 {
        start(&mut h, &format!("fleet-{d}"), "2.15.0", "1410");
    }
    let newer = h.error(error("c", "waterPlant", "2.15.0", "1410", 2_600_000));
    assert_eq!(newer.status, "regressed");
    let clock = &h.processor.state.clocks["plants"];
    let newest: Vec<String> = clock.newest().map(ToString::to_string).collect();
    assert_eq!(newest, ["ios 2.15.0 (1410)"]);
}

#[test]
fn an_error_named_by_the_process_stage_counts_to_that_issue_without_fingerprinting_again() {
    let mut h = Harness::new();
    let first = h.error(error("a", "waterPlant", "2.14.0", "1402", 1_000));
    // The process stage names each error's issue in `issue_id`. An error it named with an
    // issue this stage holds counts to that issue, whatever its frames say...
    let mut named = error("b", "postComment", "2.14.0", "1402", 2_000);
    named.issue_id = Some(first.issue_id.clone());
    let counted = h.error(named);
    assert_eq!(counted.issue_id, first.issue_id);
    assert_eq!(counted.event_count, 2);
    // ... and one named with an issue it does not hold, or not named, is fingerprinted here:
    // these open the issue of their own frames.
    let mut unknown = error("c", "postComment", "2.14.0", "1402", 3_000);
    unknown.issue_id = Some("0123456789abcdef0123456789abcdef".into());
    let opened = h.error(unknown);
    assert_ne!(opened.issue_id, first.issue_id);
    assert_eq!(opened.event_count, 1);
    let again = h.error(error("d", "postComment", "2.14.0", "1402", 4_000));
    assert_eq!((again.issue_id, again.event_count), (opened.issue_id, 2));
    // A name that is not an issue id is not trusted either.
    let mut garbled = error("e", "waterPlant", "2.14.0", "1402", 5_000);
    garbled.issue_id = Some("not an id".into());
    assert_eq!(h.error(garbled).issue_id, first.issue_id);
}
