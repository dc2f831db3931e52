//! `trellis demo`: the rollout guard halting a bad OTA update, in one command.
//!
//! It starts the whole pipeline in this process on a temporary data directory (embedded bus,
//! ingest on a free loopback port), with a built-in receiver standing in for Slack and for a
//! rollback service. Then it sends two hours of a simulated fleet to ingest over HTTP, in
//! seconds: a healthy release on most devices and an OTA update on 5% of them that crashes four
//! times as often. It prints what the receiver gets: the Slack message and the signed
//! `rollout.halt` call.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::mpsc;
use trellis_processors::detect::sim::{self, RolloutSpec};

use crate::app;
use crate::config::Config;

const SECRET: &str = "trellis-demo-rollback-secret";

/// What the built-in receiver got.
struct Call {
    path: String,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
    raw: Vec<u8>,
}

/// The demo's fleet: `devices` devices, a session every 30 minutes each, two hours of event time
/// ending now; the update reaches 5% of them half an hour in.
fn fleet(devices: u32, seed: u64) -> RolloutSpec {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let start_ms = (now - 2 * 3_600_000 - 10 * 60_000) / 60_000 * 60_000;
    RolloutSpec {
        seed,
        devices,
        crash_factor: 4.0,
        candidate_share: 0.05,
        clean_share: 0.0,
        start_ms,
        rollout_ms: start_ms + 30 * 60_000,
        end_ms: start_ms + 2 * 3_600_000,
        ..RolloutSpec::default()
    }
}

/// Starts the receiver on a free loopback port; every request goes to the channel.
async fn receiver() -> anyhow::Result<(String, mpsc::UnboundedReceiver<Call>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo receiver")?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Call {
                    path: uri.path().to_string(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                    body: serde_json::from_slice(&body).unwrap_or_default(),
                    raw: body.to_vec(),
                });
                "ok"
            }
        },
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, rx))
}

fn config(dir: &std::path::Path, hooks: &str) -> anyhow::Result<Config> {
    let text = format!(
        "data_dir = {data:?}\nlog = \"error\"\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\n\
         [processors]\ncheckpoint_interval = \"1s\"\nidle_timeout = \"2s\"\n\
         [alerts.destinations.slack]\nkind = \"slack\"\nurl = \"{hooks}/slack/services/T000/B000/demo\"\n\
         [alerts.destinations.rollback]\nkind = \"webhook\"\nurl = \"{hooks}/rollback\"\n\
         secret = {SECRET:?}\n\
         [[alerts.rules]]\nname = \"regressions\"\ndestinations = [\"slack\"]\n\
         [[alerts.rules]]\nname = \"guard\"\nprojects = [\"default\"]\naction = \"halt\"\n\
         min_severity = \"critical\"\ndestinations = [\"rollback\"]\n",
        data = dir.display().to_string(),
    );
    Config::from_toml(&text).context("the demo configuration")
}

/// Posts `events` to the native batch endpoint, waiting out a 503 (the bus catching up).
async fn send(
    client: &reqwest::Client,
    url: &str,
    events: &[serde_json::Value],
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "events": events });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = client
            .post(url)
            .bearer_auth("trellis_dev_key")
            .json(&body)
            .send()
            .await
            .context("sending to ingest")?;
        match response.status().as_u16() {
            200 => return Ok(()),
            503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            status => anyhow::bail!(
                "ingest answered {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
}

/// Runs the demo: `devices` devices, the fleet drawn from `seed`, giving up after `timeout`.
pub async fn run(devices: u32, seed: u64, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("creating the demo's data directory")?;
    let (hooks, mut calls) = receiver().await?;
    let config = config(dir.path(), &hooks)?;
    let bus = app::open_bus(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo ingest")?;
    let ingest = format!("http://{}", listener.local_addr()?);
    let shutdown = app::Shutdown::new();
    let metrics = Arc::new(trellis_processors::ProcessorMetrics::default());
    let pipeline = {
        let (config, bus, shutdown) = (config.clone(), bus.clone(), shutdown.clone());
        let ingest = app::ingest_state(&config, bus.as_ref(), Vec::new())?;
        tokio::spawn(async move {
            tokio::try_join!(
                app::run_ingest(ingest, listener, shutdown.clone().cancelled_owned()),
                app::run_processors(&config, bus.clone(), metrics.clone(), &shutdown),
                app::run_alerts(&config, bus, metrics, &shutdown),
            )
            .map(|_| ())
        })
    };

    let spec = fleet(devices, seed);
    let bad = sim::candidate_release(&spec);
    let updates = sim::native_updates(&sim::sessions(&spec));
    println!(
        "trellis demo: {devices} devices on {} {}; OTA update {} goes to 5% of them half an hour \
         in and crashes four times as often.",
        bad.platform,
        bad.app_version,
        bad.update_id.as_deref().unwrap_or("-"),
    );
    println!(
        "Sending two hours of their sessions ({} session updates) to {ingest} ...",
        updates.len()
    );
    let client = reqwest::Client::new();
    let url = format!("{ingest}/v1/batch");
    let events: Vec<serde_json::Value> = updates.into_iter().map(|(_, u)| u).collect();
    for batch in events.chunks(1000) {
        send(&client, &url, batch).await?;
    }
    println!(
        "Sent in {:.1} s. Waiting for the rollout guard ...\n",
        started.elapsed().as_secs_f64()
    );

    let deadline = tokio::time::Instant::now() + timeout;
    let (mut slack, mut halt) = (None, None);
    while halt.is_none() || slack.is_none() {
        let call = tokio::select! {
            call = calls.recv() => call.context("the demo receiver stopped")?,
            _ = tokio::time::sleep_until(deadline) => {
                shutdown.cancel();
                anyhow::bail!("no rollout.halt within {timeout:?}");
            }
        };
        if call.path == "/rollback" && call.body["type"] == "rollout.halt" {
            halt.get_or_insert(call);
        } else if call.path.starts_with("/slack") {
            slack.get_or_insert(call);
        }
    }
    let (slack, halt) = (slack.expect("waited for"), halt.expect("waited for"));
    println!("── Slack: {} ──", slack.path);
    print!("{}", slack_text(&slack.body));
    println!("\n── Webhook: POST {} ──", halt.path);
    for (name, value) in &halt.headers {
        if name.starts_with("x-trellis") {
            println!("{name}: {value}");
        }
    }
    let verified = verify(&halt);
    println!(
        "{}",
        serde_json::to_string_pretty(&halt.body).unwrap_or_default()
    );
    println!(
        "\nSignature {}. The guard halted update {} {:.0} s after the demo started.",
        if verified { "verified" } else { "INVALID" },
        bad.update_id.as_deref().unwrap_or("-"),
        started.elapsed().as_secs_f64()
    );
    shutdown.cancel();
    pipeline
        .await
        .context("the demo pipeline")?
        .context("the demo pipeline")?;
    anyhow::ensure!(
        verified,
        "the rollout.halt call's signature does not verify"
    );
    Ok(())
}

/// Checks the call's signature the way the README tells a receiver to.
fn verify(call: &Call) -> bool {
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let (Some(timestamp), Some(signature)) =
        (header("x-trellis-timestamp"), header("x-trellis-signature"))
    else {
        return false;
    };
    timestamp
        .parse::<i64>()
        .is_ok_and(|t| trellis_alerts::message::signature(SECRET, t, &call.raw) == signature)
}

/// A Block Kit message as plain text: the header, the section and its fields, the context.
fn slack_text(message: &serde_json::Value) -> String {
    let mut out = String::new();
    for block in message["blocks"].as_array().into_iter().flatten() {
        if let Some(text) = block["text"]["text"].as_str() {
            out.push_str(text);
            out.push('\n');
        }
        for field in block["fields"].as_array().into_iter().flatten() {
            if let Some(text) = field["text"].as_str() {
                out.push_str(&text.replace(":*\n", ": ").replace('*', ""));
                out.push('\n');
            }
        }
        for element in block["elements"].as_array().into_iter().flatten() {
            if let Some(text) = element["text"].as_str() {
                out.push_str(text);
                out.push('\n');
            }
        }
    }
    out
}
