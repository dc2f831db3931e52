//! `trellis paths`: where people go after a screen, answered from the Parquet `events` table.
//!
//! A person is a user id, else a device id; their screen views (`$screen` events) in time order
//! make their path. After each view of the screen asked for, the next `--depth` views are
//! counted, as long as each comes within `--gap` of the one before (else the path ends there,
//! shown as `(end)`).

use std::path::Path;
use std::time::Duration;

/// `trellis paths`' arguments.
#[derive(clap::Args)]
pub struct PathsArgs {
    /// The screen the paths start after.
    #[arg(long)]
    after: String,
    /// How many screens after it (1 to 5).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=5))]
    depth: u32,
    /// A longer wait between two views ends the path.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// The most paths shown, most followed first.
    #[arg(long, default_value_t = 20)]
    top: u32,
    /// Only this project's events.
    #[arg(long)]
    project: Option<String>,
    /// How to print the answer: table, csv or json.
    #[arg(long, default_value = "table")]
    format: String,
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SQL of the paths after `after`.
pub fn paths_sql(
    after: &str,
    depth: u32,
    gap: Duration,
    top: u32,
    project: Option<&str>,
) -> String {
    let only = project
        .map(|p| format!("AND common.project = {}", quote(p)))
        .unwrap_or_default();
    let window = "OVER (PARTITION BY common.project, coalesce(common.user_id, common.device_id) \
                  ORDER BY common.timestamp_ms, common.event_id)";
    let mut leads = Vec::new();
    for k in 1..=depth {
        leads.push(format!("LEAD(screen, {k}) {window} AS s{k}"));
        leads.push(format!("LEAD(common.timestamp_ms, {k}) {window} AS t{k}"));
    }
    let gap_ms = gap.as_millis();
    // Step k is shown when every step up to it came within the gap of the one before.
    let steps: Vec<String> = (1..=depth)
        .map(|k| {
            let within: Vec<String> = (1..=k)
                .map(|j| format!("t{j} - t{} <= {gap_ms}", j - 1))
                .collect();
            format!(
                "CASE WHEN s{k} IS NOT NULL AND {} THEN s{k} ELSE '(end)' END AS then_{k}",
                within.join(" AND ")
            )
        })
        .collect();
    let columns: Vec<String> = (1..=depth).map(|k| format!("then_{k}")).collect();
    format!(
        "WITH views AS (\n  SELECT screen, common.timestamp_ms AS t0, {}\n  FROM events \
         WHERE name = '$screen' AND screen IS NOT NULL \
         AND coalesce(common.user_id, common.device_id) IS NOT NULL {only}\n),\n\
         paths AS (\n  SELECT {}\n  FROM views WHERE screen = {}\n)\n\
         SELECT {cols}, count(*) AS views FROM paths GROUP BY {cols} \
         ORDER BY views DESC, {cols} LIMIT {top}",
        leads.join(", "),
        steps.join(",\n    "),
        quote(after),
        cols = columns.join(", "),
    )
}

/// Runs `trellis paths` over the Parquet files under `root`.
pub async fn run(args: PathsArgs, root: &Path) -> anyhow::Result<()> {
    if args.after.trim().is_empty() {
        anyhow::bail!("--after names a screen");
    }
    if !root.join("events").is_dir() {
        anyhow::bail!("no events are stored yet under {}", root.display());
    }
    let sql = paths_sql(
        args.after.trim(),
        args.depth,
        args.gap,
        args.top,
        args.project.as_deref(),
    );
    crate::print_query(root, &sql, &args.format, "the paths query").await
}
