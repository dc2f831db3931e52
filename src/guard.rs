//! `trellis rollouts` and `trellis alerts`: the rollout guard and its alerts from the command
//! line. Changes go through the admin API of a running trellis (`--url`, `--token`); listings
//! read the Parquet tables (`audit`, `alerts`, `sessions`) as `trellis query` does, so they show
//! what the sink has written (a few seconds behind the stage).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use trellis_sinks::query::{OutputFormat, query};

/// Where the admin API is and how to authenticate.
#[derive(Debug, Args)]
pub struct Admin {
    /// The trellis server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin token (`ingest.admin_tokens`).
    #[arg(long, env = "TRELLIS_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Who gives the command, for the audit trail (the token's holder when absent).
    #[arg(long)]
    who: Option<String>,
    /// Why, for the audit trail.
    #[arg(long, default_value = "")]
    reason: String,
}

/// `trellis rollouts ...`.
#[derive(Debug, Subcommand)]
pub enum Rollouts {
    /// The rollouts trellis knows: OTA updates seen in the data and those a pipeline
    /// registered, with the guard's state, the percentage and the last change.
    List {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
    },
    /// Registers a rollout, as a deployment pipeline does.
    Register {
        #[arg(long)]
        project: String,
        /// The OTA update id.
        #[arg(long)]
        update_id: String,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        runtime_version: String,
        /// The share of the fleet offered the update, 0 to 100.
        #[arg(long)]
        percentage: f64,
        /// The platform, if the update is for one.
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Changes a rollout's percentage.
    Update {
        #[arg(long)]
        project: String,
        #[arg(long)]
        update_id: String,
        #[arg(long)]
        percentage: f64,
        #[command(flatten)]
        admin: Admin,
    },
    /// Halts an update now: `rollout.halt` goes to the guard's destinations.
    Halt(Override),
    /// Resumes a halted or ignored update: `rollout.resume` goes out (after a halt), and the
    /// guard may halt the update again on its next regression.
    Resume(Override),
    /// Keeps the guard from ever halting an update; its alerts still notify.
    Ignore(Override),
}

/// An override of the guard on one update.
#[derive(Debug, Args)]
pub struct Override {
    #[arg(long)]
    project: String,
    /// The OTA update id.
    #[arg(long)]
    update_id: String,
    #[command(flatten)]
    admin: Admin,
}

/// `trellis alerts ...`.
#[derive(Debug, Subcommand)]
pub enum Alerts {
    /// Open alerts (firing, acknowledged, halted), newest first; `--all` adds resolved ones.
    List {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Resolved and resumed alerts too.
        #[arg(long)]
        all: bool,
    },
    /// Acknowledges a firing alert: its escalations notify nobody; its resolution does.
    Ack {
        #[arg(long)]
        project: String,
        /// The alert id (32 hex digits).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Silences an alert for a while: nothing of it notifies but a halt.
    Silence {
        #[arg(long)]
        project: String,
        /// The alert id (32 hex digits).
        #[arg(long)]
        id: String,
        /// For how long (`30m`, `2h`).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[command(flatten)]
        admin: Admin,
    },
}

/// Sends an admin request; returns the accepted answer's text, or the refusal as an error.
pub fn send(method: &str, url: &str, token: &str, body: &Value) -> anyhow::Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let bytes = serde_json::to_vec(body)?;
    let request = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
        r.header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(bytes.as_slice())
    };
    let mut response = match method {
        "PATCH" => request(agent.patch(url)),
        _ => request(agent.post(url)),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if status != 202 {
        anyhow::bail!("{url}: {status} {text}");
    }
    Ok(text)
}

/// The fields of `fields` that are not null: a request body without the options not given.
pub fn given(fields: Value) -> serde_json::Map<String, Value> {
    match fields {
        Value::Object(map) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => serde_json::Map::new(),
    }
}

/// The body's non-null fields, with `who` and `reason` from `admin`.
fn body(admin: &Admin, fields: Value) -> Value {
    let mut map = given(fields);
    if let Some(who) = &admin.who {
        map.insert("who".into(), json!(who));
    }
    if !admin.reason.is_empty() {
        map.insert("reason".into(), json!(admin.reason));
    }
    Value::Object(map)
}

fn api(admin: &Admin, path: &str) -> String {
    format!("{}/v1/projects/{path}", admin.url.trim_end_matches('/'))
}

/// Runs a `trellis rollouts` command; `root` is the Parquet root listings read.
pub async fn rollouts(command: Rollouts, root: &Path) -> anyhow::Result<()> {
    let answer = match command {
        Rollouts::List { project } => {
            print!("{}", list_rollouts(root, project.as_deref()).await?);
            return Ok(());
        }
        Rollouts::Register {
            project,
            update_id,
            channel,
            runtime_version,
            percentage,
            platform,
            admin,
        } => {
            let fields = json!({"update_id": update_id, "channel": channel,
                "runtime_version": runtime_version, "percentage": percentage,
                "platform": platform});
            let url = api(&admin, &format!("{project}/rollouts"));
            send("POST", &url, &admin.token, &body(&admin, fields))?
        }
        Rollouts::Update {
            project,
            update_id,
            percentage,
            admin,
        } => {
            let url = api(&admin, &format!("{project}/rollouts/{update_id}"));
            let fields = json!({"percentage": percentage});
            send("PATCH", &url, &admin.token, &body(&admin, fields))?
        }
        Rollouts::Halt(o) => over(&o, "halt")?,
        Rollouts::Resume(o) => over(&o, "resume")?,
        Rollouts::Ignore(o) => over(&o, "ignore")?,
    };
    println!("{answer}");
    Ok(())
}

fn over(o: &Override, action: &str) -> anyhow::Result<String> {
    let url = api(
        &o.admin,
        &format!("{}/rollouts/{}/{action}", o.project, o.update_id),
    );
    send("POST", &url, &o.admin.token, &body(&o.admin, json!({})))
}

/// Runs a `trellis alerts` command; `root` is the Parquet root listings read.
pub async fn alerts(command: Alerts, root: &Path) -> anyhow::Result<()> {
    let answer = match command {
        Alerts::List { project, all } => {
            print!("{}", list_alerts(root, project.as_deref(), all).await?);
            return Ok(());
        }
        Alerts::Ack { project, id, admin } => {
            let url = api(&admin, &format!("{project}/alerts/{id}/ack"));
            send("POST", &url, &admin.token, &body(&admin, json!({})))?
        }
        Alerts::Silence {
            project,
            id,
            duration,
            admin,
        } => {
            let url = api(&admin, &format!("{project}/alerts/{id}/silence"));
            let fields = json!({"for": humantime::format_duration(duration).to_string()});
            send("POST", &url, &admin.token, &body(&admin, fields))?
        }
    };
    println!("{answer}");
    Ok(())
}

/// `'text'` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn project_filter(column: &str, project: Option<&str>) -> String {
    project.map_or_else(String::new, |p| format!(" AND {column} = {}", literal(p)))
}

async fn rows(root: &Path, sql: &str) -> anyhow::Result<Vec<serde_json::Map<String, Value>>> {
    let answer = query(root, sql, OutputFormat::Json)
        .await
        .with_context(|| format!("reading the Parquet tables under {}", root.display()))?;
    let rows: Vec<Value> = serde_json::from_str(answer.trim())
        .with_context(|| format!("the answer to {sql:?} is not a JSON array"))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match r {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect())
}

fn text(row: &serde_json::Map<String, Value>, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn int(row: &serde_json::Map<String, Value>, key: &str) -> i64 {
    row.get(key).and_then(Value::as_i64).unwrap_or_default()
}

/// `ms` as RFC 3339, or as the number where it is not a time humantime can write (past the year
/// 9999): a listing never fails on a value it reads.
fn time(ms: i64) -> String {
    use std::fmt::Write;
    if ms <= 0 {
        return String::new();
    }
    let mut out = String::new();
    let at = UNIX_EPOCH + Duration::from_millis(ms as u64);
    match write!(out, "{}", humantime::format_rfc3339_seconds(at)) {
        Ok(()) => out,
        Err(_) => format!("{ms} ms"),
    }
}

/// One rollout's line in the listing.
#[derive(Default)]
struct RolloutLine {
    channel: String,
    runtime_version: String,
    sessions: i64,
    crashed: i64,
    first_seen_ms: i64,
    state: String,
    percentage: String,
    registered: bool,
    last: String,
}

/// The rollouts listing: updates seen in sessions, and what the audit trail says of each.
pub async fn list_rollouts(root: &Path, project: Option<&str>) -> anyhow::Result<String> {
    let mut lines: BTreeMap<(String, String), RolloutLine> = BTreeMap::new();
    let seen = rows(
        root,
        &format!(
            "SELECT s.project AS project, s.release.update_id AS update_id, \
             MAX(s.release.channel) AS channel, MAX(s.release.runtime_version) AS runtime_version, \
             COUNT(DISTINCT s.session_id) AS sessions, \
             COUNT(DISTINCT CASE WHEN s.crashed THEN s.session_id END) AS crashed, \
             MIN(s.started_ms) AS first_seen_ms \
             FROM sessions s WHERE s.release.update_id IS NOT NULL{} \
             GROUP BY s.project, s.release.update_id",
            project_filter("s.project", project)
        ),
    )
    .await?;
    for row in seen {
        let line = lines
            .entry((text(&row, "project"), text(&row, "update_id")))
            .or_default();
        line.channel = text(&row, "channel");
        line.runtime_version = text(&row, "runtime_version");
        line.sessions = int(&row, "sessions");
        line.crashed = int(&row, "crashed");
        line.first_seen_ms = int(&row, "first_seen_ms");
    }
    let entries = rows(
        root,
        &format!(
            "SELECT DISTINCT audit_id, project, subject, action, actor, at_ms, evidence \
             FROM audit WHERE action LIKE 'rollout.%'{} ORDER BY at_ms, audit_id",
            project_filter("project", project)
        ),
    )
    .await?;
    for row in entries {
        let line = lines
            .entry((text(&row, "project"), text(&row, "subject")))
            .or_default();
        let evidence: Value = serde_json::from_str(&text(&row, "evidence")).unwrap_or_default();
        let action = text(&row, "action");
        match action.as_str() {
            "rollout.halt" => line.state = "halted".into(),
            "rollout.resume" => line.state = "active".into(),
            "rollout.ignore" => line.state = "ignored".into(),
            _ => {}
        }
        if let Some(p) = evidence["percentage"].as_f64() {
            line.percentage = format!("{p}%");
        }
        line.registered |= action == "rollout.register";
        let release = &evidence["release"];
        for (field, key) in [
            (&mut line.channel, "channel"),
            (&mut line.runtime_version, "runtime_version"),
        ] {
            if field.is_empty() {
                *field = release[key].as_str().unwrap_or_default().to_string();
            }
        }
        line.last = format!(
            "{} by {} at {}",
            action.trim_start_matches("rollout."),
            text(&row, "actor"),
            time(int(&row, "at_ms"))
        );
    }
    let header = [
        "PROJECT",
        "UPDATE",
        "CHANNEL",
        "RUNTIME",
        "SESSIONS",
        "CRASHED",
        "FIRST SEEN",
        "SOURCE",
        "PERCENT",
        "GUARD",
        "LAST CHANGE",
    ];
    let body = lines
        .into_iter()
        .map(|((project, update), l)| {
            vec![
                project,
                update,
                l.channel,
                l.runtime_version,
                l.sessions.to_string(),
                l.crashed.to_string(),
                time(l.first_seen_ms),
                match (l.registered, l.sessions > 0) {
                    (true, true) => "registered, seen",
                    (true, false) => "registered",
                    (false, true) => "seen",
                    (false, false) => "-",
                }
                .to_string(),
                l.percentage,
                if l.state.is_empty() {
                    "active".to_string()
                } else {
                    l.state
                },
                l.last,
            ]
        })
        .collect();
    Ok(table(&header, body))
}

/// The alerts listing: each alert's newest version, and a silence still running.
pub async fn list_alerts(root: &Path, project: Option<&str>, all: bool) -> anyhow::Result<String> {
    let open = if all {
        ""
    } else {
        " AND state IN ('firing', 'acknowledged', 'halted')"
    };
    let alerts = rows(
        root,
        &format!(
            "SELECT project, alert_id, rule, state, severity, subject, metric, fired_ms, version \
             FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY project, alert_id \
             ORDER BY version DESC) AS newest FROM alerts) \
             WHERE newest = 1{open}{} ORDER BY fired_ms DESC, alert_id",
            project_filter("project", project)
        ),
    )
    .await?;
    let silences = rows(
        root,
        &format!(
            "SELECT project, subject, evidence, at_ms FROM audit \
             WHERE action = 'alert.silence'{} ORDER BY at_ms",
            project_filter("project", project)
        ),
    )
    .await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let mut silenced: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in silences {
        let evidence: Value = serde_json::from_str(&text(&row, "evidence")).unwrap_or_default();
        if let Some(until) = evidence["until_ms"].as_i64() {
            silenced.insert((text(&row, "project"), text(&row, "subject")), until);
        }
    }
    let header = [
        "PROJECT", "ALERT", "RULE", "STATE", "SEVERITY", "SUBJECT", "METRIC", "FIRED", "SILENCED",
    ];
    let body = alerts
        .into_iter()
        .map(|row| {
            let key = (text(&row, "project"), text(&row, "alert_id"));
            let silence = silenced
                .get(&key)
                .filter(|until| **until > now)
                .map(|until| format!("until {}", time(*until)))
                .unwrap_or_default();
            vec![
                key.0,
                key.1,
                text(&row, "rule"),
                text(&row, "state"),
                text(&row, "severity"),
                text(&row, "subject"),
                text(&row, "metric"),
                time(int(&row, "fired_ms")),
                silence,
            ]
        })
        .collect();
    Ok(table(&header, body))
}

/// An aligned text table.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_past_what_rfc_3339_can_write_print_as_numbers() {
        assert_eq!(super::time(0), "");
        assert_eq!(super::time(1_764_903_600_000), "2025-12-05T03:00:00Z");
        assert_eq!(super::time(i64::MAX), format!("{} ms", i64::MAX));
    }
}
