//! The decider's decisions, one input sequence each.

use std::time::Duration;

use trellis_schemas::Release;
use trellis_schemas::records::{AuditEntry, GuardCommand};

use super::*;
use crate::config::Destination;

const MIN: i64 = 60_000;

fn config(rules: Vec<Rule>) -> AlertConfig {
    let mut config = AlertConfig {
        rules,
        ..AlertConfig::default()
    };
    config.destinations.insert(
        "rollback".into(),
        Destination::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret: "0123456789abcdef".into(),
            quiet_hours: None,
        },
    );
    config.validate().unwrap();
    config
}

fn halt_rule() -> Rule {
    Rule {
        name: "guard".into(),
        action: Action::Halt,
        min_severity: Severity::Critical,
        ..Rule::default()
    }
}

fn release(update: &str) -> Release {
    Release {
        platform: "ios".into(),
        app_version: "2.14.0".into(),
        build: Some("1402".into()),
        runtime_version: Some("2.14".into()),
        update_id: Some(update.into()),
        channel: Some("production".into()),
        environment: None,
    }
}

/// A release regression on `metric`, `ratio` times its baseline, at `minute`.
fn detection(id: &str, metric: &str, status: &str, ratio: f64, minute: i64) -> Detection {
    Detection {
        detection_id: id.into(),
        project: "shop".into(),
        kind: "release_regression".into(),
        release: release("u-7"),
        metric: metric.into(),
        baseline: "fleet".into(),
        baseline_value: 0.01,
        baseline_count: 10_000,
        candidate_value: 0.01 * ratio,
        candidate_count: 800,
        statistic: 8.0,
        threshold: 5.3,
        window_end_ms: minute * MIN,
        opened_ms: minute * MIN,
        status: status.into(),
        summary: format!("{metric} {ratio}x"),
        version: 1,
        ..Detection::default()
    }
}

fn run(decider: &mut Decider, input: &[Detection]) -> Vec<Alert> {
    let mut out = Vec::new();
    for d in input {
        decider.observe(d, &mut out);
    }
    out
}

fn events(alerts: &[Alert]) -> Vec<(&str, &str, i64)> {
    alerts
        .iter()
        .map(|a| (a.rule.as_str(), a.event.as_str(), a.version))
        .collect()
}

#[test]
fn a_regression_fires_once_and_resolves_once() {
    let mut decider = Decider::new(config(vec![Rule::default()]));
    let out = run(
        &mut decider,
        &[
            detection("d1", "crash_rate", "open", 1.5, 10),
            detection("d1", "crash_rate", "confirmed", 1.6, 40),
            detection("d1", "crash_rate", "resolved", 1.6, 2000),
        ],
    );
    assert_eq!(
        events(&out),
        [
            ("regressions", "alert.firing", 1),
            ("regressions", "alert.resolved", 2)
        ]
    );
    assert_eq!(out[0].alert_id, out[1].alert_id);
    assert_eq!(out[0].delivery_id, format!("{}.1", out[0].alert_id));
    assert_eq!(out[0].severity, "warning");
    assert_eq!(out[0].destinations, ["rollback"]);
    assert_eq!(out[0].state, "firing");
    assert_eq!(out[1].state, "resolved");
    assert_eq!(out[0].subject, "ios 2.14.0 (1402) update u-7 on production");
}

#[test]
fn a_halt_rule_halts_a_bad_release_once_ever() {
    let mut decider = Decider::new(config(vec![Rule::default(), halt_rule()]));
    let out = run(
        &mut decider,
        &[
            // A warning does not reach the guard's severity.
            detection("d1", "abnormal_rate", "open", 1.4, 10),
            detection("d2", "crash_rate", "open", 2.5, 12),
            detection("d3", "crashed_user_rate", "open", 2.2, 13),
            detection("d1", "abnormal_rate", "retracted", 1.1, 40),
            detection("d2", "crash_rate", "resolved", 2.5, 3000),
            detection("d3", "crashed_user_rate", "resolved", 2.2, 3000),
            // The same release regresses again much later.
            detection("d4", "crash_rate", "open", 3.0, 9000),
        ],
    );
    let halts: Vec<_> = out.iter().filter(|a| a.event == "rollout.halt").collect();
    assert_eq!(halts.len(), 1, "{:?}", events(&out));
    assert_eq!(halts[0].detection_id, "d2");
    assert_eq!(halts[0].release, release("u-7"));
    assert_eq!(
        events(&out),
        [
            ("regressions", "alert.firing", 1),
            ("regressions", "alert.firing", 2),
            ("guard", "rollout.halt", 1),
            ("regressions", "none", 3),
            ("guard", "none", 2),
            ("regressions", "alert.resolved", 4),
            ("guard", "alert.resolved", 3),
            ("regressions", "alert.firing", 1),
            ("guard", "alert.firing", 1),
        ]
    );
    // The second episode is a new alert.
    assert_ne!(out[7].alert_id, out[0].alert_id);
}

#[test]
fn a_halt_is_never_asked_for_an_issue() {
    let mut decider = Decider::new(config(vec![Rule {
        kinds: vec!["issue_spike".into()],
        ..halt_rule()
    }]));
    let mut spike = detection("s1", "events", "open", 10.0, 10);
    spike.kind = "issue_spike".into();
    spike.issue_id = Some("i-1".into());
    let out = run(&mut decider, &[spike]);
    assert_eq!(events(&out), [("guard", "alert.firing", 1)]);
    assert_eq!(out[0].subject, "issue i-1");
}

#[test]
fn the_cooldown_holds_back_a_quick_refire_and_its_resolution() {
    let rule = Rule {
        cooldown: Duration::from_secs(3600),
        ..Rule::default()
    };
    let mut decider = Decider::new(config(vec![rule]));
    let out = run(
        &mut decider,
        &[
            detection("d1", "crash_rate", "open", 1.5, 0),
            detection("d1", "crash_rate", "retracted", 1.1, 30),
            detection("d2", "crash_rate", "open", 1.5, 40),
            detection("d2", "crash_rate", "retracted", 1.1, 50),
            detection("d3", "crash_rate", "open", 1.5, 200),
        ],
    );
    assert_eq!(
        events(&out),
        [
            ("regressions", "alert.firing", 1),
            ("regressions", "alert.resolved", 2),
            ("regressions", "none", 1),
            ("regressions", "none", 2),
            ("regressions", "alert.firing", 1),
        ]
    );
}

#[test]
fn rules_take_only_their_projects_kinds_metrics_and_severities() {
    let rule = Rule {
        projects: vec!["other".into()],
        ..Rule::default()
    };
    let mut decider = Decider::new(config(vec![rule]));
    assert!(
        run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 3.0, 0)]
        )
        .is_empty()
    );
    let rule = Rule {
        metrics: vec!["errored_rate".into()],
        ..Rule::default()
    };
    let mut decider = Decider::new(config(vec![rule]));
    assert!(
        run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 3.0, 0)]
        )
        .is_empty()
    );
    let mut perf = detection("p1", "screen_load_p75", "open", 3.0, 0);
    perf.kind = "perf_regression".into();
    let mut decider = Decider::new(config(vec![Rule::default()]));
    assert!(run(&mut decider, &[perf]).is_empty(), "not a default kind");
    let mut decider = Decider::new(config(vec![halt_rule()]));
    assert!(
        run(
            &mut decider,
            &[detection("d1", "crash_rate", "open", 1.9, 0)]
        )
        .is_empty()
    );
}

#[test]
fn a_restored_decider_decides_what_the_original_would() {
    let input = [
        detection("d1", "crash_rate", "open", 1.5, 10),
        detection("d2", "crashed_user_rate", "open", 2.5, 12),
        detection("d1", "crash_rate", "resolved", 1.6, 2000),
        detection("d2", "crashed_user_rate", "resolved", 2.5, 2000),
    ];
    let cfg = config(vec![Rule::default(), halt_rule()]);
    let whole = run(&mut Decider::new(cfg.clone()), &input);
    let mut first = Decider::new(cfg.clone());
    let mut split = run(&mut first, &input[..2]);
    let bytes = postcard::to_stdvec(first.state()).unwrap();
    let mut second = Decider::restore(cfg, postcard::from_bytes(&bytes).unwrap());
    split.extend(run(&mut second, &input[2..]));
    assert_eq!(whole, split);
}

#[test]
fn resolved_alerts_are_forgotten_past_the_cap_and_firing_ones_kept() {
    let mut cfg = config(vec![Rule::default()]);
    cfg.max_alerts = 2;
    let mut decider = Decider::new(cfg);
    let mut input = Vec::new();
    for (i, update) in ["a", "b", "c"].iter().enumerate() {
        let mut d = detection(&format!("d{i}"), "crash_rate", "open", 1.5, i as i64);
        d.release = release(update);
        input.push(d.clone());
        if i < 2 {
            d.status = "resolved".into();
            d.window_end_ms += 100 * MIN;
            input.push(d);
        }
    }
    run(&mut decider, &input);
    assert_eq!(decider.counters.forgotten, 1);
    assert_eq!(decider.state().alerts.len(), 2);
    assert!(decider.state().alerts.values().any(|t| t.firing));
}

fn command(action: &str, at_minute: i64) -> GuardCommand {
    GuardCommand {
        command_id: format!("c-{action}-{at_minute}"),
        project: "shop".into(),
        action: action.into(),
        update_id: Some("u-7".into()),
        actor: "ana".into(),
        reason: "looked at it".into(),
        at_ms: at_minute * MIN,
        ..GuardCommand::default()
    }
}

fn apply(decider: &mut Decider, c: &GuardCommand) -> (Vec<Alert>, Vec<AuditEntry>) {
    let (mut out, mut audit) = (Vec::new(), Vec::new());
    decider.command(c, &mut out, &mut audit).unwrap();
    (out, audit)
}

#[test]
fn an_ignored_update_is_never_halted_but_still_notifies() {
    let mut decider = Decider::new(config(vec![Rule::default(), halt_rule()]));
    let register = GuardCommand {
        release: Some(Release {
            channel: Some("production".into()),
            runtime_version: Some("2.14".into()),
            ..Release::default()
        }),
        percentage: Some(5.0),
        ..command("register", 1)
    };
    let (out, audit) = apply(&mut decider, &register);
    assert!(out.is_empty());
    assert_eq!(audit[0].action, "rollout.register");
    assert_eq!(audit[0].audit_id, "c-register-1");
    let (_, audit) = apply(&mut decider, &command("ignore", 2));
    assert_eq!(
        (audit[0].action.as_str(), audit[0].actor.as_str()),
        ("rollout.ignore", "ana")
    );
    assert!(
        audit[0].evidence.contains(r#""percentage":5.0"#),
        "{}",
        audit[0].evidence
    );
    let out = run(
        &mut decider,
        &[detection("d1", "crash_rate", "open", 3.0, 10)],
    );
    assert_eq!(
        events(&out),
        [
            ("regressions", "alert.firing", 1),
            ("guard", "alert.firing", 1)
        ]
    );
    assert_eq!(decider.rollout("shop", "u-7"), Some(RolloutState::Ignored));
}

#[test]
fn a_manual_halt_stops_the_guard_and_a_resume_lets_the_next_episode_halt() {
    let mut decider = Decider::new(config(vec![halt_rule()]));
    // Unknown to the guard until now: a halt by hand still goes out.
    let (out, audit) = apply(&mut decider, &command("halt", 1));
    assert_eq!(events(&out), [("manual", "rollout.halt", 1)]);
    assert_eq!(out[0].destinations, ["rollback"]);
    assert_eq!(out[0].summary, "Halted by ana: looked at it");
    assert_eq!(out[0].release.update_id.as_deref(), Some("u-7"));
    assert_eq!(audit[0].action, "rollout.halt");
    // Halting it twice is refused, and the guard does not halt it either.
    let (mut o, mut a) = (Vec::new(), Vec::new());
    let refused = decider.command(&command("halt", 2), &mut o, &mut a);
    assert_eq!(refused, Err(r#"update "u-7" is halted already"#.into()));
    assert!(o.is_empty() && a.is_empty());
    let out = run(
        &mut decider,
        &[detection("d1", "crash_rate", "open", 3.0, 10)],
    );
    assert_eq!(events(&out), [("guard", "alert.firing", 1)]);
    // Resumed: the resume goes out with the guard's evidence, and the episode in progress
    // does not halt again; the next one does.
    let (resumed, _) = apply(&mut decider, &command("resume", 20));
    assert_eq!(events(&resumed), [("manual", "rollout.resume", 1)]);
    assert_eq!(resumed[0].detection_id, "d1");
    assert_ne!(resumed[0].alert_id, out[0].alert_id);
    let out = run(
        &mut decider,
        &[
            detection("d2", "crashed_user_rate", "open", 3.0, 30),
            detection("d1", "crash_rate", "resolved", 3.0, 2000),
            detection("d2", "crashed_user_rate", "resolved", 3.0, 2000),
            detection("d3", "crash_rate", "open", 3.0, 3000),
        ],
    );
    assert_eq!(
        events(&out),
        [
            ("guard", "none", 2),
            ("guard", "alert.resolved", 3),
            ("guard", "rollout.halt", 1)
        ]
    );
    assert_eq!(decider.rollout("shop", "u-7"), Some(RolloutState::Halted));
}

#[test]
fn an_update_of_an_unknown_rollout_is_refused() {
    let mut decider = Decider::new(config(vec![halt_rule()]));
    let (mut o, mut a) = (Vec::new(), Vec::new());
    let c = GuardCommand {
        percentage: Some(50.0),
        ..command("update", 1)
    };
    assert!(decider.command(&c, &mut o, &mut a).is_err());
    assert!(
        decider
            .command(&command("resume", 1), &mut o, &mut a)
            .is_err()
    );
    assert_eq!(decider.counters.commands_refused, 2);
    assert!(o.is_empty() && a.is_empty());
}

#[test]
fn an_acknowledged_alert_escalates_quietly_and_resolves_aloud() {
    let mut decider = Decider::new(config(vec![Rule::default()]));
    let fired = run(
        &mut decider,
        &[detection("d1", "crash_rate", "open", 1.5, 10)],
    );
    let ack = GuardCommand {
        update_id: None,
        alert_id: Some(fired[0].alert_id.clone()),
        ..command("ack", 11)
    };
    let (acked, audit) = apply(&mut decider, &ack);
    assert_eq!(
        (
            acked[0].state.as_str(),
            acked[0].event.as_str(),
            acked[0].version
        ),
        ("acknowledged", "none", 2)
    );
    assert_eq!(
        (audit[0].action.as_str(), audit[0].subject.as_str()),
        ("alert.ack", fired[0].alert_id.as_str())
    );
    let (mut o, mut a) = (Vec::new(), Vec::new());
    assert!(
        decider.command(&ack, &mut o, &mut a).is_err(),
        "acknowledged twice"
    );
    let out = run(
        &mut decider,
        &[
            detection("d2", "crashed_user_rate", "open", 3.0, 12),
            detection("d1", "crash_rate", "resolved", 1.5, 2000),
            detection("d2", "crashed_user_rate", "resolved", 3.0, 2000),
        ],
    );
    assert_eq!(
        out.iter()
            .map(|a| (a.state.as_str(), a.event.as_str()))
            .collect::<Vec<_>>(),
        [("acknowledged", "none"), ("resolved", "alert.resolved")]
    );
    assert_eq!(decider.counters.silenced, 1);
}

#[test]
fn a_silenced_alert_notifies_nothing_until_the_silence_ends_but_a_halt() {
    let mut decider = Decider::new(config(vec![halt_rule()]));
    let fired = run(
        &mut decider,
        &[detection("d1", "crash_rate", "open", 3.0, 10)],
    );
    assert_eq!(events(&fired), [("guard", "rollout.halt", 1)]);
    let silence = GuardCommand {
        update_id: None,
        alert_id: Some(fired[0].alert_id.clone()),
        until_ms: Some(500 * MIN),
        ..command("silence", 11)
    };
    let (out, audit) = apply(&mut decider, &silence);
    assert!(out.is_empty());
    assert!(
        audit[0].evidence.contains("\"until_ms\":30000000"),
        "{}",
        audit[0].evidence
    );
    apply(&mut decider, &command("resume", 12));
    let out = run(
        &mut decider,
        &[
            detection("d1", "crash_rate", "resolved", 3.0, 100),
            // Within the silence: a new episode's halt still goes out ...
            detection("d2", "crash_rate", "open", 3.0, 300),
            detection("d2", "crash_rate", "resolved", 3.0, 400),
        ],
    );
    assert_eq!(
        events(&out),
        [
            ("guard", "none", 2),
            ("guard", "rollout.halt", 1),
            ("guard", "none", 2)
        ]
    );
    // ... and after it, the resolution of a third is told again.
    apply(&mut decider, &command("resume", 450));
    let out = run(
        &mut decider,
        &[
            detection("d3", "crash_rate", "open", 1.5, 600),
            detection("d3", "crash_rate", "resolved", 1.5, 700),
        ],
    );
    assert!(out.is_empty(), "a warning is below the guard's severity");
    let out = run(
        &mut decider,
        &[
            detection("d4", "crash_rate", "open", 3.0, 800),
            detection("d4", "crash_rate", "resolved", 3.0, 900),
        ],
    );
    assert_eq!(
        events(&out),
        [("guard", "rollout.halt", 1), ("guard", "alert.resolved", 2)]
    );
}

#[test]
fn a_checkpoint_from_before_rollouts_restores_with_the_halts_it_knew() {
    #[derive(Serialize)]
    struct Legacy<'a> {
        alerts: &'a BTreeMap<String, Tracked>,
    }
    let cfg = config(vec![halt_rule()]);
    let mut decider = Decider::new(cfg.clone());
    let out = run(
        &mut decider,
        &[detection("d1", "crash_rate", "open", 3.0, 10)],
    );
    assert_eq!(events(&out), [("guard", "rollout.halt", 1)]);
    let legacy = postcard::to_stdvec(&Legacy {
        alerts: &decider.state().alerts,
    })
    .unwrap();
    let mut restored = Decider::restore(cfg, DeciderState::from_bytes(&legacy).unwrap());
    assert_eq!(restored.state().alerts.len(), 1);
    assert_eq!(restored.rollout("shop", "u-7"), Some(RolloutState::Halted));
    // ... so it can be resumed, and the rollout service hears of it.
    let (resumed, _) = apply(&mut restored, &command("resume", 20));
    assert_eq!(events(&resumed), [("manual", "rollout.resume", 1)]);
    let now = DeciderState::from_bytes(&decider.state().to_bytes().unwrap()).unwrap();
    assert_eq!(now.rollouts.len(), 1);
    assert!(DeciderState::from_bytes(b"\xff\xff").is_err());
    // Bytes past an older layout are a damaged checkpoint, not an older one.
    let mut damaged = legacy.clone();
    damaged.push(7);
    assert!(DeciderState::from_bytes(&damaged).is_err());
}

#[test]
fn a_halted_update_ignored_then_resumed_is_resumed_at_the_rollout_service() {
    let mut decider = Decider::new(config(vec![halt_rule()]));
    let out = run(
        &mut decider,
        &[detection("d1", "crash_rate", "open", 3.0, 10)],
    );
    assert_eq!(events(&out), [("guard", "rollout.halt", 1)]);
    let (out, _) = apply(&mut decider, &command("ignore", 11));
    assert!(out.is_empty());
    let (out, audit) = apply(&mut decider, &command("resume", 12));
    assert_eq!(events(&out), [("manual", "rollout.resume", 1)]);
    assert!(audit[0].evidence.contains(r#""previous_state":"ignored""#));
    // Ignored from the start, it was never halted there: a resume sends nothing.
    let mut decider = Decider::new(config(vec![halt_rule()]));
    apply(&mut decider, &command("ignore", 1));
    let (out, _) = apply(&mut decider, &command("resume", 2));
    assert!(out.is_empty());
}

#[test]
fn two_manual_halts_of_one_update_are_two_alerts() {
    let mut decider = Decider::new(config(vec![halt_rule()]));
    let (first, _) = apply(&mut decider, &command("halt", 1));
    apply(&mut decider, &command("resume", 2));
    // Even once the rollout was forgotten, a later halt is a new alert.
    decider.state.rollouts.clear();
    let (second, _) = apply(&mut decider, &command("halt", 3));
    assert_ne!(first[0].alert_id, second[0].alert_id);
    assert_ne!(first[0].delivery_id, second[0].delivery_id);
}
