//! `trellis cohorts`: weekly retention, answered from the Parquet `events` table.
//!
//! A person is a user id, else a device id; their first event places them in a cohort (the week
//! it fell in, Monday to Sunday UTC, or the OTA update it ran), and they are active in week `k`
//! when they have an event between `k` and `k + 1` weeks after that first event.

use std::path::Path;

/// `trellis cohorts`' arguments.
#[derive(clap::Args)]
pub struct CohortsArgs {
    /// What a cohort is: the week of a person's first event, or the OTA update it ran.
    #[arg(long, value_enum, default_value = "install-week")]
    by: CohortBy,
    /// How many weeks of activity to show (1 to 26).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=26))]
    weeks: u32,
    /// Only this project's events.
    #[arg(long)]
    project: Option<String>,
    /// How to print the answer: table, csv or json.
    #[arg(long, default_value = "table")]
    format: String,
}

/// What a cohort is.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CohortBy {
    /// The week (starting Monday, UTC) of a person's first event.
    InstallWeek,
    /// The OTA update id of a person's first event (empty: the embedded bundle).
    FirstUpdate,
}

const WEEK_MS: i64 = 7 * 86_400_000;

/// The SQL of a retention table.
pub fn cohorts_sql(by: CohortBy, weeks: u32, project: Option<&str>) -> String {
    let only = project
        .map(|p| format!("AND common.project = '{}'", p.replace('\'', "''")))
        .unwrap_or_default();
    // 1970-01-01 was a Thursday, so (t + 3 days) modulo a week is the time since Monday.
    let monday = "(f.t0 - ((f.t0 + 3 * 86400000) % 604800000))";
    let (label, cohort) = match by {
        CohortBy::InstallWeek => (
            "install_week",
            format!("CAST(CAST(to_timestamp_millis({monday}) AS DATE) AS VARCHAR)"),
        ),
        CohortBy::FirstUpdate => ("first_update", "min(e.upd)".to_string()),
    };
    let weeks_cols: Vec<String> = (0..weeks)
        .map(|k| format!("count(DISTINCT CASE WHEN a.week = {k} THEN a.who END) AS week_{k}"))
        .collect();
    format!(
        "WITH ev AS (\n  SELECT common.project AS project, \
         coalesce(common.user_id, common.device_id) AS who, common.timestamp_ms AS t, \
         coalesce(common.release.update_id, '') AS upd\n  FROM events \
         WHERE coalesce(common.user_id, common.device_id) IS NOT NULL {only}\n),\n\
         firsts AS (SELECT project, who, min(t) AS t0 FROM ev GROUP BY project, who),\n\
         cohort AS (\n  SELECT f.project, f.who, f.t0, {cohort} AS cohort FROM firsts f JOIN ev e \
         ON e.project = f.project AND e.who = f.who AND e.t = f.t0\n  \
         GROUP BY f.project, f.who, f.t0\n),\n\
         act AS (\n  SELECT DISTINCT c.cohort, c.project, c.who, (e.t - c.t0) / {WEEK_MS} AS week \
         FROM cohort c JOIN ev e ON e.project = c.project AND e.who = c.who\n)\n\
         SELECT a.cohort AS {label}, count(DISTINCT a.who) AS people, {}\n\
         FROM act a GROUP BY a.cohort ORDER BY a.cohort",
        weeks_cols.join(", ")
    )
}

/// Runs `trellis cohorts` over the Parquet files under `root`.
pub async fn run(args: CohortsArgs, root: &Path) -> anyhow::Result<()> {
    if !root.join("events").is_dir() {
        anyhow::bail!("no events are stored yet under {}", root.display());
    }
    let sql = cohorts_sql(args.by, args.weeks, args.project.as_deref());
    crate::print_query(root, &sql, &args.format, "the cohorts query").await
}
