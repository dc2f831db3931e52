//! Shared by the integration tests.
#![allow(dead_code)]

pub mod alerting;
pub mod oracle;
pub mod receiver;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The consumer group session of trellis children: trellis's default. A child restarted within it
/// of a SIGKILL can find tansu naming the killed member the group's leader, and get no partitions
/// for good (ARCHITECTURE.md, Test infrastructure); Kafka waits the session out itself, so the
/// tests wait it out before restarting. Shorter sessions expired under load, tansu being slow to
/// answer heartbeats then.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The test broker `scripts/test.sh` started.
pub fn brokers() -> String {
    std::env::var("TEST_TRELLIS_KAFKA").expect(
        "TEST_TRELLIS_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker",
    )
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `trellis` child with a configuration file, killed when dropped (also when the test fails).
pub struct Trellis(Child);

impl Trellis {
    /// Starts `trellis --config CONFIG COMMAND`, logging warnings to the test's output.
    pub fn spawn(config: &Path, command: &str) -> Self {
        Trellis::spawn_args(config, &[command])
    }

    /// Starts `trellis --config CONFIG ARGS...`, logging warnings to the test's output.
    pub fn spawn_args(config: &Path, args: &[&str]) -> Self {
        Trellis(
            Command::new(env!("CARGO_BIN_EXE_trellis"))
                .args(["--config", config.to_str().unwrap()])
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    /// SIGKILL: no shutdown hook, no final checkpoint.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Trellis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `trellis --config CONFIG query --format csv SQL` prints (empty if it fails).
pub fn query_csv(config: &Path, sql: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "query",
            "--format",
            "csv",
            sql,
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "trellis query {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}
