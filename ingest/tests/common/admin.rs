//! The admin API's harness: ingest with two projects and admin tokens, requests with a token,
//! and what a topic received.

use std::time::{Duration, Instant};

use trellis_ingest::config::{AdminToken, ProjectConfig, ScopedToken};
use trellis_schemas::topics;

use super::{Harness, Response, config, unique};

pub const ANY: &str = "admin-token-for-every-project";
pub const PIPELINE: &str = "release-pipeline-token-0001";

/// Ingest with two projects, a token for both and one for the first only: (harness, first,
/// second).
pub async fn harness() -> (Harness, String, String) {
    let (mut config, project, _) = config();
    let second = unique("second");
    config.projects.push(ProjectConfig {
        name: second.clone(),
        keys: vec![unique("key_")],
        ..ProjectConfig::default()
    });
    config.admin_tokens = vec![
        AdminToken::Any(ANY.into()),
        AdminToken::Scoped(ScopedToken {
            token: PIPELINE.into(),
            name: "release-pipeline".into(),
            projects: vec![project.clone()],
        }),
    ];
    let h = Harness::embedded(config).await;
    h.bus.create_topic(topics::DETECTIONS, 2).await.unwrap();
    (h, project, second)
}

pub async fn send(
    h: &Harness,
    method: &str,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> Response {
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    let body = body.to_string().into_bytes();
    if method == "PATCH" {
        h.patch(path, &headers, body).await
    } else {
        h.post(path, &headers, body).await
    }
}

pub fn error(r: &Response) -> (u16, String) {
    (
        r.status,
        r.json()["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// What `topic` holds, each record read by `decode(key, payload)`, once `want` arrived. With
/// nothing expected it watches for a while, so that anything published would be seen.
pub async fn read<T>(
    h: &Harness,
    topic: &str,
    want: usize,
    decode: impl Fn(&[u8], &[u8]) -> T,
) -> Vec<T> {
    let mut consumer = h.bus.consumer(&unique("reader"), &[topic]).await.unwrap();
    let window = if want == 0 { 2 } else { 10 };
    let deadline = Instant::now() + Duration::from_secs(window);
    let mut out = Vec::new();
    while (want == 0 || out.len() < want) && Instant::now() < deadline {
        for r in consumer
            .poll(100, Duration::from_millis(100))
            .await
            .unwrap()
        {
            out.push(decode(&r.key, &r.payload));
        }
    }
    out
}
