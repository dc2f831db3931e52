//! A ClickHouse sink process SIGKILLed mid-stream (between and during inserts) and restarted on
//! the real broker (`TEST_TRELLIS_KAFKA`) and server: every row arrives, none is duplicated after
//! deduplication.

mod clickhouse_support;
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse_support::*;
use trellis_bus::Bus;
use trellis_schemas::topics;
use trellis_sinks::clickhouse::migrate;

fn brokers() -> String {
    std::env::var("TEST_TRELLIS_KAFKA").expect(
        "TEST_TRELLIS_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker",
    )
}

/// The sink process, SIGKILLed when dropped (also when the test fails).
struct Sink(Child);

impl Sink {
    fn spawn(prefix: &str, db: &str, group: &str) -> Sink {
        Sink(
            Command::new(env!("CARGO_BIN_EXE_trellis-clickhouse-sink"))
                .env("TRELLIS_KAFKA", brokers())
                .env("TRELLIS_PREFIX", prefix)
                .env("TRELLIS_CLICKHOUSE_URL", url())
                .env("TRELLIS_CLICKHOUSE_DATABASE", db)
                .env("TRELLIS_CLICKHOUSE_GROUP", group)
                .env("TRELLIS_CLICKHOUSE_BATCH_ROWS", "400")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL: no drain, no final commit
        let _ = self.0.wait();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The consumer group session of the children: trellis's default. A child restarted within it of
/// a SIGKILL can find tansu naming the killed member the group's leader, and get no partitions
/// for good (ARCHITECTURE.md, Test infrastructure); Kafka waits the session out itself, so the
/// tests wait it out before restarting. Shorter sessions expired under load, tansu being slow to
/// answer heartbeats then.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_mid_batch_and_restarted_writes_every_row_once() {
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::kafka::KafkaBus::new(&trellis_bus::config::KafkaConfig {
            brokers: brokers(),
            session_timeout: SESSION_TIMEOUT,
            ..Default::default()
        })
        .unwrap(),
    );
    let prefix = format!("{}.", unique("chcrash"));
    let names = topics::Names::new(&prefix);
    create_topics(&bus, &names).await;
    let data = fleet_data(500, 13);
    let expected = data.expected();
    let total: u64 = expected.values().sum();
    publish(&bus, &data.messages(&names)).await;

    let db = unique("ch_crash");
    let group = unique("chcrash");
    migrate(&config(&db)).await.unwrap();
    let mut first = Sink::spawn(&prefix, &db, &group);
    let deadline = Instant::now() + Duration::from_secs(120);
    // At a point a seed draws each run.
    let mut rng = fastrand::Rng::with_seed(support::fault_seed());
    let kill_at = total * (15 + rng.u64(0..55)) / 100;
    let mut at_kill = 0;
    while at_kill < kill_at {
        assert!(Instant::now() < deadline, "the sink wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
        at_kill = final_counts(&db).values().sum();
    }
    first.kill();
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    let physical: u64 = final_counts(&db).values().sum();
    assert!(
        physical < total,
        "killed before it finished ({physical} of {total})"
    );

    let mut second = Sink::spawn(&prefix, &db, &group);
    wait_for(&db, &expected, Duration::from_secs(180)).await;
    second.kill();
    assert_exact(&db, &expected);
    println!("crash: killed at {physical} of {total} rows; {expected:?}");
    execute(&format!("DROP DATABASE {db}"));
}
