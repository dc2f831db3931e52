//! Alert delivery on the real broker, with real HTTP receivers: `trellis alert` reads findings
//! from `detections` (published here as the `detect` stage would), decides alerts into the
//! `alerts` outbox and delivers them, signed, with retries.
//!
//! What a receiver relies on: one decision arrives under one idempotency key however often it
//! had to be retried, a crash before delivery still delivers and a crash after it does not
//! deliver again, and a receiver that never answers leaves a dead letter with the reason and an
//! `undelivered` count on `/metrics`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_bus::{Bus, Message};
use trellis_schemas::Release;
use trellis_schemas::records::{self, Alert, AuditEntry, Detection};
use trellis_schemas::topics;

use support::receiver::{Receiver, signed_by};
use support::{SESSION_TIMEOUT, Trellis, brokers, free_port};

const SECRET: &str = "rollback-service-secret";

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    names: topics::Names,
    bus: Arc<dyn Bus>,
    metrics_port: u16,
}

/// A configuration for `trellis alert` with a topic prefix of its own: the guard halts on a
/// critical release regression by calling `url`.
fn setup(name: &str, url: &str, attempts: u32) -> Setup {
    setup_with(
        name,
        &format!(
            "[alerts.delivery]\nattempts = {attempts}\nbackoff_min = \"100ms\"\n\
             backoff_max = \"400ms\"\ntimeout = \"2s\"\n\
             [alerts.destinations.rollback]\nkind = \"webhook\"\nurl = {url:?}\n\
             secret = {SECRET:?}\n\
             [[alerts.rules]]\nname = \"guard\"\naction = \"halt\"\nmin_severity = \"critical\"\n\
             destinations = [\"rollback\"]\n"
        ),
    )
}

/// A configuration for `trellis alert` with a topic prefix of its own and `alerts` (TOML
/// tables under `[alerts]`).
fn setup_with(name: &str, alerts: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let prefix = format!("alerts-{name}-{}-{metrics_port}.", std::process::id());
    let config = dir.path().join("trellis.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [bus]\nkind = \"kafka\"\nbrokers = {brokers:?}\nsession_timeout = \"{session}s\"\n\
             [topics]\npartitions = 2\nprefix = {prefix:?}\n\
             [processors]\ncheckpoint_interval = \"300ms\"\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             group = \"{prefix}process\"\nissues_group = \"{prefix}issues\"\n\
             [processors.detect]\ngroup = \"{prefix}detect\"\nperf_group = \"{prefix}detect-perf\"\n\
             [sinks.parquet]\ngroup = \"{prefix}parquet\"\nmax_age = \"1s\"\n\
             [alerts]\ngroup = \"{prefix}alert\"\ndeliver_group = \"{prefix}deliver\"\n\
             {alerts}",
            data = dir.path().display().to_string(),
            brokers = brokers(),
            session = SESSION_TIMEOUT.as_secs(),
        ),
    )
    .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::kafka::KafkaBus::new(&trellis_bus::config::KafkaConfig {
            brokers: brokers(),
            ..Default::default()
        })
        .unwrap(),
    );
    Setup {
        dir,
        config,
        names: topics::Names::new(&prefix),
        bus,
        metrics_port,
    }
}

fn release() -> Release {
    Release {
        platform: "android".into(),
        app_version: "5.2.0".into(),
        build: Some("5200".into()),
        runtime_version: Some("5.2".into()),
        update_id: Some("0b7e-upd".into()),
        channel: Some("production".into()),
        environment: Some("production".into()),
    }
}

/// The bad update's crash-rate finding, at `status` (version `version`).
fn finding(status: &str, version: i64) -> Detection {
    Detection {
        detection_id: "0f".repeat(16),
        project: "shop".into(),
        kind: "release_regression".into(),
        release: release(),
        metric: "crash_rate".into(),
        baseline: "fleet".into(),
        baseline_value: 0.01,
        baseline_count: 20_000,
        candidate_value: 0.04,
        candidate_count: 1_200,
        statistic: 9.5,
        threshold: 5.3,
        window_start_ms: 1_764_900_000_000,
        window_end_ms: 1_764_903_600_000 + version * 60_000,
        opened_ms: 1_764_903_600_000,
        status: status.into(),
        summary: "Crash rate 4.00% against 1.00% on the fleet".into(),
        version,
        ..Detection::default()
    }
}

async fn publish(s: &Setup, detection: &Detection) {
    // Every topic, as `trellis alert` creates them, so the test can read them from the start.
    for topic in s.names.all() {
        s.bus.create_topic(topic, 2).await.unwrap();
    }
    s.bus
        .producer()
        .unwrap()
        .publish(vec![Message::new(
            s.names.detections.as_str(),
            detection.project.as_bytes().to_vec(),
            records::encode(detection).unwrap(),
        )])
        .await
        .unwrap();
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "after {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alert(config: &Path) -> Trellis {
    Trellis::spawn(config, "alert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_retried_three_times_arrives_under_one_key_and_its_resolution_under_another() {
    let receiver = Receiver::start();
    receiver.answer_next(&[500, 500, 500]);
    let s = setup("retry", &format!("{}/rollback", receiver.base), 6);
    let _trellis = alert(&s.config);
    publish(&s, &finding("open", 1)).await;
    wait_until("four attempts", 120, || receiver.received().len() >= 4);

    let halts = receiver.received();
    assert_eq!(
        halts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    let key = halts[0].json()["id"].as_str().unwrap().to_string();
    for r in &halts {
        let body = r.json();
        assert_eq!(
            body["id"],
            key.as_str(),
            "the same idempotency key every time"
        );
        assert_eq!(r.header("X-Trellis-Delivery"), Some(key.as_str()));
        assert!(signed_by(r, SECRET), "a valid signature: {r:?}");
        assert!(!signed_by(r, "another-secret-entirely"));
        assert_eq!(body["type"], "rollout.halt");
    }
    let body = halts[3].json();
    assert_eq!(body["project"], "shop");
    assert_eq!(
        body["release"],
        serde_json::to_value(release()).unwrap(),
        "the full release identity"
    );
    assert_eq!(body["metric"], "crash_rate");
    assert_eq!(body["baseline"]["value"], 0.01);
    assert_eq!(body["baseline"]["count"], 20_000);
    assert_eq!(body["candidate"]["value"], 0.04);
    assert_eq!(body["candidate"]["count"], 1_200);
    assert_eq!(body["statistic"], 9.5);
    assert_eq!(body["threshold"], 5.3);
    assert_eq!(body["window_end"], "2025-12-05T03:01:00.000Z");
    assert!(body["detected_at"].as_str().unwrap().starts_with("20"));

    // The finding confirmed changes nothing a receiver hears; resolved, it is one more call.
    publish(&s, &finding("confirmed", 2)).await;
    publish(&s, &finding("resolved", 3)).await;
    wait_until("the resolution", 60, || receiver.received().len() >= 5);
    std::thread::sleep(Duration::from_secs(3));
    let all = receiver.received();
    assert_eq!(all.len(), 5, "{all:#?}");
    let resolved = all[4].json();
    assert_eq!(resolved["type"], "alert.resolved");
    assert_ne!(resolved["id"], key.as_str());
    assert!(signed_by(&all[4], SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_good_leaves_a_dead_letter_and_an_undelivered_count() {
    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}/rollback", free_port());
    let s = setup("down", &url, 3);
    let _trellis = alert(&s.config);
    publish(&s, &finding("open", 1)).await;

    let mut dlq = s
        .bus
        .consumer(&format!("{}watch", s.names.prefix), &[s.names.dlq.as_str()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let letter = loop {
        let records = dlq.poll(100, Duration::from_millis(200)).await.unwrap();
        if let Some(r) = records.into_iter().find(|r| {
            r.header(trellis_bus::dlq::headers::STAGE) == Some(b"alert-deliver".as_slice())
        }) {
            break r;
        }
        assert!(Instant::now() < deadline, "no dead letter");
    };
    let reason = String::from_utf8_lossy(letter.header(trellis_bus::dlq::headers::REASON).unwrap())
        .into_owned();
    assert!(
        reason.starts_with("rollback: ") && reason.ends_with("(gave up after 3 attempts)"),
        "{reason}"
    );
    let alert: trellis_schemas::records::Alert = records::decode(&letter.payload).unwrap();
    assert_eq!(alert.event, "rollout.halt");

    let metrics = ureq::get(&format!("http://127.0.0.1:{}/metrics", s.metrics_port))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(
            "trellis_processor_records_total{stage=\"alert-deliver\",outcome=\"undelivered\"} 1"
        ),
        "{metrics}"
    );
    let _ = s.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_delivery_delivers_after_restart_and_a_crash_after_does_not_again() {
    let receiver = Receiver::start();
    receiver.answer_otherwise(503);
    let s = setup("crash", &format!("{}/rollback", receiver.base), 1000);
    let mut trellis = alert(&s.config);
    publish(&s, &finding("open", 1)).await;
    // The decision is in the outbox and being retried: kill before it is delivered.
    wait_until("a first attempt", 120, || !receiver.received().is_empty());
    trellis.kill();
    receiver.answer_otherwise(200);
    std::thread::sleep(SESSION_TIMEOUT + Duration::from_secs(1));
    let mut trellis = alert(&s.config);
    wait_until("the delivery after restart", 120, || {
        receiver.received().iter().any(|r| r.status == 200)
    });
    // Delivered: kill again, after the delivery, and restart.
    std::thread::sleep(Duration::from_secs(2));
    trellis.kill();
    std::thread::sleep(SESSION_TIMEOUT + Duration::from_secs(1));
    let _trellis = alert(&s.config);
    std::thread::sleep(Duration::from_secs(8));

    let all = receiver.received();
    let keys: std::collections::BTreeSet<String> = all
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 1, "one decision, one key: {keys:?}");
    assert_eq!(
        all.iter().filter(|r| r.status == 200).count(),
        1,
        "delivered exactly once: {:?}",
        all.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|r| signed_by(r, SECRET)));
}

/// Reads `topic` from the start until `done` holds for what was read.
async fn read_until<T: trellis_schemas::records::Record>(
    s: &Setup,
    topic: &str,
    secs: u64,
    done: impl Fn(&[T]) -> bool,
) -> Vec<T> {
    let mut consumer = s
        .bus
        .consumer(&format!("{}read-{topic}", s.names.prefix), &[topic])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "after {secs} s, {topic} held {} records",
            seen.len()
        );
        for r in consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            seen.push(records::decode::<T>(&r.payload).unwrap());
        }
    }
    seen
}

const EXPO: &str = "/--/api/v2/push";

fn token(name: &str) -> String {
    format!("ExponentPushToken[{name:x<22}]")
}

/// Slack gets Block Kit; Expo gets batches shaped like the Expo SDK's, with 429 retried, and
/// the tokens Expo answers `DeviceNotRegistered` for (in a ticket, or later in a receipt) leave
/// the on-call list with an audit entry each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_expo_receive_what_the_rules_say() {
    let receiver = Receiver::start();
    let sends = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    receiver.respond(&format!("{EXPO}/send"), {
        let sends = sends.clone();
        move |r| {
            if sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return (429, serde_json::json!({"detail": "slow down"}));
            }
            let tickets: Vec<serde_json::Value> = r
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let to = m["to"].as_str().unwrap();
                    if to == token("gone") {
                        serde_json::json!({"status": "error", "message": "not registered",
                        "details": {"error": "DeviceNotRegistered", "expoPushToken": to}})
                    } else {
                        serde_json::json!({"status": "ok", "id": format!("ticket-{to}")})
                    }
                })
                .collect();
            (200, serde_json::json!({ "data": tickets }))
        }
    });
    receiver.respond(&format!("{EXPO}/getReceipts"), |r| {
        let mut data = serde_json::Map::new();
        for id in r.json()["ids"].as_array().unwrap() {
            let id = id.as_str().unwrap();
            let receipt = if id.contains(&token("later")) {
                serde_json::json!({"status": "error", "message": "gone since",
                    "details": {"error": "DeviceNotRegistered"}})
            } else {
                serde_json::json!({"status": "ok"})
            };
            data.insert(id.to_string(), receipt);
        }
        (200, serde_json::json!({ "data": data }))
    });
    let s = setup_with(
        "expo",
        &format!(
            "[alerts.delivery]\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n\
             [alerts.destinations.slack]\nkind = \"slack\"\n\
             url = \"{base}/services/T000/B000/XXXXXXXX\"\n\
             [alerts.destinations.oncall]\nkind = \"expo\"\nurl = \"{base}{EXPO}\"\n\
             access_token = \"expoAccessToken123\"\nreceipt_delay = \"1s\"\n\
             tokens = [{a:?}, {gone:?}, {later:?}]\n\
             [[alerts.rules]]\nname = \"regressions\"\n",
            base = receiver.base,
            a = token("a"),
            gone = token("gone"),
            later = token("later"),
        ),
    );
    let _trellis = alert(&s.config);
    publish(&s, &finding("open", 1)).await;
    let removed =
        read_until::<trellis_schemas::records::AuditEntry>(&s, &s.names.audit, 120, |e| {
            e.len() >= 2
        })
        .await;
    let mut subjects: Vec<_> = removed
        .iter()
        .map(|e| (e.action.as_str(), e.subject.clone()))
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            ("push_token.removed", format!("oncall: {}", token("gone"))),
            ("push_token.removed", format!("oncall: {}", token("later"))),
        ]
    );
    assert!(
        removed
            .iter()
            .all(|e| e.project == "shop" && e.actor == "trellis deliverer")
    );

    // The resolution goes to the one token left.
    publish(&s, &finding("resolved", 2)).await;
    wait_until("the resolution", 60, || {
        receiver.received_at(&format!("{EXPO}/send")).len() >= 3
            && receiver.received_at("/services/T000/B000/XXXXXXXX").len() >= 2
    });
    let pushes = receiver.received_at(&format!("{EXPO}/send"));
    assert_eq!(
        pushes.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200, 200],
        "429 retried, then one call per notification"
    );
    for push in &pushes {
        assert_eq!(
            push.header("authorization"),
            Some("Bearer expoAccessToken123")
        );
        assert_eq!(push.header("content-type"), Some("application/json"));
        assert_eq!(push.header("accept"), Some("application/json"));
        for message in push.json().as_array().unwrap() {
            let keys: Vec<&str> = message
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            // The fields of a message as expo-server-sdk sends it.
            let sdk = [
                "to",
                "title",
                "body",
                "data",
                "sound",
                "priority",
                "channelId",
                "badge",
                "ttl",
            ];
            assert!(keys.iter().all(|k| sdk.contains(k)), "{message}");
            assert!(!message["title"].as_str().unwrap().is_empty());
        }
    }
    let to = |r: &support::receiver::Received| -> Vec<String> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["to"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(to(&pushes[1]), [token("a"), token("gone"), token("later")]);
    assert_eq!(to(&pushes[2]), [token("a")]);
    assert_eq!(pushes[2].json()[0]["data"]["type"], "alert.resolved");

    let slack = receiver.received_at("/services/T000/B000/XXXXXXXX");
    assert_eq!(slack.len(), 2, "firing, then resolved");
    for message in &slack {
        let body = message.json();
        assert_eq!(body["blocks"][0]["type"], "header");
        assert_eq!(
            body["blocks"][1]["fields"][0]["text"],
            "*Candidate:*\n4.00% of 1200 sessions"
        );
    }
    assert!(
        slack[1].json()["text"]
            .as_str()
            .unwrap()
            .contains("Resolved")
    );
}

/// During a destination's quiet hours its notifications wait and go out as one digest when
/// the window ends; a halt never waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_notifications_for_a_digest_but_never_a_halt() {
    let receiver = Receiver::start();
    let minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let hhmm = |m: u64| format!("{:02}:{:02}", (m / 60) % 24, m % 60);
    // The window started an hour ago and ends within two minutes.
    let quiet = format!(
        "quiet_hours = {{ from = {:?}, to = {:?} }}\n",
        hhmm(minute - 60),
        hhmm(minute + 2)
    );
    let s = setup_with(
        "quiet",
        &format!(
            "[alerts.destinations.slack]\nkind = \"slack\"\nurl = \"{base}/slack\"\n{quiet}\
             [alerts.destinations.rollback]\nkind = \"webhook\"\nurl = \"{base}/rollback\"\n\
             secret = {SECRET:?}\n{quiet}\
             [[alerts.rules]]\nname = \"regressions\"\ndestinations = [\"slack\"]\n\
             [[alerts.rules]]\nname = \"guard\"\naction = \"halt\"\nmin_severity = \"critical\"\n\
             destinations = [\"rollback\"]\n",
            base = receiver.base,
        ),
    );
    let _trellis = alert(&s.config);
    publish(&s, &finding("open", 1)).await;
    wait_until("the halt", 60, || {
        !receiver.received_at("/rollback").is_empty()
    });
    assert_eq!(
        receiver.received_at("/rollback")[0].json()["type"],
        "rollout.halt"
    );
    assert!(receiver.received_at("/slack").is_empty(), "Slack waits");
    publish(&s, &finding("resolved", 2)).await;
    wait_until("the digest", 240, || {
        !receiver.received_at("/slack").is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    let slack = receiver.received_at("/slack");
    assert_eq!(slack.len(), 1, "one digest: {slack:#?}");
    let digest = slack[0].json();
    assert_eq!(digest["text"], ":bell: 2 alerts during quiet hours");
    assert_eq!(digest["blocks"].as_array().unwrap().len(), 3, "{digest:#}");
    // The rollback service heard of the halt at once and of the resolution with the digest.
    let rollback = receiver.received_at("/rollback");
    assert_eq!(rollback.len(), 2, "{rollback:#?}");
    assert_eq!(rollback[1].json()["type"], "alert.digest");
    assert_eq!(rollback[1].json()["alerts"][0]["type"], "alert.resolved");
    assert!(signed_by(&rollback[1], SECRET));
}

const PIPELINE: &str = "release-pipeline-token-01";
const ADMIN: &str = "on-call-admin-token-0001";
const OTHER: &str = "other-project-token-0001";

/// `trellis --config CONFIG ARGS...`: (whether it succeeded, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TRELLIS_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `trellis ARGS` until its output satisfies `done` (the Parquet sink writes within
/// seconds); fails with the last output.
fn list_until(config: &Path, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, err) = cli(config, args);
        if ok && done(&out) {
            return out;
        }
        if Instant::now() > deadline {
            let (_, audit, e) = cli(
                config,
                &["query", "SELECT action, subject, actor FROM audit"],
            );
            panic!("after 60 s, {args:?} printed:\n{out}{err}\naudit:\n{audit}{e}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A deployment pipeline registers a rollout and people override the guard, through the admin
/// API and the CLI of a running `trellis run`: an ignored update is never halted, a halt and a
/// resume by hand reach the rollback service signed, an acknowledgement changes the alert, and
/// every one of them is an audit entry with its actor, listed by `trellis rollouts list` and
/// `trellis alerts list` from the Parquet tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_reach_the_guard_the_rollback_service_and_the_audit_trail() {
    let receiver = Receiver::start();
    let hook = format!("{}/rollback", receiver.base);
    let port = free_port();
    let s = setup_with(
        "overrides",
        &format!(
            "[alerts.delivery]\nbackoff_min = \"100ms\"\nbackoff_max = \"400ms\"\n\
             [alerts.destinations.rollback]\nkind = \"webhook\"\nurl = {hook:?}\n\
             secret = {SECRET:?}\n\
             [[alerts.rules]]\nname = \"guard\"\naction = \"halt\"\nmin_severity = \"critical\"\n\
             destinations = [\"rollback\"]\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\n\
             admin_tokens = [{ADMIN:?}, \
               {{ token = {PIPELINE:?}, name = \"pipeline\", projects = [\"shop\"] }}, \
               {{ token = {OTHER:?}, name = \"other-team\", projects = [\"other\"] }}]\n\
             [[ingest.projects]]\nname = \"shop\"\nkeys = [\"shop_key_000001\"]\n\
             [[ingest.projects]]\nname = \"other\"\nkeys = [\"other_key_00001\"]\n"
        ),
    );
    let config = s.config.as_path();
    let _trellis = Trellis::spawn(config, "run");
    let url = format!("http://127.0.0.1:{port}");
    wait_until("trellis ready", 120, || {
        ureq::get(&format!("{url}/readyz")).call().is_ok()
    });
    let admin = |token: &'static str, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", url.as_str(), "--token", token]);
        cli(config, &all)
    };

    // A pipeline registers the bad update at 5%, then on-call tells the guard to leave it be.
    let (ok, out, err) = admin(
        PIPELINE,
        &[
            "rollouts",
            "register",
            "--project",
            "shop",
            "--update-id",
            "0b7e-upd",
            "--channel",
            "production",
            "--runtime-version",
            "5.2",
            "--percentage",
            "5",
            "--who",
            "eas",
        ],
    );
    assert!(ok && out.contains("command_id"), "{out}{err}");
    let (ok, _, err) = admin(
        OTHER,
        &[
            "rollouts",
            "halt",
            "--project",
            "shop",
            "--update-id",
            "0b7e-upd",
        ],
    );
    assert!(
        !ok && err.contains("403") && err.contains("may not change project \\\"shop\\\""),
        "{err}"
    );
    let (ok, out, err) = admin(
        ADMIN,
        &[
            "rollouts",
            "ignore",
            "--project",
            "shop",
            "--update-id",
            "0b7e-upd",
            "--who",
            "ana",
            "--reason",
            "crash rate is a known reporting bug",
        ],
    );
    assert!(ok, "{out}{err}");

    // The finding that would halt it: the guard notifies instead.
    publish(&s, &finding("open", 1)).await;
    wait_until("the alert", 60, || !receiver.received().is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    let firing = got[0].json();
    assert_eq!(
        firing["type"], "alert.firing",
        "never a halt for an ignored update"
    );
    assert_eq!(firing["release"]["update_id"], "0b7e-upd");
    let alert_id = firing["alert_id"].as_str().unwrap().to_string();

    // A halt by hand of another update, then its resume: both signed, both once.
    for (action, reason) in [
        ("halt", "crash loop on launch"),
        ("resume", "fixed server-side"),
    ] {
        let (ok, out, err) = admin(
            ADMIN,
            &[
                "rollouts",
                action,
                "--project",
                "shop",
                "--update-id",
                "1c8f-upd",
                "--who",
                "ana",
                "--reason",
                reason,
            ],
        );
        assert!(ok, "{out}{err}");
    }
    wait_until("the halt and the resume", 60, || {
        receiver.received().len() >= 3
    });
    std::thread::sleep(Duration::from_secs(2));
    let got = receiver.received();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got.iter().all(|r| signed_by(r, SECRET)));
    let (halt, resume) = (got[1].json(), got[2].json());
    assert_eq!(
        (halt["type"].as_str(), halt["release"]["update_id"].as_str()),
        (Some("rollout.halt"), Some("1c8f-upd"))
    );
    assert_eq!(
        halt["summary"],
        "Halted by ana (admin): crash loop on launch"
    );
    assert_eq!(resume["type"], "rollout.resume");
    assert_ne!(halt["id"], resume["id"]);

    // The alert acknowledged: its next version says so.
    let (ok, out, err) = admin(
        ADMIN,
        &["alerts", "ack", "--project", "shop", "--id", &alert_id],
    );
    assert!(ok, "{out}{err}");
    let alerts = read_until::<Alert>(&s, &s.names.alerts, 60, |seen| {
        seen.iter().any(|a| a.state == "acknowledged")
    })
    .await;
    let acked = alerts.iter().find(|a| a.state == "acknowledged").unwrap();
    assert_eq!(
        (acked.alert_id.as_str(), acked.event.as_str()),
        (alert_id.as_str(), "none")
    );

    // Every override is an audit entry with its actor; the guard's own decision was not a halt.
    let audit = read_until::<AuditEntry>(&s, &s.names.audit, 60, |seen| seen.len() >= 5).await;
    let trail: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.subject.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            ("rollout.register", "0b7e-upd", "eas (pipeline)"),
            ("rollout.ignore", "0b7e-upd", "ana (admin)"),
            ("rollout.halt", "1c8f-upd", "ana (admin)"),
            ("rollout.resume", "1c8f-upd", "ana (admin)"),
            ("alert.ack", alert_id.as_str(), "admin"),
        ]
    );
    assert_eq!(audit[1].reason, "crash rate is a known reporting bug");

    // The listings read what the Parquet sink wrote.
    let listed = list_until(
        config,
        &["rollouts", "list", "--project", "shop"],
        |listed| {
            listed
                .lines()
                .any(|l| l.contains("1c8f-upd") && l.contains("resume by ana"))
        },
    );
    let line = |update: &str| {
        listed
            .lines()
            .find(|l| l.contains(update))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        line("0b7e-upd").starts_with(
            "shop 0b7e-upd production 5.2 0 0 registered 5% ignored ignore by ana (admin) at 20"
        ),
        "{listed}"
    );
    assert!(
        line("1c8f-upd").starts_with("shop 1c8f-upd 0 0 - active resume by ana (admin) at 20"),
        "{listed}"
    );
    list_until(config, &["alerts", "list"], |listed| {
        listed
            .lines()
            .any(|l| l.contains(&alert_id) && l.contains(" acknowledged "))
    });
}
