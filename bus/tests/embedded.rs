//! The bus contract on the embedded log, and what it adds: acknowledged records survive SIGKILL
//! of the writing process, and a reopened log continues where it stopped.

mod contract;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use trellis_bus::config::EmbeddedConfig;
use trellis_bus::embedded::EmbeddedBus;
use trellis_bus::{Bus, Message, Offsets};

fn open(dir: &tempfile::TempDir) -> Arc<dyn Bus> {
    let path = dir.path().join("bus.redb");
    Arc::new(
        EmbeddedBus::open(&EmbeddedConfig {
            path,
            ..EmbeddedConfig::default()
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn publishing_to_a_missing_topic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    contract::publishing_to_a_missing_topic_is_refused(open(&dir)).await;
}

#[tokio::test]
async fn records_of_one_key_stay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    contract::records_of_one_key_stay_in_order(open(&dir)).await;
}

#[tokio::test]
async fn uncommitted_records_are_redelivered_to_the_next_consumer() {
    let dir = tempfile::tempdir().unwrap();
    contract::uncommitted_records_are_redelivered_to_the_next_consumer(open(&dir)).await;
}

#[tokio::test]
async fn corrupt_payloads_go_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    contract::corrupt_payloads_go_to_the_dead_letter_topic(open(&dir)).await;
}

#[tokio::test]
async fn group_members_split_the_partitions() {
    let dir = tempfile::tempdir().unwrap();
    contract::group_members_split_the_partitions(open(&dir)).await;
}

#[tokio::test]
async fn acknowledged_records_survive_sigkill_of_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.redb");
    {
        let bus = open(&dir);
        bus.create_topic("crash", 4).await.unwrap();
    }
    let spec = format!("embedded:{}", path.display());
    let tool = contract::Tool::start(&["produce", &spec, "crash", "100000000", "10"]);
    tool.read_until(Duration::from_secs(60), |line| line == "acked 300");
    let after_kill = tool.kill();
    let acked: u64 = after_kill
        .iter()
        .filter_map(|l| l.strip_prefix("acked ")?.parse().ok())
        .max()
        .unwrap_or(300);

    let bus = open(&dir);
    let mut consumer = bus.consumer("verify", &["crash"]).await.unwrap();
    let mut records = Vec::new();
    loop {
        let batch = consumer
            .poll(10_000, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| std::str::from_utf8(&r.payload).unwrap().parse().unwrap())
        .collect();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), seqs.len(), "no record is stored twice");
    // Everything acknowledged is there; anything beyond is a whole batch that was stored but
    // whose acknowledgement the kill cut off.
    assert!(
        distinct.len() as u64 >= acked,
        "stored {} < acknowledged {acked}",
        distinct.len()
    );
    assert_eq!(
        distinct,
        (0..distinct.len() as u64).collect(),
        "stored records are a prefix of what was sent"
    );
    assert_eq!(distinct.len() % 10, 0, "batches are stored whole");
    let mut per_key: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for (r, s) in records.iter().zip(&seqs) {
        per_key.entry(r.key.clone()).or_default().push(*s);
    }
    for seqs in per_key.values() {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "per-key order survives the crash"
        );
    }

    // The reopened log goes on from where it stopped.
    let producer = bus.producer().unwrap();
    let more = producer
        .publish(vec![Message::new("crash", "key-0", "next")])
        .await
        .unwrap();
    let partition_end = records
        .iter()
        .filter(|r| r.partition == more[0].partition)
        .map(|r| r.offset + 1)
        .max()
        .unwrap_or(0);
    assert_eq!(more[0].offset, partition_end);
}

#[tokio::test]
async fn committed_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (committed, expected) = {
        let bus = open(&dir);
        bus.create_topic("t", 2).await.unwrap();
        let messages = (0..50u64)
            .map(|i| Message::new("t", format!("k{i}"), i.to_string()))
            .collect();
        bus.producer().unwrap().publish(messages).await.unwrap();
        let mut consumer = bus.consumer("g", &["t"]).await.unwrap();
        let records = contract::read(consumer.as_mut(), 50, Duration::from_secs(10)).await;
        let done = Offsets::after(&records[..20]);
        consumer.commit(&done).await.unwrap();
        let expected: BTreeSet<(u32, u64)> = records
            .iter()
            .filter(|r| {
                done.get(&r.topic, r.partition)
                    .is_none_or(|next| r.offset >= next)
            })
            .map(|r| (r.partition, r.offset))
            .collect();
        (records.len() - 20, expected)
    };
    let bus = open(&dir);
    let mut consumer = bus.consumer("g", &["t"]).await.unwrap();
    let rest = contract::read(consumer.as_mut(), 1000, Duration::from_secs(2)).await;
    let got: BTreeSet<(u32, u64)> = rest.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(rest.len(), got.len());
    assert!(committed <= expected.len());
    assert_eq!(
        got, expected,
        "a restarted group resumes exactly after its commits"
    );
}

#[tokio::test]
async fn retention_deletes_old_records_every_group_has_committed_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        path: dir.path().join("bus.redb"),
        retention: Duration::from_millis(300),
        retention_interval: Duration::from_millis(50),
    };
    let embedded = EmbeddedBus::open(&config).unwrap();
    let bus: Arc<dyn Bus> = Arc::new(embedded.clone());
    for (topic, partitions) in [("read", 1), ("unread", 1), ("half", 2)] {
        bus.create_topic(topic, partitions).await.unwrap();
    }
    let blob = vec![7u8; 10_000];
    let publish = |topic: &'static str, n: u64| {
        let bus = bus.clone();
        let blob = blob.clone();
        async move {
            let messages = (0..n)
                .map(|i| Message::new(topic, format!("k{i}"), blob.clone()))
                .collect();
            bus.producer().unwrap().publish(messages).await.unwrap();
        }
    };
    // Group `g` reads 1,200 of `read`, and `half` on partition 0 only; no group reads `unread`.
    // It commits its start before anything is published, so that retention holds `read` and
    // `half` for it however long the publishing below takes on a busy machine.
    let mut consumer = bus.consumer("g", &["read", "half"]).await.unwrap();
    let mut start = Offsets::default();
    start.set("read", 0, 0);
    start.set("half", 0, 0);
    consumer.commit(&start).await.unwrap();
    publish("read", 2_000).await;
    publish("unread", 50).await;
    publish("half", 100).await;
    let mut done = Offsets::default();
    done.set("read", 0, 1_200);
    let half_0 = embedded.start_offset("half", 0).unwrap() + 10;
    done.set("half", 0, half_0);
    consumer.commit(&done).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(embedded.start_offset("read", 0).unwrap(), 1_200);
    assert_eq!(
        embedded.start_offset("unread", 0).unwrap(),
        49,
        "the newest record of a partition stays"
    );
    assert_eq!(embedded.start_offset("half", 0).unwrap(), half_0);
    assert_eq!(
        embedded.start_offset("half", 1).unwrap(),
        0,
        "a partition the group has not committed on is held for it"
    );
    assert_eq!(embedded.expired_records(), 1_200 + 49 + 10);
    // The group goes on from its commit: nothing it had yet to read is gone.
    drop(consumer);
    let mut consumer = bus.consumer("g", &["read"]).await.unwrap();
    let rest = contract::read(consumer.as_mut(), 800, Duration::from_secs(10)).await;
    assert_eq!(rest.len(), 800);
    assert_eq!(rest[0].offset, 1_200);
    consumer.commit(&Offsets::after(&rest)).await.unwrap();
    // Deleted pages are reused: another 20 MB through the log, read and expired, leaves the
    // file about where the first 20 MB left it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let size = || std::fs::metadata(&config.path).unwrap().len();
    let after_first = size();
    publish("read", 2_000).await;
    let rest = contract::read(consumer.as_mut(), 2_000, Duration::from_secs(10)).await;
    consumer.commit(&Offsets::after(&rest)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    publish("read", 10).await;
    assert!(
        size() <= after_first + after_first / 4,
        "{} bytes after the second 20 MB, {after_first} after the first",
        size()
    );
    // A reopened log keeps counting offsets on from where retention left the partitions.
    drop(consumer);
    drop(bus);
    drop(embedded);
    let bus = open(&dir);
    let delivered = bus
        .producer()
        .unwrap()
        .publish(vec![Message::new("unread", "k", "after")])
        .await
        .unwrap();
    assert_eq!(delivered[0].offset, 50);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let _bus = open(&dir);
    let err = EmbeddedBus::open(&EmbeddedConfig {
        path: dir.path().join("bus.redb"),
        ..EmbeddedConfig::default()
    })
    .err()
    .expect("second open must fail");
    assert!(err.to_string().contains("bus.redb"), "{err}");
}

/// Unmounts a test filesystem when the test ends, also when it fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_publishes_as_retryable_and_the_log_writes_again_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("TRELLIS_TEST_NO_MOUNT").is_some(),
            "mounting a 24 MB tmpfs failed (it needs root or CAP_SYS_ADMIN); set \
             TRELLIS_TEST_NO_MOUNT=1 to skip this test knowingly"
        );
        eprintln!("skipped: no tmpfs, and TRELLIS_TEST_NO_MOUNT is set");
        return;
    }
    let _unmount = Unmount(mount.clone());
    // Ballast to delete later: the space an operator frees.
    std::fs::write(mount.join("ballast"), vec![0u8; 8 << 20]).unwrap();
    let embedded = EmbeddedBus::open(&EmbeddedConfig {
        path: mount.join("bus.redb"),
        ..EmbeddedConfig::default()
    })
    .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(embedded);
    bus.create_topic("t", 1).await.unwrap();
    let producer = bus.producer().unwrap();
    let mut acked = 0u64;
    let mut failure = None;
    for i in 0..1_000u32 {
        let messages = (0..10)
            .map(|_| Message::new("t", "k", vec![i as u8; 10_000]))
            .collect();
        match producer.publish(messages).await {
            Ok(delivered) => acked += delivered.len() as u64,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("24 MB fill up");
    assert!(e.is_retryable(), "{e}");
    assert!(
        !producer.is_ready().await,
        "readiness is off while writes fail"
    );
    assert!(
        producer
            .publish(vec![Message::new("t", "k", vec![0u8; 1_000_000])])
            .await
            .is_err()
    );
    std::fs::remove_file(mount.join("ballast")).unwrap();
    // Space is back: the log reopens its file and writes again, numbering on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match producer
            .publish(vec![Message::new("t", "k", "after")])
            .await
        {
            Ok(delivered) => {
                assert_eq!(delivered[0].offset, acked);
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(std::time::Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(producer.is_ready().await);
    // Every acknowledged record is there, once, in order; none of the refused ones is.
    let mut consumer = bus.consumer("g", &["t"]).await.unwrap();
    let all = contract::read(
        consumer.as_mut(),
        acked as usize + 1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(all.len() as u64, acked + 1);
    assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64));
    assert_eq!(all.last().unwrap().payload, b"after");
}
