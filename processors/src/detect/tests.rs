use trellis_bus::Record;
use trellis_schemas::records::{self, Detection};

use super::sim::{self, RolloutSpec};
use super::spike;
use super::*;
use crate::runtime::{Factory, Output, Processor};

fn spec(seed: u64, crash_factor: f64) -> RolloutSpec {
    let base = RolloutSpec::default();
    RolloutSpec {
        seed,
        crash_factor,
        // Half an hour of history is enough for a staged rollout's concurrent baseline.
        rollout_ms: base.start_ms + 30 * 60_000,
        end_ms: base.start_ms + 30 * 60_000 + 3 * 3_600_000,
        ..base
    }
}

/// The simulator's figures over 200 seeds (benchmarks/README.md): flagged in every run, p90
/// 26 minutes after the update's first session. These seeds must all be within half an hour.
#[test]
fn a_doubled_crash_rate_on_a_five_percent_rollout_is_flagged_within_half_an_hour() {
    for seed in 1..=3 {
        let spec = RolloutSpec {
            stop_at_first: true,
            ..spec(seed, 2.0)
        };
        let outcome = sim::run(&spec, &DetectConfig::default());
        let delay = outcome
            .candidate_delay_ms
            .expect("the bad update is flagged");
        assert!(
            delay <= 30 * 60_000,
            "seed {seed}: flagged after {delay} ms"
        );
        assert_eq!(outcome.other_flags, 0, "seed {seed}");
        let first = &outcome.detections[0];
        assert_eq!(first.release, sim::candidate_release(&spec));
        assert_eq!(first.metric, "crash_rate");
        assert_eq!(first.baseline, "fleet");
        assert!(
            first.candidate_value > first.baseline_value * 1.25,
            "{first:?}"
        );
        assert!(first.statistic >= first.threshold, "{first:?}");
        assert!(first.candidate_count >= 300 && first.baseline_count >= 2000);
    }
}

#[test]
fn a_clean_rollout_is_never_flagged() {
    for seed in 1..=3 {
        let outcome = sim::run(&spec(seed, 1.0), &DetectConfig::default());
        assert!(
            outcome.detections.is_empty(),
            "seed {seed}: {:?}",
            outcome.detections.first().map(|d| &d.summary)
        );
    }
}

#[test]
fn a_release_with_the_whole_fleet_is_judged_against_the_previous_release() {
    let base = RolloutSpec::default();
    let spec = RolloutSpec {
        full_fleet: true,
        crash_factor: 2.0,
        stop_at_first: true,
        end_ms: base.rollout_ms + 3_600_000,
        ..base
    };
    let outcome = sim::run(&spec, &DetectConfig::default());
    let first = outcome.detections.first().expect("flagged");
    assert_eq!(first.release.app_version, "2.1.0");
    assert!(
        first.baseline.starts_with("previous ios 2.0.0"),
        "{}",
        first.baseline
    );
    assert!(outcome.candidate_delay_ms.unwrap() <= 15 * 60_000);
}

#[test]
fn a_finding_is_confirmed_once_its_windows_are_complete_and_ids_do_not_depend_on_the_run() {
    let spec = spec(5, 2.0);
    let a = sim::run(&spec, &DetectConfig::default());
    let b = sim::run(&spec, &DetectConfig::default());
    let ids = |o: &sim::RolloutOutcome| {
        o.detections
            .iter()
            .map(|d| (d.detection_id.clone(), d.status.clone(), d.version))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    let crash: Vec<&Detection> = a
        .detections
        .iter()
        .filter(|d| d.metric == "crash_rate")
        .collect();
    assert_eq!(crash.len(), 2, "{crash:#?}");
    assert_eq!((crash[0].status.as_str(), crash[0].version), ("open", 1));
    assert_eq!(
        (crash[1].status.as_str(), crash[1].version),
        ("confirmed", 2)
    );
    assert_eq!(crash[0].detection_id, crash[1].detection_id);
    assert!(crash[1].window_end_ms >= crash[0].opened_ms + 30 * 60_000);
    assert!(crash[1].candidate_count > crash[0].candidate_count);
}

fn record(topic: &str, offset: u64, payload: Vec<u8>) -> Record {
    Record {
        topic: topic.into(),
        partition: 0,
        offset,
        key: b"sim".to_vec(),
        payload,
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

fn detections(out: &Output) -> Vec<Detection> {
    out.messages
        .iter()
        .filter(|m| m.topic == "detections")
        .map(|m| records::decode::<Detection>(&m.payload).unwrap())
        .collect()
}

#[test]
fn the_stage_restored_from_a_checkpoint_mid_stream_emits_what_an_uninterrupted_one_does() {
    let sessions = sim::sessions(&spec(9, 2.0));
    let payloads: Vec<Vec<u8>> = sessions
        .iter()
        .map(|s| records::encode(s).unwrap())
        .collect();
    let factory =
        DetectFactory::<ReleaseDetector>::new(DetectConfig::default(), topics::Names::default());

    let mut whole = factory.create(0, None).unwrap();
    let mut all = Output::default();
    for (i, p) in payloads.iter().enumerate() {
        whole.process(&record("sessions", i as u64, p.clone()), &mut all);
    }

    // Checkpoint after a third, go on to two thirds, then die: the replacement restores the
    // checkpoint and reads from there, so it sees the records after the checkpoint again.
    let third = payloads.len() / 3;
    let mut first = factory.create(0, None).unwrap();
    let mut before_checkpoint = Output::default();
    for (i, p) in payloads[..third].iter().enumerate() {
        first.process(
            &record("sessions", i as u64, p.clone()),
            &mut before_checkpoint,
        );
    }
    let state = first.snapshot().unwrap();
    let mut lost = Output::default();
    for (i, p) in payloads
        .iter()
        .enumerate()
        .take(payloads.len() * 2 / 3)
        .skip(third)
    {
        first.process(&record("sessions", i as u64, p.clone()), &mut lost);
    }
    drop(first);
    let mut second = factory.create(0, Some(&state)).unwrap();
    let mut after = Output::default();
    for (i, p) in payloads.iter().enumerate().skip(third) {
        second.process(&record("sessions", i as u64, p.clone()), &mut after);
    }
    let mut replayed = detections(&before_checkpoint);
    replayed.extend(detections(&after));
    assert_eq!(replayed, detections(&all));
    // What the lost processor emitted after the checkpoint is emitted again, equal.
    let lost = detections(&lost);
    assert_eq!(lost[..], detections(&after)[..lost.len()]);
    assert!(!detections(&all).is_empty());
}

#[test]
fn a_session_record_seen_twice_counts_once() {
    let sessions = sim::sessions(&spec(3, 2.0));
    let mut once = ReleaseDetector::new(DetectConfig::default());
    let mut twice = ReleaseDetector::new(DetectConfig::default());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for s in &sessions {
        once.observe(s, &mut a);
        twice.observe(s, &mut b);
        twice.observe(s, &mut b);
    }
    assert_eq!(a, b);
    assert_eq!(twice.counters.replayed, sessions.len() as u64);
}

#[test]
fn a_payload_that_is_not_a_session_record_is_dead_lettered() {
    let factory =
        DetectFactory::<ReleaseDetector>::new(DetectConfig::default(), topics::Names::new("t."));
    let mut p = factory.create(0, None).unwrap();
    let mut out = Output::default();
    p.process(&record("t.sessions", 0, b"not avro".to_vec()), &mut out);
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.messages[0].topic, "t.dlq");
    let mut counters = Vec::new();
    p.drain_counters(&mut |name, n| counters.push((name, n)));
    assert_eq!(counters, vec![("invalid", 1)]);
}

#[test]
fn invalid_settings_name_their_key() {
    let bad = DetectConfig {
        alpha: 0.0,
        ..DetectConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .starts_with("processors.detect.alpha")
    );
    let bad = DetectConfig {
        min_sessions: 0,
        ..DetectConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .starts_with("processors.detect.min_sessions")
    );
    DetectConfig::default().validate().unwrap();
}

#[test]
fn a_twenty_percent_slower_screen_on_a_five_percent_rollout_is_flagged_within_2000_samples() {
    for seed in 1..=3 {
        let spec = sim::PerfSpec {
            seed,
            slowdown: 1.2,
            stop_at_first: true,
            ..sim::PerfSpec::default()
        };
        let outcome = sim::run_perf(&spec, &DetectConfig::default());
        let samples = outcome.candidate_sessions_at_flag.expect("flagged");
        assert!(
            samples <= 2000,
            "seed {seed}: flagged after {samples} samples"
        );
        assert_eq!(outcome.other_flags, 0);
        let d = &outcome.detections[0];
        assert_eq!(d.kind, "perf_regression");
        assert_eq!(d.metric, "screen_load_p75");
        assert_eq!(d.screen.as_deref(), Some("Home"));
        assert!(d.candidate_value > d.baseline_value * 1.1, "{d:?}");
    }
}

#[test]
fn screen_loads_from_the_same_distribution_are_never_flagged() {
    for seed in 1..=3 {
        let spec = sim::PerfSpec {
            seed,
            ..sim::PerfSpec::default()
        };
        let outcome = sim::run_perf(&spec, &DetectConfig::default());
        assert!(
            outcome.detections.is_empty(),
            "seed {seed}: {:?}",
            outcome.detections.first().map(|d| &d.summary)
        );
    }
}

#[test]
fn a_replayed_health_partial_counts_once() {
    let spec = sim::PerfSpec {
        slowdown: 1.3,
        ..sim::PerfSpec::default()
    };
    let once = sim::run_perf(&spec, &DetectConfig::default());
    assert!(!once.detections.is_empty());
    // The detector skips a partial id it has seen: feeding each twice changes nothing.
    let mut detector = PerfDetector::new(DetectConfig::default());
    let mut out = Vec::new();
    let partial = trellis_schemas::records::HealthPartial {
        partial_id: "p".into(),
        project: "sim".into(),
        window_start_ms: 0,
        window_ms: 60_000,
        ..Default::default()
    };
    detector.observe(&partial, &mut out);
    detector.observe(&partial, &mut out);
    assert_eq!(detector.counters.partials, 1);
    assert_eq!(detector.counters.replayed, 1);
}

#[test]
fn a_tenfold_issue_spike_is_flagged_within_ten_minutes() {
    for seed in 1..=5 {
        let spec = sim::SpikeSpec {
            seed,
            ..sim::SpikeSpec::default()
        };
        let outcome = sim::run_spike(&spec, &DetectConfig::default());
        let delay = outcome.candidate_delay_ms.expect("the spike is flagged");
        assert!(delay <= 10 * 60_000, "seed {seed}: after {delay} ms");
        assert_eq!(outcome.other_flags, 0, "seed {seed}");
        let statuses: Vec<&str> = outcome
            .detections
            .iter()
            .map(|d| d.status.as_str())
            .collect();
        assert_eq!(statuses[..2], ["open", "confirmed"], "seed {seed}");
        let d = &outcome.detections[0];
        assert_eq!(
            (d.kind.as_str(), d.issue_id.as_deref()),
            ("issue_spike", Some("issue-1"))
        );
        assert!(
            d.candidate_value >= 20.0 && d.baseline_value < 10.0,
            "{d:?}"
        );
    }
}

#[test]
fn a_steady_issue_is_never_flagged_over_a_week() {
    for (seed, mean) in [(1, 0.2), (2, 5.0), (3, 200.0)] {
        let base = sim::SpikeSpec::default();
        let spec = sim::SpikeSpec {
            seed,
            mean_per_5m: mean,
            factor: 1.0,
            end_ms: base.start_ms + 7 * 24 * 3_600_000,
            ..base
        };
        let outcome = sim::run_spike(&spec, &DetectConfig::default());
        assert!(
            outcome.detections.is_empty(),
            "seed {seed}, {mean}/5m: {:?}",
            outcome.detections.first()
        );
    }
}

#[test]
fn a_spike_resolves_once_the_rate_is_back() {
    let base = sim::SpikeSpec::default();
    // Ten times the rate for half an hour, then the usual rate for two hours.
    let spiked = sim::SpikeSpec {
        end_ms: base.spike_ms + 30 * 60_000,
        ..base.clone()
    };
    let mut detector = spike::SpikeDetector::new(DetectConfig::default());
    let mut state = spike::SpikeState::default();
    let mut out = Vec::new();
    let mut rng = fastrand::Rng::with_seed(4);
    let mut t = base.start_ms;
    while t < spiked.end_ms + 2 * 3_600_000 {
        let rate = if (spiked.spike_ms..spiked.end_ms).contains(&t) {
            50.0
        } else {
            5.0
        };
        t += (300_000.0 / rate * -(1.0 - rng.f64()).ln()) as i64;
        detector.observe(&mut state, "p", "i", t, &mut out);
    }
    let statuses: Vec<&str> = out.iter().map(|d| d.status.as_str()).collect();
    assert_eq!(statuses, ["open", "confirmed", "resolved"]);
    assert!(out.iter().all(|d| d.detection_id == out[0].detection_id));
    assert_eq!(out[2].version, 3);
}

#[test]
fn the_poisson_tail_matches_known_values() {
    // P(X >= 1; 1) = 1 - e^-1; P(X >= 10; 2) = 4.65e-5.
    assert!((spike::poisson_log_upper_tail(1, 1.0).exp() - 0.632_120_6).abs() < 1e-6);
    assert!((spike::poisson_log_upper_tail(10, 2.0).exp() - 4.649_807e-5).abs() < 1e-9);
    assert_eq!(spike::poisson_log_upper_tail(0, 3.0), 0.0);
}

/// A user's chance of a crash grows with the time they are watched: a release with the whole
/// fleet, watched for three hours, against a previous release seen for only half an hour
/// before it, must not look worse on crash-free users (it did, in every seed, before the spans
/// were made equal).
#[test]
fn a_clean_release_with_the_whole_fleet_is_not_flagged_against_a_short_history() {
    let base = RolloutSpec::default();
    let spec = RolloutSpec {
        full_fleet: true,
        rollout_ms: base.start_ms + 30 * 60_000,
        end_ms: base.start_ms + 30 * 60_000 + 3 * 3_600_000,
        seed: 1000,
        ..base
    };
    let outcome = sim::run(&spec, &DetectConfig::default());
    assert!(
        outcome.detections.is_empty(),
        "{:?}",
        outcome.detections.first().map(|d| &d.summary)
    );
}

#[test]
fn times_at_the_ends_of_the_range_do_not_overflow() {
    let mut releases = ReleaseDetector::new(DetectConfig::default());
    let mut perf = PerfDetector::new(DetectConfig::default());
    let mut spikes = spike::SpikeDetector::new(DetectConfig::default());
    let mut state = spike::SpikeState::default();
    let mut out = Vec::new();
    for (i, t) in [i64::MIN, i64::MAX, 0, i64::MIN, i64::MAX]
        .into_iter()
        .enumerate()
    {
        let session = trellis_schemas::records::SessionRecord {
            session_id: format!("s{i}"),
            project: "p".into(),
            started_ms: t,
            ended_ms: t,
            version: 1,
            ..Default::default()
        };
        releases.observe(&session, &mut out);
        let partial = trellis_schemas::records::HealthPartial {
            partial_id: format!("p{i}"),
            project: "p".into(),
            window_start_ms: t,
            window_ms: t,
            ..Default::default()
        };
        perf.observe(&partial, &mut out);
        spikes.observe(&mut state, "p", "i", t, &mut out);
    }
    assert!(out.is_empty());
}

#[test]
fn a_late_session_replayed_after_newer_ones_counts_once() {
    let sessions = sim::sessions(&spec(2, 1.0));
    let late = sessions[sessions.len() / 2].clone();
    let mut detector = ReleaseDetector::new(DetectConfig::default());
    let mut out = Vec::new();
    for s in &sessions[..sessions.len() * 3 / 4] {
        detector.observe(s, &mut out);
    }
    // Sessions of another project at a much later event time must not make this project's
    // detector forget what it counted.
    let mut other = sessions[0].clone();
    other.project = "other".into();
    other.started_ms += 30 * 24 * 3_600_000;
    other.ended_ms += 30 * 24 * 3_600_000;
    detector.observe(&other, &mut out);
    let counted = detector.counters.sessions;
    detector.observe(&late, &mut out);
    assert_eq!(
        detector.counters.sessions, counted,
        "the replayed session counted again"
    );
    assert_eq!(detector.counters.replayed, 1);
    // A session that ended further back than the replay memory reaches is not counted at all.
    let mut ancient = sessions[0].clone();
    ancient.session_id = "ancient".into();
    detector.observe(&ancient, &mut out);
    assert_eq!(detector.counters.sessions, counted);
    assert_eq!(detector.counters.too_old, 1);
}
