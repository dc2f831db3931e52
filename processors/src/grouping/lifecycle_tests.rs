//! Every transition of the issue lifecycle.

use trellis_schemas::{Common, ErrorEvent, Exception, Release};

use super::*;
use crate::grouping::Grouper;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const POLICY: LifecyclePolicy = LifecyclePolicy {
    new_issue_window_ms: 7 * DAY,
    release_min_devices: 5,
};

/// An event of the one bug these tests follow.
struct Ev {
    at: i64,
    platform: &'static str,
    version: &'static str,
    build: Option<&'static str>,
    update: Option<&'static str>,
    user: &'static str,
}

impl Ev {
    fn at(at: i64) -> Self {
        Ev {
            at,
            platform: "android",
            version: "2.3.0",
            build: Some("45"),
            update: None,
            user: "u1",
        }
    }
    fn version(self, version: &'static str, build: &'static str) -> Self {
        Ev {
            version,
            build: Some(build),
            ..self
        }
    }
    fn update(self, update: &'static str) -> Self {
        Ev {
            update: Some(update),
            ..self
        }
    }
    fn platform(self, platform: &'static str) -> Self {
        Ev { platform, ..self }
    }
    fn user(self, user: &'static str) -> Self {
        Ev { user, ..self }
    }
    fn event(&self) -> ErrorEvent {
        ErrorEvent {
            common: Common {
                event_id: format!("e{}", self.at),
                project: "plants".into(),
                timestamp_ms: self.at,
                user_id: Some(self.user.into()),
                release: Release {
                    platform: self.platform.into(),
                    app_version: self.version.into(),
                    build: self.build.map(Into::into),
                    update_id: self.update.map(Into::into),
                    ..Release::default()
                },
                ..Common::default()
            },
            exceptions: vec![Exception {
                exception_type: "TypeError".into(),
                value: Some("x is undefined".into()),
                ..Exception::default()
            }],
            ..ErrorEvent::default()
        }
    }
}

fn grouper() -> Grouper {
    let config = crate::grouping::GroupingConfig {
        new_issue_window: std::time::Duration::from_millis(POLICY.new_issue_window_ms as u64),
        ..Default::default()
    };
    Grouper::new(&config).unwrap()
}

fn open(first: Ev) -> (Issue, ReleaseClock) {
    let grouper = grouper();
    let mut clock = ReleaseClock::default();
    let event = first.event();
    let (issue, _) = Issue::open(&grouper, &grouper.fingerprint(&event), &event, &mut clock);
    (issue, clock)
}

fn observe(issue: &mut Issue, clock: &mut ReleaseClock, ev: Ev) -> Outcome {
    issue.observe(&grouper(), &ev.event(), clock)
}

fn release(version: &str, build: &str) -> ReleaseKey {
    ReleaseKey {
        platform: "android".into(),
        app_version: version.into(),
        build: Some(build.into()),
        update_id: None,
    }
}

#[test]
fn a_new_issue_reports_its_first_release_and_becomes_ongoing_after_the_window() {
    let grouper = grouper();
    assert_eq!(grouper.policy(), &POLICY);
    let mut clock = ReleaseClock::default();
    let event = Ev::at(0).event();
    let (mut issue, outcome) =
        Issue::open(&grouper, &grouper.fingerprint(&event), &event, &mut clock);
    assert_eq!(
        outcome,
        Outcome::NewIssue {
            first_release: release("2.3.0", "45")
        }
    );
    assert!(outcome.changes_status());
    assert_eq!(issue.status, Status::New);

    assert_eq!(observe(&mut issue, &mut clock, Ev::at(DAY)), Outcome::Seen);
    assert_eq!(issue.status, Status::New);
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(7 * DAY)),
        Outcome::BecameOngoing
    );
    assert_eq!(issue.status, Status::Ongoing);
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(8 * DAY)),
        Outcome::Seen
    );
    assert_eq!(issue.event_count, 4);

    let (mut quiet, _) = open(Ev::at(0));
    assert_eq!(quiet.tick(DAY, &POLICY), None);
    assert_eq!(quiet.tick(7 * DAY, &POLICY), Some(Outcome::BecameOngoing));
    assert_eq!(quiet.status, Status::Ongoing);
}

#[test]
fn resolved_now_reopens_on_a_later_event_from_the_same_or_a_newer_release() {
    let (mut issue, mut clock) = open(Ev::at(0));
    issue.apply(&Command::Resolve, HOUR, &clock).unwrap();
    assert_eq!(issue.status.name(), "resolved");

    // Sent late by a device that crashed before the fix: no regression.
    let late = observe(&mut issue, &mut clock, Ev::at(HOUR - 1));
    assert!(matches!(late, Outcome::StillResolved { .. }), "{late:?}");
    // An old build still in use: no regression.
    let old = observe(
        &mut issue,
        &mut clock,
        Ev::at(2 * HOUR).version("2.2.0", "40"),
    );
    assert_eq!(
        old,
        Outcome::StillResolved {
            release: release("2.2.0", "40")
        }
    );
    assert_eq!(issue.status.name(), "resolved");

    let again = observe(&mut issue, &mut clock, Ev::at(3 * HOUR));
    assert_eq!(
        again,
        Outcome::Regressed {
            release: release("2.3.0", "45")
        }
    );
    assert_eq!(
        issue.status,
        Status::Regressed {
            release: release("2.3.0", "45"),
            at_ms: 3 * HOUR
        }
    );
    assert_eq!(
        issue.event_count, 4,
        "events on a resolved issue still count"
    );
}

#[test]
fn an_old_build_must_not_reopen_an_issue_resolved_in_the_next_release() {
    let (mut issue, mut clock) = open(Ev::at(0).version("2.3.0", "45"));
    observe(&mut issue, &mut clock, Ev::at(1).version("2.2.0", "40"));
    issue
        .apply(&Command::ResolveInNextRelease, HOUR, &clock)
        .unwrap();
    assert_eq!(
        issue.status,
        Status::Resolved {
            resolution: Resolution::InNextRelease {
                current: vec![release("2.3.0", "45")]
            },
            at_ms: HOUR,
        }
    );

    for (version, build) in [
        ("2.2.0", "40"),
        ("2.3.0", "44"),
        ("2.3.0", "45"),
        ("1.9.9", "999"),
    ] {
        let outcome = observe(
            &mut issue,
            &mut clock,
            Ev::at(2 * HOUR).version(version, build),
        );
        assert_eq!(
            outcome,
            Outcome::StillResolved {
                release: release(version, build)
            },
            "{version} ({build})"
        );
    }
    let newer_build = observe(
        &mut issue,
        &mut clock,
        Ev::at(3 * HOUR).version("2.3.0", "46"),
    );
    assert_eq!(
        newer_build,
        Outcome::Regressed {
            release: release("2.3.0", "46")
        }
    );
}

#[test]
fn next_release_means_after_the_projects_current_release() {
    let (mut issue, mut clock) = open(Ev::at(0).version("2.3.0", "45"));
    // The project already ships 2.4.0, where this issue has not been seen yet.
    clock.observe(&release("2.4.0", "50"), 10);
    issue
        .apply(&Command::ResolveInNextRelease, HOUR, &clock)
        .unwrap();
    let current = observe(
        &mut issue,
        &mut clock,
        Ev::at(2 * HOUR).version("2.4.0", "50"),
    );
    assert!(
        matches!(current, Outcome::StillResolved { .. }),
        "{current:?}"
    );
    let next = observe(
        &mut issue,
        &mut clock,
        Ev::at(3 * HOUR).version("2.5.0", "51"),
    );
    assert!(matches!(next, Outcome::Regressed { .. }), "{next:?}");
}

#[test]
fn an_older_ota_update_must_not_reopen_a_resolved_issue() {
    let (mut issue, mut clock) = open(Ev::at(0));
    observe(&mut issue, &mut clock, Ev::at(DAY).update("update-1"));
    observe(&mut issue, &mut clock, Ev::at(2 * DAY).update("update-2"));
    issue
        .apply(&Command::ResolveInNextRelease, 2 * DAY + HOUR, &clock)
        .unwrap();

    // Devices that have not fetched update-2 yet, or run the embedded bundle.
    let older_update = observe(&mut issue, &mut clock, Ev::at(3 * DAY).update("update-1"));
    assert!(
        matches!(older_update, Outcome::StillResolved { .. }),
        "{older_update:?}"
    );
    let embedded = observe(&mut issue, &mut clock, Ev::at(3 * DAY));
    assert!(
        matches!(embedded, Outcome::StillResolved { .. }),
        "{embedded:?}"
    );
    let same_update = observe(&mut issue, &mut clock, Ev::at(3 * DAY).update("update-2"));
    assert!(
        matches!(same_update, Outcome::StillResolved { .. }),
        "{same_update:?}"
    );
    assert_eq!(issue.status.name(), "resolved");

    let next_update = observe(&mut issue, &mut clock, Ev::at(4 * DAY).update("update-3"));
    let Outcome::Regressed { release } = next_update else {
        panic!("{next_update:?}")
    };
    assert_eq!(release.update_id.as_deref(), Some("update-3"));
}

#[test]
fn an_older_ota_update_must_not_reopen_an_issue_resolved_in_a_release() {
    let (mut issue, mut clock) = open(Ev::at(0).update("update-1"));
    clock.observe(
        &ReleaseKey {
            update_id: Some("update-2".into()),
            ..release("2.3.0", "45")
        },
        DAY,
    );
    let fixed = ReleaseKey {
        update_id: Some("update-2".into()),
        ..release("2.3.0", "45")
    };
    issue
        .apply(&Command::ResolveInRelease(fixed.clone()), DAY, &clock)
        .unwrap();

    let older = observe(&mut issue, &mut clock, Ev::at(2 * DAY).update("update-1"));
    assert!(matches!(older, Outcome::StillResolved { .. }), "{older:?}");
    let in_the_fix = observe(&mut issue, &mut clock, Ev::at(2 * DAY).update("update-2"));
    assert_eq!(in_the_fix, Outcome::Regressed { release: fixed });
}

#[test]
fn resolved_in_release_reopens_from_that_release_on() {
    let (base, clock) = open(Ev::at(0).version("2.3.0", "45"));
    let mut resolved = base.clone();
    let command = Command::ResolveInRelease(ReleaseKey {
        platform: String::new(),
        app_version: "2.4.0".into(),
        build: None,
        update_id: None,
    });
    resolved.apply(&command, HOUR, &clock).unwrap();
    let cases = [
        ("2.3.0", "45", false),
        ("2.3.9", "49", false),
        ("2.4.0", "50", true),
        ("2.10.0", "90", true),
    ];
    for (version, build, regresses) in cases {
        let (mut issue, mut clock) = (resolved.clone(), clock.clone());
        let outcome = observe(
            &mut issue,
            &mut clock,
            Ev::at(2 * HOUR).version(version, build),
        );
        assert_eq!(
            matches!(outcome, Outcome::Regressed { .. }),
            regresses,
            "{version}: {outcome:?}"
        );
    }
}

#[test]
fn builds_are_compared_within_a_platform() {
    let (mut issue, mut clock) = open(Ev::at(0).version("2.3.0", "1045"));
    issue
        .apply(&Command::ResolveInNextRelease, HOUR, &clock)
        .unwrap();
    let ios_hotfix = observe(
        &mut issue,
        &mut clock,
        Ev::at(2 * HOUR).platform("ios").version("2.3.0", "47"),
    );
    assert!(
        matches!(ios_hotfix, Outcome::StillResolved { .. }),
        "{ios_hotfix:?}"
    );
    let ios_next = observe(
        &mut issue,
        &mut clock,
        Ev::at(3 * HOUR).platform("ios").version("2.4.0", "48"),
    );
    assert!(
        matches!(ios_next, Outcome::Regressed { .. }),
        "{ios_next:?}"
    );
}

#[test]
fn a_regression_becomes_ongoing_after_the_window() {
    let (mut issue, mut clock) = open(Ev::at(0));
    issue.apply(&Command::Resolve, HOUR, &clock).unwrap();
    observe(&mut issue, &mut clock, Ev::at(2 * HOUR));
    assert_eq!(issue.status.name(), "regressed");
    assert_eq!(observe(&mut issue, &mut clock, Ev::at(DAY)), Outcome::Seen);
    assert_eq!(issue.tick(3 * DAY, &POLICY), None);
    assert_eq!(
        issue.tick(2 * HOUR + 7 * DAY, &POLICY),
        Some(Outcome::BecameOngoing)
    );
    assert_eq!(issue.status, Status::Ongoing);
}

#[test]
fn ignored_until_more_events() {
    let (mut issue, mut clock) = open(Ev::at(0));
    issue
        .apply(&Command::Ignore(IgnoreUntil::Count(3)), HOUR, &clock)
        .unwrap();
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(2 * HOUR)),
        Outcome::StillIgnored
    );
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(3 * HOUR)),
        Outcome::StillIgnored
    );
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(4 * HOUR)),
        Outcome::Unignored
    );
    assert_eq!(issue.status, Status::Ongoing);
}

#[test]
fn ignored_until_more_users() {
    let (mut issue, mut clock) = open(Ev::at(0).user("u1"));
    issue
        .apply(&Command::Ignore(IgnoreUntil::Users(2)), HOUR, &clock)
        .unwrap();
    for at in 2..6 {
        let outcome = observe(&mut issue, &mut clock, Ev::at(at * HOUR).user("u1"));
        assert_eq!(outcome, Outcome::StillIgnored, "the same user again");
    }
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(7 * HOUR).user("u2")),
        Outcome::StillIgnored
    );
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(8 * HOUR).user("u2")),
        Outcome::StillIgnored
    );
    assert_eq!(
        observe(&mut issue, &mut clock, Ev::at(9 * HOUR).user("u3")),
        Outcome::Unignored
    );
}

#[test]
fn ignored_until_a_time_by_event_or_by_tick() {
    let (base, clock) = open(Ev::at(0));
    let mut ignored = base.clone();
    ignored
        .apply(&Command::Ignore(IgnoreUntil::UntilMs(DAY)), HOUR, &clock)
        .unwrap();

    let (mut issue, mut events_clock) = (ignored.clone(), clock.clone());
    assert_eq!(
        observe(&mut issue, &mut events_clock, Ev::at(DAY - 1)),
        Outcome::StillIgnored
    );
    assert_eq!(
        observe(&mut issue, &mut events_clock, Ev::at(DAY)),
        Outcome::Unignored
    );

    let mut ticked = ignored.clone();
    assert_eq!(ticked.tick(DAY - 1, &POLICY), None);
    assert_eq!(ticked.tick(DAY, &POLICY), Some(Outcome::Unignored));
    assert_eq!(ticked.status, Status::Ongoing);

    let mut forever = base;
    forever
        .apply(&Command::Ignore(IgnoreUntil::Forever), HOUR, &clock)
        .unwrap();
    let mut clock = clock;
    for at in 2..50 {
        assert_eq!(
            observe(&mut forever, &mut clock, Ev::at(at * DAY)),
            Outcome::StillIgnored
        );
    }
    assert_eq!(forever.tick(100 * DAY, &POLICY), None);
}

#[test]
fn reopen_closes_nothing_that_is_open() {
    let (mut issue, clock) = open(Ev::at(0));
    assert_eq!(
        issue.apply(&Command::Reopen, HOUR, &clock),
        Err(LifecycleError::NotClosed("new"))
    );
    issue.apply(&Command::Resolve, HOUR, &clock).unwrap();
    issue.apply(&Command::Reopen, 2 * HOUR, &clock).unwrap();
    assert_eq!(issue.status, Status::Ongoing);
    issue
        .apply(&Command::Ignore(IgnoreUntil::Forever), 3 * HOUR, &clock)
        .unwrap();
    issue.apply(&Command::Reopen, 4 * HOUR, &clock).unwrap();
    assert_eq!(issue.status, Status::Ongoing);
}

#[test]
fn invalid_commands_are_refused_and_change_nothing() {
    let (mut issue, clock) = open(Ev::at(0));
    let before = issue.status.clone();
    assert_eq!(
        issue.apply(&Command::Ignore(IgnoreUntil::Count(0)), HOUR, &clock),
        Err(LifecycleError::IgnoreZero(0))
    );
    assert_eq!(
        issue.apply(&Command::Ignore(IgnoreUntil::UntilMs(HOUR)), HOUR, &clock),
        Err(LifecycleError::IgnoreInPast {
            until_ms: HOUR,
            now_ms: HOUR
        })
    );
    let no_version = Command::ResolveInRelease(ReleaseKey::default());
    assert_eq!(
        issue.apply(&no_version, HOUR, &clock),
        Err(LifecycleError::ReleaseWithoutVersion)
    );
    assert_eq!(issue.status, before);
}

#[test]
fn status_and_commands_round_trip_through_json_and_postcard() {
    let (mut issue, clock) = open(Ev::at(0).update("update-1"));
    issue
        .apply(&Command::ResolveInNextRelease, HOUR, &clock)
        .unwrap();
    let bytes = postcard::to_allocvec(&issue).unwrap();
    assert_eq!(postcard::from_bytes::<Issue>(&bytes).unwrap(), issue);
    let command = Command::Ignore(IgnoreUntil::Users(10));
    let json = serde_json::to_string(&command).unwrap();
    assert_eq!(json, r#"{"ignore":{"users":10}}"#);
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
}
