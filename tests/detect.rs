//! Regression detection end to end on the real broker: `trellis run` receives a staged rollout
//! over HTTP (native session updates, event time compressed: two hours sent in seconds), with
//! one update that crashes four times as often as the fleet and one healthy update beside it,
//! and the errors of one issue that spikes to ten times its rate for a quarter of an hour.
//! The bad update gets a `release_regression` with its release identity and evidence, the
//! healthy one none, the issue one `issue_spike` that resolves; a SIGKILL of trellis mid-run
//! changes neither the detection ids nor their final status, compared with the same sessions fed
//! straight to the detector. The rollout guard halts the bad update with exactly one signed
//! `rollout.halt` call, never the healthy one, and Slack hears of the regression.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use trellis_bus::Bus;
use trellis_processors::detect::DetectConfig;
use trellis_processors::detect::release::{self, Metric, ReleaseDetector};
use trellis_processors::detect::sim::{self, RolloutSpec};
use trellis_processors::detect::spike;
use trellis_schemas::records::{self, Detection};
use trellis_schemas::topics;

use support::receiver::{Receiver, signed_by};
use support::{SESSION_TIMEOUT, Trellis, brokers, free_port};

const SECRET: &str = "rollback-service-secret";

const PROJECT: &str = "default";

/// `trellis run`, once ingest is ready.
fn start(config: &std::path::Path, base: &str) -> Trellis {
    let trellis = Trellis::spawn(config, "run");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(Instant::now() < deadline, "trellis run never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    trellis
}

/// The rollout: 4,000 devices, a session every 30 minutes each, an update on 10% of them with
/// four times the fleet's 1% crash rate and a healthy update on another 10%, half an hour after
/// the start; two hours of event time, ending a few minutes ago.
fn rollout() -> RolloutSpec {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let start_ms = (now - 2 * 3_600_000 - 10 * 60_000) / 60_000 * 60_000;
    RolloutSpec {
        seed: 21,
        devices: 4000,
        crash_factor: 4.0,
        candidate_share: 0.1,
        clean_share: 0.1,
        start_ms,
        rollout_ms: start_ms + 30 * 60_000,
        end_ms: start_ms + 2 * 3_600_000,
        ..RolloutSpec::default()
    }
}

/// One issue's errors, on a release of their own (so their implicit sessions are a cohort of
/// their own): 5 per 5 minutes, and 10 times that for 15 minutes starting 40 minutes before the
/// end.
fn errors(spec: &RolloutSpec) -> Vec<(i64, serde_json::Value)> {
    let mut rng = fastrand::Rng::with_seed(5);
    let spike = (spec.end_ms - 40 * 60_000)..(spec.end_ms - 25 * 60_000);
    let mut out = Vec::new();
    let mut t = spec.start_ms as f64;
    while (t as i64) < spec.end_ms {
        let at = t as i64;
        out.push((
            at,
            serde_json::json!({
                "kind": "error",
                "event_id": format!("00000000-0000-4000-9999-{:012}", out.len()),
                "timestamp": at,
                "device_id": format!("e{}", rng.u32(0..500)),
                "release": {"platform": "android", "app_version": "3.0.0"},
                "exceptions": [{"type": "PlantSyncError", "value": "sync failed"}],
            }),
        ));
        let per_5m = if spike.contains(&at) { 50.0 } else { 5.0 };
        t += -(1.0 - rng.f64()).ln() * 300_000.0 / per_5m;
    }
    // A new issue on the bad update that reaches 40 of its users within 25 minutes of the
    // rollout: new-issue velocity.
    let release = serde_json::to_value(sim::candidate_release(spec)).unwrap();
    for n in 0..40 {
        let at = spec.rollout_ms + 60_000 + n * 36_000;
        out.push((
            at,
            serde_json::json!({
                "kind": "error",
                "event_id": format!("00000000-0000-4000-8888-{n:012}"),
                "timestamp": at,
                "device_id": format!("v{n}"),
                "release": release,
                "exceptions": [{"type": "UpdateMigrationError", "value": "schema 7 missing"}],
            }),
        ));
    }
    out
}

fn send(base: &str, batch: &[serde_json::Value]) {
    let body = serde_json::json!({ "events": batch }).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = ureq::post(&format!("{base}/v1/batch"))
            .header("Authorization", "Bearer trellis_dev_key")
            .header("Content-Type", "application/json")
            .config()
            .http_status_as_error(false)
            .build()
            .send(body.as_bytes());
        if let Ok(mut r) = response {
            let text = r.body_mut().read_to_string().unwrap_or_default();
            if r.status() == 200 {
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(answer["accepted"], batch.len(), "{text}");
                return;
            }
            assert_eq!(r.status(), 503, "{text}");
        }
        assert!(Instant::now() < deadline, "ingest never accepted a batch");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the detector gives for the same sessions in end-time order, uninterrupted: each
/// detection id's newest record.
fn uninterrupted(spec: &RolloutSpec) -> BTreeMap<String, Detection> {
    let mut detector = ReleaseDetector::new(DetectConfig::default());
    let mut out = Vec::new();
    for mut s in sim::sessions(spec) {
        s.project = PROJECT.into();
        detector.observe(&s, &mut out);
    }
    newest(out)
}

fn newest(detections: Vec<Detection>) -> BTreeMap<String, Detection> {
    let mut by_id: BTreeMap<String, Detection> = BTreeMap::new();
    for d in detections {
        if by_id
            .get(&d.detection_id)
            .is_none_or(|old| old.version < d.version)
        {
            by_id.insert(d.detection_id.clone(), d);
        }
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_update_is_detected_end_to_end_and_a_sigkill_changes_no_detection() {
    let spec = rollout();
    let mut expected = uninterrupted(&spec);
    let bad = sim::candidate_release(&spec);
    let bad_crashes = release::detection_id(PROJECT, &bad, Metric::CrashRate, 1);
    // The seed gives findings on the bad update's crash rate and crashed-user rate, and none
    // on anything else.
    let bad_users = release::detection_id(PROJECT, &bad, Metric::CrashedUserRate, 1);
    assert_eq!(
        expected.keys().collect::<std::collections::BTreeSet<_>>(),
        [&bad_crashes, &bad_users].into_iter().collect(),
        "{expected:#?}"
    );
    assert_eq!(expected[&bad_crashes].status, "confirmed");
    // The new issue's errors (see `errors`) also leave sessions of the bad update errored, which
    // the simulated sessions alone have none of: one more finding, on its errored-session rate.
    let bad_errored = release::detection_id(PROJECT, &bad, Metric::ErroredRate, 1);
    expected.insert(
        bad_errored,
        Detection {
            status: "confirmed".into(),
            ..Detection::default()
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let receiver = Receiver::start();
    let prefix = format!("detect-{}-{port}.", std::process::id());
    let config = dir.path().join("trellis.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [bus]\nkind = \"kafka\"\nbrokers = {brokers:?}\nsession_timeout = \"{session}s\"\n\
             [topics]\npartitions = 2\nprefix = {prefix:?}\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\n\
             [processors]\ngroup = \"{prefix}process\"\nissues_group = \"{prefix}issues\"\n\
             checkpoint_interval = \"300ms\"\nidle_timeout = \"1s\"\n\
             [processors.detect]\ngroup = \"{prefix}detect\"\nperf_group = \"{prefix}detect-perf\"\n\
             spike_baseline = \"1h\"\n\
             [sinks.parquet]\ngroup = \"{prefix}parquet\"\nmax_age = \"1s\"\n\
             [alerts]\ngroup = \"{prefix}alert\"\ndeliver_group = \"{prefix}alert-deliver\"\n\
             [alerts.destinations.slack]\nkind = \"slack\"\n\
             url = \"{hooks}/services/T000/B000/XXXXXXXX\"\n\
             [alerts.destinations.rollback]\nkind = \"webhook\"\nurl = \"{hooks}/rollback\"\n\
             secret = {SECRET:?}\n\
             [[alerts.rules]]\nname = \"regressions\"\ndestinations = [\"slack\"]\n\
             [[alerts.rules]]\nname = \"guard\"\naction = \"halt\"\nmin_severity = \"critical\"\n\
             destinations = [\"rollback\"]\n",
            hooks = receiver.base,
            data = dir.path().display().to_string(),
            brokers = brokers(),
            session = SESSION_TIMEOUT.as_secs(),
        ),
    )
    .unwrap();

    let mut timed = sim::native_updates(&sim::sessions(&spec));
    timed.extend(errors(&spec));
    timed.sort_by_key(|(at, _)| *at);
    let updates: Vec<serde_json::Value> = timed.into_iter().map(|(_, u)| u).collect();
    let batches: Vec<&[serde_json::Value]> = updates.chunks(500).collect();
    let half = batches.len() / 2;

    let mut trellis = start(&config, &base);
    for batch in &batches[..half] {
        send(&base, batch);
    }
    // Let the detect stage read and checkpoint part of it, then kill everything mid-stream.
    let checkpoints = dir.path().join("checkpoints/detect");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&checkpoints).map_or(0, |d| d.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "the detect stage never checkpointed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    trellis.kill();
    std::thread::sleep(SESSION_TIMEOUT + Duration::from_secs(1));
    let _trellis = start(&config, &base);
    for batch in &batches[half..] {
        send(&base, batch);
    }

    // Read `detections` until the expected findings reached their final status and nothing new
    // came for ten seconds.
    let names = topics::Names::new(&prefix);
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::kafka::KafkaBus::new(&trellis_bus::config::KafkaConfig {
            brokers: brokers(),
            ..Default::default()
        })
        .unwrap(),
    );
    let mut consumer = bus
        .consumer(&format!("{prefix}watch"), &[names.detections.as_str()])
        .await
        .unwrap();
    let mut seen: Vec<Detection> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut quiet_since = Instant::now();
    loop {
        let records = consumer
            .poll(1000, Duration::from_millis(200))
            .await
            .unwrap();
        if !records.is_empty() {
            quiet_since = Instant::now();
        }
        for r in records {
            seen.push(records::decode::<Detection>(&r.payload).unwrap());
        }
        let statuses: BTreeMap<String, String> = newest(seen.clone())
            .into_iter()
            .map(|(id, d)| (id, d.status))
            .collect();
        let spike_resolved = seen
            .iter()
            .any(|d| d.kind == "issue_spike" && d.status == "resolved");
        let done = spike_resolved
            && expected
                .iter()
                .all(|(id, d)| statuses.get(id) == Some(&d.status));
        if done && quiet_since.elapsed() > Duration::from_secs(10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 300 s: {statuses:?}, expected {:?}",
            expected
                .iter()
                .map(|(k, d)| (k, &d.status))
                .collect::<Vec<_>>()
        );
    }

    let (issue_findings, observed): (BTreeMap<String, Detection>, BTreeMap<String, Detection>) =
        newest(seen.clone())
            .into_iter()
            .partition(|(_, d)| d.issue_id.is_some());
    let (spikes, velocity): (BTreeMap<String, Detection>, BTreeMap<String, Detection>) =
        issue_findings
            .into_iter()
            .partition(|(_, d)| d.kind == "issue_spike");
    assert_eq!(
        observed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{observed:#?}"
    );
    let finding = &observed[&bad_crashes];
    assert_eq!(finding.status, "confirmed");
    assert_eq!(finding.kind, "release_regression");
    assert_eq!(finding.release, bad, "the full release identity");
    assert_eq!(finding.metric, "crash_rate");
    assert_eq!(finding.baseline, "fleet");
    assert!(
        finding.candidate_value > 2.0 * finding.baseline_value,
        "{finding:#?}"
    );
    assert!(finding.statistic >= finding.threshold, "{finding:#?}");
    assert!(finding.candidate_count >= 300 && finding.baseline_count >= 2000);
    assert!(
        finding.window_end_ms > spec.rollout_ms && finding.window_end_ms <= spec.end_ms + 3_600_000
    );
    // Every version of the finding that was emitted twice (before and after the kill) is the
    // same status: a replay never contradicts what was published.
    let mut by_version: BTreeMap<(String, i64), String> = BTreeMap::new();
    for d in &seen {
        let old = by_version.insert((d.detection_id.clone(), d.version), d.status.clone());
        assert!(old.is_none_or(|s| s == d.status), "{d:#?}");
    }
    assert!(
        seen.iter().all(|d| d.release != sim::clean_release()),
        "the healthy update is never flagged"
    );

    // One spike, of the one issue, first episode, resolved once the rate was back.
    let query = |sql: &str| support::query_csv(&config, sql);
    let deadline = Instant::now() + Duration::from_secs(60);
    let issue = loop {
        let text = query("SELECT DISTINCT issue_id FROM issues WHERE title LIKE 'PlantSyncError%'");
        let ids: Vec<&str> = text.lines().skip(1).collect();
        if ids.len() == 1 {
            break ids[0].to_string();
        }
        assert!(
            Instant::now() < deadline,
            "Parquet never held the spiking issue: {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let spike_id = spike::detection_id(PROJECT, &issue, 1);
    assert_eq!(
        spikes.keys().collect::<Vec<_>>(),
        [&spike_id],
        "{spikes:#?}"
    );
    let finding = &spikes[&spike_id];
    assert_eq!((finding.status.as_str(), finding.version), ("resolved", 3));
    assert_eq!(finding.issue_id.as_deref(), Some(issue.as_str()));
    assert!(
        (spec.end_ms - 40 * 60_000..spec.end_ms - 25 * 60_000).contains(&finding.opened_ms),
        "opened inside the spike: {finding:#?}"
    );

    // The new issue on the bad update spread to a tenth of its users within the window: one
    // velocity finding, confirmed, on the update's full identity.
    assert_eq!(velocity.len(), 1, "{velocity:#?}");
    let fast = velocity.values().next().unwrap();
    assert_eq!(
        (
            fast.kind.as_str(),
            fast.status.as_str(),
            fast.metric.as_str()
        ),
        ("issue_velocity", "confirmed", "affected_user_rate"),
        "{fast:#?}"
    );
    assert_eq!(fast.release, bad);
    assert_ne!(fast.issue_id.as_deref(), Some(issue.as_str()));
    assert_eq!(fast.candidate_count, 40, "{fast:#?}");
    assert!(
        fast.candidate_value >= 0.01 && fast.baseline_count >= 200,
        "{fast:#?}"
    );

    // The README's query of the detections lists the bad update's finding as confirmed.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("trellis query \"SELECT d.status")
        .expect("the README shows the detections query");
    let readme_query = readme[start..]
        .split('"')
        .nth(1)
        .expect("the query is quoted")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = query(&readme_query);
        if text.contains("confirmed,crash_rate,2.0.0,update-candidate,") {
            break;
        }
        assert!(Instant::now() < deadline, "the README query: {text}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The stored table answers the same through `trellis query`.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = query(&format!(
            "SELECT detection_id, status FROM detections WHERE detection_id = '{bad_crashes}' \
             AND version = (SELECT max(version) FROM detections WHERE detection_id = '{bad_crashes}')"
        ));
        if text.contains(&format!("{bad_crashes},confirmed")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Parquet never held the finding: {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The guard halted the bad update once, signed, with its identity and evidence.
    wait_until_quiet(&receiver);
    let calls = receiver.received_at("/rollback");
    assert!(calls.iter().all(|r| signed_by(r, SECRET)), "{calls:#?}");
    let halts: Vec<serde_json::Value> = calls
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json())
        .filter(|b| b["type"] == "rollout.halt")
        .collect();
    assert_eq!(halts.len(), 1, "exactly one halt: {halts:#?}");
    let halt = &halts[0];
    assert_eq!(halt["release"], serde_json::to_value(&bad).unwrap());
    assert_eq!(halt["project"], PROJECT);
    assert!(halt["candidate"]["value"].as_f64() > halt["baseline"]["value"].as_f64());
    let clean = serde_json::to_value(sim::clean_release()).unwrap();
    assert!(
        calls.iter().all(|r| r.json()["release"] != clean),
        "the healthy update is never halted"
    );
    // Slack heard of the bad update, as Block Kit with a plain-text fallback.
    let slack = receiver.received_at("/services/T000/B000/XXXXXXXX");
    assert!(!slack.is_empty());
    for message in &slack {
        let body = message.json();
        assert!(body["text"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(body["blocks"][0]["type"], "header");
        assert!(
            body["blocks"][1]["fields"][2]["text"]
                .as_str()
                .unwrap()
                .contains("update update-candidate"),
            "{body:#}"
        );
    }
}

/// Waits until the receiver has had requests and none for five seconds.
fn wait_until_quiet(receiver: &Receiver) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut count, mut since) = (0, Instant::now());
    loop {
        let now = receiver.received().len();
        if now != count {
            (count, since) = (now, Instant::now());
        }
        if count > 0 && since.elapsed() > Duration::from_secs(5) {
            return;
        }
        assert!(Instant::now() < deadline, "no alert deliveries: {count}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
