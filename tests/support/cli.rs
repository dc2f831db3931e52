//! The `trellis` binary run as a user runs it: without the tests' `TRELLIS_*` settings,
//! `trellis run` in a directory of its own, batches posted to it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// `trellis`, without the tests' own `TRELLIS_*` settings.
pub fn trellis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trellis"));
    // The tests' own environment must not leak TRELLIS_* settings into the child.
    for (k, _) in std::env::vars() {
        if k.starts_with("TRELLIS_") {
            c.env_remove(k);
        }
    }
    c
}

/// A GET: its status and body, or `None` when nothing answered.
pub fn get(url: &str) -> Option<(u16, String)> {
    let mut response = ureq::get(url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .ok()?;
    let status = response.status().as_u16();
    Some((
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    ))
}

/// `trellis run` in `dir` on a free port, with quick segments and checkpoints and `env` on
/// top, once it answers `/readyz`; its log goes to `stdout`. Returns it and its base URL.
pub fn start_run(
    dir: &std::path::Path,
    env: &[(&str, String)],
    stdout: Stdio,
) -> (std::process::Child, String) {
    let port = free_port();
    let child = trellis()
        .arg("run")
        .current_dir(dir)
        .env("TRELLIS_INGEST__LISTEN", format!("127.0.0.1:{port}"))
        .env("TRELLIS_SINKS__PARQUET__MAX_AGE", "1s")
        .env("TRELLIS_PROCESSORS__CHECKPOINT_INTERVAL", "200ms")
        .env("TRELLIS_PROCESSORS__IDLE_TIMEOUT", "1s")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&format!("{base}/readyz")).map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "trellis run never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, base)
}

/// Posts `events` as one native batch with the development key; ingest's answer.
pub fn post_batch(base: &str, events: &[serde_json::Value]) -> serde_json::Value {
    let mut response = ureq::post(&format!("{base}/v1/batch"))
        .header("Authorization", "Bearer trellis_dev_key")
        .header("Content-Type", "application/json")
        .send(
            serde_json::json!({ "events": events })
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

/// Runs `trellis ARGS --format csv` in `dir` until it prints `expected` (its Parquet files fill
/// as the sink closes them), failing after 60 s with what it printed last.
pub fn csv_until(dir: &std::path::Path, args: &[&str], expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = trellis()
            .args(args)
            .args(["--format", "csv"])
            .current_dir(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trellis {args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
