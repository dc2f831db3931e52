//! Issues end to end on the real broker: error events posted to a running `trellis run` become
//! issues; the admin API (driven by `trellis issues`) resolves one; an old build does not reopen
//! it, a newer one does; the admin API refuses bad requests with a reason.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trellis_bus::Bus;
use trellis_schemas::records::{self, IssueRecord};

const ADMIN: &str = "test-admin-token-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post(url: &str, auth: &str, body: &str) -> (u16, String) {
    let mut r = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .header("Authorization", &format!("Bearer {auth}"))
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

fn error(id: u32, function: &str, version: &str, build: &str, t: i64) -> serde_json::Value {
    serde_json::json!({
        "kind": "error",
        "event_id": format!("00000000-0000-4000-8000-{id:012}"),
        "device_id": format!("device-{id}"),
        "timestamp": t,
        "release": {"platform": "ios", "app_version": version, "build": build},
        "level": "error",
        "handled": true,
        "exceptions": [{"type": "TypeError", "value": format!("cannot read plant {id}"),
            "frames": [{"function": function, "module": "app/screens/PlantDetail",
                        "lineno": id, "in_app": true}]}]
    })
}

/// Reads `issues` until `done` holds for the newest record of every issue seen.
async fn await_issues(
    consumer: &mut Box<dyn trellis_bus::Consumer>,
    latest: &mut std::collections::BTreeMap<String, IssueRecord>,
    done: impl Fn(&std::collections::BTreeMap<String, IssueRecord>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(latest) {
        assert!(
            Instant::now() < deadline,
            "issues never reached the expected state: {latest:#?}"
        );
        for r in consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            let issue: IssueRecord = records::decode(&r.payload).unwrap();
            let keep = latest
                .get(&issue.issue_id)
                .is_none_or(|old| old.version <= issue.version);
            if keep {
                latest.insert(issue.issue_id.clone(), issue);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_become_issues_and_an_old_build_does_not_reopen_a_resolved_one() {
    let brokers = std::env::var("TEST_TRELLIS_KAFKA").expect(
        "TEST_TRELLIS_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let prefix = format!("issues-{}-{port}.", std::process::id());
    let config = dir.path().join("trellis.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [bus]\nkind = \"kafka\"\nbrokers = {brokers:?}\nsession_timeout = \"6s\"\n\
             [topics]\npartitions = 2\nprefix = {prefix:?}\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\nadmin_tokens = [{ADMIN:?}]\n\
             [processors]\ngroup = \"{prefix}process\"\nissues_group = \"{prefix}issues\"\n\
             checkpoint_interval = \"300ms\"\nidle_timeout = \"1s\"\n\
             [processors.detect]\ngroup = \"{prefix}detect\"\nperf_group = \"{prefix}detect-perf\"\n",
            data = dir.path().display().to_string(),
        ),
    )
    .unwrap();
    let _trellis = Running(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(Instant::now() < deadline, "trellis run never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    let bus = trellis_bus::kafka::KafkaBus::new(&trellis_bus::config::KafkaConfig {
        brokers: brokers.clone(),
        session_timeout: Duration::from_secs(6),
        ..Default::default()
    })
    .unwrap();
    let mut issues = bus
        .consumer(&format!("{prefix}reader"), &[&format!("{prefix}issues")])
        .await
        .unwrap();

    let t0 = 1_795_660_800_000i64;
    let batch = serde_json::json!({"events": [
        error(1, "waterPlant", "2.14.0", "1402", t0),
        error(2, "waterPlant", "2.14.0", "1405", t0 + 1000),
        error(3, "postComment", "2.14.0", "1405", t0 + 2000),
    ]});
    let (status, body) = post(
        &format!("{base}/v1/batch"),
        "trellis_dev_key",
        &batch.to_string(),
    );
    assert_eq!(status, 200, "{body}");

    let mut latest = Default::default();
    await_issues(&mut issues, &mut latest, |l| {
        l.len() == 2 && l.values().map(|i| i.event_count).sum::<i64>() == 3
    })
    .await;
    let water = latest
        .values()
        .find(|i| {
            i.culprit
                .as_deref()
                .is_some_and(|c| c.contains("waterPlant"))
        })
        .unwrap()
        .clone();
    assert_eq!(
        (
            water.event_count,
            water.users_affected,
            water.status.as_str()
        ),
        (2, 2, "new")
    );

    // Resolve it in the next release with the CLI.
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args([
            "issues",
            "resolve-in-next-release",
            "--project",
            "default",
            "--id",
            &water.issue_id,
            "--url",
            &base,
        ])
        .env("TRELLIS_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("command_id"));
    let id = water.issue_id.clone();
    await_issues(&mut issues, &mut latest, |l| l[&id].status == "resolved").await;

    // The build in the field when it was resolved: still resolved. The next release: regressed.
    let old = serde_json::json!({"events": [error(4, "waterPlant", "2.14.0", "1405", t0 + 5000)]});
    assert_eq!(
        post(
            &format!("{base}/v1/batch"),
            "trellis_dev_key",
            &old.to_string()
        )
        .0,
        200
    );
    await_issues(&mut issues, &mut latest, |l| l[&id].event_count == 3).await;
    assert_eq!(latest[&id].status, "resolved");
    let new = serde_json::json!({"events": [error(5, "waterPlant", "2.15.0", "1410", t0 + 9000)]});
    assert_eq!(
        post(
            &format!("{base}/v1/batch"),
            "trellis_dev_key",
            &new.to_string()
        )
        .0,
        200
    );
    await_issues(&mut issues, &mut latest, |l| l[&id].event_count == 4).await;
    assert_eq!(latest[&id].status, "regressed");

    // The admin API refuses what it cannot do, saying why.
    let url = |action: &str| format!("{base}/v1/projects/default/issues/{id}/{action}");
    assert_eq!(post(&url("resolve"), "trellis_dev_key", "").0, 403);
    let (status, body) = post(&url("explode"), ADMIN, "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(&url("resolve_in_release"), ADMIN, "{}");
    assert_eq!(
        (status, body.contains("app_version")),
        (400, true),
        "{body}"
    );
    let (status, _) = post(
        &format!("{base}/v1/projects/nope/issues/{id}/resolve"),
        ADMIN,
        "",
    );
    assert_eq!(status, 404);
}
