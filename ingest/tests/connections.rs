//! Connection-level limits, tried with raw sockets the way a hostile client would: stalled
//! headers and bodies (slowloris), a connection flood, and one pool of request permits across
//! every route.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_bus::Bus;
use trellis_bus::config::EmbeddedConfig;
use trellis_ingest::{AppState, IngestConfig};

struct Server {
    addr: std::net::SocketAddr,
    state: AppState,
    _dir: tempfile::TempDir,
}

async fn serve(config: IngestConfig) -> Server {
    config.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        trellis_bus::embedded::EmbeddedBus::open(&EmbeddedConfig {
            path: dir.path().join("bus.redb"),
            ..Default::default()
        })
        .unwrap(),
    );
    for topic in [trellis_schemas::topics::RAW, trellis_schemas::topics::DLQ] {
        bus.create_topic(topic, 1).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = trellis_ingest::state(config, bus.producer().unwrap());
    tokio::spawn(trellis_ingest::run(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    Server {
        addr,
        state,
        _dir: dir,
    }
}

fn batch(key: &str) -> Vec<u8> {
    let body = json!({"events": [{
        "kind": "analytics", "event_id": "00000000-0000-4000-8000-000000000001",
        "timestamp": "2026-11-25T12:00:00Z", "device_id": "d-1",
        "release": {"platform": "ios", "app_version": "2.14.0"}, "name": "opened_app"
    }]})
    .to_string();
    format!(
        "POST /v1/batch HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status line's code of what `stream` answers within `within`, or `None` if nothing came.
async fn status(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split(' ').nth(1)?.parse().ok()
}

/// Whether the server closed `stream` within `within` (end of stream or reset).
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn request(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    status(&mut stream, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_and_bodies_are_cut_off_while_others_are_served() {
    let (mut config, _, key) = config();
    config.publish_timeout = Duration::from_millis(500);
    config.limits.header_timeout = Duration::from_secs(1);
    config.limits.request_timeout = Duration::from_secs(2);
    let server = serve(config).await;

    // 100 connections that never finish their headers, 20 that never finish their body.
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"POST /v1/batch HTTP/1.1\r\nHost: ingest\r\nX-Slow: ")
            .await
            .unwrap();
        headers.push(s);
    }
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let whole = batch(&key);
        s.write_all(&whole[..whole.len() - 20]).await.unwrap();
        bodies.push(s);
    }
    let started = Instant::now();
    assert_eq!(
        request(server.addr, &batch(&key)).await,
        Some(200),
        "a client that sends its request is served while 120 others stall"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    for s in &mut bodies {
        assert_eq!(
            status(s, Duration::from_secs(10)).await,
            Some(408),
            "a body that stops coming is answered 408 at request_timeout"
        );
    }
    for s in &mut headers {
        assert!(
            closed(s, Duration::from_secs(10)).await,
            "headers that stop coming close the connection at header_timeout"
        );
    }
    // An idle kept-alive connection is closed the same way.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(&batch(&key)).await.unwrap();
    assert_eq!(status(&mut idle, Duration::from_secs(10)).await, Some(200));
    assert!(closed(&mut idle, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.state.metrics.connections_open(), 0);
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_holds_at_most_max_connections_and_memory_stays_bounded() {
    let (mut config, _, key) = config();
    config.limits.max_connections = 64;
    config.limits.header_timeout = Duration::from_secs(60);
    let server = serve(config).await;
    let before = rss_bytes();

    // 400 at once: the server takes 64, the listen backlog holds some more, and the kernel
    // leaves the rest unanswered (they time out here).
    let attempts: Vec<_> = (0..400)
        .map(|_| {
            tokio::spawn(tokio::time::timeout(
                Duration::from_secs(2),
                TcpStream::connect(server.addr),
            ))
        })
        .collect();
    let mut flood = Vec::new();
    for attempt in attempts {
        if let Ok(Ok(stream)) = attempt.await.unwrap() {
            flood.push(stream);
        }
    }
    assert!(flood.len() > 100, "{} connections made", flood.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state.metrics.connections_open() < 64 {
        assert!(Instant::now() < deadline, "the server took the first 64");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.state.metrics.connections_open(),
        64,
        "the others wait in the backlog"
    );
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "{} connections grew the process by {} MB",
        flood.len(),
        grown >> 20
    );

    drop(flood);
    assert_eq!(
        request(server.addr, &batch(&key)).await,
        Some(200),
        "once the flood is gone, requests are served again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pool_of_request_permits_holds_for_every_route() {
    let (mut config, _, key) = config();
    config.limits.max_concurrent_requests = 1;
    let server = serve(config).await;

    // A native batch whose body is not all sent holds the one permit...
    let whole = batch(&key);
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    first.write_all(&whole[..whole.len() - 20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... so a PostHog batch, on another route, waits for it.
    let body = json!({"api_key": key, "batch": [{"event": "opened_app", "distinct_id": "d-2",
        "timestamp": "2026-11-25T12:00:00Z", "uuid": "00000000-0000-4000-8000-000000000002"}]})
    .to_string();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second
        .write_all(
            format!(
                "POST /batch/ HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        status(&mut second, Duration::from_millis(700)).await,
        None,
        "the second request waits while the first holds the only permit"
    );
    first.write_all(&whole[whole.len() - 20..]).await.unwrap();
    assert_eq!(status(&mut first, Duration::from_secs(10)).await, Some(200));
    assert_eq!(
        status(&mut second, Duration::from_secs(10)).await,
        Some(200)
    );
}
