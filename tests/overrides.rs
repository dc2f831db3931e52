//! Overrides of the rollout guard on the real broker: a running `trellis run` driven through
//! the admin API and the CLI, with a real HTTP receiver in the rollback service's place.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use trellis_schemas::records::{Alert, AuditEntry};

use support::alerting::*;
use support::receiver::{Receiver, signed_by};
use support::{Trellis, free_port};

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
