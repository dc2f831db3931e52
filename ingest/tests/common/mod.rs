//! Test harness: ingest in-process on port 0 over a real bus, and what reached the bus.

#![allow(dead_code)]

pub mod admin;

use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_bus::config::{EmbeddedConfig, KafkaConfig};
use trellis_bus::{Bus, DeadLetter};
use trellis_ingest::IngestConfig;
use trellis_ingest::config::ProjectConfig;
use trellis_schemas::{Event, avro, topics};

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{nanos}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A numeric id no other test uses (Sentry DSNs need numeric project ids).
pub fn unique_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    micros * 100 + N.fetch_add(1, Ordering::Relaxed) % 100
}

/// A config with one project of its own: (config, project name, key). The project's Sentry id
/// is `config.projects[0].sentry_id`.
pub fn config() -> (IngestConfig, String, String) {
    let project = unique("p");
    let key = unique("key_");
    let config = IngestConfig {
        projects: vec![ProjectConfig {
            name: project.clone(),
            keys: vec![key.clone()],
            sentry_id: Some(unique_number()),
            ..ProjectConfig::default()
        }],
        ..IngestConfig::default()
    };
    (config, project, key)
}

pub struct Harness {
    pub url: String,
    pub bus: Arc<dyn Bus>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub fn kafka_brokers() -> String {
    std::env::var("TEST_TRELLIS_KAFKA")
        .expect("TEST_TRELLIS_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker")
}

impl Harness {
    /// Ingest on the embedded log.
    pub async fn embedded(config: IngestConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn Bus> = Arc::new(
            trellis_bus::embedded::EmbeddedBus::open(&EmbeddedConfig {
                path: dir.path().join("bus.redb"),
                ..Default::default()
            })
            .unwrap(),
        );
        Self::start(config, bus, Some(dir)).await
    }

    /// Ingest on the real broker.
    pub async fn kafka(config: IngestConfig) -> Harness {
        let bus: Arc<dyn Bus> = Arc::new(
            trellis_bus::kafka::KafkaBus::new(&KafkaConfig {
                brokers: kafka_brokers(),
                ..KafkaConfig::default()
            })
            .unwrap(),
        );
        Self::start(config, bus, None).await
    }

    /// Ingest on a bus whose topics already exist.
    pub async fn start(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        dir: Option<tempfile::TempDir>,
    ) -> Harness {
        // Topics are shared by the tests on one broker; the first test to need one creates it.
        for topic in [topics::RAW, topics::DLQ] {
            if bus.partitions(topic).await.is_err() {
                bus.create_topic(topic, 4).await.unwrap();
            }
        }
        Self::serve(config, bus, dir).await
    }

    /// Ingest without creating topics (for a bus that is down).
    pub async fn serve(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        dir: Option<tempfile::TempDir>,
    ) -> Harness {
        config.validate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = trellis_ingest::state(config, bus.producer().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(trellis_ingest::run(listener, state, async {
            let _ = rx.await;
        }));
        Harness {
            url,
            bus,
            shutdown: Some(tx),
            _dir: dir,
        }
    }

    /// Events of `project` on `events.raw`: waits until `want` arrived (or `within` passed), then
    /// a little longer so that extra events would be seen too.
    pub async fn events(&self, project: &str, want: usize, within: Duration) -> Vec<Event> {
        let mut consumer = self
            .bus
            .consumer(&unique("reader"), &[topics::RAW])
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + within;
        let mut quiet_until: Option<Instant> = None;
        loop {
            let records = consumer
                .poll(1000, Duration::from_millis(100))
                .await
                .unwrap();
            for r in &records {
                let event = avro::decode(&r.payload).expect("events.raw holds only valid Avro");
                if event.common().project == project {
                    out.push(event);
                }
            }
            let now = Instant::now();
            if out.len() >= want && quiet_until.is_none() {
                quiet_until = Some(now + Duration::from_millis(500));
            }
            if quiet_until.is_some_and(|q| now >= q) || now >= deadline {
                return out;
            }
        }
    }

    /// Dead letters that ingest wrote for `project`.
    pub async fn dead_letters(
        &self,
        project: &str,
        want: usize,
        within: Duration,
    ) -> Vec<DeadLetter> {
        let mut consumer = self
            .bus
            .consumer(&unique("dlq"), &[topics::DLQ])
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            for r in consumer
                .poll(1000, Duration::from_millis(100))
                .await
                .unwrap()
            {
                if r.key == project.as_bytes()
                    && let Some(l) = DeadLetter::from_record(&r)
                {
                    out.push(l);
                }
            }
            if out.len() >= want {
                break;
            }
        }
        out
    }

    /// Sends a request; returns status, headers and body.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
        request("POST", &format!("{}{path}", self.url), headers, Some(body)).await
    }

    pub async fn patch(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
        request("PATCH", &format!("{}{path}", self.url), headers, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Response {
        request("GET", &format!("{}{path}", self.url), &[], None).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Response {
    let method = method.to_string();
    let url = url.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = match body {
            Some(body) => {
                let mut req = if method == "PATCH" {
                    agent.patch(&url)
                } else {
                    agent.post(&url)
                };
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                req.send(&body[..]).unwrap()
            }
            None => {
                let mut req = agent.get(&url);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                req.call().unwrap()
            }
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Response {
            status,
            headers,
            body,
        }
    })
    .await
    .unwrap()
}
