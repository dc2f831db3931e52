//! `trellis funnel`: how many people went through steps in order, answered from the Parquet
//! `events` table.
//!
//! A person is a user id, else a device id. Each person's funnel starts at their first event of
//! the first step; each next step counts from the first of its events at or after the step
//! before, as long as it is within `--within` of the start. Events of any name are steps
//! (`plant_watered`), and so are screen views (`screen:PlantDetail`, a `$screen` event of that
//! screen).

use std::path::Path;
use std::time::Duration;

/// `trellis funnel`'s arguments.
#[derive(clap::Args)]
pub struct FunnelArgs {
    /// The steps, in order (2 to 10): an event name, or `screen:NAME` for a screen view.
    #[arg(required = true, num_args = 2..=10)]
    steps: Vec<String>,
    /// How long after the first step the last may come.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    within: Duration,
    /// Only this project's events.
    #[arg(long)]
    project: Option<String>,
    /// One row per value of a release field of the first step's event.
    #[arg(long, value_enum)]
    by: Option<By>,
    /// How to print the answer: table, csv or json.
    #[arg(long, default_value = "table")]
    format: String,
}

/// A release field to break a funnel down by.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum By {
    /// The app version.
    AppVersion,
    /// The OTA update id.
    UpdateId,
    /// The channel.
    Channel,
    /// The platform.
    Platform,
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The condition of one step on the flattened events, their columns behind `on`.
fn step_condition(step: &str, on: &str) -> anyhow::Result<String> {
    let step = step.trim();
    match step.strip_prefix("screen:") {
        Some("") => anyhow::bail!("{step:?}: a screen step names its screen (screen:PlantDetail)"),
        Some(screen) => Ok(format!(
            "{on}name = '$screen' AND {on}screen = {}",
            quote(screen)
        )),
        None if step.is_empty() => anyhow::bail!("a step is empty"),
        None => Ok(format!("{on}name = {}", quote(step))),
    }
}

/// The SQL of a funnel.
pub fn funnel_sql(
    steps: &[String],
    within: Duration,
    project: Option<&str>,
    by: Option<By>,
) -> anyhow::Result<String> {
    let group = match by {
        None => "''",
        Some(By::AppVersion) => "common.release.app_version",
        Some(By::UpdateId) => "coalesce(common.release.update_id, '')",
        Some(By::Channel) => "coalesce(common.release.channel, '')",
        Some(By::Platform) => "common.release.platform",
    };
    let only = project
        .map(|p| format!("WHERE common.project = {}", quote(p)))
        .unwrap_or_default();
    let window = within.as_millis();
    let mut sql = format!(
        "WITH ev AS (\n  SELECT common.project AS project, \
         coalesce(common.user_id, common.device_id) AS who, common.timestamp_ms AS t, name, \
         screen, {group} AS grp\n  FROM events {only}\n),\n\
         s0 AS (\n  SELECT project, who, min(t) AS t0 FROM ev WHERE who IS NOT NULL AND {} \
         GROUP BY project, who\n),\n\
         g AS (\n  SELECT s0.project, s0.who, min(ev.grp) AS grp FROM s0 JOIN ev \
         ON ev.project = s0.project AND ev.who = s0.who AND ev.t = s0.t0 AND {}\n  \
         GROUP BY s0.project, s0.who\n)",
        step_condition(&steps[0], "")?,
        step_condition(&steps[0], "ev.")?,
    );
    for (n, step) in steps.iter().enumerate().skip(1) {
        let condition = step_condition(step, "ev.")?;
        sql.push_str(&format!(
            ",\ns{n} AS (\n  SELECT s.project, s.who, s.t0, min(ev.t) AS t{n} FROM s{prev} s JOIN ev \
             ON ev.project = s.project AND ev.who = s.who\n  WHERE {condition} AND ev.t >= s.t{prev} \
             AND ev.t <= s.t0 + {window}\n  GROUP BY s.project, s.who, s.t0\n)",
            prev = n - 1
        ));
    }
    let last = steps.len() - 1;
    let counts: Vec<String> = (0..steps.len())
        .map(|n| format!("count(s{n}.who) AS step_{}", n + 1))
        .collect();
    let joins: String = (1..steps.len())
        .map(|n| format!("\nLEFT JOIN s{n} ON s{n}.project = g.project AND s{n}.who = g.who",))
        .collect();
    let label = match by {
        None => String::new(),
        Some(By::AppVersion) => "g.grp AS app_version, ".into(),
        Some(By::UpdateId) => "g.grp AS update_id, ".into(),
        Some(By::Channel) => "g.grp AS channel, ".into(),
        Some(By::Platform) => "g.grp AS platform, ".into(),
    };
    sql.push_str(&format!(
        "\nSELECT {label}{counts}, \
         round(100.0 * count(s{last}.who) / count(s0.who), 2) AS conversion_pct\n\
         FROM g JOIN s0 ON s0.project = g.project AND s0.who = g.who{joins}\n\
         GROUP BY g.grp ORDER BY g.grp",
        counts = counts.join(", "),
    ));
    Ok(sql)
}

/// Runs `trellis funnel` over the Parquet files under `root`.
pub async fn run(args: FunnelArgs, root: &Path) -> anyhow::Result<()> {
    if args.within.is_zero() {
        anyhow::bail!("--within must be longer than zero");
    }
    let sql = funnel_sql(&args.steps, args.within, args.project.as_deref(), args.by)?;
    if !root.join("events").is_dir() {
        anyhow::bail!("no events are stored yet under {}", root.display());
    }
    crate::print_query(root, &sql, &args.format, "the funnel query").await
}
