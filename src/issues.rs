//! `trellis issues`: the admin API from the command line.

use clap::{Args, ValueEnum};

/// What to do to an issue.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Action {
    /// Resolved now: seen again in a newer release, it regresses.
    Resolve,
    /// Resolved in the release after the current one.
    ResolveInNextRelease,
    /// Resolved in `--app-version` (and `--build`).
    ResolveInRelease,
    /// Ignored forever, or until `--until-count`, `--until-users` or `--until-ms`.
    Ignore,
    /// Open again.
    Reopen,
    /// Merged into `--into`.
    Merge,
}

/// `trellis issues ACTION --project P --id ID`.
#[derive(Debug, Args)]
pub struct IssuesArgs {
    /// What to do.
    #[arg(value_enum)]
    action: Action,
    /// The project.
    #[arg(long)]
    project: String,
    /// The issue id (32 hex digits).
    #[arg(long)]
    id: String,
    /// The app version with the fix (`resolve-in-release`).
    #[arg(long)]
    app_version: Option<String>,
    /// Its build (`resolve-in-release`).
    #[arg(long)]
    build: Option<String>,
    /// Ignore until this many more events.
    #[arg(long)]
    until_count: Option<i64>,
    /// Ignore until this many more users.
    #[arg(long)]
    until_users: Option<i64>,
    /// Ignore until this time, ms since the epoch.
    #[arg(long)]
    until_ms: Option<i64>,
    /// Merge into this issue.
    #[arg(long)]
    into: Option<String>,
    /// The trellis server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin token (`ingest.admin_tokens`).
    #[arg(long, env = "TRELLIS_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

/// Sends the command; prints the command id the server accepted.
pub fn run(args: IssuesArgs) -> anyhow::Result<()> {
    let action = args
        .action
        .to_possible_value()
        .map(|v| v.get_name().replace('-', "_"))
        .unwrap_or_default();
    let url = format!(
        "{}/v1/projects/{}/issues/{}/{action}",
        args.url.trim_end_matches('/'),
        args.project,
        args.id
    );
    let body = serde_json::json!({
        "app_version": args.app_version,
        "build": args.build,
        "until_count": args.until_count,
        "until_users": args.until_users,
        "until_ms": args.until_ms,
        "into": args.into,
    });
    let body = serde_json::Value::Object(crate::guard::given(body));
    let text = crate::guard::send("POST", &url, &args.token, &body)?;
    println!("{text}");
    Ok(())
}
