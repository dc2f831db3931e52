//! Alert delivery on the real broker, with real HTTP receivers: `trellis alert` reads findings
//! from `detections` (published here as the `detect` stage would), decides alerts into the
//! `alerts` outbox and delivers them, signed, with retries.
//!
//! What a receiver relies on: one decision arrives under one idempotency key however often it
//! had to be retried, a crash before delivery still delivers and a crash after it does not
//! deliver again, and a receiver that never answers leaves a dead letter with the reason and an
//! `undelivered` count on `/metrics`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_schemas::records;

use support::alerting::*;
use support::receiver::{Receiver, signed_by};
use support::{SESSION_TIMEOUT, free_port};

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
