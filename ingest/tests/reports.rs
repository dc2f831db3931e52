//! What release pipelines and app servers report through the admin API: deploy markers and
//! Expo's push tickets and receipts, who may report them, what a bad report gets, and what
//! reaches the bus.

mod common;

use common::Harness;
use common::admin::{ANY, PIPELINE, harness, read, send};
use serde_json::json;
use trellis_schemas::records;
use trellis_schemas::topics;

/// The deploy markers on `deploys`, once `want` arrived (watching a while when none is).
async fn deploys(h: &Harness, want: usize) -> Vec<records::Deploy> {
    read(h, topics::DEPLOYS, want, |_, payload| {
        records::decode::<records::Deploy>(payload).expect("deploys holds deploys")
    })
    .await
}

#[tokio::test]
async fn deploys_are_marked_once_with_clear_refusals() {
    let (h, project, second) = harness().await;
    h.bus.create_topic(topics::DEPLOYS, 2).await.unwrap();
    let path = format!("/v1/projects/{project}/deploys");
    let update = json!({
        "action": "update_published", "deploy_id": "eas-update-group-1", "at": "2026-12-01T10:00:00Z",
        "platform": "ios", "app_version": "2.14.0", "runtime_version": "2.14",
        "update_id": "7d3e9a10-0000-4000-8000-000000000001", "channel": "production",
        "who": "eas-workflow", "link": "https://expo.dev/accounts/plants/updates/1", "message": "fix the crash on PlantDetail",
    });
    // The OpenAPI document's example is this deploy.
    let doc = h.get("/openapi.json").await.json();
    assert_eq!(
        doc["paths"]["/v1/projects/{project}/deploys"]["post"]["requestBody"]["content"]["application/json"]
            ["example"],
        update
    );
    let r = send(&h, "POST", PIPELINE, &path, update.clone()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["deploy_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    // Sent again with the same deploy_id: the same deploy.
    let r = send(&h, "POST", ANY, &path, update).await;
    assert_eq!(r.json()["deploy_id"], id.as_str());
    let rollback = json!({"action": "rolled_back", "app_version": "2.14.0", "update_id": "7d3e9a10-0000-4000-8000-000000000001", "at": 1796205600000i64});
    let r = send(&h, "POST", PIPELINE, &path, rollback).await;
    assert_eq!(r.status, 202, "{}", r.body);

    let seen = deploys(&h, 3).await;
    assert_eq!(seen.len(), 3);
    let d = &seen[0];
    assert_eq!(
        (d.deploy_id.as_str(), d.project.as_str(), d.action.as_str()),
        (id.as_str(), project.as_str(), "update_published")
    );
    assert_eq!(d.deployed_ms, 1796119200000); // 2026-12-01T10:00:00Z
    assert_eq!(
        d.release.update_id.as_deref(),
        Some("7d3e9a10-0000-4000-8000-000000000001")
    );
    assert_eq!(d.release.channel.as_deref(), Some("production"));
    assert_eq!(d.actor.as_deref(), Some("eas-workflow (release-pipeline)"));
    assert_eq!(
        d.link.as_deref(),
        Some("https://expo.dev/accounts/plants/updates/1")
    );
    assert_eq!(seen[1].deploy_id, id);
    assert_eq!(
        (seen[2].action.as_str(), seen[2].deployed_ms),
        ("rolled_back", 1_796_205_600_000)
    );
    assert_ne!(seen[2].deploy_id, id);

    // What a bad deploy gets; none reaches the bus.
    let good = json!({"action": "promoted", "app_version": "2.14.0"});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let cases = [
        (
            PIPELINE,
            path.clone(),
            with("action", json!("shipped")),
            400,
            "action must be one of",
        ),
        (
            PIPELINE,
            path.clone(),
            json!({"action": "promoted"}),
            400,
            "app_version, its update_id",
        ),
        (
            PIPELINE,
            path.clone(),
            with("at", json!("yesterday")),
            400,
            "at must be",
        ),
        (
            PIPELINE,
            path.clone(),
            with("link", json!("javascript:alert(1)")),
            400,
            "link must be",
        ),
        (
            PIPELINE,
            path.clone(),
            with("build", json!("x".repeat(129))),
            400,
            "build must be",
        ),
        (
            PIPELINE,
            path.clone(),
            with("colour", json!("blue")),
            400,
            "unknown field",
        ),
        (
            "not-a-token-at-all",
            path.clone(),
            good.clone(),
            403,
            "not an admin token",
        ),
        (
            PIPELINE,
            format!("/v1/projects/{second}/deploys"),
            good.clone(),
            403,
            "may not change",
        ),
    ];
    for (token, path, body, status, reason) in cases {
        let r = send(&h, "POST", token, &path, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.body.contains(reason), "{body}: {}", r.body);
    }
    let r = h.post(&path, &[], good.to_string().into_bytes()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(deploys(&h, 0).await.len(), 3);
}

async fn push_outcomes(h: &Harness, want: usize) -> Vec<records::PushOutcome> {
    read(h, topics::PUSH, want, |_, payload| {
        records::decode::<records::PushOutcome>(payload).expect("push holds push outcomes")
    })
    .await
}

/// What an app server forwards after sending two messages (the second to two devices) through
/// Expo and reading the receipts, shaped on what `expo-server-sdk-node` 6.x sends and Expo
/// answers: the send's tickets (one refused: the device is gone) and, later, the receipts.
fn expo_send() -> serde_json::Value {
    json!({
        "campaign": "spring-care",
        "sent_at": "2026-12-01T09:00:00Z",
        "messages": [
            {"to": "ExponentPushToken[xxxxxxxxxxxxxxxxxxxxxx]", "title": "Water your fern",
             "body": "It has been 5 days", "data": {"notification_id": "n-1", "url": "plants://fern"},
             "sound": "default", "priority": "high", "channelId": "care", "badge": 1},
            {"to": ["ExponentPushToken[yyyyyyyyyyyyyyyyyyyyyy]", "ExponentPushToken[zzzzzzzzzzzzzzzzzzzzzz]"],
             "title": "New guide", "body": "Repotting in winter", "ttl": 3600,
             "data": {"notification_id": "n-2", "campaign": "guides"}}
        ],
        "tickets": {"data": [
            {"status": "ok", "id": "e42d2795-fd07-4abb-9050-f7381114ad7e"},
            {"status": "ok", "id": "24fab47c-f186-4d6c-a23c-48e7188694d9"},
            {"status": "error",
             "message": "\"ExponentPushToken[zzzzzzzzzzzzzzzzzzzzzz]\" is not a registered push notification recipient",
             "details": {"error": "DeviceNotRegistered", "expoPushToken": "ExponentPushToken[zzzzzzzzzzzzzzzzzzzzzz]"}}
        ]}
    })
}

fn expo_receipts() -> serde_json::Value {
    json!({
        "read_at": 1796120100000i64,
        "receipts": {"data": {
            "e42d2795-fd07-4abb-9050-f7381114ad7e": {"status": "ok"},
            "24fab47c-f186-4d6c-a23c-48e7188694d9": {"status": "error",
                "message": "The device cannot receive push notifications anymore",
                "details": {"error": "DeviceNotRegistered"}}
        }}
    })
}

#[tokio::test]
async fn expo_tickets_and_receipts_become_push_outcomes_once_with_clear_refusals() {
    let (h, project, second) = harness().await;
    h.bus.create_topic(topics::PUSH, 2).await.unwrap();
    let tickets = format!("/v1/projects/{project}/push/tickets");
    let receipts = format!("/v1/projects/{project}/push/receipts");
    let doc = h.get("/openapi.json").await.json();
    for (path, example) in [
        ("/v1/projects/{project}/push/tickets", expo_send()),
        ("/v1/projects/{project}/push/receipts", expo_receipts()),
    ] {
        assert_eq!(
            doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"],
            example,
            "the OpenAPI document's example of {path}"
        );
    }
    let r = send(&h, "POST", PIPELINE, &tickets, expo_send()).await;
    assert_eq!(
        (r.status, r.json()["outcomes"].clone()),
        (202, json!(3)),
        "{}",
        r.body
    );
    let r = send(&h, "POST", PIPELINE, &receipts, expo_receipts()).await;
    assert_eq!(
        (r.status, r.json()["outcomes"].clone()),
        (202, json!(2)),
        "{}",
        r.body
    );

    let seen = push_outcomes(&h, 5).await;
    assert_eq!(seen.len(), 5, "{seen:#?}");
    let (t, r): (Vec<_>, Vec<_>) = seen.iter().partition(|o| o.step == "ticket");
    let row = |o: &records::PushOutcome| {
        (
            o.ticket_id.clone(),
            o.notification_id.clone(),
            o.campaign.clone(),
            o.token.clone(),
            o.status.clone(),
            o.error.clone(),
            o.at_ms,
        )
    };
    let s = |v: &str| Some(v.to_string());
    let (ok1, ok2) = (
        "e42d2795-fd07-4abb-9050-f7381114ad7e",
        "24fab47c-f186-4d6c-a23c-48e7188694d9",
    );
    let sent = 1_796_115_600_000; // 2026-12-01T09:00:00Z
    assert_eq!(
        t.iter().map(|o| row(o)).collect::<Vec<_>>(),
        [
            (
                s(ok1),
                s("n-1"),
                s("spring-care"),
                s("ExponentPushToken[xxxxxxxxxxxxxxxxxxxxxx]"),
                s("ok").unwrap(),
                None,
                sent
            ),
            (
                s(ok2),
                s("n-2"),
                s("guides"),
                s("ExponentPushToken[yyyyyyyyyyyyyyyyyyyyyy]"),
                s("ok").unwrap(),
                None,
                sent
            ),
            (
                None,
                s("n-2"),
                s("guides"),
                s("ExponentPushToken[zzzzzzzzzzzzzzzzzzzzzz]"),
                s("error").unwrap(),
                s("DeviceNotRegistered"),
                sent
            ),
        ]
    );
    assert!(
        t[2].message
            .as_deref()
            .unwrap()
            .contains("not a registered")
    );
    let mut r: Vec<_> = r.iter().map(|o| row(o)).collect();
    r.sort();
    assert_eq!(
        r,
        [
            (
                s(ok2),
                None,
                None,
                None,
                s("error").unwrap(),
                s("DeviceNotRegistered"),
                1_796_120_100_000
            ),
            (
                s(ok1),
                None,
                None,
                None,
                s("ok").unwrap(),
                None,
                1_796_120_100_000
            ),
        ]
    );
    assert!(
        seen.iter()
            .all(|o| o.project == project && o.outcome_id.len() == 32)
    );
    // Forwarded again (an app server's retry): the same outcomes, by id.
    let r = send(&h, "POST", ANY, &tickets, expo_send()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let again = push_outcomes(&h, 8).await;
    assert_eq!(again.len(), 8);
    let ids = |v: &[records::PushOutcome]| {
        v.iter()
            .filter(|o| o.step == "ticket")
            .map(|o| o.outcome_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids(&again), ids(&seen));
    assert_eq!(ids(&seen).len(), 3);

    // What a bad forward gets; none reaches the bus.
    let with = |key: &str, value: serde_json::Value| {
        let mut body = expo_send();
        body[key] = value;
        body
    };
    let mut two_tickets = expo_send();
    two_tickets["tickets"]["data"].as_array_mut().unwrap().pop();
    let mut bad_status = expo_send();
    bad_status["tickets"]["data"][0]["status"] = json!("maybe");
    let mut no_id = expo_send();
    no_id["tickets"]["data"][0]
        .as_object_mut()
        .unwrap()
        .remove("id");
    let many = json!({"receipts": (0..1001).map(|n| (format!("t-{n}"), json!({"status": "ok"}))).collect::<serde_json::Map<_, _>>()});
    let cases = [
        (
            PIPELINE,
            tickets.clone(),
            two_tickets,
            400,
            "the messages name 3 recipients and tickets has 2",
        ),
        (
            PIPELINE,
            tickets.clone(),
            bad_status,
            400,
            "tickets[0]: status must be",
        ),
        (
            PIPELINE,
            tickets.clone(),
            no_id,
            400,
            "tickets[0]: an ok ticket has an id",
        ),
        (
            PIPELINE,
            tickets.clone(),
            with("sent_at", json!("soon")),
            400,
            "sent_at must be",
        ),
        (
            PIPELINE,
            tickets.clone(),
            json!({"tickets": []}),
            400,
            "messages:",
        ),
        (
            PIPELINE,
            tickets.clone(),
            with("colour", json!("blue")),
            400,
            "unknown field",
        ),
        (PIPELINE, receipts.clone(), json!({}), 400, "receipts:"),
        (
            PIPELINE,
            receipts.clone(),
            many,
            413,
            "at most 1000 receipts",
        ),
        (
            "not-a-token-at-all",
            tickets.clone(),
            expo_send(),
            403,
            "not an admin token",
        ),
        (
            PIPELINE,
            format!("/v1/projects/{second}/push/receipts"),
            expo_receipts(),
            403,
            "may not change",
        ),
    ];
    for (token, path, body, status, reason) in cases {
        let r = send(&h, "POST", token, &path, body.clone()).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.body.contains(reason), "{path}: {}", r.body);
    }
    let r = h
        .post(&receipts, &[], expo_receipts().to_string().into_bytes())
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(push_outcomes(&h, 0).await.len(), 8);
}
