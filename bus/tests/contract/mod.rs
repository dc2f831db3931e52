//! The bus contract: what every implementation promises, as tests that take any [`Bus`].
//! `embedded.rs` and `kafka.rs` run each of them against their implementation.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_bus::{
    Bus, BusError, Consumer, DEAD_LETTER_TOPIC, DeadLetter, Message, Offsets, Record, dead_letter,
};
use trellis_schemas::{avro, sample};

/// A name no other test uses, so tests run in parallel on one broker.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls until `want` records arrived or `within` passed.
pub async fn read(consumer: &mut dyn Consumer, want: usize, within: Duration) -> Vec<Record> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        out.extend(
            consumer
                .poll(want - out.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    out
}

fn seq(record: &Record) -> u64 {
    std::str::from_utf8(&record.payload)
        .unwrap()
        .parse()
        .unwrap()
}

pub async fn publishing_to_a_missing_topic_is_refused(bus: Arc<dyn Bus>) {
    let producer = bus.producer().unwrap();
    let err = producer
        .publish(vec![Message::new(unique("missing"), "k", "v")])
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic(_)), "{err}");
    let err = match bus.consumer("g", &[&unique("missing")]).await {
        Err(e) => e,
        Ok(_) => panic!("a consumer of a missing topic was created"),
    };
    assert!(matches!(err, BusError::UnknownTopic(_)), "{err}");
}

pub async fn records_of_one_key_stay_in_order(bus: Arc<dyn Bus>) {
    let topic = unique("order");
    bus.create_topic(&topic, 4).await.unwrap();
    assert_eq!(bus.partitions(&topic).await.unwrap(), 4);
    let producer = bus.producer().unwrap();
    // 10 keys, 100 messages each, interleaved within a call. Two calls run concurrently, each with
    // its own keys: order is promised within a call and between calls made one after the other.
    let batch = |keys: std::ops::Range<u64>, round: u64| -> Vec<Message> {
        (0..10u64)
            .flat_map(|i| keys.clone().map(move |k| (k, round * 10 + i)))
            .map(|(k, seq)| Message::new(topic.as_str(), format!("key-{k}"), seq.to_string()))
            .collect()
    };
    let mut deliveries = Vec::new();
    for round in 0..10 {
        let (da, db) = tokio::join!(
            producer.publish(batch(0..5, round)),
            producer.publish(batch(5..10, round))
        );
        deliveries.extend(da.unwrap());
        deliveries.extend(db.unwrap());
    }
    assert_eq!(deliveries.len(), 1000);
    let mut consumer = bus.consumer(&unique("g"), &[&topic]).await.unwrap();
    let records = read(consumer.as_mut(), 1000, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 1000);
    // Each partition's end offset is one past its last record: the consumer has read everything.
    for partition in 0..4 {
        let stored = deliveries
            .iter()
            .filter(|d| d.partition == partition)
            .count() as u64;
        assert_eq!(
            consumer.end_offset(&topic, partition).await.unwrap(),
            stored
        );
    }
    let mut per_key: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    let mut partition_of: HashMap<Vec<u8>, BTreeSet<u32>> = HashMap::new();
    for r in &records {
        per_key.entry(r.key.clone()).or_default().push(seq(r));
        partition_of
            .entry(r.key.clone())
            .or_default()
            .insert(r.partition);
    }
    assert_eq!(per_key.len(), 10);
    for (key, seqs) in &per_key {
        assert_eq!(
            seqs,
            &(0..100).collect::<Vec<_>>(),
            "key {:?} out of order",
            String::from_utf8_lossy(key)
        );
        assert_eq!(partition_of[key].len(), 1, "a key spread over partitions");
        assert_eq!(
            *partition_of[key].first().unwrap(),
            trellis_bus::partition_for(key, 4),
            "not Kafka's partition"
        );
    }
}

pub async fn uncommitted_records_are_redelivered_to_the_next_consumer(bus: Arc<dyn Bus>) {
    let topic = unique("redeliver");
    let group = unique("g");
    bus.create_topic(&topic, 3).await.unwrap();
    let producer = bus.producer().unwrap();
    let messages = (0..120u64)
        .map(|i| Message::new(topic.as_str(), format!("key-{}", i % 7), i.to_string()))
        .collect();
    producer.publish(messages).await.unwrap();

    let mut first = bus.consumer(&group, &[&topic]).await.unwrap();
    let records = read(first.as_mut(), 120, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 120);
    // Process (commit) only the first 50 that arrived; the rest were read but never finished.
    let done = Offsets::after(&records[..50]);
    first.commit(&done).await.unwrap();
    for (topic, partition, next) in done.iter() {
        assert_eq!(first.committed(topic, partition).await.unwrap(), Some(next));
    }
    drop(first);

    let finished: BTreeSet<(u32, u64)> = records
        .iter()
        .filter(|r| {
            done.get(&r.topic, r.partition)
                .is_some_and(|next| r.offset < next)
        })
        .map(|r| (r.partition, r.offset))
        .collect();
    let expected: BTreeSet<(u32, u64)> = records
        .iter()
        .map(|r| (r.partition, r.offset))
        .filter(|k| !finished.contains(k))
        .collect();

    let mut second = bus.consumer(&group, &[&topic]).await.unwrap();
    let again = read(second.as_mut(), expected.len(), Duration::from_secs(60)).await;
    let again_keys: BTreeSet<(u32, u64)> = again.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(
        again.len(),
        again_keys.len(),
        "a record came twice to one consumer"
    );
    assert_eq!(
        again_keys, expected,
        "the next consumer must get exactly what was not committed"
    );
    assert!(
        second
            .poll(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn corrupt_payloads_go_to_the_dead_letter_topic(bus: Arc<dyn Bus>) {
    let topic = unique("dlq-src");
    let group = unique("g");
    bus.create_topic(&topic, 2).await.unwrap();
    bus.create_topic(DEAD_LETTER_TOPIC, 4).await.unwrap();
    let producer = bus.producer().unwrap();
    let mut messages = Vec::new();
    let mut corrupt = BTreeSet::new();
    for i in 0..60u64 {
        let payload = match i % 10 {
            3 => b"{\"not\": \"avro\"}".to_vec(),
            7 => avro::encode(&sample::event("p", i, i)).unwrap()[..12].to_vec(),
            _ => avro::encode(&sample::event("p", i, i)).unwrap(),
        };
        if i % 10 == 3 || i % 10 == 7 {
            corrupt.insert(payload.clone());
        }
        messages.push(Message::new(topic.as_str(), format!("device-{i}"), payload));
    }
    producer.publish(messages).await.unwrap();

    // A consumer loop as the processors run it: decode, dead-letter what fails, commit, go on.
    let mut consumer = bus.consumer(&group, &[&topic]).await.unwrap();
    let mut decoded = 0;
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < 60 && Instant::now() < deadline {
        let records = consumer.poll(16, Duration::from_millis(200)).await.unwrap();
        let mut letters = Vec::new();
        for record in &records {
            match avro::decode(&record.payload) {
                Ok(_) => decoded += 1,
                Err(reason) => {
                    letters.push(dead_letter(record, "contract-test", &reason.to_string()))
                }
            }
        }
        producer.publish(letters).await.unwrap();
        consumer.commit(&Offsets::after(&records)).await.unwrap();
        seen += records.len();
    }
    assert_eq!((seen, decoded), (60, 48));

    let mut dlq = bus
        .consumer(&unique("dlq-reader"), &[DEAD_LETTER_TOPIC])
        .await
        .unwrap();
    let letters: Vec<DeadLetter> = read(dlq.as_mut(), 1000, Duration::from_secs(3))
        .await
        .iter()
        .filter_map(DeadLetter::from_record)
        .filter(|l| l.source.as_ref().is_some_and(|(t, _, _)| *t == topic))
        .collect();
    assert_eq!(letters.len(), 12);
    for letter in &letters {
        assert!(
            corrupt.contains(&letter.payload),
            "the dead letter must carry the payload unchanged"
        );
        assert_eq!(letter.stage, "contract-test");
        assert!(
            letter.reason.contains("marker") || letter.reason.contains("does not match"),
            "reason: {}",
            letter.reason
        );
    }
}

pub async fn group_members_split_the_partitions(bus: Arc<dyn Bus>) {
    let topic = unique("split");
    let group = unique("g");
    bus.create_topic(&topic, 4).await.unwrap();
    let mut a = bus.consumer(&group, &[&topic]).await.unwrap();
    let mut b = bus.consumer(&group, &[&topic]).await.unwrap();
    // Members receive partitions as they poll; wait until the group has settled on a split.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (a.assignment().len() + b.assignment().len() != 4
        || a.assignment().is_empty()
        || b.assignment().is_empty())
        && Instant::now() < deadline
    {
        assert!(
            a.poll(1, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            b.poll(1, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
    }
    let producer = bus.producer().unwrap();
    let messages = (0..400u64)
        .map(|i| Message::new(topic.as_str(), format!("key-{i}"), i.to_string()))
        .collect();
    producer.publish(messages).await.unwrap();

    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    let (mut from_a, mut from_b) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    while got.len() < 400 && Instant::now() < deadline {
        for (consumer, count) in [(&mut a, &mut from_a), (&mut b, &mut from_b)] {
            let records = consumer
                .poll(100, Duration::from_millis(200))
                .await
                .unwrap();
            consumer.commit(&Offsets::after(&records)).await.unwrap();
            *count += records.len();
            for r in &records {
                *got.entry(seq(r)).or_default() += 1;
            }
        }
    }
    assert_eq!(got.len(), 400, "every record reaches the group");
    assert!(
        got.values().all(|&n| n == 1),
        "with a settled group, each record goes to one member once"
    );
    let (pa, pb) = (a.assignment(), b.assignment());
    assert_eq!(pa.len() + pb.len(), 4, "{pa:?} {pb:?}");
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "both members own partitions: {pa:?} {pb:?}"
    );
    assert!(pa.iter().all(|p| !pb.contains(p)));
    assert!(
        from_a > 0 && from_b > 0,
        "both members read: {from_a} {from_b}"
    );
}

/// A `trellis-bus-tool` child process whose stdout the test reads line by line.
pub struct Tool {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Tool {
    pub fn start(args: &[&str]) -> Tool {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-bus-tool"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        Tool { child, lines }
    }

    /// Reads lines until `done` says stop; panics after `within`.
    pub fn read_until(&self, within: Duration, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("child went quiet; saw {} lines", seen.len()));
            let stop = done(&line);
            seen.push(line);
            if stop {
                return seen;
            }
        }
    }

    /// SIGKILL: no destructor, no flush, no goodbye to the group.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // The pipe reaches EOF once the child is gone; read everything it printed.
        self.lines.iter().collect()
    }
}
