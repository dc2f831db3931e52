//! The `trellis` binary as a user meets it: it runs out of the box, refuses a bad configuration
//! naming the key, stops cleanly on SIGTERM, and the compose file is valid.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cli::{get, post_batch, start_run, trellis};
use support::free_port;

#[test]
fn run_works_out_of_the_box_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = trellis()
        .arg("run")
        .current_dir(dir.path())
        .env("TRELLIS_INGEST__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut health = None;
    while Instant::now() < deadline {
        health = get(&format!("http://127.0.0.1:{port}/healthz"));
        if health.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health, Some((200, "ok".to_string())));
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/readyz")).unwrap().0,
        200
    );
    // The default configuration keeps its data under ./data: the embedded log is there.
    assert!(dir.path().join("data/bus.redb").exists());

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "trellis did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_bad_configuration_fails_at_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trellis.toml");
    std::fs::write(
        &file,
        "[bus]\nkind = \"kafka\"\nbrokers = \"localhost:9092\"\ncompression = \"rar\"\n",
    )
    .unwrap();
    let out = trellis()
        .args(["run", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bus.compression") && stderr.contains("rar"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = trellis()
        .arg("config")
        .env("TRELLIS_INGEST__LISTEN", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INGEST.LISTEN") && stderr.contains("environment"),
        "{stderr}"
    );
}

#[test]
fn other_trellis_variables_in_the_environment_are_left_alone() {
    let out = trellis()
        .arg("config")
        .env("TRELLIS_HOME", "/opt/trellis")
        .env("TRELLIS_DATA_DIR", "/srv/trellis")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("data_dir = \"/srv/trellis\""), "{stdout}");
}

#[test]
fn a_query_error_says_what_is_wrong_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = trellis()
        .args(["query", "SELECT count(*) FROM evnets"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("evnets").count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: query: "), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
}

#[test]
fn a_bad_alert_rule_fails_at_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trellis.toml");
    for (toml, key, says) in [
        (
            "[[alerts.rules]]\nname = \"guard\"\ndestinations = [\"pager\"]\n",
            "alerts.rules[0].destinations",
            "no destination \"pager\"",
        ),
        (
            "[alerts.destinations.rollback]\nkind = \"webhook\"\nurl = \"https://x.example\"\nsecret = \"short\"\n",
            "alerts.destinations.rollback.secret",
            "at least 16 characters",
        ),
        (
            "[[alerts.rules]]\nname = \"a\"\nkinds = [\"crash_spike\"]\n",
            "alerts.rules[0].kinds",
            "unknown kind \"crash_spike\"",
        ),
        (
            "[[alerts.rules]]\nname = \"a\"\naction = \"rollback\"\n",
            "alerts.rules",
            "rollback",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let out = trellis()
            .args(["config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{toml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key) && stderr.contains(says),
            "{toml}: {stderr}"
        );
    }
}

#[test]
fn demo_halts_the_bad_update_with_one_signed_call() {
    let out = trellis()
        .args(["demo", "--devices", "8000", "--timeout", "300s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("\"type\": \"rollout.halt\""), "{stdout}");
    assert!(
        stdout.contains("\"update_id\": \"update-candidate\""),
        "{stdout}"
    );
    assert!(stdout.contains("Signature verified."), "{stdout}");
    assert!(stdout.contains("── Slack"), "{stdout}");
    assert!(stdout.contains("Candidate: "), "{stdout}");
}

#[test]
fn schema_export_writes_the_committed_avsc_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = trellis()
        .args(["schema", "export", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // Every committed schema, the event kinds' and the records', and nothing else.
    let committed_dir = format!("{}/schemas/avro", env!("CARGO_MANIFEST_DIR"));
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let committed = names(std::path::Path::new(&committed_dir));
    assert_eq!(names(dir.path()), committed);
    assert_eq!(committed.len(), 17, "{committed:?}");
    for name in committed {
        let exported = std::fs::read_to_string(dir.path().join(&name)).unwrap();
        let file = std::fs::read_to_string(format!("{committed_dir}/{name}")).unwrap();
        assert_eq!(exported, file, "{name}");
    }
}

#[test]
fn the_dead_letter_topic_has_one_name() {
    assert_eq!(trellis_schemas::topics::DLQ, trellis_bus::DEAD_LETTER_TOPIC);
}

#[test]
fn docker_compose_file_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose = |key: Option<&str>| {
        let mut command = Command::new("docker-compose");
        command.args(["-f", &format!("{root}/docker-compose.yml"), "config"]);
        command.env_remove("TRELLIS_PROJECT_KEY");
        if let Some(key) = key {
            command.env("TRELLIS_PROJECT_KEY", key);
        }
        command
            .output()
            .expect("docker-compose is not installed: scripts/test.sh installs Debian's package")
    };
    // The stack listens on 0.0.0.0: it will not start without a key of the user's own.
    let out = compose(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set TRELLIS_PROJECT_KEY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = compose(Some("a-key-of-my-own-0001"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8_lossy(&out.stdout);
    // The projects the ingest service gets parse as trellis configuration, with that key.
    let projects = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("TRELLIS_INGEST__PROJECTS: "))
        .expect("the ingest service sets its projects")
        .trim_matches(|c| c == '\'' || c == '"')
        .replace("\\\"", "\"");
    let printed = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("config")
        .env("TRELLIS_INGEST__LISTEN", "0.0.0.0:8080")
        .env("TRELLIS_INGEST__PROJECTS", &projects)
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{projects}: {}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(String::from_utf8_lossy(&printed.stdout).contains("keys = [\"a-key-of-my-own-0001\"]"));
    // The development key on that address is refused, naming the key.
    let refused = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("config")
        .env("TRELLIS_INGEST__LISTEN", "0.0.0.0:8080")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("ingest.projects[0].keys: the development key trellis_dev_key is refused"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for needle in [
        "apache/kafka",
        "KAFKA_PROCESS_ROLES: broker,controller",
        "clickhouse/clickhouse-server",
        "TRELLIS_BUS__KIND: kafka",
        "TRELLIS_BUS__BROKERS: kafka:9092",
    ] {
        assert!(config.contains(needle), "docker-compose.yml lacks {needle}");
    }
}

/// Five analytics events, one of them sent twice, and two errors of one bug.
fn five_events_a_duplicate_and_two_errors() -> Vec<serde_json::Value> {
    let event = |i: u32, kind: &str| {
        let mut e = serde_json::json!({
            "kind": kind,
            "event_id": format!("00000000-0000-4000-8000-{i:012}"),
            "device_id": "device-1",
            "timestamp": 1_795_660_800_000i64 + i as i64 * 1000,
            "release": {"platform": "ios", "app_version": "2.14.0"},
        });
        if kind == "analytics" {
            e["name"] = "plant_watered".into();
        } else {
            e["exceptions"] = serde_json::json!([{"type": "TypeError", "value": "boom"}]);
        }
        e
    };
    let mut events: Vec<_> = (0..5).map(|i| event(i, "analytics")).collect();
    events.push(event(3, "analytics"));
    events.extend((10..12).map(|i| event(i, "error")));
    events
}

/// One machine, end to end: events posted to `trellis run` are deduplicated, sessionized and
/// written to Parquet, and `trellis query` answers over them while trellis keeps running.
#[test]
fn run_stores_what_ingest_accepted_and_query_answers_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_run(dir.path(), &[], Stdio::null());
    // Ingest accepts the duplicate too: the processors drop it.
    assert_eq!(
        post_batch(&base, &five_events_a_duplicate_and_two_errors())["accepted"],
        8
    );

    let query = |sql: &str| -> Option<serde_json::Value> {
        let out = trellis()
            .args(["query", "--format", "json", sql])
            .current_dir(dir.path())
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let events = query("SELECT count(*) AS n FROM events");
        let errors = query("SELECT count(*) AS n, count(issue_id) AS grouped FROM errors");
        if let (Some(e), Some(r)) = (events, errors)
            && e[0]["n"] == 5
            && r[0]["n"] == 2
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the stores never held the 5 events and 2 errors"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        answer[0]["grouped"], 2,
        "every stored error names its issue"
    );
    // Both errors are one bug: one issue, whose current state (the README's query) counts both.
    let issues = loop {
        let issues = query(
            "SELECT i.issue_id, i.title, i.status, i.event_count, i.users_affected FROM issues i
  JOIN (SELECT issue_id, max(version) AS v FROM issues GROUP BY issue_id) n
  ON i.issue_id = n.issue_id AND i.version = n.v ORDER BY i.users_affected DESC",
        );
        if let Some(issues) = issues
            && issues[0]["event_count"] == 2
        {
            break issues;
        }
        assert!(Instant::now() < deadline, "the issue never reached Parquet");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(issues.as_array().unwrap().len(), 1, "{issues}");
    // The README's first query: nested fields by path.
    let by_version = query(
        "SELECT common.release.app_version AS app_version, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC",
    )
    .unwrap();
    assert_eq!(
        by_version,
        serde_json::json!([{"app_version": "2.14.0", "n": 5}])
    );
    assert_eq!(issues[0]["title"], "TypeError: boom");
    // The sink's counters are on the same /metrics as ingest's and the processors'.
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("trellis_sink_parquet_rows_written_total{table=\"events\"} 5"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn trellis_config_prints_no_credential() {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("config")
        .env(
            "TRELLIS_INGEST__ADMIN_TOKENS",
            "[\"an-admin-token-0000001\"]",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("an-admin-token-0000001"), "{text}");
    assert!(text.contains("admin_tokens = [\"<redacted>\"]"), "{text}");
}

/// With `[sinks.clickhouse] enabled`, `trellis run` fills ClickHouse beside the Parquet files
/// (on the embedded bus: no Kafka), and logs a status line while it has work.
#[test]
fn run_fills_clickhouse_when_enabled_and_logs_its_status() {
    let url = std::env::var("TEST_TRELLIS_CLICKHOUSE_URL").expect(
        "TEST_TRELLIS_CLICKHOUSE_URL is not set: run the suite with scripts/test.sh, which starts ClickHouse",
    );
    let database = format!("trellis_run_{}", std::process::id());
    let clickhouse = |sql: &str| -> Option<String> {
        let mut response = ureq::post(&url).send(sql.as_bytes()).ok()?;
        response.body_mut().read_to_string().ok()
    };
    clickhouse(&format!("DROP DATABASE IF EXISTS {database}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("trellis.log");
    let (mut child, base) = start_run(
        dir.path(),
        &[
            ("TRELLIS_SINKS__CLICKHOUSE__ENABLED", "true".into()),
            ("TRELLIS_SINKS__CLICKHOUSE__URL", url.clone()),
            ("TRELLIS_SINKS__CLICKHOUSE__DATABASE", database.clone()),
            ("TRELLIS_SINKS__CLICKHOUSE__BATCH_AGE", "200ms".into()),
            ("TRELLIS_STATUS_INTERVAL", "1s".into()),
            ("NO_COLOR", "1".into()),
            (
                "TRELLIS_INGEST__ADMIN_TOKENS",
                "[\"a-release-pipeline-token\"]".into(),
            ),
        ],
        std::fs::File::create(&log).unwrap().into(),
    );
    assert_eq!(
        post_batch(&base, &five_events_a_duplicate_and_two_errors())["accepted"],
        8
    );
    // A release pipeline marks a deploy, and a Sentry SDK reports a screen load whose
    // measurement and HTTP span become performance samples.
    let deploy = ureq::post(&format!("{base}/v1/projects/default/deploys"))
        .header("Authorization", "Bearer a-release-pipeline-token")
        .send(
            serde_json::json!({"action": "update_published", "app_version": "2.14.0",
                "update_id": "7d3e9a10-0000-4000-8000-000000000001", "channel": "production"})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(deploy.status(), 202);
    let transaction = serde_json::json!({
        "type": "transaction", "event_id": "0b5a3e2c8f1d4c6e9a7b2d4f6e8a0c1e",
        "transaction": "PlantDetail", "release": "plants@2.14.0+1402",
        "start_timestamp": 1_795_660_800.0, "timestamp": 1_795_660_801.5,
        "contexts": {"trace": {"trace_id": "b93dc6d4c9f545319f05f828ee58470d", "span_id": "acfaa96827bb610c", "op": "ui.load"}},
        "measurements": {"app_start_cold": {"value": 812.0, "unit": "millisecond"}},
        "spans": [{"span_id": "96475a835eb92e40", "op": "http.client", "description": "GET /plants/42?x=1",
                   "start_timestamp": 1_795_660_800.25, "timestamp": 1_795_660_800.5,
                   "data": {"http.response.status_code": 200}}],
    })
    .to_string();
    let envelope = format!(
        "{{}}\n{{\"type\":\"transaction\",\"length\":{}}}\n{transaction}\n",
        transaction.len()
    );
    let stored = ureq::post(&format!("{base}/api/1/envelope/"))
        .header("X-Sentry-Auth", "Sentry sentry_key=trellis_dev_key")
        .send(envelope.as_bytes())
        .unwrap();
    assert_eq!(stored.status(), 200);
    // An app server forwards what Expo answered for two messages (the second to two devices,
    // one of them gone) and, later, the receipts (the other device gone too); the app reports
    // the first notification opened two minutes after the send.
    let push = |what: &str, body: serde_json::Value| {
        let r = ureq::post(&format!("{base}/v1/projects/default/push/{what}"))
            .header("Authorization", "Bearer a-release-pipeline-token")
            .send(body.to_string().as_bytes())
            .unwrap();
        assert_eq!(r.status(), 202);
    };
    let token = |c: char| format!("ExponentPushToken[{}]", c.to_string().repeat(22));
    push(
        "tickets",
        serde_json::json!({
            "campaign": "spring-care", "sent_at": "2026-12-01T09:00:00Z",
            "messages": [
                {"to": token('x'), "title": "Water your fern", "data": {"notification_id": "n-1"}},
                {"to": [token('y'), token('z')], "title": "New guide",
                 "data": {"notification_id": "n-2", "campaign": "guides"}}],
            "tickets": {"data": [
                {"status": "ok", "id": "e42d2795-fd07-4abb-9050-f7381114ad7e"},
                {"status": "ok", "id": "24fab47c-f186-4d6c-a23c-48e7188694d9"},
                {"status": "error", "message": "not a registered push notification recipient",
                 "details": {"error": "DeviceNotRegistered", "expoPushToken": token('z')}}]},
        }),
    );
    push(
        "receipts",
        serde_json::json!({"receipts": {"data": {
            "e42d2795-fd07-4abb-9050-f7381114ad7e": {"status": "ok"},
            "24fab47c-f186-4d6c-a23c-48e7188694d9": {"status": "error",
                "details": {"error": "DeviceNotRegistered"}}}}}),
    );
    let opened = serde_json::json!({
        "kind": "notification", "event_id": "00000000-0000-4000-8000-00000000aaaa",
        "device_id": "device-1", "timestamp": "2026-12-01T09:02:00Z",
        "release": {"platform": "ios", "app_version": "2.14.0"},
        "stage": "opened", "notification_id": "n-1", "campaign": "spring-care",
    });
    assert_eq!(post_batch(&base, &[opened])["accepted"], 1);
    let count = |table: &str| {
        clickhouse(&format!("SELECT count() FROM {database}.{table} FINAL"))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while (count("events"), count("errors")) != (Some(5), Some(2)) {
        assert!(
            Instant::now() < deadline,
            "ClickHouse never held the 5 events and 2 errors: {:?} {:?}",
            count("events"),
            count("errors")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The issue both errors make reaches ClickHouse too.
    while count("issues").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no issue reached ClickHouse");
        std::thread::sleep(Duration::from_millis(500));
    }
    // So do the deploy marker, the transaction and its two samples.
    while (count("deploys"), count("transactions"), count("perf")) != (Some(1), Some(1), Some(2)) {
        assert!(
            Instant::now() < deadline,
            "deploys, transactions, perf: {:?} {:?} {:?}",
            count("deploys"),
            count("transactions"),
            count("perf")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The push outcomes and the open give the README's delivery query its answer.
    while (count("push"), count("notifications")) != (Some(5), Some(1)) {
        assert!(
            Instant::now() < deadline,
            "push, notifications: {:?} {:?}",
            count("push"),
            count("notifications")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, delivery) = trellis_sinks::clickhouse::queries()
        .into_iter()
        .find(|(name, _)| *name == "push_delivery_by_campaign")
        .unwrap();
    let mut answer = ureq::post(&format!("{url}/?database={database}"))
        .send(delivery.as_bytes())
        .unwrap();
    assert_eq!(
        answer.body_mut().read_to_string().unwrap(),
        "default\tguides\t2\t1\t0\t2\t0\t0\t0\t0\n\
         default\tspring-care\t1\t1\t1\t0\t1\t100\t100\t120\n"
    );
    // The Parquet files answer `trellis push invalid-tokens`: both devices that are gone, the
    // one Expo refused at the send and the one its receipt named.
    let tokens = loop {
        let out = trellis()
            .args(["push", "invalid-tokens", "--format", "csv"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.lines().count() == 3 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "trellis push invalid-tokens: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let lines: Vec<&str> = tokens.lines().collect();
    assert_eq!(lines[0], "project,token,seen_ms");
    assert!(
        lines[1].starts_with(&format!("default,{},", token('y'))),
        "{tokens}"
    );
    assert_eq!(lines[2], format!("default,{},1796115600000", token('z')));
    // An hour later the app was reinstalled on the second device (a later send is delivered),
    // and a send to the third is only rate-limited: the second leaves the list, the third stays.
    push(
        "tickets",
        serde_json::json!({
            "sent_at": "2026-12-01T10:00:00Z",
            "messages": [{"to": [token('y'), token('z')], "data": {"notification_id": "n-3"}}],
            "tickets": [
                {"status": "ok", "id": "5d0e3a51-7b7e-4c44-8a6f-3f9d1d5b2c10"},
                {"status": "error", "details": {"error": "MessageRateExceeded"}}],
        }),
    );
    push(
        "receipts",
        serde_json::json!({"receipts": {"5d0e3a51-7b7e-4c44-8a6f-3f9d1d5b2c10": {"status": "ok"}}}),
    );
    let listed = |text: &str| text.lines().skip(1).map(String::from).collect::<Vec<_>>();
    loop {
        let out = trellis()
            .args(["push", "invalid-tokens", "--format", "csv"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if listed(&text) == [format!("default,{},1796115600000", token('z'))] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trellis push invalid-tokens after the reinstall: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let samples = clickhouse(&format!(
        "SELECT metric, value, screen, release_app_version FROM {database}.perf FINAL ORDER BY metric"
    ))
    .unwrap();
    assert_eq!(
        samples,
        "app_start_cold\t812\t\\N\t2.14.0\nhttp_request\t250\tPlantDetail\t2.14.0\n"
    );
    // A status line (every second here) reports the batch of 8 as accepted, as a rate over
    // about a second, and names each stage's lag.
    let field = |line: &str, name: &str| -> Option<f64> {
        let rest = &line[line.find(&format!(" {name}="))? + name.len() + 2..];
        rest.split_whitespace().next()?.parse().ok()
    };
    let status = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let status: Vec<String> = (text.lines())
            .filter(|l| l.contains("Status."))
            .map(str::to_string)
            .collect();
        if status
            .iter()
            .any(|l| field(l, "accepted_per_s").is_some_and(|r| r > 0.0))
        {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no status line with the batch in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // SIGTERM stops it cleanly.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
    clickhouse(&format!("DROP DATABASE IF EXISTS {database}")).unwrap();
    // `lag=process:0 issues:0 … parquet:0`
    for stage in ["process", "issues", "detect", "alert", "parquet"] {
        let named = |line: &String| {
            (line.split([' ', '=']))
                .filter_map(|token| token.strip_prefix(stage)?.strip_prefix(':'))
                .any(|lag| lag.parse::<u64>().is_ok())
        };
        assert!(status.iter().all(named), "{stage} in {status:#?}");
    }
}
