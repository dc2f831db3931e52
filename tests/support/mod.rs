//! Shared by the integration tests.
#![allow(dead_code)]

pub mod alerting;
pub mod cli;
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
pub struct Trellis {
    child: Child,
    /// The trellis process when `child` is the tracer running it.
    traced: Option<u32>,
}

impl Trellis {
    /// Starts `trellis --config CONFIG COMMAND`, logging warnings to the test's output.
    pub fn spawn(config: &Path, command: &str) -> Self {
        Trellis::spawn_args(config, &[command])
    }

    /// Starts `trellis --config CONFIG ARGS...`, logging warnings to the test's output.
    pub fn spawn_args(config: &Path, args: &[&str]) -> Self {
        let child = Trellis::command(Command::new(env!("CARGO_BIN_EXE_trellis")), config, args)
            .spawn()
            .unwrap();
        Trellis {
            child,
            traced: None,
        }
    }

    /// `command` (trellis, or what runs it) with trellis's arguments and output settings.
    fn command(mut command: Command, config: &Path, args: &[&str]) -> Command {
        command
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command
    }

    /// Starts `trellis --config CONFIG ARGS...` under strace, which makes the first `fails`
    /// `fsync` calls of each of its threads fail with EIO, as a failing disk answers them: the
    /// errors come from the real system calls, injected by the kernel's tracing.
    pub fn spawn_failing_fsync(config: &Path, args: &[&str], fails: u32) -> Self {
        let mut strace = Command::new("strace");
        strace
            .args(["-f", "-qq", "--seccomp-bpf", "-o", "/dev/null"])
            .args(["-e", "trace=fsync,fdatasync"])
            .arg("-e")
            .arg(format!("inject=fsync,fdatasync:error=EIO:when=1..{fails}"))
            .args(["--", env!("CARGO_BIN_EXE_trellis")]);
        let child = Trellis::command(strace, config, args)
            .spawn()
            .expect("strace, which scripts/test.sh installs, runs");
        let children = format!("/proc/{0}/task/{0}/children", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let traced = loop {
            let listed = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = listed.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "strace started no trellis"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Trellis {
            child,
            traced: Some(traced),
        }
    }

    /// SIGKILL: no shutdown hook, no final checkpoint.
    pub fn kill(&mut self) {
        if let Some(pid) = self.traced.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Trellis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The seed of a test's random fault points: `TRELLIS_FAULT_SEED` repeats a run, otherwise each
/// run draws a new one. Printed, so a failure names the seed that reproduces it.
pub fn fault_seed() -> u64 {
    let seed = std::env::var("TRELLIS_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("fault seed {seed} (TRELLIS_FAULT_SEED={seed} repeats this run)");
    seed
}

/// The sum of a Prometheus counter's series served at `url` whose labels include `labels`.
pub fn counter(url: &str, name: &str, labels: &[&str]) -> u64 {
    let Ok(mut response) = ureq::get(url).call() else {
        return 0;
    };
    let text = response.body_mut().read_to_string().unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
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
