//! The admin API's rollout and alert commands: who may give them, what a bad one gets, and
//! what reaches the bus (the alert stage's side is in the workspace's `tests/alerts.rs`).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::admin::{ANY, PIPELINE, error, harness, read, send};
use common::Harness;
use serde_json::json;
use trellis_schemas::records::{self, GuardCommand};
use trellis_schemas::topics;

/// The guard commands on `detections` (keyed by their project), once `want` arrived.
async fn commands(h: &Harness, want: usize) -> Vec<GuardCommand> {
    read(h, topics::DETECTIONS, want, |key, payload| {
        let c = records::decode::<GuardCommand>(payload).unwrap();
        assert_eq!(key, c.project.as_bytes());
        c
    })
    .await
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn tokens_are_scoped_to_their_projects_and_name_the_actor() {
    let (h, project, second) = harness().await;
    let halt = |p: &str| format!("/v1/projects/{p}/rollouts/u-1/halt");
    let r = h.post(&halt(&project), &[], b"{}".to_vec()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = send(
        &h,
        "POST",
        "not-an-admin-token-000",
        &halt(&project),
        json!({}),
    )
    .await;
    assert_eq!(error(&r), (403, "not an admin token".into()));
    let r = send(&h, "POST", PIPELINE, &halt(&second), json!({})).await;
    assert_eq!(
        error(&r),
        (403, format!("this token may not change project {second:?}"))
    );
    let r = send(&h, "POST", PIPELINE, &halt("nowhere"), json!({})).await;
    assert_eq!(error(&r), (404, "no project \"nowhere\"".into()));
    // Issue commands are scoped the same way.
    let issue = format!("/v1/projects/{second}/issues/{}/resolve", "a".repeat(32));
    let r = send(&h, "POST", PIPELINE, &issue, json!({})).await;
    assert_eq!(r.status, 403, "{}", r.body);

    let r = send(
        &h,
        "POST",
        PIPELINE,
        &halt(&project),
        json!({"reason": "crash loop"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["command_id"].as_str().unwrap().to_string();
    let r = send(&h, "POST", ANY, &halt(&second), json!({"who": "ana"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let got = commands(&h, 2).await;
    assert_eq!(got.len(), 2);
    let mine = got.iter().find(|c| c.project == project).unwrap();
    assert_eq!(
        (
            mine.command_id.as_str(),
            mine.action.as_str(),
            mine.update_id.as_deref(),
            mine.actor.as_str(),
            mine.reason.as_str()
        ),
        (
            id.as_str(),
            "halt",
            Some("u-1"),
            "release-pipeline",
            "crash loop"
        )
    );
    let theirs = got.iter().find(|c| c.project == second).unwrap();
    assert_eq!(theirs.actor, "ana (admin)");
}

#[tokio::test]
async fn rollouts_are_registered_changed_and_overridden_with_clear_refusals() {
    let (h, project, _) = harness().await;
    let rollouts = format!("/v1/projects/{project}/rollouts");
    for (body, reason) in [
        (
            json!({"channel": "production", "runtime_version": "2.14", "percentage": 5}),
            "update_id is required",
        ),
        (
            json!({"update_id": "u-9", "runtime_version": "2.14", "percentage": 5}),
            "channel and runtime_version are required",
        ),
        (
            json!({"update_id": "u-9", "channel": "production", "runtime_version": "2.14", "percentage": 150}),
            "percentage must be between 0 and 100",
        ),
        (
            json!({"update_id": "u-9", "channel": "production", "runtime_version": "2.14"}),
            "percentage is required",
        ),
        (
            json!({"update_id": "", "channel": "production", "runtime_version": "2.14", "percentage": 5}),
            "update_id must be 1 to 128 bytes without control characters",
        ),
    ] {
        let r = send(&h, "POST", PIPELINE, &rollouts, body).await;
        assert_eq!(error(&r), (400, reason.into()));
    }
    let r = send(
        &h,
        "POST",
        PIPELINE,
        &rollouts,
        json!({"update_id": "u-9", "percent": 5}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        error(&r).1.contains("unknown field `percent`"),
        "{}",
        r.body
    );

    let register = json!({"update_id": "u-9", "channel": "production", "runtime_version": "2.14",
        "platform": "ios", "percentage": 5, "who": "eas-update"});
    let r = send(&h, "POST", PIPELINE, &rollouts, register).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = send(
        &h,
        "PATCH",
        PIPELINE,
        &format!("{rollouts}/u-9"),
        json!({"percentage": 25}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = send(
        &h,
        "POST",
        PIPELINE,
        &format!("{rollouts}/u-9/pause"),
        json!({}),
    )
    .await;
    assert_eq!(
        error(&r),
        (
            404,
            "no action \"pause\"; one of halt, resume, ignore".into()
        )
    );
    let r = send(
        &h,
        "POST",
        PIPELINE,
        &format!("{rollouts}/u-9/ignore"),
        json!({"reason": "known flaky metric"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);

    let got = commands(&h, 3).await;
    let actions: Vec<_> = got.iter().map(|c| c.action.as_str()).collect();
    assert_eq!(actions, ["register", "update", "ignore"]);
    let release = got[0].release.clone().unwrap();
    assert_eq!(
        (
            release.platform.as_str(),
            release.channel.as_deref(),
            release.runtime_version.as_deref(),
            release.update_id.as_deref()
        ),
        ("ios", Some("production"), Some("2.14"), Some("u-9"))
    );
    assert_eq!(got[0].percentage, Some(5.0));
    assert_eq!(got[0].actor, "eas-update (release-pipeline)");
    assert_eq!(got[1].percentage, Some(25.0));
    assert_eq!(got[2].reason, "known flaky metric");
}

#[tokio::test]
async fn alerts_are_acknowledged_and_silenced_for_a_while() {
    let (h, project, _) = harness().await;
    let alert = "0123456789abcdef0123456789abcdef";
    let path = |id: &str, action: &str| format!("/v1/projects/{project}/alerts/{id}/{action}");
    let r = send(&h, "POST", ANY, &path("nope", "ack"), json!({})).await;
    assert_eq!(
        error(&r),
        (400, "\"nope\" is not an alert id (32 hex digits)".into())
    );
    let r = send(&h, "POST", ANY, &path(alert, "mute"), json!({})).await;
    assert_eq!(r.status, 404);
    let r = send(&h, "POST", ANY, &path(alert, "silence"), json!({})).await;
    assert_eq!(
        error(&r),
        (400, "silence takes one of for (\"2h\") and until_ms".into())
    );
    let r = send(
        &h,
        "POST",
        ANY,
        &path(alert, "silence"),
        json!({"until_ms": 1000}),
    )
    .await;
    assert_eq!(error(&r), (400, "until_ms is in the past".into()));
    let r = send(&h, "POST", ANY, &path(alert, "ack"), json!({"for": "2h"})).await;
    assert_eq!(error(&r), (400, "ack takes no for or until_ms".into()));

    let r = send(
        &h,
        "POST",
        ANY,
        &path(alert, "silence"),
        json!({"for": "31days"}),
    )
    .await;
    assert_eq!(error(&r), (400, "a silence lasts at most 30 days".into()));
    let r = send(
        &h,
        "POST",
        ANY,
        &path(alert, "silence"),
        json!({"until_ms": i64::MAX}),
    )
    .await;
    assert_eq!(error(&r), (400, "a silence lasts at most 30 days".into()));
    let r = send(
        &h,
        "POST",
        ANY,
        &path(alert, "ack"),
        json!({"who": "x".repeat(101)}),
    )
    .await;
    assert_eq!(
        error(&r),
        (
            400,
            "who must be at most 100 characters, without control characters".into()
        )
    );
    let r = send(
        &h,
        "POST",
        ANY,
        &path(alert, "ack"),
        json!({"reason": "r".repeat(1001)}),
    )
    .await;
    assert_eq!(
        error(&r),
        (400, "reason must be at most 1000 characters".into())
    );

    let before = now_ms();
    let r = send(
        &h,
        "POST",
        ANY,
        &path(alert, "silence"),
        json!({"for": "2h", "who": "ana"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = send(&h, "POST", ANY, &path(alert, "ack"), json!({})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let got = commands(&h, 2).await;
    assert_eq!(got[0].action, "silence");
    assert_eq!(got[0].alert_id.as_deref(), Some(alert));
    let until = got[0].until_ms.unwrap();
    assert!(
        (before + 7_200_000..=now_ms() + 7_200_000).contains(&until),
        "{until}"
    );
    assert_eq!((got[1].action.as_str(), got[1].until_ms), ("ack", None));
}

#[tokio::test]
async fn an_address_that_keeps_guessing_is_locked_out_even_with_a_good_token() {
    let (h, project, _) = harness().await;
    let path = format!("/v1/projects/{project}/rollouts/u-1/ignore");
    for attempt in 0..trellis_ingest::admin::ADMIN_FAILURES_PER_MINUTE {
        let r = send(
            &h,
            "POST",
            &format!("wrong-token-guess-{attempt:04}"),
            &path,
            json!({}),
        )
        .await;
        assert_eq!(r.status, 403, "attempt {attempt}: {}", r.body);
    }
    let r = send(&h, "POST", "wrong-token-guess-last", &path, json!({})).await;
    assert_eq!(
        error(&r),
        (
            429,
            "too many failed admin attempts from this address".into()
        )
    );
    let r = send(&h, "POST", ANY, &path, json!({})).await;
    assert_eq!(r.status, 429, "locked out whatever the token: {}", r.body);
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(commands(&h, 0).await.is_empty());
}
